"""Which of a gateway's addresses to probe: RFC 6724 destination address selection.

The adapter (ogsd.probing.addresses) asks the kernel, for each address, which source address it
would use (a connected UDP socket sends nothing); None means no route. This orders the
candidates with the RFC's rules that apply to one host's view: 1 (avoid unusable), 2
(matching scope), 5 (matching label), 6 (higher precedence), 8 (smaller scope), 9 (longest
matching prefix, IPv6) and 10 (keep the DNS order). Rules 3, 4 and 7 need address
attributes (deprecated, home, native transport) the socket API does not show.

The default policy table prefers native IPv6 over IPv4 over 6to4/Teredo, so a dual-stack
gateway is probed over IPv6 where the host has an IPv6 route and over IPv4 where it has
not (an IPv6-only network never sees an unroutable IPv4 probe). Same as glibc's
getaddrinfo with no /etc/gai.conf.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 6724 §2.1 default policy table: (prefix, precedence, label).
_POLICY = tuple((ipaddress.ip_network(prefix), precedence, label) for prefix, precedence, label in (
    ("::1/128", 50, 0),
    ("::/0", 40, 1),
    ("::ffff:0:0/96", 35, 4),
    ("2002::/16", 30, 2),
    ("2001::/32", 5, 5),
    ("fc00::/7", 3, 13),
    ("::/96", 1, 3),
    ("fec0::/10", 1, 11),
    ("3ffe::/16", 1, 12),
))
_LINK_LOCAL_SCOPE, _SITE_LOCAL_SCOPE, _GLOBAL_SCOPE = 0x2, 0x5, 0xE


@dataclass(frozen=True, slots=True)
class Candidate:
    """A destination and the source address the kernel would use for it (None: no route)."""

    destination: str
    source: str | None


def _mapped(address: Address) -> ipaddress.IPv6Address:
    """IPv4 as IPv4-mapped IPv6, as the policy table sees it."""
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}")
    return address


def _policy(address: Address) -> tuple[int, int]:
    """(precedence, label) of the longest matching policy-table prefix."""
    mapped = _mapped(address)
    best = max((net for net, _, _ in _POLICY if mapped in net), key=lambda n: n.prefixlen)
    for net, precedence, label in _POLICY:
        if net == best:
            return precedence, label
    raise AssertionError("::/0 matches every address")  # pragma: no cover


def scope(address: Address) -> int:
    """RFC 6724 §3.1 scope: IPv4 loopback and 169.254/16 are link-local, the rest global."""
    if isinstance(address, ipaddress.IPv4Address):
        if address.is_loopback or address.is_link_local:
            return _LINK_LOCAL_SCOPE
        return _GLOBAL_SCOPE
    if address.is_multicast:
        return address.packed[1] & 0x0F
    if address.is_loopback or address.is_link_local:
        return _LINK_LOCAL_SCOPE
    if address.is_site_local:
        return _SITE_LOCAL_SCOPE
    return _GLOBAL_SCOPE


def _common_prefix(a: Address, b: Address) -> int:
    bits = int(a) ^ int(b)
    return a.max_prefixlen - bits.bit_length()


def _key(candidate: Candidate, position: int) -> tuple[int, ...]:
    dest = ipaddress.ip_address(candidate.destination.split("%", 1)[0])
    source = (ipaddress.ip_address(candidate.source.split("%", 1)[0])
              if candidate.source else None)
    usable = source is not None
    dest_scope = scope(dest)
    precedence, label = _policy(dest)
    matching_scope = usable and source is not None and scope(source) == dest_scope
    matching_label = usable and source is not None and _policy(source)[1] == label
    prefix = (_common_prefix(dest, source) if source is not None and dest.version == 6
              and source.version == 6 else 0)
    # Sorted ascending: negate what the RFC prefers high.
    return (-usable, -matching_scope, -matching_label, -precedence, dest_scope, -prefix,
            position)


def order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates, best first (RFC 6724 §6)."""
    keyed = sorted(enumerate(candidates), key=lambda item: _key(item[1], item[0]))
    return [candidate for _, candidate in keyed]
