"""DNS queries from a chosen device: real DNS servers on loopback and behind a real LAN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import dns.message
import dns.resolver
import pytest

from ogsd.probing.dnsquery import BoundResolver, is_loopback, query
from tests.daemon_helpers import in_netns
from tests.dnsserver import DnsServer
from tests.tunnel_helpers import DNS, laptop

RECORDS = {"gw.example.": ["198.18.0.10", "2001:2::10"], "empty.example.": []}


def run_in(namespace: str, work: Callable[[], Any]) -> Any:
    """Run the coroutine function `work` on a fresh loop inside `namespace`."""
    return in_netns(namespace, lambda: anyio.run(work))


@pytest.mark.anyio
async def test_resolves_a_and_aaaa_and_names_the_failures() -> None:
    with DnsServer(RECORDS) as server:
        resolver = BoundResolver((server.host,), port=server.port, timeout=1.0)
        assert [r.to_text() for r in await resolver.resolve("gw.example", "A")] == [
            "198.18.0.10"]
        assert [r.to_text() for r in await resolver.resolve("gw.example.", "AAAA")] == [
            "2001:2::10"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("nowhere.example", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            await resolver.resolve("empty.example", "A")
        # A single label is tried with the search domain first.
        searching = BoundResolver((server.host,), port=server.port, search=("example",))
        assert [r.to_text() for r in await searching.resolve("gw", "A")] == ["198.18.0.10"]
        assert server.queries[-1] == ("gw.example.", "A")


@pytest.mark.anyio
async def test_a_silent_server_times_out_and_the_next_one_answers() -> None:
    with DnsServer(RECORDS, silent=True) as dead, DnsServer(RECORDS, host="127.0.0.2") as live:
        assert dead.port != 0
        alone = BoundResolver((dead.host,), port=dead.port, timeout=0.2)
        with pytest.raises(dns.resolver.LifetimeTimeout):
            await alone.resolve("gw.example", "A")
        assert dead.count("A") == 2  # asked twice: one lost datagram is not a fault
        # Same port on both hosts is not guaranteed: ask each on its own port.
        message = dns.message.make_query("gw.example", "A")
        response = await query(message, live.host, timeout=1.0, port=live.port)
        assert response.answer[0][0].to_text() == "198.18.0.10"


def test_loopback_servers_are_recognised() -> None:
    assert [is_loopback(a) for a in ("127.0.0.53", "127.0.1.1", "::1", "192.168.1.1",
                                     "fe80::1%eth0", "bogus")] == [
        True, True, True, False, False, False]


@pytest.mark.root
def test_bound_to_the_lan_while_a_full_tunnel_swallows_the_default_route() -> None:
    with laptop() as lap:
        server = in_netns(lap.router, lambda: DnsServer(RECORDS, host=DNS, port=53))
        with server:
            lap.full_tunnel(keep_physical=True)

            async def ask(device: str | None) -> str:
                resolver = BoundResolver((DNS,), device=device, timeout=0.3)
                try:
                    return str((await resolver.resolve("gw.example", "A"))[0])
                except dns.resolver.LifetimeTimeout:
                    return "timeout"

            # Routed the ordinary way, the query goes into the tunnel and is lost.
            assert run_in(lap.client, lambda: ask(None)) == "timeout"
            assert run_in(lap.client, lambda: ask("d0")) == "198.18.0.10"
            assert server.count("A") == 1  # the two tries routed into the tunnel never came
