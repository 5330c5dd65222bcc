"""The physical uplink and tunnel rules, as tables of route states."""

from __future__ import annotations

import pytest

from ogsd.core.uplink import (
    DefaultRoute,
    HostRoute,
    Tunnel,
    Uplink,
    detect_tunnel,
    physical_uplink,
    tunnel_default,
    tunnel_gone,
)

LAN = DefaultRoute(4, "eth0", "198.18.0.1", 0, tunnel=False)
LAN_KEPT = DefaultRoute(4, "eth0", "198.18.0.1", 65000, tunnel=False)  # ogsd's hook
WIFI6 = DefaultRoute(6, "wlan0", "fe80::1", 600, tunnel=False)
WIFI = DefaultRoute(4, "wlan0", "192.168.1.1", 600, tunnel=False)
TUN = DefaultRoute(4, "tun0", None, 0, tunnel=True)
TUN6 = DefaultRoute(6, "tun0", None, 0, tunnel=True)
TO_GW = HostRoute("198.19.1.1", "eth0", "198.18.0.1")
TO_GW_VIA_TUN = HostRoute("198.19.1.1", "tun0", None)
GATEWAYS = {"198.19.1.1": "gw-1.lab.example", "198.19.2.1": "gw-2.lab.example"}
REMEMBERED = Uplink("wlan0", "192.168.1.1", "default route")


@pytest.mark.parametrize(("defaults", "expected"), [
    ((), None),
    ((LAN,), None),
    ((TUN,), TUN),
    ((TUN, LAN_KEPT), TUN),  # the tunnel's metric 0 carries traffic
    ((WIFI, TUN6), TUN6),  # IPv6 full tunnel next to a physical IPv4 default
    ((LAN, DefaultRoute(4, "tun0", None, 50, tunnel=True)), None),  # a backup tunnel route
])
def test_tunnel_default(defaults: tuple[DefaultRoute, ...], expected: DefaultRoute | None) -> None:
    assert tunnel_default(defaults) == expected


@pytest.mark.parametrize(("defaults", "host_routes", "remembered", "expected"), [
    # No VPN: the default route's device.
    ((LAN,), (), None, Uplink("eth0", "198.18.0.1", "default route")),
    # NetworkManager keeps the device's default (metric 600) under the VPN's metric 0.
    ((TUN, WIFI), (), None, Uplink("wlan0", "192.168.1.1", "default route")),
    # IPv4 first; the lowest metric of a family wins.
    ((WIFI6, WIFI, LAN_KEPT), (), None, Uplink("wlan0", "192.168.1.1", "default route")),
    ((WIFI6,), (), None, Uplink("wlan0", "fe80::1", "default route")),
    # vpnc-script replaced the metric-0 default: its route to the gateway shows the LAN.
    ((TUN,), (TO_GW,), None, Uplink("eth0", "198.18.0.1", "route to the VPN gateway")),
    # A host route through the tunnel itself says nothing about the uplink.
    ((TUN,), (TO_GW_VIA_TUN,), REMEMBERED, Uplink("wlan0", "192.168.1.1", "remembered")),
    ((TUN,), (), REMEMBERED, Uplink("wlan0", "192.168.1.1", "remembered")),
    ((TUN,), (), None, None),
])
def test_physical_uplink(defaults: tuple[DefaultRoute, ...], host_routes: tuple[HostRoute, ...],
                         remembered: Uplink | None, expected: Uplink | None) -> None:
    assert physical_uplink(defaults, host_routes, tunnels=("tun0",),
                           connected_address="198.19.1.1", remembered=remembered) == expected


def test_physical_uplink_ignores_a_host_route_of_another_gateway() -> None:
    other = HostRoute("198.19.2.1", "eth1", None)
    assert physical_uplink((TUN,), (other,), tunnels=("tun0",),
                           connected_address="198.19.1.1") is None


@pytest.mark.parametrize(("tunnels", "defaults", "host_routes", "expected"), [
    ((), (LAN,), (TO_GW,), None),  # a host route alone is not a VPN
    (("tun0",), (TUN,), (TO_GW,), Tunnel("tun0", "gw-1.lab.example", "198.19.1.1")),
    (("tailscale0", "tun0"), (TUN, LAN_KEPT), (TO_GW,),
     Tunnel("tun0", "gw-1.lab.example", "198.19.1.1")),
    # Split tunnel, or a leftover route next to Tailscale: only the client can tell.
    (("tun0",), (LAN,), (TO_GW,), None),
    (("tailscale0",), (LAN,), (TO_GW,), None),
    # Host routes to two gateways: ambiguous, nothing is assumed.
    (("tun0",), (TUN,), (TO_GW, HostRoute("198.19.2.1", "eth0", "198.18.0.1")), None),
    (("tun0",), (TUN,), (HostRoute("203.0.113.9", "eth0", None),), None),
    ((), (TUN,), (TO_GW,), None),  # the carrier is down
])
def test_detect_tunnel(tunnels: tuple[str, ...], defaults: tuple[DefaultRoute, ...],
                       host_routes: tuple[HostRoute, ...], expected: Tunnel | None) -> None:
    assert detect_tunnel(tunnels, defaults, host_routes, GATEWAYS) == expected


@pytest.mark.parametrize(("device", "address", "tunnels", "host_routes", "expected"), [
    ("tun0", "198.19.1.1", ("tun0",), (TO_GW,), None),
    ("tun0", "198.19.1.1", (), (), None),  # reported before it is up: it exists
    # Another tun device staying up does not keep ours alive.
    ("tun1", "198.19.1.1", ("tailscale0",), (TO_GW,), "tunnel device tun1 is gone"),
    ("tun1", None, (), (), "tunnel device tun1 is gone"),
    (None, "198.19.1.1", ("tailscale0",), (), "the route to the VPN gateway 198.19.1.1 is gone"),
    (None, "198.19.1.1", ("tailscale0",), (TO_GW,), None),
    (None, None, ("tailscale0",), (), None),  # nothing to tell by: the hook will say
    (None, None, (), (), "no tunnel device is up"),
])
def test_tunnel_gone(device: str | None, address: str | None, tunnels: tuple[str, ...],
                     host_routes: tuple[HostRoute, ...], expected: str | None) -> None:
    links = ("lo", "eth0", "tun0", *tunnels)
    assert tunnel_gone(device=device, address=address, tunnels=tunnels, links=links,
                       host_routes=host_routes) == expected
