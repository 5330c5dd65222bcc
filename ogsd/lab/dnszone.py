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
    """Records for the spec: A/AAAA for gateway names, PTR for every lab address."""
    zone: Zone = {}

    def add(name: str, rdtype: dns.rdatatype.RdataType, value: str) -> None:
        zone.setdefault((name.lower().rstrip(".") + ".", rdtype), []).append(value)

    named = [(f"client.{spec.domain}", spec.client)]
    named += [(f"ns{i}.{spec.domain}", s) for i, s in enumerate(spec.dns.servers, start=1)]
    named += [(gw.host, gw.address) for gw in spec.gateways]
    for name, address in named:
        add(name, dns.rdatatype.A, address)
        add(dns.reversename.from_address(address).to_text(), dns.rdatatype.PTR, name + ".")
    for gw in spec.gateways:
        if gw.address6:
            add(gw.host, dns.rdatatype.AAAA, gw.address6)
            add(
                dns.reversename.from_address(gw.address6).to_text(),
                dns.rdatatype.PTR,
                gw.host + ".",
            )
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
