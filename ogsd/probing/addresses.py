"""A gateway's addresses: A and AAAA both, ordered by what this host can route.

Both lookups run together and neither cancels the other on its own outcome (a fast
failure of one says nothing about the other). Once one family has answered with an
address the host can route, the other gets RESOLUTION_DELAY_S more (RFC 8305 §3), so a
DNS server that drops AAAA queries does not hold the round; when the first answer is
unroutable (IPv4 on an IPv6-only network), the other is awaited in full.

The order is RFC 6724's (ogsd.core.addrorder): the kernel tells us, per address, the
source it would use, through the device the probes are bound to (SO_BINDTODEVICE while
a VPN is up), so an address behind no route goes last.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from ipaddress import ip_address
from typing import Any, Protocol

import anyio
import dns.asyncresolver
import dns.exception
import dns.resolver

from ogsd.core.addrorder import Candidate, order
from ogsd.probing.dnsquery import bind_to_device

# RFC 8305 §3: after one family's answer, wait this long for the other.
RESOLUTION_DELAY_S = 0.05
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL,
                       errno.EAFNOSUPPORT, errno.EINVAL, errno.EPERM, errno.ENODEV})


class Resolver(Protocol):
    """What resolves gateway names: dnspython's async Resolver, or a BoundResolver."""

    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]:
        """The records of `rdtype` for `qname`; dns.exception.DNSException if none."""
        ...


class ResolveError(Exception):
    """No address for the name; the message says why, as a DNS operator would."""


def source_for(address: str, device: str | None = None) -> str | None:
    """The source address the kernel would use to reach `address`; None if no route."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            bind_to_device(sock, device, address)
            sock.connect((address, 443))  # UDP: a route lookup, nothing is sent
            return str(sock.getsockname()[0])
    except OSError as exc:
        if exc.errno in _NO_ROUTE:
            return None
        raise


def ordered(addresses: Iterable[str], device: str | None = None) -> list[Candidate]:
    """`addresses` best first, each with its source (None: unroutable, at the end)."""
    return order([Candidate(a, source_for(a, device)) for a in addresses])


async def resolve(host: str, resolver: Resolver | None,
                  device: str | None = None) -> tuple[list[Candidate], Resolver | None]:
    """The gateway's addresses, best first; the resolver made if none was given.

    An IP literal is its own single address. ResolveError when neither family has one.
    """
    try:
        return ordered([str(ip_address(host))], device), resolver
    except ValueError:
        pass
    if resolver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise ResolveError("no DNS resolver configured") from exc
    found: dict[str, list[str]] = {}
    failures: list[dns.exception.DNSException] = []
    one_routable = anyio.Event()
    active: Resolver = resolver

    async def lookup(rdtype: str, scope: anyio.CancelScope) -> None:
        try:
            answer = await active.resolve(host, rdtype)
            found[rdtype] = [rr.to_text() for rr in answer]
            if any(source_for(a, device) is not None for a in found[rdtype]):
                one_routable.set()
        except dns.exception.DNSException as exc:
            failures.append(exc)
        if len(found) + len(failures) == 2:
            scope.cancel()  # both answered: the delay below is moot

    async def delay_after_first(scope: anyio.CancelScope) -> None:
        await one_routable.wait()
        await anyio.sleep(RESOLUTION_DELAY_S)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lookup, "A", tg.cancel_scope)
        tg.start_soon(lookup, "AAAA", tg.cancel_scope)
        tg.start_soon(delay_after_first, tg.cancel_scope)
    addresses = found.get("AAAA", []) + found.get("A", [])
    if not addresses:
        raise ResolveError(_dns_error(failures))
    return ordered(addresses, device), resolver


def _dns_error(errors: list[dns.exception.DNSException]) -> str:
    """Why neither A nor AAAA gave an address, as a DNS operator would say it."""
    if any(isinstance(e, dns.resolver.NXDOMAIN) for e in errors):
        return "NXDOMAIN"
    if any(isinstance(e, dns.resolver.LifetimeTimeout) for e in errors):
        return "DNS timeout"
    if any(isinstance(e, dns.resolver.NoNameservers) for e in errors):
        return "no DNS server answered (SERVFAIL or refused)"
    return "no A or AAAA record"
