"""The lab's wiring as data: what `ip` is told for each namespace, and ocserv's config."""

from __future__ import annotations

from pathlib import Path

from ogsd.lab import ocserv
from ogsd.lab.spec import DNS_ADDRESS6, GatewaySpec, LabSpec, TunnelMode, validate
from ogsd.lab.topology import (
    Names,
    client_up,
    hosts_file,
    proxied,
    proxies,
    random_mac,
    router_uplink,
)

NAMES = Names.of("olabtest")


def test_client_gets_addresses_and_default_routes_via_the_router() -> None:
    spec = LabSpec()
    assert client_up(spec) == [
        "link set eth0 up",
        "addr add 198.18.0.2/24 dev eth0",
        "route add default via 198.18.0.1 dev eth0 metric 100",
        "addr add 2001:2:0:a::2/64 dev eth0 nodad",
        "route add ::/0 via 2001:2:0:a::1 dev eth0 metric 100",
    ]
    only6 = spec.with_uplink(ipv4=False, metric=600)
    assert client_up(only6) == [
        "link set eth0 up",
        "addr add 2001:2:0:a::2/64 dev eth0 nodad",
        "route add ::/0 via 2001:2:0:a::1 dev eth0 metric 600",
    ]
    assert not any("198.18" in line for line in router_uplink(only6, mac=None))


def test_servers_inside_the_client_subnet_are_answered_for_by_the_router() -> None:
    spec = LabSpec.simple([10], ipv6=True).with_dns(servers=("198.18.0.53", DNS_ADDRESS6))
    assert proxied(spec) == {"198.18.0.53"}  # 2001:2:0:53::53 is off-link: routed
    on_link6 = spec.with_dns(servers=("2001:2:0:a::53",))
    assert proxied(on_link6) == {"2001:2:0:a::53"}
    assert proxies({"198.18.0.53"}, NAMES, "add") == [
        "route add 198.18.0.53/32 dev olabtest-r",
        "neigh add proxy 198.18.0.53 dev lan0",
    ]
    moved = spec.with_uplink(client="198.18.7.20")
    assert proxied(moved) == set()


def test_a_roam_gives_the_router_new_addresses_and_mac() -> None:
    spec = LabSpec().with_uplink(client="198.18.7.20", address6="2001:2:0:b::20")
    mac = random_mac()
    assert int(mac.split(":")[0], 16) & 0x03 == 0x02  # unicast, locally administered
    lines = router_uplink(spec, mac)
    assert lines[0] == "link set lan0 down"
    assert f"link set lan0 address {mac}" in lines
    assert "addr add 198.18.7.1/24 dev lan0" in lines
    assert "addr add 2001:2:0:b::1/64 dev lan0 nodad" in lines
    assert lines[-1] == "link set lan0 up"


def test_hosts_file_names_both_families_for_ocserv() -> None:
    spec = LabSpec.simple([10, 20], ipv6=True)
    text = hosts_file(spec)
    assert "198.19.1.1 gw-1.lab.example\n2001:2:0:1::1 gw-1.lab.example\n" in text


def test_ocserv_config_per_gateway() -> None:
    spec = validate(
        LabSpec(
            gateways=(
                GatewaySpec("vpn-a.lab.example", "198.19.1.1", vpn=True),
                GatewaySpec("vpn-b.lab.example", "198.19.2.1", vpn=True, tunnel=TunnelMode.SPLIT),
            )
        )
    )
    state = Path("/run/ogsd-lab/olabtest")
    confs: dict[str, dict[str, str]] = {}
    routes: dict[str, list[str]] = {}
    for gw in spec.gateways:
        text = ocserv.config(gw, spec, ocserv.Paths.of(state, gw))
        lines = [line.split(" = ", 1) for line in text.splitlines()]
        confs[gw.host] = {k: v for k, v in lines if k != "route"}
        routes[gw.host] = [v for k, v in lines if k == "route"]
    a, b = confs["vpn-a.lab.example"], confs["vpn-b.lab.example"]
    assert (a["ipv4-network"], a["dns"]) == ("198.18.128.0/24", "198.18.128.1")
    assert routes["vpn-a.lab.example"] == ["default"]
    assert (b["ipv4-network"], b["dns"]) == ("198.18.129.0/24", "198.18.129.1")
    assert routes["vpn-b.lab.example"] == ["198.18.129.0/24"]
    # Two instances in one namespace share nothing that would make them collide.
    for key in ("socket-file", "occtl-socket-file", "pid-file", "device", "listen-host"):
        assert a[key] != b[key], key
    assert a["isolate-workers"] == "false"
    assert a["default-domain"] == "vpn.lab.example"
