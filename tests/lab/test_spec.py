"""Spec parsing and validation: every bad input gets a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ogsd.lab.spec import DnsMode, GatewayMode, LabSpec, SpecError, load, parse

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
        },
    ],
}


def test_good_spec_parses_and_normalises() -> None:
    spec = parse(json.dumps(GOOD))
    assert spec.dns.mode is DnsMode.DROP_A_FOR_IP_LITERALS
    osaka = spec.gateway("gw-osaka.lab.example")  # lower-cased, final dot dropped
    assert osaka.mode is GatewayMode.REFUSE
    assert osaka.delays_ms == (30.0, 15.0)
    assert spec.gateway("gw-tokyo.lab.example").delays_ms == (10.0, 10.0)
    assert spec.addresses() == {"198.18.0.53", "198.19.1.1", "198.19.2.1"}


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
        (_gw(host="bad host!"), "not a valid host name"),
        (_gw(address6="2001:db8::1"), "outside 2001:2::/48"),
        (_gw(color=1), r"gateways\[0\]: unknown field\(s\) color"),
        ({"gateways": [{"host": "a.example"}]}, "missing address"),
        ({"dns": {"servers": []}}, "non-empty list"),
        ({"dns": {"mode": "weird"}}, "dns.mode"),
        ({"client": "198.19.1.1", **_gw()}, "already the client address"),
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
