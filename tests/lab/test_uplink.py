"""The client's uplink, for real: Ethernet with a next hop, IPv6, the families, a roam."""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

import pytest

from ogsd.lab import Lab, LabSpec
from ogsd.lab.spec import DNS_ADDRESS6
from tests.lab_fixtures import LabFactory

pytestmark = [pytest.mark.root, pytest.mark.lab]
# The relay is accurate to well under 1.5 ms (the selftest's bound); these tests read the
# kernel's own RTT (TCP_INFO), which a busy machine cannot inflate by delaying the probe's
# wake-up. 3 ms, for softirqs on a loaded 2-core machine, still tells every path here
# from the next (>= 10 ms apart).
TOLERANCE_MS = 3.0
# A bound connect that has no route must not be "rescued"; 0.5 s is many RTTs of 10 ms.
NO_ROUTE_TIMEOUT_S = 0.5


def ip_json(lab: Lab, *args: str, netns: str | None = None) -> Any:
    """`ip -json ARGS` in the client namespace (or `netns`), decoded."""
    done = subprocess.run(
        ["ip", "-n", netns or lab.client_ns, "-json", *args],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout or "[]")


def connect(lab: Lab, address: str, count: int = 5, **step: Any) -> dict[str, Any]:
    [result] = lab.measure([{"op": "connect", "address": address, "count": count, **step}])
    return dict(result)


def median(result: dict[str, Any]) -> float:
    """The median of the kernel's handshake RTTs (no wake-up of the measuring process)."""
    assert not result["errors"], result
    return float(statistics.median(result["kernel_ms"]))


def test_uplink_is_ethernet_with_a_next_hop(make_lab: LabFactory) -> None:
    lab = make_lab(LabSpec.simple([10]))
    [link] = ip_json(lab, "link", "show", lab.uplink)
    assert (link["ifname"], link["link_type"], link["operstate"]) == ("eth0", "ether", "UP")
    [default] = ip_json(lab, "route", "show", "default")
    assert (default["gateway"], default["dev"], default["metric"]) == ("198.18.0.1", "eth0", 100)
    assert abs(median(connect(lab, "198.19.1.1", device=lab.uplink)) - 10) <= TOLERANCE_MS
    # The next hop was resolved by ARP, to the router's MAC.
    [router_link] = ip_json(lab, "link", "show", "lan0", netns=lab.router_ns)
    [neigh] = ip_json(lab, "neigh", "show", "198.18.0.1")
    assert neigh["lladdr"] == router_link["address"]

    # No default route: a socket bound to eth0 finds no next hop, and the kernel's
    # "assume on-link" fallback only ARPs for the gateway itself, which nobody answers.
    # (On a point-to-point TUN that fallback would have connected.)
    subprocess.run(["ip", "-n", lab.client_ns, "route", "del", "default"], check=True)
    bound = connect(lab, "198.19.1.1", count=1, device=lab.uplink, timeout=NO_ROUTE_TIMEOUT_S)
    assert bound["times_ms"] == [], bound
    assert "timeout" in bound["errors"][0], bound
    unbound = connect(lab, "198.19.1.1", count=1, timeout=NO_ROUTE_TIMEOUT_S)
    assert "unreachable" in unbound["errors"][0], unbound


def test_ipv6_gateways_rtt_dns_and_modes(make_lab: LabFactory) -> None:
    spec = LabSpec.simple([20, 45], ipv6=True).with_dns(servers=("198.18.0.53", DNS_ADDRESS6))
    lab = make_lab(spec)
    assert abs(median(connect(lab, "2001:2:0:1::1")) - 20) <= TOLERANCE_MS
    assert abs(median(connect(lab, "2001:2:0:2::1")) - 45) <= TOLERANCE_MS
    [aaaa, over6] = lab.measure(
        [
            {"op": "dns", "server": "198.18.0.53", "name": "gw-2.lab.example", "rdtype": "AAAA"},
            {"op": "dns", "server": DNS_ADDRESS6, "name": "gw-1.lab.example"},
        ]
    )
    assert aaaa["answers"] == ["2001:2:0:2::1"]
    assert over6["answers"] == ["198.19.1.1"]  # the DNS server listens on IPv6 too
    [tls, http] = lab.measure(
        [
            {"op": "tls", "address": "2001:2:0:1::1", "count": 1},
            {"op": "concurrent", "address": "2001:2:0:1::1", "port": 80, "count": 3},
        ]
    )
    assert tls["handshake_ms"], tls
    assert http["ok"] == 3, http
    lab.set(lab.spec.with_gateway("gw-1.lab.example", mode="blackhole"))
    assert "timeout" in connect(lab, "2001:2:0:1::1", 1, timeout=0.5)["errors"][0]
    lab.set(lab.spec.with_gateway("gw-1.lab.example", mode="refuse"))
    assert "refused" in connect(lab, "2001:2:0:1::1", 1, timeout=0.5)["errors"][0]


def test_ipv4_only_client(make_lab: LabFactory) -> None:
    lab = make_lab(LabSpec.simple([10], ipv6=True).with_uplink(ipv6=False))
    addresses = ip_json(lab, "-6", "addr", "show", "dev", "eth0", "scope", "global")
    assert addresses == [] or addresses[0]["addr_info"] == []
    assert ip_json(lab, "-6", "route", "show", "default") == []
    assert "unreachable" in connect(lab, "2001:2:0:1::1", 1, timeout=0.5)["errors"][0]
    assert abs(median(connect(lab, "198.19.1.1")) - 10) <= TOLERANCE_MS


def test_ipv6_only_client(make_lab: LabFactory) -> None:
    spec = LabSpec.simple([10], ipv6=True).with_uplink(ipv4=False)
    lab = make_lab(spec.with_dns(servers=(DNS_ADDRESS6,)))
    assert ip_json(lab, "-4", "addr", "show", "dev", "eth0") in ([], [{}])
    assert [r["dst"] for r in ip_json(lab, "-4", "route")] == ["198.18.128.0/17"]
    assert "unreachable" in connect(lab, "198.19.1.1", 1, timeout=0.5)["errors"][0]
    assert abs(median(connect(lab, "2001:2:0:1::1")) - 10) <= TOLERANCE_MS
    # The glibc resolver asks the IPv6 DNS server from resolv.conf.
    assert f"nameserver {DNS_ADDRESS6}" in lab.exec(["cat", "/etc/resolv.conf"]).stdout
    found = lab.exec(["getent", "ahostsv6", "gw-1.lab.example"]).stdout.split()
    assert found[:1] == ["2001:2:0:1::1"], found


def carrier_changes(lab: Lab) -> int:
    return int(lab.exec(["cat", f"/sys/class/net/{lab.uplink}/carrier_changes"]).stdout)


def test_roam_to_another_network(make_lab: LabFactory) -> None:
    lab = make_lab(LabSpec.simple([20, 45], ipv6=True))
    assert connect(lab, "198.19.1.1", 1)["times_ms"]  # the router's MAC is now known
    [old_neigh] = ip_json(lab, "neigh", "show", "198.18.0.1")
    flaps = carrier_changes(lab)

    hotel = LabSpec(domain="hotel.lab.example", gateways=lab.spec.gateways)
    hotel = hotel.with_uplink(client="198.18.7.20", address6="2001:2:0:b::20", metric=600)
    lab.roam(hotel.with_dns(servers=("198.18.7.53",)))

    assert carrier_changes(lab) >= flaps + 2  # the link went down and came back
    [link] = ip_json(lab, "addr", "show", "dev", "eth0", "scope", "global")
    addresses = sorted(a["local"] for a in link["addr_info"] if "local" in a)
    assert addresses == ["198.18.7.20", "2001:2:0:b::20"]
    defaults = ip_json(lab, "route", "show", "default") + ip_json(lab, "-6", "route", "show",
                                                                  "default")
    assert [(r["gateway"], r["metric"]) for r in defaults] == [
        ("198.18.7.1", 600),
        ("2001:2:0:b::1", 600),
    ]
    conf = lab.exec(["cat", "/etc/resolv.conf"]).stdout
    assert "search hotel.lab.example\nnameserver 198.18.7.53\n" in conf
    # The DNS server sits on the hotel's LAN (198.18.7.0/24): reached on-link, via ARP.
    found = lab.exec(["getent", "ahostsv4", "gw-2.lab.example"]).stdout.split()
    assert found[:1] == ["198.19.2.1"], found
    assert abs(median(connect(lab, "198.19.1.1", device=lab.uplink)) - 20) <= TOLERANCE_MS
    [new_neigh] = ip_json(lab, "neigh", "show", "198.18.7.1")
    assert new_neigh["lladdr"] != old_neigh["lladdr"]  # another router
    assert ip_json(lab, "neigh", "show", "198.18.0.1") == []

    # Roaming back is a roam too; `set` with an uplink change does the same.
    lab.set(LabSpec.simple([20, 45], ipv6=True))
    [default] = ip_json(lab, "route", "show", "default")
    assert (default["gateway"], default["metric"]) == ("198.18.0.1", 100)
