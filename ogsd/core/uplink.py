"""The physical uplink and the VPN tunnel, read from routes (DESIGN.md §2 "honest measurement").

While a full-tunnel VPN is up, everything but the connected gateway is routed through the
tunnel: a probe sent the ordinary way measures the tunnel, not the path from here. So
probes are bound to the *physical* uplink, and the location is that uplink's DNS. These
rules find the uplink and tell when a tunnel came or went; they read route data that an
adapter (ogsd.sensing.routes) dumped, and do no I/O themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DefaultRoute:
    """A usable unicast default route of the main table."""

    family: int  # 4 or 6
    device: str | None  # None only for a route whose device vanished mid-dump
    gateway: str | None  # None: a device route (point-to-point, or a tunnel's)
    metric: int
    tunnel: bool  # `device` is a tunnel (tun, WireGuard, point-to-point)


@dataclass(frozen=True, slots=True)
class HostRoute:
    """A /32 or /128 route to a watched gateway address: what VPN scripts add to keep
    the tunnel's own packets off the tunnel (vpnc-script's VPNGATEWAY route)."""

    address: str
    device: str | None
    gateway: str | None


@dataclass(frozen=True, slots=True)
class Uplink:
    """The physical interface probes leave by, and how it was found."""

    device: str
    gateway: str | None
    source: str  # "default route", "route to the VPN gateway", "remembered"


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A VPN tunnel the routes show: its device and the gateway host it leads to."""

    device: str
    host: str
    address: str


def tunnel_default(defaults: Sequence[DefaultRoute]) -> DefaultRoute | None:
    """The default route a full-tunnel VPN installed, if one carries traffic now.

    Lowest metric wins per family, IPv4 first (what the kernel uses for most traffic).
    """
    for family in (4, 6):
        routes = sorted((r for r in defaults if r.family == family), key=lambda r: r.metric)
        if routes and routes[0].tunnel:
            return routes[0]
    return None


def physical_uplink(
    defaults: Sequence[DefaultRoute],
    host_routes: Sequence[HostRoute],
    *,
    tunnels: Sequence[str] = (),
    connected_address: str | None = None,
    remembered: Uplink | None = None,
) -> Uplink | None:
    """Where probes must leave: the best non-tunnel default route's device; else the
    device of the route to the connected VPN gateway (vpnc-script replaces a metric-0
    physical default with the tunnel's and keeps only that host route); else the uplink
    remembered from before the tunnel came up.
    """
    physical = sorted((r for r in defaults if not r.tunnel and r.device is not None
                       and r.device not in tunnels), key=lambda r: (r.family != 4, r.metric))
    if physical and physical[0].device is not None:
        return Uplink(physical[0].device, physical[0].gateway, "default route")
    for route in host_routes:
        if (route.address == connected_address and route.device is not None
                and route.device not in tunnels):
            return Uplink(route.device, route.gateway, "route to the VPN gateway")
    if remembered is not None:
        return Uplink(remembered.device, remembered.gateway, "remembered")
    return None


def detect_tunnel(
    tunnels: Sequence[str],
    defaults: Sequence[DefaultRoute],
    host_routes: Sequence[HostRoute],
    gateways_by_address: Mapping[str, str],
) -> Tunnel | None:
    """A VPN connection the routes show unambiguously: a tunnel device carrying the
    default route, next to a host route to exactly one probed gateway's address (the
    route VPN scripts add so the tunnel's own packets avoid it). A split tunnel (no
    default through it) cannot be told from a leftover route next to Tailscale & co.:
    its client must say so (ogsd's openconnect hook does).
    """
    carrier = tunnel_default(defaults)
    if carrier is None or carrier.device is None or carrier.device not in tunnels:
        return None
    hits = {(r.address, gateways_by_address[r.address]) for r in host_routes
            if r.address in gateways_by_address}
    if len(hits) != 1:
        return None
    address, host = hits.pop()
    return Tunnel(carrier.device, host, address)


def tunnel_gone(
    *,
    device: str | None,
    address: str | None,
    tunnels: Sequence[str],
    links: Sequence[str],
    host_routes: Sequence[HostRoute],
) -> str | None:
    """Why the connection recorded as up on `device` (reached at `address`) is gone, or
    None while it may still be up. Other tunnel devices do not keep it alive; a device
    that exists but is not up yet does (a client reports the tunnel before configuring
    it, and openconnect's device vanishes when it exits).
    """
    if device is not None:
        return None if device in links else f"tunnel device {device} is gone"
    if not tunnels:
        return "no tunnel device is up"
    if address is not None and not any(r.address == address for r in host_routes):
        return f"the route to the VPN gateway {address} is gone"
    return None
