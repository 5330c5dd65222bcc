"""The network-environment test run before OGS after resume: a default route and DNS.

AnyConnect re-runs OGS after resume only once the network is usable, which includes a DNS
connectivity subtest. That subtest asks about IP literals with PTR queries only: some
resolvers silently drop type-A queries whose name is an IP address (CSCti20768), which
would make a working network look dead.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename

from ogsd.core.models import Location
from ogsd.probing import dnsquery
from ogsd.sensing.routes import NetWatchError, read_snapshot

DNS_TIMEOUT_DEFAULT = 2.0
# Two sends per query within the timeout: one lost UDP datagram must not fail the test.
ATTEMPTS = 2
# A few names prove name resolution as well as a long list; keep the burst small.
MAX_GATEWAY_NAMES = 3
# The routing dump takes milliseconds; this only guards against a wedged kernel call.
# Generous: right after resume a laptop is busy, and a stall of ours (seen: 2 s on a
# loaded 2-core machine) must not read as "no network" and block re-evaluation.
ROUTE_CHECK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class NetEnvResult:
    """Outcome of the network-environment test; `detail` says why, for the logs."""

    ok: bool
    default_route: bool
    dns_ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class _Query:
    server: str
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType

    def __str__(self) -> str:
        return f"{dns.rdatatype.to_text(self.rdtype)} {self.name.to_text(omit_final_dot=True)}"


async def network_environment_test(
    location: Location,
    *,
    gateway_names: Sequence[str] = (),
    # The per-query DNS wait, not a deadline for the caller (that would be fail_after):
    # the whole test ends within it plus the routing dump.
    timeout: float = DNS_TIMEOUT_DEFAULT,  # noqa: ASYNC109
    port: int = 53,
    device: str | None = None,
    netns: str | None = None,
) -> NetEnvResult:
    """Check for a usable default route and for any DNS answer from the location's servers.

    `device`: ask the servers from that interface (the physical uplink while a VPN's
    tunnel holds the default route). `netns`: read routes there (tests).
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    route: tuple[bool, str] = (False, "")
    dns_result: tuple[bool, str] = (False, "")

    async def check_route() -> None:
        nonlocal route
        route = await _check_default_route(netns)

    async def check_dns() -> None:
        nonlocal dns_result
        dns_result = await _dns_subtest(location.servers, gateway_names, timeout, port, device)

    async with anyio.create_task_group() as tg:
        tg.start_soon(check_route)
        tg.start_soon(check_dns)
    (has_route, route_text), (dns_ok, dns_text) = route, dns_result
    return NetEnvResult(
        ok=has_route and dns_ok,
        default_route=has_route,
        dns_ok=dns_ok,
        detail=f"{route_text}; {dns_text}",
    )


async def _check_default_route(netns: str | None) -> tuple[bool, str]:
    try:
        with anyio.fail_after(ROUTE_CHECK_TIMEOUT):
            snapshot = await anyio.to_thread.run_sync(
                functools.partial(read_snapshot, netns=netns), abandon_on_cancel=True)
    except TimeoutError:
        return False, f"cannot read routes: no answer within {ROUTE_CHECK_TIMEOUT:g} s"
    except (OSError, NetWatchError) as exc:
        return False, f"cannot read routes: {exc}"
    families = [
        name for name, up in (("IPv4", snapshot.default_v4), ("IPv6", snapshot.default_v6)) if up
    ]
    if not families:
        return False, "no default route"
    return True, f"default route: {'+'.join(families)}"


async def _dns_subtest(
    servers: Sequence[str], gateway_names: Sequence[str], wait: float, port: int,
    device: str | None,
) -> tuple[bool, str]:
    if not servers:
        return False, "DNS: no servers configured"
    queries: list[_Query] = []
    outcomes: dict[str, str] = {}  # per server: its first answer, else why none came
    answered: set[str] = set()
    for server in servers:
        try:
            queries.extend(_queries_for(server, gateway_names))
        except (ValueError, dns.exception.DNSException) as exc:
            outcomes[server] = str(exc)
    started = time.monotonic()

    # Every query runs to its end (bounded by `wait`): stopping at the first answer could
    # cancel a gateway lookup before it was even sent.
    async def ask(query: _Query) -> None:
        outcome, ok = await _ask(query, wait, port, device)
        if ok and query.server not in answered:
            answered.add(query.server)
            elapsed_ms = (time.monotonic() - started) * 1000
            outcomes[query.server] = f"answered {query} ({outcome}) in {elapsed_ms:.0f} ms"
        elif not ok and query.server not in answered:
            outcomes.setdefault(query.server, outcome)

    async with anyio.create_task_group() as tg:
        for query in queries:
            tg.start_soon(ask, query)
    texts = [
        f"{server} {outcomes[server]}" if server in answered else f"{server}: {outcomes[server]}"
        for server in dict.fromkeys(servers)
    ]
    return bool(answered), "DNS: " + "; ".join(texts)


def _queries_for(server: str, gateway_names: Sequence[str]) -> list[_Query]:
    """PTR for the server's own address, and for each gateway: PTR if an IP, else A+AAAA."""
    address = ipaddress.ip_address(server.split("%", 1)[0])  # ValueError names the value
    queries = [_Query(server, dns.reversename.from_address(str(address)), dns.rdatatype.PTR)]
    for gateway in gateway_names[:MAX_GATEWAY_NAMES]:
        try:
            literal = ipaddress.ip_address(gateway)
        except ValueError:
            name = dns.name.from_text(gateway)
            queries += [
                _Query(server, name, dns.rdatatype.A),
                _Query(server, name, dns.rdatatype.AAAA),
            ]
        else:
            # Never type A for an IP literal (CSCti20768): ask its PTR instead.
            queries.append(
                _Query(server, dns.reversename.from_address(str(literal)), dns.rdatatype.PTR)
            )
    return queries


async def _ask(query: _Query, wait: float, port: int, device: str | None) -> tuple[str, bool]:
    """Send one query (retransmitted once); any response, NXDOMAIN included, is an answer."""
    message = dns.message.make_query(query.name, query.rdtype)
    for _ in range(ATTEMPTS):
        try:
            response = await dnsquery.query(
                message, query.server, timeout=wait / ATTEMPTS, port=port, device=device
            )
        except dns.exception.Timeout:
            continue
        except (OSError, dns.exception.DNSException) as exc:
            return f"{type(exc).__name__}: {exc}", False
        return dns.rcode.to_text(response.rcode()), True
    return f"no answer within {wait:g} s", False
