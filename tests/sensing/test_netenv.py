"""The network-environment test against a real DNS server on loopback and in namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import pytest

from ogsd.core.models import Location
from ogsd.lab.dnszone import is_ip_literal
from ogsd.sensing.netenv import network_environment_test
from ogsd.sensing.routes import read_snapshot
from tests.dnsserver import DnsServer

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = Location("example.test", ("127.0.0.1",))


@pytest.fixture
def anyio_backend() -> object:
    return ("asyncio", {"use_uvloop": True})  # what the daemon runs


async def test_ok_with_ptr_answer_and_gateway_lookup() -> None:
    records = {"gw.example.test.": ["198.18.7.7", "2001:db8::7"]}
    with DnsServer(records) as server:
        result = await network_environment_test(
            LOOPBACK, gateway_names=["gw.example.test"], port=server.port
        )
        seen = server.queries
    assert result.dns_ok
    assert result.default_route == any_default_route()
    assert result.ok == result.default_route
    assert "127.0.0.1 answered" in result.detail
    assert ("1.0.0.127.in-addr.arpa.", "PTR") in seen
    assert {("gw.example.test.", "A"), ("gw.example.test.", "AAAA")} <= set(seen)


async def test_server_dropping_a_for_ip_literals_still_passes() -> None:
    """CSCti20768: we must ask PTR for IP literals, never type A."""
    with DnsServer(drop_a_for_ip_literal=True) as server:
        # The server really drops those: an A query for an IP literal goes unanswered.
        with pytest.raises(dns.exception.Timeout):
            await dns.asyncquery.udp(
                dns.message.make_query("198.18.7.8", "A"),
                "127.0.0.1",
                timeout=0.3,
                port=server.port,
            )
        before = len(server.queries)
        result = await network_environment_test(
            LOOPBACK, gateway_names=["198.18.7.8", "2001:db8::8"], port=server.port
        )
        ours = server.queries[before:]
    assert result.dns_ok, result.detail
    assert "NXDOMAIN" in result.detail  # an NXDOMAIN answer proves connectivity
    assert ("1.0.0.127.in-addr.arpa.", "PTR") in ours
    assert not [q for q in ours if q[1] in ("A", "AAAA") and is_ip_literal(q[0])]


async def test_silent_server_fails_within_the_timeout() -> None:
    with DnsServer(silent=True) as server:
        started = time.monotonic()
        result = await network_environment_test(LOOPBACK, timeout=0.5, port=server.port)
        elapsed = time.monotonic() - started
        ptr_sent = server.count("PTR")
    assert not result.dns_ok
    assert not result.ok
    assert 0.45 <= elapsed < 1.0
    assert ptr_sent == 2  # sent, then retransmitted once within the timeout
    assert result.detail.endswith("DNS: 127.0.0.1: no answer within 0.5 s")


async def test_one_live_server_is_enough() -> None:
    with DnsServer() as live, DnsServer(silent=True, host="127.0.0.2", port=live.port) as dead:
        location = Location("", ("127.0.0.2", "127.0.0.1"))
        started = time.monotonic()
        result = await network_environment_test(location, timeout=0.5, port=live.port)
        elapsed = time.monotonic() - started
        assert dead.count("PTR") == 2
    assert result.dns_ok
    assert (
        result.detail.endswith(
            "DNS: 127.0.0.2: no answer within 0.5 s; "
            "127.0.0.1 answered PTR 1.0.0.127.in-addr.arpa (NXDOMAIN) in 0 ms"
        )
        or "127.0.0.1 answered PTR" in result.detail
    )
    assert elapsed < 1.0  # bounded by the timeout, all servers in parallel


async def test_no_servers_and_bad_servers_are_explained() -> None:
    result = await network_environment_test(Location("", ()), timeout=0.2)
    assert not result.dns_ok
    assert "no servers configured" in result.detail
    result = await network_environment_test(Location("", ("dns.example",)), timeout=0.2)
    assert not result.dns_ok
    assert "dns.example: 'dns.example' does not appear to be an IPv4 or IPv6 address" in (
        result.detail
    )


async def test_bad_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        await network_environment_test(LOOPBACK, timeout=0)


def any_default_route() -> bool:
    snapshot = read_snapshot()
    return snapshot.default_v4 or snapshot.default_v6


# Run the whole test inside a namespace: routes and DNS are both per-namespace.
IN_NAMESPACE = """
import json, anyio
from ogsd.core.models import Location
from ogsd.sensing.netenv import network_environment_test
from tests.dnsserver import DnsServer

async def main(with_server):
    if with_server:
        with DnsServer() as server:
            r = await network_environment_test(
                Location("", ("127.0.0.1",)), timeout=0.5, port=server.port)
    else:
        r = await network_environment_test(Location("", ("198.18.0.53",)), timeout=0.5)
    print(json.dumps([r.ok, r.default_route, r.dns_ok, r.detail]))

anyio.run(main, {with_server}, backend_options={{"use_uvloop": True}})
"""


def run_in_namespace(netns: str, *, with_server: bool) -> tuple[bool, bool, bool, str]:
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            IN_NAMESPACE.format(with_server=with_server),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    ok, route, dns_ok, detail = json.loads(proc.stdout.strip().splitlines()[-1])
    return ok, route, dns_ok, detail


@pytest.mark.root
def test_fresh_namespace_has_no_default_route(netns: str) -> None:
    ok, route, dns_ok, detail = run_in_namespace(netns, with_server=False)
    assert (ok, route, dns_ok) == (False, False, False)
    assert detail.startswith("no default route; DNS: 198.18.0.53: ")


@pytest.mark.root
def test_usable_namespace_passes(netns: str) -> None:
    script = (
        "link set lo up\nlink add d0 type veth peer name d1\nlink set d1 up\nlink set d0 up\n"
        "address add 198.18.0.2/24 dev d0\nroute add default via 198.18.0.1\n"
    )
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=script.encode(), check=True)
    ok, route, dns_ok, detail = run_in_namespace(netns, with_server=True)
    assert (ok, route, dns_ok) == (True, True, True), detail
    assert detail.startswith("default route: IPv4; DNS: 127.0.0.1 answered PTR")
