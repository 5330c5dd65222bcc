"""Spec parsing and validation: every bad input gets a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ogsd.lab.globalprotect import portal_xml
from ogsd.lab.spec import (
    DnsMode,
    GatewayMode,
    GatewaySpec,
    LabSpec,
    PortalEntry,
    SpecError,
    TunnelMode,
    load,
    parse,
    validate,
)

GOOD = {
    "domain": "corp.lab.example",
    "dns": {"servers": ["198.18.0.53"], "mode": "drop_a_for_ip_literals"},
    "gateways": [
        {"host": "gw-tokyo.lab.example", "address": "198.19.1.1", "rtt_ms": 20},
        {
            "host": "GW-Osaka.lab.example.",
            "address": "198.19.2.1",
            "rtt_ms": 45,
            "jitter_ms": 5,
            "loss": 0.01,
            "mode": "refuse",
            "stall_ms": 120,
            "http": False,
            "up_ms": 30,
            "address6": "2001:2::1",
            "blackhole_ports": [80, 8080, 80],
        },
    ],
}


def test_good_spec_parses_and_normalises() -> None:
    spec = parse(json.dumps(GOOD))
    assert spec.dns.mode is DnsMode.DROP_A_FOR_IP_LITERALS
    osaka = spec.gateway("gw-osaka.lab.example")  # lower-cased, final dot dropped
    assert osaka.mode is GatewayMode.REFUSE
    assert osaka.delays_ms == (30.0, 15.0)
    assert osaka.blackhole_ports == (80, 8080)
    assert spec.gateway("gw-tokyo.lab.example").delays_ms == (10.0, 10.0)
    assert spec.addresses() == {"198.18.0.53", "198.19.1.1", "198.19.2.1", "2001:2::1"}


def test_round_trip_through_json() -> None:
    spec = parse(json.dumps(GOOD))
    assert parse(spec.to_json()) == spec


def test_simple_and_with_helpers() -> None:
    spec = LabSpec.simple([20, 45])
    assert [(g.host, g.address, g.rtt_ms) for g in spec.gateways] == [
        ("gw-1.lab.example", "198.19.1.1", 20.0),
        ("gw-2.lab.example", "198.19.2.1", 45.0),
    ]
    moved = spec.with_gateway("gw-2.lab.example", rtt_ms=10, mode="blackhole")
    assert moved.gateway("gw-2.lab.example").mode is GatewayMode.BLACKHOLE
    assert spec.with_dns(servers=("198.18.1.53",)).dns.servers == ("198.18.1.53",)
    with pytest.raises(SpecError, match="outside the lab range"):
        spec.with_gateway("gw-1.lab.example", address="10.0.0.1")


def _gw(**fields: object) -> dict[str, object]:
    return {"gateways": [{"host": "gw.lab.example", "address": "198.19.1.1", **fields}]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[]", "expected a JSON object"),
        ({"colour": "red"}, "spec: unknown field"),
        (_gw(address="8.8.8.8"), r"gateways\[0\].address: 8.8.8.8 is outside the lab range"),
        (_gw(address="nonsense"), "is not an IPv4 address"),
        (_gw(rtt_ms=-1), r"gateways\[0\].rtt_ms: -1 is outside"),
        (_gw(rtt_ms="20"), "expected a number"),
        (_gw(rtt_ms=10, jitter_ms=20), "exceeds rtt_ms"),
        (_gw(loss=1.5), "loss: 1.5 is outside"),
        (_gw(mode="slow"), "'slow' is not one of normal, blackhole, refuse"),
        (_gw(http="yes"), "expected true or false"),
        (_gw(blackhole_ports=[0]), r"blackhole_ports: expected a list of port numbers"),
        (_gw(blackhole_ports=80), r"blackhole_ports: expected a list of port numbers"),
        (_gw(host="bad host!"), "not a valid host name"),
        (_gw(address6="2001:db8::1"), "outside the lab range 2001:2::/48"),
        (_gw(address6="198.19.1.9"), "is not an IPv6 address"),
        (_gw(address="198.18.130.1"), "inside 198.18.128.0/17, which is kept for VPN tunnels"),
        (_gw(mode="error", vpn="yes"), r"gateways\[0\].vpn: expected true or false"),
        (_gw(vpn=True, tunnel="half"), "'half' is not one of full, split"),
        (_gw(vpn=True, vpn_network="198.18.0.0/24"), "outside the VPN range"),
        (_gw(vpn=True, vpn_network="198.18.200.0/25"), "is not an IPv4 /24 network"),
        ({"vpn_domain": "corp.lab.example"}, "also the lab's domain"),
        ({"uplink": {"ipv4": False, "ipv6": False}}, "both false"),
        ({"uplink": {"router": "198.18.1.1"}}, "not in the client's subnet 198.18.0.0/24"),
        ({"client": "198.18.0.1"}, "uplink.router: 198.18.0.1 is the client's own address"),
        ({"uplink": {"prefix": 8}}, r"uplink.prefix: 8 is outside 15..30"),
        ({"uplink": {"address6": "2001:2:0:a::5", "router6": "2001:2:0:b::1"}}, "router6"),
        ({"uplink": {"metric": -1}}, "uplink.metric"),
        ({"uplink": {"wifi": True}}, r"uplink: unknown field\(s\) wifi"),
        ({"dns": {"servers": ["198.18.0.1"]}}, "already the router address"),
        (_gw(color=1), r"gateways\[0\]: unknown field\(s\) color"),
        ({"gateways": [{"host": "a.example"}]}, "missing address"),
        ({"dns": {"servers": []}}, "non-empty list"),
        ({"dns": {"mode": "weird"}}, "dns.mode"),
        (
            {"client": "198.19.1.1", "uplink": {"router": "198.19.1.254"}, **_gw()},
            "already the client address",
        ),
        (
            {
                "gateways": [
                    {"host": "a.x", "address": "198.19.1.1"},
                    {"host": "a.x", "address": "198.19.1.2"},
                ]
            },
            "appears twice",
        ),
        ({"seed": "x"}, "seed: expected an integer"),
        (_gw(gp=True, vpn=True), r"gateways\[0\]: gp and vpn are both true"),
        (_gw(portal=[{"name": "gw-1.lab.example"}]), r"gateways\[0\].portal: only a gp gateway"),
        (_gw(gp=True, portal={"name": "x"}), r"portal: expected a list of entries"),
        (_gw(gp=True, portal=[{"label": "x"}]), r"portal\[0\]: missing name"),
        (_gw(gp=True, portal=[{"name": ""}]), r"portal\[0\].name: expected a non-empty string"),
        (_gw(gp=True, portal=[{"name": "a", "weight": 1}]), r"unknown field\(s\) weight"),
        (
            _gw(gp=True, portal=[{"name": "a", "priorities": [["Any"]]}]),
            r"portal\[0\].priorities\[0\]: expected \[region, priority\]",
        ),
        (
            _gw(gp=True, portal=[{"name": "a", "priorities": [["Any", -1]]}]),
            r"priorities\[0\].priority: -1 is outside 0..1000",
        ),
    ],
)
def test_bad_specs_name_the_problem(raw: object, message: str) -> None:
    text = raw if isinstance(raw, str) else json.dumps(raw)
    with pytest.raises(SpecError, match=message):
        parse(text)


def test_load_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "lab.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match=f"{bad}: not valid JSON"):
        load(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load(tmp_path / "missing.json")


def test_uplink_defaults_and_derived_next_hops() -> None:
    spec = LabSpec()
    assert (spec.client, spec.router) == ("198.18.0.2", "198.18.0.1")
    assert (spec.uplink.address6, spec.router6) == ("2001:2:0:a::2", "2001:2:0:a::1")
    assert spec.uplink.families == (4, 6)
    hotel = spec.with_uplink(client="198.18.5.20", address6="2001:2:0:b::20")
    assert (hotel.router, hotel.router6) == ("198.18.5.1", "2001:2:0:b::1")
    assert parse(hotel.to_json()) == hotel  # derived next hops stay derived
    only6 = spec.with_uplink(ipv4=False)
    assert only6.uplink.families == (6,)


def test_vpn_gateways_get_their_own_block_of_the_vpn_range() -> None:
    spec = LabSpec.simple([10, 20, 30]).with_gateway("gw-1.lab.example", vpn=True)
    spec = spec.with_gateway("gw-3.lab.example", vpn=True, tunnel="split")
    gw1, gw2, gw3 = spec.gateways
    assert (gw1.vpn_network, gw1.internal_address) == ("198.18.128.0/24", "198.18.128.1")
    assert (gw2.vpn_network, gw2.internal_address) == (None, None)
    assert (gw3.vpn_network, gw3.tunnel) == ("198.18.129.0/24", TunnelMode.SPLIT)
    assert spec.vpn_gateways() == (gw1, gw3)
    assert {"198.18.128.1", "198.18.129.1"} <= spec.addresses()
    # Once assigned, a block stays with its gateway when others change.
    moved = spec.with_gateway("gw-1.lab.example", vpn=False).with_gateway(
        "gw-2.lab.example", vpn=True
    )
    assert moved.gateway("gw-3.lab.example").vpn_network == "198.18.129.0/24"
    assert moved.gateway("gw-2.lab.example").vpn_network not in (None, "198.18.129.0/24")
    with pytest.raises(SpecError, match=r"gateways\[1\].vpn_network: 198.18.128.0/24 is already"):
        spec.with_gateway("gw-2.lab.example", vpn=True, vpn_network="198.18.128.0/24")


def test_simple_with_ipv6_and_the_error_mode() -> None:
    spec = LabSpec.simple([10, 20], ipv6=True, mode="error")
    assert [g.address6 for g in spec.gateways] == ["2001:2:0:1::1", "2001:2:0:2::1"]
    assert {g.mode for g in spec.gateways} == {GatewayMode.ERROR}


def test_a_gp_portal_round_trips_and_renders_its_entries_in_order() -> None:
    portal = GatewaySpec(
        "portal.lab.example",
        "198.19.9.1",
        gp=True,
        portal=(
            PortalEntry("gw-2.lab.example:4443", "Osaka & <Kobe>", (("JP", 1), ("Any", 3))),
            PortalEntry("gw-1.lab.example", None, ()),
        ),
    )
    spec = validate(LabSpec(gateways=(portal, GatewaySpec("gw-1.lab.example", "198.19.1.1"))))
    assert parse(spec.to_json()) == spec
    assert spec.gp_gateways() == (spec.gateway("portal.lab.example"),)
    xml = portal_xml(spec.gateway("portal.lab.example").portal, portal_name="p")
    entries = xml.split("<list>")[1].split("</list>")[0]
    assert entries.index('name="gw-2.lab.example:4443"') < entries.index('name="gw-1.lab.example"')
    assert "<description>Osaka &amp; &lt;Kobe&gt;</description>" in entries
    assert (
        '<entry name="JP"><priority>1</priority></entry>\n'
        '            <entry name="Any"><priority>3</priority></entry>'
    ) in entries
    # No description and no rules: neither element (openconnect shows such a label as null).
    assert entries.split('name="gw-1.lab.example">')[1].split("</entry>")[0].strip() == ""
