"""The socket API's methods (ogsd.wire.Handler), answered from the running daemon's parts.

Reads answer from what the daemon holds in memory (the published decision, the state as
it last wrote it); changes go through the same paths as the daemon's own events: a round
is submitted, a sleep or resume handled, a reload applied.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import structlog

from ogsd.config.address import split_address
from ogsd.config.gpportal import learned
from ogsd.core.models import DaemonState, PortalGateway
from ogsd.core.triggers import Trigger
from ogsd.daemon import api, logs
from ogsd.daemon.reload import Reloader
from ogsd.daemon.rounds import Observe, Rounds
from ogsd.daemon.sleep import Sleeps
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.nm.connections import NmError
from ogsd.nm.sync import NmSync
from ogsd.store.files import StoreError
from ogsd.store.persist import Persister
from ogsd.store.store import Store
from ogsd.wire.api import (
    BAD_PARAMS,
    INTERNAL,
    ApiError,
    PortalGatewayParams,
    cache_entry_json,
    decision_json,
    gateway_json,
    selection_json,
    status_json,
)
from ogsd.wire.shapes import state_to_dict

if TYPE_CHECKING:
    from ogsd.daemon.metrics import Metrics

log = structlog.get_logger("ogsd.daemon.daemon")

Json = dict[str, Any]
_T = TypeVar("_T")


class Handlers:
    """Implements `ogsd.daemon.Handler` for the daemon's socket."""

    def __init__(self, rounds: Rounds, sleeps: Sleeps, reloader: Reloader, *,
                 where: Whereabouts, persister: Persister, store: Store, nm: NmSync,
                 feed: api.DecisionFeed, metrics: Metrics | None, clock: Callable[[], datetime],
                 observe: Observe) -> None:
        self._rounds = rounds
        self._sleeps = sleeps
        self._reloader = reloader
        self._where = where
        self._persister = persister
        self._store = store
        self._nm = nm
        self._feed = feed
        self._metrics = metrics
        self._clock = clock
        self._observe = observe

    async def status(self) -> Json:
        # The daemon's own view (it makes every change status shows): no disk read, so
        # status answers thousands of clients a second without touching the database.
        state = self._persister.known()
        rounds = self._rounds
        out = status_json(rounds.decision, connected=state.connected,
                              recommendation=self._recommendation(state))
        out["trigger"] = rounds.trigger.value if rounds.trigger else None
        out["connected_device"] = state.connected_device
        view = self._where.net.view
        uplink = view.uplink if view is not None else None
        out["uplink"] = None if uplink is None else {
            "device": uplink.device, "gateway": uplink.gateway, "found_by": uplink.source}
        reading = view.reading if view is not None else None
        out["location_source"] = None if reading is None else reading.source
        resume = self._sleeps.resume
        pending = resume.pending
        out["resume_pending"] = None if pending is None else pending.as_json(resume.max_wait)
        out["waiting"] = rounds.waiting
        return out

    def _recommendation(self, state: DaemonState) -> str | None:
        d = self._rounds.decision
        if d is None or d.selected is None or state.connected is None:
            return None
        if d.selected == state.connected:
            return None
        selected = next((g for g in self._rounds.config.gateways if g.host == d.selected), None)
        if selected is not None and state.connected in (*selected.backups,
                                                        *selected.load_balancing):
            # On the optimal server's own backup (or cluster member): failover put the
            # user there because it failed; OGS does not move them back (DESIGN.md §1).
            return None
        return f"switch to '{d.selected}': {d.reason_text}"

    async def selection(self) -> Json:
        return selection_json(self._rounds.decision)

    async def results(self) -> Json:
        return self._rounds.decision_json()

    async def evaluate(self, *, wait: bool, connect: bool = False, full: bool = False) -> Json:
        job = await self._rounds.submit(Trigger.CONNECT if connect else Trigger.FORCED,
                                        full=full)
        if not wait:
            return {"started": True, "message": "evaluation queued"}
        await job.done.wait()
        if job.error is not None:
            raise ApiError(INTERNAL, f"evaluation failed: {job.error}")
        out = decision_json(job.decision, self._rounds.config.gateways)
        out["trigger"] = job.trigger.value
        return out

    async def cache_list(self) -> Json:
        entries = await _stored(self._store.list_entries)
        return {"entries": [cache_entry_json(e) for e in entries]}

    async def cache_clear(self) -> Json:
        cleared = await _stored(self._store.clear_cache)
        await self._persister.update_state(cache_cleared_at=self._clock())
        await self._rounds.submit(Trigger.EVALUATE)
        log.info("cache cleared", entries=cleared)
        return {"cleared": cleared}

    async def gateways(self) -> Json:
        gp = self._rounds.configured.globalprotect
        return {"portal": gp.portal if gp is not None else None,
                "gateways": [gateway_json(g) for g in self._rounds.config.gateways]}

    async def notify_portal(self, *, portal: str,
                            gateways: tuple[PortalGatewayParams, ...]) -> Json:
        configured = self._rounds.configured
        gp = configured.globalprotect
        listed = tuple(PortalGateway(g.address, g.label, g.priority) for g in gateways)
        if gp is None or gp.portal != portal:
            named = f"portal {gp.portal}" if gp is not None else "no [globalprotect] portal"
            log.info("GlobalProtect gateways not learnt: not the configured portal",
                     portal=portal, configured=gp.portal if gp is not None else None)
            return {"learnt": False, "message": f"not learnt: ogsd.toml names {named}"}
        if gp.portal_config is not None:
            known = {g.host for g in configured.gateways}
            new = sorted({g.host for g in learned(portal, listed)} - known)
            if new:
                log.warning("the portal lists gateways its saved configuration lacks: save "
                            "it again", portal=portal, saved=str(gp.portal_config), new=new)
            return {"learnt": False, "message": f"not learnt: the saved configuration "
                                                 f"{gp.portal_config} is used"
                                                 + (f" (it lacks {', '.join(new)})" if new else "")}
        state = self._persister.known()
        if (state.learned_portal, state.learned_gateways) == (portal, listed):
            return {"learnt": False, "message": f"{portal}'s gateways unchanged"}
        await self._persister.update_state(learned_portal=portal, learned_gateways=listed,
                                           learned_at=self._clock())
        self._rounds.configure(configured)  # `gateways` lists them at once
        log.info("GlobalProtect gateways learnt from openconnect", portal=portal,
                 gateways=[f"{g.label} ({g.address})" for g in listed])
        await self._rounds.submit(Trigger.FORCED)
        return {"learnt": True, "message": f"learnt {len(listed)} gateways of {portal}"}

    async def diag(self) -> Json:
        from ogsd.daemon import diag  # noqa: PLC0415 (a support bundle, rarely)

        decisions, entries, store_error = [], [], None
        try:
            decisions = await _stored(functools.partial(self._store.decisions, diag.DECISIONS))
            entries = await _stored(self._store.list_entries)
        except ApiError as exc:  # a failing disk is just what a bundle is wanted for
            store_error = exc.message
        latest = self._rounds.decision  # published first, written after: it may not be stored yet
        if latest is not None and (not decisions or decisions[0].decided_at < latest.decided_at):
            decisions.insert(0, latest)
        m = self._metrics
        extra = {"rounds": self._rounds.finished, "published": self._rounds.decision_json(),
                 "store_error": store_error,
                 "metrics": None if m is None else {"address": m.address,
                                                    "textfile": m.config.textfile},
                 "networkmanager": await self._nm.report() if self._nm.config.enabled else None}
        return diag.daemon_report(
            self._rounds.config, status=await self.status(),
            state=state_to_dict(await self._persister.state()),
            decisions=[decision_json(d) for d in decisions],
            cache=[cache_entry_json(e) for e in entries], log_events=logs.recent(),
            extra=extra)

    async def notify_connected(self, *, host: str | None = None, device: str | None = None,
                               nm_uuid: str | None = None) -> Json:
        if nm_uuid is not None:  # NetworkManager's dispatcher: the server its dialog chose
            try:
                host = await self._nm.connected_host(nm_uuid)
            except NmError as exc:
                raise ApiError(BAD_PARAMS, f"notify.connected: {exc}") from None
        if host is None:
            raise ApiError(BAD_PARAMS, "notify.connected: missing param 'host' "
                                               "(or 'nm_uuid')")
        # Client hooks may only know the address (openconnect's $VPNGATEWAY), users type
        # the URL form: name it after the gateway it was probed as, so thresholds compare
        # the right figures.
        with contextlib.suppress(ValueError):
            host = split_address(host).host
        address = host if _is_ip(host) else None
        host = self._rounds.gateways_by_address().get(host, host)
        await self._where.connected(host, device=device, address=address, by="client")
        log.info("VPN connected", host=host, device=device, address=address)
        await self._observe()  # status says at once where the location now comes from
        return {"message": f"connected to {host}" + (f" on {device}" if device else "")}

    async def notify_disconnected(self, *, device: str | None = None) -> Json:
        state = await self._persister.state()
        if device is not None and state.connected_device not in (None, device):
            # Another tunnel went down (two VPN clients, or a stale hook): not ours.
            log.info("VPN disconnect ignored: not the connected tunnel", device=device,
                     connected_device=state.connected_device)
            return {"message": f"{device} is not the connected tunnel "
                               f"({state.connected_device}); nothing changed"}
        if state.connected is not None:
            await self._where.disconnected(state)
            await self._observe()
        return {"message": "disconnected"}

    async def nm_apply(self, *, name: str | None = None) -> Json:
        try:
            done = await self._nm.apply(self._rounds.decision_json(), name)
        except NmError as exc:
            raise ApiError(INTERNAL, f"nm.apply: {exc}") from None
        return {"connections": done}

    async def notify_sleep(self) -> Json:
        await self._sleeps.going_to_sleep()
        return {"message": "sleep recorded"}

    async def notify_resume(self) -> Json:
        return {"message": await self._sleeps.resumed(None)}

    async def reload(self) -> Json:
        return await self._reloader.reload()

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Json]]:
        return self._feed.subscribe()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _stored(call: Callable[[], _T]) -> _T:
    """A store call an API request needs: a failure is that request's clear error."""
    try:
        return await anyio.to_thread.run_sync(call)
    except StoreError as exc:
        raise ApiError(INTERNAL, f"state database: {exc}") from None
