"""The network as the daemon sees it: routes, physical uplink, location and probe path.

One `look()` reads the routing state, finds the physical uplink (ogsd.core.uplink) and the
physical network's location (ogsd.sensing.location), and keeps them for `probe_path()`: how the
next round's probes must travel to measure the physical path, VPN or not.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import anyio.to_thread

from ogsd.core.models import DaemonState, Location
from ogsd.core.uplink import Uplink, physical_uplink, tunnel_default
from ogsd.probing.path import ProbePath
from ogsd.sensing.dnsenv import DnsConfigError
from ogsd.sensing.location import Reading, Sources, read_location
from ogsd.sensing.routes import NetSnapshot, read_snapshot


@dataclass(frozen=True, slots=True)
class View:
    """One look at the network."""

    snapshot: NetSnapshot
    uplink: Uplink | None
    reading: Reading | None  # None: no DNS configuration to read
    error: str | None = None  # why `reading` is None

    @property
    def tunnel_up(self) -> str | None:
        """The tunnel device carrying the default route, if a full tunnel is up."""
        carrier = tunnel_default(self.snapshot.defaults)
        return carrier.device if carrier is not None else None


class NetState:
    """Reads routes and DNS; remembers the last view."""

    def __init__(self, sources: Sources, *, netns: str | None = None) -> None:
        self.sources = sources
        self.netns = netns
        self.view: View | None = None

    async def snapshot(self, gateways: Iterable[str] = ()) -> NetSnapshot:
        """The routing state now (host routes reported for `gateways`)."""
        return await anyio.to_thread.run_sync(functools.partial(
            read_snapshot, netns=self.netns, gateways=list(gateways)))

    async def look(self, state: DaemonState, snapshot: NetSnapshot) -> View:
        """Uplink and location for `snapshot`, given what the store says of the VPN."""
        remembered = (Uplink(state.uplink, state.uplink_gateway, "remembered")
                      if state.uplink else None)
        uplink = physical_uplink(snapshot.defaults, snapshot.host_routes,
                                 tunnels=snapshot.tunnels,
                                 connected_address=state.connected_address,
                                 remembered=remembered)
        at_connect = (Location(state.connected_domain or "", state.connected_servers)
                      if state.connected and state.connected_servers else None)
        uplink_at_connect = (Uplink(state.connected_uplink, state.connected_uplink_gateway,
                                    "at connect") if state.connected_uplink else None)
        reading: Reading | None = None
        error = None
        try:
            reading = await read_location(
                self.sources, uplink=uplink,
                uplink_index=snapshot.ifindex(uplink.device) if uplink else None,
                connected=state.connected is not None, at_connect=at_connect,
                uplink_at_connect=uplink_at_connect)
        except DnsConfigError as exc:
            error = str(exc)
        self.view = View(snapshot, uplink, reading, error)
        return self.view

    def probe_path(self, state: DaemonState, view: View | None) -> ProbePath:
        """How probes must travel for `view`: bound to the physical uplink while a VPN is
        up."""
        # A VPN in play: connected, or a tunnel device up (a client between sessions, a
        # split tunnel whose routes may cover gateways, one nobody told us about). Bound
        # from then on, a round that straddles a tunnel coming up still measures the
        # physical path: an unbound socket follows the routes as they change.
        in_play = view is not None and (state.connected is not None or view.tunnel_up
                                        or view.snapshot.tunnels)
        # Routes watched in another namespace (tests): our sockets do not live there.
        if view is None or not in_play or self.netns is not None:
            return ProbePath()
        if view.uplink is None:
            if state.connected is None:
                # No VPN we know of and no other way out: the tunnel is this machine's
                # uplink (a container's tap device, a VPN nobody told us about).
                return ProbePath()
            return ProbePath(blocked="a VPN tunnel is up and the physical uplink is unknown: "
                                     "probes would measure the tunnel")
        reading = view.reading
        servers = reading.location.servers if reading is not None else ()
        # Gateway names by the physical network's DNS, from the uplink too (a local stub
        # among the servers is asked unbound: ogsd.probing.dnsquery).
        from ogsd.probing.dnsquery import BoundResolver  # noqa: PLC0415 (only with a VPN up)

        resolver = BoundResolver(
            servers, device=view.uplink.device,
            search=(reading.location.domain,) if reading and reading.location.domain else ())
        return ProbePath(device=view.uplink.device, resolver=resolver if servers else None,
                         cache=reading is not None and reading.current)
