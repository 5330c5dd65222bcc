"""The lab's DNS answers: a zone built from the spec, and one query answered from it."""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from ogsd.lab.spec import DnsMode, LabSpec

# Short, so a `set` that moves a name is seen by any caching resolver within seconds.
TTL_S = 5

Zone = dict[tuple[str, dns.rdatatype.RdataType], list[str]]


def build_zone(spec: LabSpec) -> Zone:
    """Records for the spec: A/AAAA for every lab name, PTR for every lab address.

    VPN gateways add `<first label of host>.<vpn_domain>` for their inside address; every
    DNS address (physical or a VPN's inside one) answers from this same zone.
    """
    zone: Zone = {}

    def add(name: str, address: str | None) -> None:
        if address is None:
            return
        rdtype = dns.rdatatype.AAAA if ":" in address else dns.rdatatype.A
        zone.setdefault((name.lower().rstrip(".") + ".", rdtype), []).append(address)
        ptr = (dns.reversename.from_address(address).to_text(), dns.rdatatype.PTR)
        zone.setdefault(ptr, []).append(name + ".")

    uplink = spec.uplink
    add(f"client.{spec.domain}", spec.client if uplink.ipv4 else None)
    add(f"client.{spec.domain}", uplink.address6 if uplink.ipv6 else None)
    for i, server in enumerate(spec.dns.servers, start=1):
        add(f"ns{i}.{spec.domain}", server)
    for gw in spec.gateways:
        add(gw.host, gw.address)
        add(gw.host, gw.address6)
        add(f"{gw.host.split('.')[0]}.{spec.vpn_domain}", gw.internal_address)
    return zone


def is_ip_literal(name: str) -> bool:
    """True for names like `198.19.1.1` (with or without the final dot)."""
    try:
        ipaddress.ip_address(name.rstrip("."))
    except ValueError:
        return False
    return True


def answer(wire: bytes, zone: Zone, mode: DnsMode) -> bytes | None:
    """The response to one query, or None to stay silent (garbage, or a dropped query)."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    question = query.question[0]
    name = question.name.to_text().lower()
    if (
        mode == DnsMode.DROP_A_FOR_IP_LITERALS
        and question.rdtype == dns.rdatatype.A
        and is_ip_literal(name)
    ):
        return None
    values = zone.get((name, question.rdtype))
    if values:
        rrset = dns.rrset.from_text_list(
            question.name, TTL_S, dns.rdataclass.IN, question.rdtype, values
        )
        response.answer.append(rrset)
    elif not any(key[0] == name for key in zone):
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()
