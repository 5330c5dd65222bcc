"""The lab DNS server's answers, from the wire format in and out."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename

from ogsd.lab.dnszone import answer, build_zone, is_ip_literal
from ogsd.lab.spec import DnsMode, GatewaySpec, LabSpec

SPEC = LabSpec(gateways=(GatewaySpec("gw-1.lab.example", "198.19.1.1", address6="2001:2::1"),))
ZONE = build_zone(SPEC)


def ask(name: str, rdtype: str, mode: DnsMode = DnsMode.NORMAL) -> dns.message.Message | None:
    wire = answer(dns.message.make_query(name, rdtype).to_wire(), ZONE, mode)
    return None if wire is None else dns.message.from_wire(wire)


def values(reply: dns.message.Message | None) -> list[str]:
    assert reply is not None
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def test_a_aaaa_and_ptr() -> None:
    assert values(ask("gw-1.lab.example", "A")) == ["198.19.1.1"]
    assert values(ask("GW-1.lab.example.", "A")) == ["198.19.1.1"]
    assert values(ask("gw-1.lab.example", "AAAA")) == ["2001:2::1"]
    ptr = dns.reversename.from_address("198.19.1.1").to_text()
    assert values(ask(ptr, "PTR")) == ["gw-1.lab.example."]
    client_ptr = dns.reversename.from_address("198.18.0.2").to_text()
    assert values(ask(client_ptr, "PTR")) == ["client.corp.lab.example."]


def test_unknown_name_is_nxdomain_and_known_name_without_type_is_nodata() -> None:
    reply = ask("nope.lab.example", "A")
    assert reply is not None
    assert reply.rcode() == dns.rcode.NXDOMAIN
    reply = ask("gw-1.lab.example", "MX")
    assert reply is not None
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.answer


def test_drop_mode_drops_only_type_a_for_ip_literals() -> None:
    drop = DnsMode.DROP_A_FOR_IP_LITERALS
    assert ask("198.19.1.1", "A", drop) is None
    normal = ask("198.19.1.1", "A")
    assert normal is not None
    assert normal.rcode() == dns.rcode.NXDOMAIN
    assert values(ask("gw-1.lab.example", "A", drop)) == ["198.19.1.1"]
    ptr = dns.reversename.from_address("198.19.1.1").to_text()
    assert values(ask(ptr, "PTR", drop)) == ["gw-1.lab.example."]


def test_garbage_gets_no_answer() -> None:
    assert answer(b"\x00\x01garbage", ZONE, DnsMode.NORMAL) is None


def test_ip_literal() -> None:
    assert is_ip_literal("198.19.1.1.")
    assert is_ip_literal("2001:2::1")
    assert not is_ip_literal("gw-1.lab.example.")


def test_ipv6_names_and_the_vpn_zone() -> None:
    spec = LabSpec.simple([10, 20], ipv6=True).with_gateway("gw-2.lab.example", vpn=True)
    spec = spec.with_dns(servers=("198.18.0.53", "2001:2:0:53::53"))
    zone = build_zone(spec)

    def lookup(name: str, rdtype: str) -> list[str]:
        wire = answer(dns.message.make_query(name, rdtype).to_wire(), zone, DnsMode.NORMAL)
        assert wire is not None
        return values(dns.message.from_wire(wire))

    assert lookup("gw-1.lab.example", "AAAA") == ["2001:2:0:1::1"]
    assert lookup(dns.reversename.from_address("2001:2:0:2::1").to_text(), "PTR") == [
        "gw-2.lab.example."
    ]
    assert lookup("client.corp.lab.example", "AAAA") == ["2001:2:0:a::2"]
    assert lookup("ns2.corp.lab.example", "AAAA") == ["2001:2:0:53::53"]
    # The VPN gateway's inside address has a name in the VPN's own domain.
    assert lookup("gw-2.vpn.lab.example", "A") == ["198.18.128.1"]
    assert lookup(dns.reversename.from_address("198.18.128.1").to_text(), "PTR") == [
        "gw-2.vpn.lab.example."
    ]
    only4 = build_zone(spec.with_uplink(ipv6=False))
    assert ("client.corp.lab.example.", dns.rdatatype.AAAA) not in only4
