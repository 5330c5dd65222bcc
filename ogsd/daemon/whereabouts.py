"""Where the daemon is: the VPN connection, the physical uplink and the location, at a look.

The daemon looks before every evaluation, on every network change and around a resume.
A look reads the routes (ogsd.sensing.routes), tells whether the VPN came or went
(ogsd.core.uplink: the client's word, else the routes), finds the physical uplink and
reads the physical network's location (ogsd.sensing.netstate, ogsd.sensing.location).
What it learns of the connection is persisted at once (through the daemon's Persister),
so a restart keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import structlog

from ogsd.core.models import DaemonState, Location
from ogsd.core.uplink import Tunnel, detect_tunnel, tunnel_gone
from ogsd.sensing.netstate import NetState, View
from ogsd.sensing.netwatch import NetWatcher
from ogsd.sensing.routes import NetSnapshot
from ogsd.store.persist import Persister

log = structlog.get_logger("ogsd.daemon.daemon")


class Whereabouts:
    """One look at a time; the last one's location and view."""

    def __init__(self, net: NetState, persister: Persister, *,
                 clock: Callable[[], datetime],
                 gateways_by_address: Callable[[], dict[str, str]]) -> None:
        self.net = net
        self.persister = persister
        self.clock = clock
        self._gateways_by_address = gateways_by_address  # probed address -> gateway host
        self.location: Location | None = None
        self.watcher: NetWatcher | None = None  # the daemon's, while one runs
        self._looking = anyio.Lock()
        # Our last routing dump: (watcher, its event mark before the dump, gateways, dump).
        self._last_dump: tuple[NetWatcher, int | None, list[str], NetSnapshot] | None = None

    async def observe(self, snapshot: NetSnapshot | None = None) -> tuple[View, bool]:
        """Take in the network as it is: tunnel up or down, physical uplink, location.

        The view, and whether the location's key set changed. One look at a time: the
        watcher, a resume and the worker look concurrently, and an older look finishing
        last would leave a stale view behind.
        """
        async with self._looking:
            return await self._look(snapshot)

    async def _look(self, snapshot: NetSnapshot | None) -> tuple[View, bool]:
        state = await self.persister.state()
        watched = self._watched(state)
        if self.watcher is not None:  # host routes to these are reported
            self.watcher.set_gateways(watched)
        if snapshot is None:
            snapshot = await self._snapshot(watched)
        state, snapshot = await self._track_tunnel(snapshot, state, watched)
        view = await self.net.look(state, snapshot)
        uplink = view.uplink
        if (uplink is not None and uplink.source != "remembered"
                and (uplink.device, uplink.gateway) != (state.uplink, state.uplink_gateway)):
            log.info("physical uplink", device=uplink.device, gateway=uplink.gateway,
                     found_by=uplink.source)
            await self.persister.update_state(uplink=uplink.device,
                                              uplink_gateway=uplink.gateway)
        if view.reading is None:
            log.warning("cannot read the DNS configuration", error=view.error)
            return view, False
        location = view.reading.location
        changed = self.location is None or set(location.keys) != set(self.location.keys)
        if changed:
            log.info("location", domain=location.domain, servers=list(location.servers),
                     source=view.reading.source, current=view.reading.current)
        self.location = location
        return view, changed

    async def _snapshot(self, watched: list[str]) -> NetSnapshot:
        """The routing state now: our last dump if the watcher has seen no change since
        (for the same gateways), else a fresh dump (~3 ms of a round's start here)."""
        watcher, last = self.watcher, self._last_dump
        if (watcher is not None and last is not None and last[0] is watcher
                and last[2] == watched and watcher.quiet_since(last[1])):
            return last[3]
        return await self._dump(watched)

    async def _dump(self, watched: list[str]) -> NetSnapshot:
        """The routing state read now (and kept for `_snapshot`)."""
        watcher = self.watcher
        mark = watcher.event_mark() if watcher is not None else None
        snapshot = await self.net.snapshot(watched)
        self._last_dump = (watcher, mark, watched, snapshot) if watcher is not None else None
        return snapshot

    def _watched(self, state: DaemonState) -> list[str]:
        """Addresses whose host routes mean "this gateway's VPN is up"."""
        addresses = set(self._gateways_by_address())
        if state.connected_address:
            addresses.add(state.connected_address)
        return sorted(addresses)

    async def _track_tunnel(self, snap: NetSnapshot, state: DaemonState,
                            watched: list[str]) -> tuple[DaemonState, NetSnapshot]:
        """Connected or not, as the routes show; the client's word stands until they do.

        The state, and the snapshot the view is to be built on.
        """
        if state.connected is None:
            found = self._detect(snap)
            if found is not None:
                # As for an end: only a dump read now may start a connection. A watcher's
                # snapshot from before a tunnel went (openconnect killed, its end reported
                # since) would bring the dead tunnel back.
                snap = await self._dump(watched)
                found = self._detect(snap)
            if found is None:
                return state, snap
            if (now := self.persister.known()).connected is not None:
                return now, snap  # a client reported one meanwhile: its word stands
            log.info("VPN connection detected from routes", host=found.host,
                     device=found.device, address=found.address)
            return await self.connected(found.host, device=found.device,
                                        address=found.address, by="routes"), snap
        if state.connected_device is None and state.connected_by != "routes":
            return state, snap  # a client said so and named no device: it says when it ends
        why = self._gone(state, snap)
        if why is not None:
            # Only a dump read now may end a connection. The snapshot in hand may be older
            # than the client's word: a watcher's change waits in its queue while a client
            # moves its session to another gateway on the same device name (tun0 gone,
            # tun0 back, "connected" reported in between).
            snap = await self._dump(watched)
            why = self._gone(state, snap)
        if why is None:
            return state, snap
        log.info("VPN connection gone", host=state.connected, why=why)
        return await self.disconnected(state), snap

    def _detect(self, snap: NetSnapshot) -> Tunnel | None:
        return detect_tunnel(snap.tunnels, snap.defaults, snap.host_routes,
                             self._gateways_by_address())

    @staticmethod
    def _gone(state: DaemonState, snap: NetSnapshot) -> str | None:
        return tunnel_gone(device=state.connected_device, address=state.connected_address,
                           tunnels=snap.tunnels, links=[name for name, _ in snap.links],
                           host_routes=snap.host_routes)

    async def connected(self, host: str, *, device: str | None, address: str | None,
                        by: str) -> DaemonState:
        """Record the VPN connection to `host` (`by`: "client" or "routes")."""
        state = await self.persister.state()
        changes: dict[str, Any] = dict(
            connected=host, connected_device=device, connected_address=address,
            connected_by=by, last_gateway=host, last_connect_at=self.clock())
        if state.connected is None:
            # The physical network as it was before the tunnel: what the location stays
            # while the VPN's DNS is in resolv.conf (ogsd.sensing.location).
            view = self.net.view
            uplink = view.uplink if view is not None else None
            location = self.location
            changes.update(
                connected_domain=location.domain if location else None,
                connected_servers=location.servers if location else (),
                connected_uplink=uplink.device if uplink else None,
                connected_uplink_gateway=uplink.gateway if uplink else None)
        return await self.persister.update_state(**changes)

    async def disconnected(self, state: DaemonState) -> DaemonState:
        """Record that the VPN connection in `state` ended, unless a newer one was
        recorded meanwhile (the state was read before an await: a client may have
        reported its next session since)."""
        now = self.persister.known()  # no await between this check and the write
        if ((now.connected, now.connected_device, now.last_connect_at)
                != (state.connected, state.connected_device, state.last_connect_at)):
            log.info("VPN disconnect not recorded: a newer connection was reported",
                     ended=state.connected, current=now.connected,
                     device=now.connected_device)
            return now
        log.info("VPN disconnected", host=state.connected, device=state.connected_device)
        return await self.persister.update_state(
            connected=None, connected_device=None, connected_address=None, connected_by=None,
            connected_domain=None, connected_servers=(), connected_uplink=None,
            connected_uplink_gateway=None, last_disconnect_at=self.clock())
