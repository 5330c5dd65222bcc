"""The daemon's side of NetworkManager: connections' servers as gateways, and each
decision applied to them (ogsd.nm.connections does the D-Bus).

`[networkmanager] connections` names the openconnect connections (or "all"). Their servers
join the configured gateways, re-read before each round (a login may bring a new
profile). After each decision every such connection that is not active is pointed at
the first server of the failover order it has (ogsd.nm.servers.plan: AnyConnect and
GlobalProtect alike; one not logged in yet, whose gateway is one of ogsd's configured
gateways, at the best of those), so the user's ordinary "connect" lands there; an
active one is left alone until it disconnects. A connection left as it is says why in
one log line, again only when the reason changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog

from ogsd.config.model import Config, NetworkManagerConfig
from ogsd.core.models import Gateway
from ogsd.nm.connections import Connection, NetworkManager, NmError
from ogsd.nm.servers import ALREADY, plan

log = structlog.get_logger("ogsd.nm.connections")

Json = dict[str, Any]
Feed = Callable[[], AbstractAsyncContextManager[AsyncIterator[Json]]]


def merged(config: Config, gateways: tuple[Gateway, ...]) -> Config:
    """`config` with `gateways` after its own (a host already there is kept once)."""
    hosts = {g.host for g in config.gateways}
    added: dict[str, Gateway] = {}
    for gateway in gateways:
        if gateway.host not in hosts:
            added.setdefault(gateway.host, gateway)
    if not added:
        return config
    return dataclasses.replace(config, gateways=config.gateways + tuple(added.values()))


class NmSync:
    """Reads our NetworkManager connections; points them after each decision."""

    def __init__(self, config: NetworkManagerConfig, bus_address: str | None = None, *,
                 headends: tuple[Gateway, ...] = ()) -> None:
        self.config = config
        self.nm = NetworkManager(bus_address)
        # ogsd's configured gateways (ogsd.toml, profiles; not NetworkManager's): where a
        # connection not logged in yet may be moved among. Updated by `with_gateways`.
        self.headends = headends
        self.connections: list[Connection] = []  # ours, as last read
        self.applied: list[Json] = []  # what the last apply did, for `ogsctl diag`
        self._problems: dict[str, str] = {}  # logged once per connection and text
        self._left: dict[str, str] = {}  # why each connection was last left as it is

    def close(self) -> None:
        self.nm.close()

    async def with_gateways(self, config: Config) -> Config:
        """`config` plus our connections' servers (re-read; kept as they were if NM
        cannot be asked now). `config` is the configured one: its gateways are ours."""
        self.headends = config.gateways
        try:
            fresh = [c for c in await self.nm.openconnect_connections()
                     if self.config.wants(c.name)]
        except NmError as exc:
            self._once("", f"NetworkManager's connections not read: {exc}")
        except Exception as exc:  # odd data from NetworkManager must not stop a round
            log.exception("NetworkManager's connections not understood")
            self._once("", f"NetworkManager's connections not read: {exc!r}")
        else:
            # Secrets NetworkManager did not give this time (see ogsd.nm.connections.SECRETS_TRIES)
            # do not make a connection's servers vanish for a round.
            before = {c.uuid: c for c in self.connections}
            self.connections = [
                dataclasses.replace(c, entries=before[c.uuid].entries)
                if not c.entries and not c.secret_keys and c.uuid in before else c
                for c in fresh]
        for connection in self.connections:
            if connection.problem:
                self._once(connection.uuid, connection.problem)
        missing = set(self.config.connections) - {c.name for c in self.connections}
        for name in sorted(missing):
            self._once(name, f"no openconnect connection called {name!r} in NetworkManager")
        return merged(config, tuple(g for c in self.connections for g in c.gateways))

    def _once(self, key: str, problem: str) -> None:
        if self._problems.get(key) != problem:
            self._problems[key] = problem
            log.warning(problem)

    async def follow(self, subscribe: Feed) -> None:
        """Apply each published decision to our connections, until the feed ends (with
        update_gateway; `ogsctl nm-apply` calls `apply` either way)."""
        async with subscribe() as decisions:
            async for decision in decisions:
                if not (self.config.enabled and self.config.update_gateway):
                    continue  # read each time: a reload may turn it on or off
                try:
                    await self.apply(decision)
                except NmError as exc:
                    log.warning("NetworkManager connections not updated", error=str(exc))

    async def apply(self, decision: Json, name: str | None = None) -> list[Json]:
        """Point our connections (or the one called or numbered `name`) at the decision's
        best server each has; what was done, per connection."""
        order = [str(h) for h in decision.get("order") or []]

        def picked(c: Connection) -> bool:
            return name in (c.name, c.uuid) if name is not None else self.config.wants(c.name)

        connections = [c for c in await self.nm.openconnect_connections() if picked(c)]
        if name is not None and not connections:
            raise NmError(f"no openconnect connection called {name!r} in NetworkManager")
        active = await self.nm.active_uuids()
        done = [await self._apply_one(c, order, active) for c in connections]
        self.applied = done
        return done

    async def _apply_one(self, connection: Connection, order: list[str],
                         active: set[str]) -> Json:
        out: Json = {"name": connection.name, "uuid": connection.uuid,
                     "gateway": connection.gateway, "lasthost": connection.lasthost,
                     "changed": False}
        wanted = plan(protocol=connection.protocol, gateway=connection.gateway,
                      lasthost=connection.lasthost, entries=connection.entries,
                      problem=connection.problem, order=order, headends=self.headends)
        if wanted.note is not None and wanted.note != ALREADY:
            out["note"] = wanted.note
        elif connection.uuid in active:
            out["note"] = "active: left as it is until it disconnects"
        elif wanted.note is not None:
            out["note"] = wanted.note
            self._left.pop(connection.uuid, None)
            return out
        else:
            assert wanted.gateway is not None
            await self.nm.point(connection, gateway=wanted.gateway, lasthost=wanted.lasthost)
            lasthost = wanted.lasthost or connection.lasthost
            log.info("NetworkManager connection pointed at the optimal server",
                     connection=connection.name, gateway=wanted.gateway, lasthost=lasthost,
                     was=connection.gateway, was_lasthost=connection.lasthost)
            out.update(gateway=wanted.gateway, lasthost=lasthost, changed=True)
            self._left.pop(connection.uuid, None)
            return out
        if self._left.get(connection.uuid) != out["note"]:
            self._left[connection.uuid] = out["note"]
            log.info("NetworkManager connection left as it is", connection=connection.name,
                     uuid=connection.uuid, reason=out["note"])
        return out

    async def connected_host(self, uuid: str) -> str:
        """The gateway host a connection (by UUID) was brought up to: what its auth dialog
        chose (lasthost), else its gateway. NmError if it is no openconnect connection."""
        for connection in await self.nm.openconnect_connections():
            if connection.uuid == uuid:
                host = connection.pointed_at()
                if host is None:
                    raise NmError(f"connection {connection.name!r} names no server")
                return host
        raise NmError(f"{uuid} is not an openconnect connection in NetworkManager")

    async def report(self) -> Json:
        """What `ogsctl diag` shows of NetworkManager: our connections as they are now."""
        out: Json = {"config": dataclasses.asdict(self.config), "last_apply": self.applied}
        try:
            connections = [c for c in await self.nm.openconnect_connections()
                           if self.config.wants(c.name)]
        except NmError as exc:
            out["error"] = str(exc)
            connections = self.connections
        out["connections"] = [{"name": c.name, "uuid": c.uuid, "protocol": c.protocol,
                               "gateway": c.gateway, "lasthost": c.lasthost,
                               "problem": c.problem,
                               "servers": [[e.name, e.address] for e in c.entries]}
                              for c in connections]
        return out
