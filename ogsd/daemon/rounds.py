"""The round driver: evaluations one at a time, in the order asked, each decision published.

Every cause of a round (a network change, a resume, the timer, a client) submits a job; one
worker runs them in turn, so rounds never overlap. A round takes a fresh look at the
network, decides (ogsd.daemon.engine), publishes the decision (`watch` clients, systemd's
status line), then saves what it wrote. Continuous mode's timer is here too: a decision
(a portal retries sooner) and a reload re-arm it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import structlog

from ogsd.config.gpportal import with_learned
from ogsd.config.model import Config
from ogsd.core.cache import expiry
from ogsd.core.models import Decision, Reason, Source
from ogsd.core.triggers import Trigger
from ogsd.daemon import api, heap
from ogsd.daemon.engine import Engine
from ogsd.daemon.sdnotify import Notifier
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.nm.sync import NmSync
from ogsd.sensing.dnsenv import DnsConfigError
from ogsd.sensing.netstate import View
from ogsd.store.files import StoreError
from ogsd.store.persist import RETRY_S, Persister, Write
from ogsd.store.store import Store
from ogsd.wire.api import decision_json

log = structlog.get_logger("ogsd.daemon.daemon")

Json = dict[str, Any]
Clock = Callable[[], datetime]
# With no gateway (an installed, not yet configured ogsd) there is nothing to evaluate:
# the daemon serves and waits for a reload that brings some.
WAITING = ("no gateways configured: list [[gateway]] entries, AnyConnect profiles, "
           "[networkmanager] connections or a [globalprotect] portal in ogsd.toml, then "
           "reload (systemctl reload ogsd)")
WAITING_GP = ("no gateways yet for GlobalProtect portal {}: connect once with `ogsctl "
              "connect --protocol gp` (ogsd learns them from openconnect's list), or save "
              "the portal's configuration ([globalprotect] portal_config) and reload")
# A look at the network: the view, and whether the location's key set changed.
Observe = Callable[[], Awaitable[tuple[View, bool]]]


class _Waiting(Exception):
    """Nothing to evaluate: no gateway is configured."""


@dataclass
class Job:
    """One round asked for; `done` is set once it is decided (or has failed)."""

    trigger: Trigger
    slept: timedelta | None = None
    netenv_ok: bool = True
    # Run once the round is decided (or failed), before it is published: a resume's
    # sleep record is cleared by it.
    settle: Callable[[], Awaitable[None]] | None = None
    full: bool = False  # wait for every probe (ogsctl evaluate --full)
    done: anyio.Event = field(default_factory=anyio.Event)
    decision: Decision | None = None
    error: str | None = None


class Rounds:
    """The job queue, its worker and the timer; the decision published last."""

    def __init__(self, engine: Engine, where: Whereabouts, persister: Persister, *,
                 nm: NmSync, feed: api.DecisionFeed, notifier: Notifier, store: Store,
                 clock: Clock, observe: Observe) -> None:
        self.engine = engine
        self._where = where
        self._nm = nm
        self._persister = persister
        self._feed = feed
        self._notifier = notifier
        self._store = store
        self._clock = clock
        self._observe = observe
        self.configured = engine.config  # as loaded: NetworkManager's servers are added to it
        self.decision: Decision | None = None
        self.trigger: Trigger | None = None  # what caused `decision` (None: from the store)
        self.finished = 0  # evaluations finished (tests and diag read it)
        self._send, self._recv = anyio.create_memory_object_stream[Job](32)
        self._rearm = anyio.Event()  # set: the periodic timer re-reads its settings

    @property
    def config(self) -> Config:
        """The configuration rounds run with: as loaded, plus NetworkManager's servers."""
        return self.engine.config

    def configure(self, config: Config) -> None:
        """Rounds run with this reloaded configuration (as loaded, plus a GlobalProtect
        portal's gateways learnt from openconnect) from now on."""
        self.configured = config
        self.engine.config = with_learned(config, self._persister.known())

    def use(self, config: Config) -> None:
        """The configuration with NetworkManager's servers added."""
        if config.gateways != self.config.gateways:
            log.info("gateways", gateways=[g.host for g in config.gateways])
        self.engine.config = config

    async def submit(self, trigger: Trigger, *, slept: timedelta | None = None,
                     netenv_ok: bool = True, settle: Callable[[], Awaitable[None]] | None = None,
                     full: bool = False) -> Job:
        job = Job(trigger, slept, netenv_ok, settle, full)
        await self._send.send(job)
        return job

    async def run(self) -> None:
        """The worker: one job at a time, in the order submitted."""
        async for job in self._recv:
            writes: Sequence[Write] = ()
            try:
                # A fresh look: the routes decide how probes must travel (VPN or not).
                view, _ = await self._observe()
                config = self.configured
                if self._nm.config.enabled:  # re-read: a login may have brought a new profile
                    config = await self._nm.with_gateways(config)
                # A GlobalProtect portal's gateways as openconnect last listed them.
                self.use(with_learned(config, self._persister.known()))
                if (waiting := self.waiting) is not None:
                    raise _Waiting(waiting)
                location = self._where.location
                if location is None:
                    raise DnsConfigError("no DNS configuration: location unknown")
                state = self._persister.known()  # as the look just read (and changed) it
                outcome = await self.engine.decide(
                    job.trigger, location, slept=job.slept, netenv_ok=job.netenv_ok,
                    path=self._where.net.probe_path(state, view), state=state, full=job.full)
                job.decision, writes = outcome.decision, outcome.writes
            except _Waiting as exc:
                job.error = str(exc)
                log.info("evaluation skipped", trigger=job.trigger.value, reason=job.error)
            except (DnsConfigError, StoreError, OSError) as exc:
                job.error = str(exc)
                log.error("evaluation failed", trigger=job.trigger.value, error=job.error)
            except Exception as exc:  # a bug in one evaluation must not stop the daemon
                job.error = f"internal error: {exc!r}"
                log.exception("evaluation failed", trigger=job.trigger.value)
            try:
                if job.settle is not None:
                    await job.settle()
                if job.decision is not None:
                    self._published(job.decision, job.trigger)
            finally:
                self.finished += 1
                job.done.set()
            # After publishing: a refusing disk costs memory across restarts, never the
            # answer clients get now.
            await self._persister.save(writes, RETRY_S)
            if job.decision is None or job.decision.source is not Source.CACHE:
                heap.release()  # a round ran (or failed): its memory goes back, not idles

    def close(self) -> None:
        """Jobs queued but not run die with the daemon; the queue must not outlive it."""
        self._send.close()
        self._recv.close()

    def _published(self, decision: Decision, trigger: Trigger) -> None:
        self.decision, self.trigger = decision, trigger
        if decision.reason is Reason.PORTAL:
            self._rearm.set()  # the timer retries sooner (portal_retry_s)
        self._feed.publish(self.decision_json())
        self._notifier.status(self.status_line())

    def decision_json(self) -> Json:
        """The published decision's wire shape, with what triggered it."""
        out = decision_json(self.decision, self.config.gateways)
        out["trigger"] = self.trigger.value if self.trigger else None
        return out

    @property
    def waiting(self) -> str | None:
        """What the daemon waits for before it can evaluate at all (None: nothing)."""
        if self.config.gateways:
            return None
        gp = self.config.globalprotect
        return WAITING if gp is None else WAITING_GP.format(gp.portal)

    def status_line(self) -> str:
        if self.waiting is not None:
            return f"waiting: {self.waiting}"
        d = self.decision
        if d is None or d.selected is None:
            return "no gateway selected yet"
        return f"selected {d.selected} ({d.source.value})"

    def gateways_by_address(self) -> dict[str, str]:
        """Probed address -> gateway host, from the latest decision."""
        d = self.decision
        return {r.address: r.host for r in d.results if r.address} if d else {}

    # --- continuous mode ---------------------------------------------------------

    def rearm(self) -> None:
        """The timer's settings changed: it re-reads them."""
        self._rearm.set()

    async def timer(self) -> None:
        """Continuous mode's timer; a reload that changes its settings re-arms it."""
        while True:
            rearm = self._rearm = anyio.Event()
            d = self.config.daemon
            if not d.continuous:
                await rearm.wait()
                continue
            period = d.period.total_seconds()
            delay = period * (1 + random.uniform(-d.period_jitter, d.period_jitter))  # noqa: S311
            expiry = await self._next_expiry()
            if expiry is not None:
                delay = min(delay, max(1.0, (expiry - self._clock()).total_seconds()))
            if self.decision is not None and self.decision.reason is Reason.PORTAL:
                delay = min(delay, d.portal_retry.total_seconds())
            log.info("next periodic evaluation", in_s=round(delay, 1))
            with anyio.move_on_after(delay):
                await rearm.wait()
            if not rearm.is_set():
                await self.submit(Trigger.PERIODIC)

    async def _next_expiry(self) -> datetime | None:
        """When the current location's cache entry stops being valid, if it has one."""
        location = self._where.location
        if location is None:
            return None
        try:
            entry = await anyio.to_thread.run_sync(self._store.find_entry, location.keys)
        except StoreError as exc:
            log.warning("cannot read the cache expiry, waking on the period", error=str(exc))
            return None
        if entry is None:
            return None
        return expiry(entry, self.config.settings.cache_lifetime)
