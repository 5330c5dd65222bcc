"""Which address a gateway is probed at: A and AAAA both, RFC 6724 order, the family said.

Routing decides, so the tests that need "no IPv4 route" or "no IPv6 route" run in a
namespace of their own (root): there only loopback exists, and nothing leaves it.
"""

from __future__ import annotations

import functools
import subprocess
from typing import Any

import anyio
import dns.asyncresolver
import pytest

from ogsd.core.addrorder import Candidate, order
from ogsd.core.models import Gateway, Metric
from ogsd.probing.addresses import RESOLUTION_DELAY_S, ResolveError, ordered, resolve
from ogsd.probing.dnsquery import BoundResolver
from ogsd.probing.round import RoundOutcome, probe_round
from tests.daemon_helpers import in_netns
from tests.dnsserver import DnsServer
from tests.tlsserver import LoopbackServer

X = Metric.EXCHANGE
UNROUTED_V4 = "198.18.77.1"  # no route to it in a namespace that has only loopback
UNROUTED_V6 = "2001:2::77"


@pytest.mark.parametrize(("candidates", "first"), [
    # Rule 1: an address with no route goes last, whatever the family.
    ([Candidate("2001:db8::1", None), Candidate("192.0.2.1", "192.0.2.9")], "192.0.2.1"),
    ([Candidate("192.0.2.1", None), Candidate("2001:db8::1", "2001:db8::9")], "2001:db8::1"),
    # Rule 6: native IPv6 (precedence 40) before IPv4 (35) when both are routed.
    ([Candidate("192.0.2.1", "192.0.2.9"), Candidate("2001:db8::1", "2001:db8::9")],
     "2001:db8::1"),
    # ... but Teredo's 2001::/32 (precedence 5) after IPv4, as glibc orders it.
    ([Candidate("2001:0:53aa::1", "2001:0:53aa::9"), Candidate("192.0.2.1", "192.0.2.9")],
     "192.0.2.1"),
    # Rule 2: a global destination reached from a link-local source only loses.
    ([Candidate("2001:db8::1", "fe80::1"), Candidate("192.0.2.1", "192.0.2.9")], "192.0.2.1"),
    # Rule 10: otherwise DNS order stands.
    ([Candidate("192.0.2.2", "192.0.2.9"), Candidate("192.0.2.1", "192.0.2.9")], "192.0.2.2"),
    # Rule 9: the longer common prefix with the source wins among IPv6.
    ([Candidate("2001:db8:ffff::1", "2001:db8:1::9"), Candidate("2001:db8:1::1",
                                                                "2001:db8:1::9")],
     "2001:db8:1::1"),
])
def test_rfc6724_order(candidates: list[Candidate], first: str) -> None:
    assert order(candidates)[0].destination == first


def _resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 2.0
    return resolver


def _round(gateways: list[Gateway], **kwargs: Any) -> RoundOutcome:
    call = functools.partial(probe_round, gateways, metric=X, deadline=3.0, **kwargs)
    return anyio.run(call, backend="asyncio", backend_options={"use_uvloop": True})


def test_an_ipv6_only_name_survives_a_fast_a_failure() -> None:
    # The A lookup fails at once (no A record); AAAA takes a while. It used to be
    # cancelled by the A failure (an exception is truthy): "no A or AAAA record".
    with (DnsServer({"v6only.test": ["::1"]}, delays={"AAAA": 0.1}) as dns_server,
          LoopbackServer(host="::1") as server):
        out = _round([Gateway("v6only.test", port=server.port)], resolver=_resolver(dns_server))
        assert server.connections >= 1
    (result,) = out.results
    assert (result.error, result.address, result.family) == (None, "::1", "IPv6")
    assert result.rtt(X) is not None
    assert set(server.server_names) == {"v6only.test"}


def test_a_slow_aaaa_does_not_hold_a_routable_a() -> None:
    # RFC 8305: once A answered with a routable address, AAAA gets 50 ms more, no longer.
    with DnsServer({"dual.test": ["127.0.0.1", "::1"]}, delays={"AAAA": 1.5}) as dns_server:
        async def go() -> tuple[list[Candidate], float]:
            t0 = anyio.current_time()
            found, _ = await resolve("dual.test", _resolver(dns_server))
            return found, anyio.current_time() - t0
        found, took = anyio.run(go)
    assert [c.destination for c in found] == ["127.0.0.1"]
    assert RESOLUTION_DELAY_S <= took < RESOLUTION_DELAY_S + 0.5


def test_no_address_is_a_resolve_error() -> None:
    with DnsServer({"empty.test": []}) as dns_server:
        with pytest.raises(ResolveError, match="no A or AAAA record"):
            anyio.run(resolve, "empty.test", _resolver(dns_server))
        with pytest.raises(ResolveError, match="NXDOMAIN"):
            anyio.run(resolve, "missing.test", _resolver(dns_server))


def test_bound_resolver_over_ipv6_feeds_an_ipv6_probe() -> None:
    # While a VPN is up, names go to the physical network's DNS from the uplink device.
    with (DnsServer({"v6only.test": ["::1"]}, host="::1") as dns_server,
          LoopbackServer(host="::1") as server):
        resolver = BoundResolver(("::1",), device="lo", port=dns_server.port)
        out = _round([Gateway("v6only.test", port=server.port)], resolver=resolver,
                     device="lo")
    (result,) = out.results
    assert (result.error, result.address, result.family) == (None, "::1", "IPv6")
    assert dns_server.queries.count(("v6only.test.", "AAAA")) == 1


def test_probes_bound_to_a_device_over_ipv6() -> None:
    with LoopbackServer(host="::1") as server:
        out = _round([Gateway("::1", port=server.port)], device="lo")
    (result,) = out.results
    assert (result.error, result.family) == (None, "IPv6")
    assert result.rtt(X) is not None


@pytest.fixture
def loopback_ns(netns: str) -> str:
    """A namespace with loopback only: 127.0.0.1 and ::1, no other route of either family."""
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    return netns


def _in(ns: str, records: dict[str, list[str]], dns_host: str) -> RoundOutcome:
    """One round for gw.test in `ns`, where it is served on ::1 and 127.0.0.1 alike."""
    def work() -> RoundOutcome:
        with (DnsServer(records, host=dns_host) as dns_server,
              LoopbackServer(host="::1") as v6,
              LoopbackServer(host="127.0.0.1", port=v6.port)):
            return _round([Gateway("gw.test", port=v6.port)], resolver=_resolver(dns_server))
    return in_netns(ns, work)


@pytest.mark.root
def test_ipv6_only_network_probes_a_dual_stack_gateway_over_ipv6(loopback_ns: str) -> None:
    # A answers with an address this host has no route to; AAAA with one it has.
    out = _in(loopback_ns, {"gw.test": [UNROUTED_V4, "::1"]}, "::1")
    (result,) = out.results
    assert (result.error, result.address, result.family) == (None, "::1", "IPv6")


@pytest.mark.root
def test_ipv4_only_network_probes_a_dual_stack_gateway_over_ipv4(loopback_ns: str) -> None:
    out = _in(loopback_ns, {"gw.test": [UNROUTED_V6, "127.0.0.1"]}, "127.0.0.1")
    (result,) = out.results
    assert (result.error, result.address, result.family) == (None, "127.0.0.1", "IPv4")


@pytest.mark.root
def test_dual_stack_prefers_ipv6_as_rfc6724_says(loopback_ns: str) -> None:
    out = _in(loopback_ns, {"gw.test": ["127.0.0.1", "::1"]}, "127.0.0.1")
    (result,) = out.results
    assert (result.error, result.address, result.family) == (None, "::1", "IPv6")


@pytest.mark.root
def test_route_lookup_sees_the_namespace(loopback_ns: str) -> None:
    found = in_netns(loopback_ns, lambda: ordered([UNROUTED_V4, UNROUTED_V6, "::1"]))
    assert [(c.destination, c.source) for c in found] == [
        ("::1", "::1"), (UNROUTED_V6, None), (UNROUTED_V4, None)]
