"""`ogsd run`: wiring and lifecycle only.

Start the store, the socket API and the watchers; route their events to one evaluation
worker (rounds never overlap); notify systemd; shut down cleanly. Policy lives in
`ogsd.core`, one evaluation in `ogsd.daemon.engine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus

from ogsd.config.address import split_address
from ogsd.config.load import RESTART_KEYS, Config, ConfigError, changed_keys
from ogsd.core.cache import expiry
from ogsd.core.models import DaemonState, Decision, Location, Reason, Source
from ogsd.core.triggers import Trigger
from ogsd.daemon import api, heap, logs
from ogsd.daemon.engine import Engine
from ogsd.daemon.resume import PendingResume, ResumeWaiter
from ogsd.daemon.sdnotify import Notifier, listen_fds, watchdog_loop
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.nm.connections import NmError
from ogsd.nm.sync import NmSync
from ogsd.sensing.autoproxy import AutoProxy
from ogsd.sensing.dnsenv import DnsConfigError, resolver_for
from ogsd.sensing.location import Sources
from ogsd.sensing.netenv import NetEnvResult, network_environment_test
from ogsd.sensing.netstate import NetState, View
from ogsd.sensing.netwatch import NetWatcher, NetworkChange
from ogsd.sensing.resolved import ResolvedClient
from ogsd.sensing.routes import DUMP_TIMEOUT, NetSnapshot
from ogsd.sensing.sleepwatch import SleepEvent, SleepWatcher
from ogsd.store.persist import RETRY_S, Persister, Write
from ogsd.store.store import Store, StoreError
from ogsd.wire.shapes import state_to_dict

if TYPE_CHECKING:
    from ogsd.daemon.metrics import Metrics

log = structlog.get_logger("ogsd.daemon.daemon")

Json = dict[str, Any]
Clock = Callable[[], datetime]
_T = TypeVar("_T")

# A watcher that crashes is restarted after this, doubling up to the maximum.
RESTART_BACKOFF_S = (1.0, 60.0)
# A watcher that ran this long before failing was healthy: its restart is quick again.
HEALTHY_AFTER_S = 60.0
# On the way out, the last attempt at unsaved writes gets this long (systemd's stop
# timeout is far longer; a hung disk must not hold the shutdown past it).
SHUTDOWN_SAVE_S = 3.0
UPLINK_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")
# A new watcher is up once its first routing dump is in (one dump, one retry at most here).
NET_RESTART_WAIT_S = 2 * DUMP_TIMEOUT


@dataclass(frozen=True, slots=True)
class Options:
    config_path: Path | None
    profiles: tuple[Path, ...]
    state_dir: Path
    socket_path: Path | None  # None: a socket passed by systemd (LISTEN_FDS) is required
    bus_address: str | None = None  # None: the system bus
    watch_network: bool = True
    watch_sleep: bool = True
    netns: str | None = None  # watch netlink in this namespace (tests); None: our own


@dataclass
class _Job:
    trigger: Trigger
    slept: timedelta | None = None
    netenv_ok: bool = True
    sleep_started_at: datetime | None = None  # the sleep record this resume settles
    full: bool = False  # wait for every probe (ogsctl evaluate --full)
    done: anyio.Event = field(default_factory=anyio.Event)
    decision: Decision | None = None
    error: str | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """The running service; implements `ogsd.daemon.api.Handler` for the socket API."""

    def __init__(self, options: Options, config: Config, store: Store, *,
                 load_config: Callable[[], Config], clock: Clock = _utcnow,
                 notifier: Notifier | None = None) -> None:
        self.options = options
        self.config = config
        self.store = store
        self.clock = clock
        self._load_config = load_config
        self.notifier = notifier or Notifier()
        self._autoproxy = AutoProxy(os.environ, options.bus_address)
        self.engine = Engine(config, store, clock=clock, auto_proxy=self._autoproxy.detect)
        self.feed = api.DecisionFeed()
        self.decision: Decision | None = None
        self.trigger: Trigger | None = None  # what caused `decision` (None: from the store)
        self._jobs_send, self._jobs_recv = anyio.create_memory_object_stream[_Job](32)
        self._sleep_watcher: SleepWatcher | None = None
        self._resolved = ResolvedClient(options.bus_address)
        self.resume = ResumeWaiter(self._resume_test, self._resume_decide,
                                   max_wait=config.daemon.resume_network_wait.total_seconds())
        self._resuming: datetime | None = None  # sleep record of the resume being handled
        self._server: api.ApiServer | None = None
        self._net_scope: anyio.CancelScope | None = None  # cancelled: a new watcher starts
        self._net_started = anyio.Event()  # set once the current watcher watches
        self._rearm = anyio.Event()  # set: the periodic timer re-reads its settings
        self.persister = Persister(store)  # every write of ours goes through it
        self.where = Whereabouts(
            NetState(Sources(config.resolv_conf, resolved=self._resolved),
                     netns=options.netns),
            self.persister, clock=clock, gateways_by_address=self._gateways_by_address)
        self.rounds = 0  # evaluations finished (tests and status read it)
        self._configured = config  # as loaded: NetworkManager's servers are added to it
        self.nm = NmSync(config.networkmanager, options.bus_address)
        self.metrics: Metrics | None = None
        if config.metrics.enabled:
            # Imported when asked for: prometheus_client is 1.6 MB of an idle daemon's RSS.
            from ogsd.daemon.metrics import Metrics  # noqa: PLC0415

            self.metrics = Metrics(config.metrics, self._state)
            self.engine.on_round = self.metrics.round_finished

    # --- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation)."""
        try:
            previous = await anyio.to_thread.run_sync(self.store.decisions, 1)
        except StoreError as exc:  # start anyway: the first round decides afresh
            log.warning("cannot read the last decision", error=str(exc))
            previous = []
        self.decision = previous[0] if previous else None
        await self._observe()
        server = self._server = self._api_server()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve)
                if self.metrics is not None:  # subscribed before the first decision
                    tg.start_soon(supervise, "metrics",
                                  functools.partial(self.metrics.run, self.feed.subscribe))
                tg.start_soon(supervise, "networkmanager",
                              functools.partial(self.nm.follow, self.feed.subscribe))
                tg.start_soon(self._worker)
                tg.start_soon(self.resume.run)
                tg.start_soon(self._signals, tg.cancel_scope)
                interval = self.notifier.watchdog_interval()
                if interval is not None:
                    tg.start_soon(watchdog_loop, self.notifier, interval)
                if self.options.watch_network:
                    tg.start_soon(supervise, "network", self._watch_network)
                if self.options.watch_sleep:
                    tg.start_soon(supervise, "sleep", self._watch_sleep)
                tg.start_soon(supervise, "timer", self._periodic)  # idle unless continuous
                self.notifier.ready(status=self._status_line())
                log.info("ogsd ready", socket=str(self.options.socket_path or "LISTEN_FDS"),
                         gateways=[g.host for g in self.config.gateways])
                task_status.started()
                await self._startup_evaluation()
        finally:
            self.notifier.stopping()
            self.feed.close()
            if self.persister.unsaved:  # decisions published but not yet on disk
                with anyio.move_on_after(SHUTDOWN_SAVE_S, shield=True):
                    await self.persister.save(())
            self._resolved.close()
            self._autoproxy.close()
            self.nm.close()
            # Jobs queued but not run die with us; their streams must not outlive run().
            self._jobs_send.close()
            self._jobs_recv.close()
            log.info("ogsd stopped")

    def _api_server(self) -> api.ApiServer:
        d = self.config.daemon
        sock = None
        if self.options.socket_path is None:
            fds = listen_fds()
            if not fds:
                raise ConfigError("no --socket given and no socket passed by systemd")
            sock = fds[0]
        try:
            return api.ApiServer(
                self, path=self.options.socket_path, sock=sock, socket_group=d.socket_group,
                admin_uids=d.admin_uids, admin_group=d.admin_group,
                max_clients=d.max_clients, max_clients_per_uid=d.max_clients_per_uid,
                admin_reserved=d.admin_reserved_clients, request_max_bytes=d.request_max_bytes,
                idle_timeout=d.idle_timeout.total_seconds())
        except ValueError as exc:  # an unknown group, admins that cannot match: one line
            raise ConfigError(f"[daemon] {exc}") from None

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    try:
                        await self.reload()
                    except api.ApiError as exc:
                        log.error("reload refused, keeping the running configuration",
                                  error=exc.message)
                    continue
                log.info("shutting down", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                scope.cancel()
                return

    # --- evaluations -------------------------------------------------------------

    async def submit(self, trigger: Trigger, *, slept: timedelta | None = None,
                     netenv_ok: bool = True, sleep_started_at: datetime | None = None,
                     full: bool = False) -> _Job:
        job = _Job(trigger, slept, netenv_ok, sleep_started_at, full)
        await self._jobs_send.send(job)
        return job

    async def _worker(self) -> None:
        async for job in self._jobs_recv:
            writes: Sequence[Write] = ()
            try:
                # A fresh look: the routes decide how probes must travel (VPN or not).
                view, _ = await self._observe()
                if self.nm.config.enabled:  # re-read: a login may have brought a new profile
                    self._use(await self.nm.with_gateways(self._configured))
                if self.location is None:
                    raise DnsConfigError("no DNS configuration: location unknown")
                state = self.persister.known()  # as _observe just read (and changed) it
                outcome = await self.engine.decide(
                    job.trigger, self.location, slept=job.slept, netenv_ok=job.netenv_ok,
                    path=self.net.probe_path(state, view), state=state, full=job.full)
                job.decision, writes = outcome.decision, outcome.writes
            except (DnsConfigError, StoreError, OSError) as exc:
                job.error = str(exc)
                log.error("evaluation failed", trigger=job.trigger.value, error=job.error)
            except Exception as exc:  # a bug in one evaluation must not stop the daemon
                job.error = f"internal error: {exc!r}"
                log.exception("evaluation failed", trigger=job.trigger.value)
            try:
                if job.sleep_started_at is not None:
                    await self._sleep_handled(job.sleep_started_at)
                if job.decision is not None:
                    self._published(job.decision, job.trigger)
            finally:
                self.rounds += 1
                job.done.set()
            # After publishing: a refusing disk costs memory across restarts, never the
            # answer clients get now.
            await self.persister.save(writes, RETRY_S)
            if job.decision is None or job.decision.source is not Source.CACHE:
                heap.release()  # a round ran (or failed): its memory goes back, not idles

    def _use(self, config: Config) -> None:
        if config.gateways != self.config.gateways:
            log.info("gateways", gateways=[g.host for g in config.gateways])
        self.config = self.engine.config = config

    def _published(self, decision: Decision, trigger: Trigger) -> None:
        self.decision, self.trigger = decision, trigger
        if decision.reason is Reason.PORTAL:
            self._rearm.set()  # the timer retries sooner (portal_retry_s)
        self.feed.publish(self._decision_json())
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        d = self.decision
        if d is None or d.selected is None:
            return "no gateway selected yet"
        return f"selected {d.selected} ({d.source.value})"

    async def _startup_evaluation(self) -> None:
        """Decide for where we are now; finish a resume a restart interrupted."""
        state = await self._state()
        if state.sleep_started_at is not None:
            # We were stopped while the machine slept (e.g. restarted by a resume hook):
            # decide exactly as if we had seen the resume ourselves.
            log.info("sleep recorded before start-up: handling it as a resume",
                     sleep_started_at=state.sleep_started_at.isoformat())
            await self._resumed(None)
        else:
            await self.submit(Trigger.EVALUATE)

    async def _periodic(self) -> None:
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
                delay = min(delay, max(1.0, (expiry - self.clock()).total_seconds()))
            if self.decision is not None and self.decision.reason is Reason.PORTAL:
                delay = min(delay, d.portal_retry.total_seconds())
            log.info("next periodic evaluation", in_s=round(delay, 1))
            with anyio.move_on_after(delay):
                await rearm.wait()
            if not rearm.is_set():
                await self.submit(Trigger.PERIODIC)

    async def _next_expiry(self) -> datetime | None:
        """When the current location's cache entry stops being valid, if it has one."""
        if self.location is None:
            return None
        try:
            entry = await anyio.to_thread.run_sync(self.store.find_entry, self.location.keys)
        except StoreError as exc:
            log.warning("cannot read the cache expiry, waking on the period", error=str(exc))
            return None
        if entry is None:
            return None
        return expiry(entry, self.config.settings.cache_lifetime)

    # --- state -------------------------------------------------------------------

    async def _state(self) -> DaemonState:
        return await self.persister.state()

    async def _update_state(self, **changes: Any) -> DaemonState:
        return await self.persister.update_state(**changes)

    # --- events ------------------------------------------------------------------

    async def _observe(self, snapshot: NetSnapshot | None = None) -> tuple[View, bool]:
        """A look at the network (ogsd.daemon.whereabouts); the direct path's resolver follows
        resolv.conf. The view, and whether the location's key set changed."""
        view, changed = await self.where.observe(snapshot)
        if view.reading is not None:
            try:
                self.engine.resolver = await anyio.to_thread.run_sync(
                    resolver_for, self.config.resolv_conf)
            except DnsConfigError as exc:
                log.warning("cannot configure a resolver", error=str(exc))
        return view, changed

    @property
    def location(self) -> Location | None:
        """The physical network's location at the last look."""
        return self.where.location

    @property
    def net(self) -> NetState:
        return self.where.net

    async def _watch_network(self) -> None:
        """The network watcher; a reload that changes what it watches starts a new one."""
        while True:
            scope = self._net_scope = anyio.CancelScope()
            with scope:
                await self._run_net_watcher()
            if not scope.cancelled_caught:
                return

    async def _run_net_watcher(self) -> None:
        files = [self.config.resolv_conf or Path("/etc/resolv.conf"), UPLINK_RESOLV_CONF]
        watcher = NetWatcher(debounce=self.config.daemon.debounce.total_seconds(),
                             netns=self.options.netns, watch_files=files,
                             gateways=list(self._gateways_by_address()))
        self.where.watcher = watcher
        send, recv = anyio.create_memory_object_stream[NetworkChange](16)
        # Both ends closed on the way out (a restart by supervise makes a new pair).
        async with send, recv, anyio.create_task_group() as tg:
            await tg.start(watcher.run, send)
            self._net_started.set()
            async for change in recv:
                await self._network_changed(change)

    async def _network_changed(self, change: NetworkChange) -> None:
        log.info("network changed", reasons=list(change.reasons),
                 default_route=change.snapshot.default_v4 or change.snapshot.default_v6)
        try:
            await self._observe(change.snapshot)
        finally:  # whatever reading the network met, the change itself is never dropped
            self.resume.poke()  # a resume waiting for the network tests it again
            # Same location: the rules answer from the cache without probing; a new one
            # probes. Either way one evaluation per debounced burst.
            await self.submit(Trigger.LOCATION)

    def _gateways_by_address(self) -> dict[str, str]:
        """Probed address -> gateway host, from the latest decision."""
        d = self.decision
        return {r.address: r.host for r in d.results if r.address} if d else {}

    async def _watch_sleep(self) -> None:
        watcher = SleepWatcher(bus_address=self.options.bus_address)
        self._sleep_watcher = watcher
        send, recv = anyio.create_memory_object_stream[SleepEvent](16)
        async with send, recv, anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            async for event in recv:
                if event.kind == "sleep":
                    try:
                        await self._going_to_sleep()
                    finally:  # never hold the machine awake, even if saving failed
                        watcher.ready_for_sleep(event.sleep_id)
                else:
                    await self._resumed(event.slept)

    async def _going_to_sleep(self) -> None:
        if self.resume.pending is not None:
            # Asleep again before the network came back: the next resume takes over the
            # sleep record still kept, counted from when the first sleep began.
            log.info("going to sleep with a resume still waiting for the network")
            self.resume.drop()
            self._resuming = None
        state = await self._state()
        # A record whose resume is still being decided is the previous sleep, not this one
        # (the lid closed again within a round): this sleep replaces it.
        if state.sleep_started_at is not None and state.sleep_started_at != self._resuming:
            return  # already recorded (logind and the sleep hook both tell us)
        await self._update_state(connected_at_sleep=state.connected is not None,
                                 sleep_started_at=self.clock())
        log.info("going to sleep: state saved", connected=state.connected)

    async def _resumed(self, slept: timedelta | None) -> str:
        """Handle a resume without waiting for the network; says what happens next."""
        state = await self._state()
        started = state.sleep_started_at
        if started is not None and started == self._resuming:
            log.info("resume already being handled")  # logind and the sleep hook both tell us
            return "resume already being handled"
        if started is not None:
            slept = max(slept or timedelta(0), self.clock() - started)
        elif slept is None:
            log.info("resume already handled")
            return "resume already handled"
        self._resuming = started
        await self._observe()
        # The sleep record is cleared by the worker once this resume is decided, not
        # here: the rules read connected_at_sleep, and a restart before the decision
        # must handle the resume again.
        if state.connected_at_sleep and slept >= self.config.settings.suspend_time:
            self.resume.start(PendingResume(started, slept))
            return "resume noted: re-evaluating once the network is back"
        await self.submit(Trigger.RESUME, slept=slept, sleep_started_at=started)
        return "resume handled"

    async def _resume_test(self) -> NetEnvResult:
        """The network-environment test, from the physical uplink while a VPN is up."""
        view, _ = await self._observe()
        if self.location is None:
            return NetEnvResult(False, False, False, "no DNS configuration to test")
        path = self.net.probe_path(await self._state(), view)
        return await network_environment_test(
            self.location, gateway_names=[g.host for g in self.config.gateways],
            device=path.device, netns=self.options.netns)

    async def _resume_decide(self, pending: PendingResume, netenv_ok: bool) -> None:
        await self.submit(Trigger.RESUME, slept=pending.slept, netenv_ok=netenv_ok,
                          sleep_started_at=pending.sleep_started_at)

    async def _sleep_handled(self, started: datetime) -> None:
        """The resume from the sleep recorded at `started` is decided: forget that sleep."""
        if self._resuming == started:
            self._resuming = None
        state = await self._state()
        if state.sleep_started_at == started:  # not a newer sleep recorded meanwhile
            await self._update_state(connected_at_sleep=False, sleep_started_at=None)

    # --- api.Handler -------------------------------------------------------------

    async def status(self) -> Json:
        # The daemon's own view (it makes every change status shows): no disk read, so
        # status answers thousands of clients a second without touching the database.
        state = self.persister.known()
        out = api.status_json(self.decision, connected=state.connected,
                              recommendation=self._recommendation(state))
        out["trigger"] = self.trigger.value if self.trigger else None
        out["connected_device"] = state.connected_device
        view = self.net.view
        uplink = view.uplink if view is not None else None
        out["uplink"] = None if uplink is None else {
            "device": uplink.device, "gateway": uplink.gateway, "found_by": uplink.source}
        reading = view.reading if view is not None else None
        out["location_source"] = None if reading is None else reading.source
        pending = self.resume.pending
        out["resume_pending"] = None if pending is None else pending.as_json(self.resume.max_wait)
        return out

    def _recommendation(self, state: DaemonState) -> str | None:
        d = self.decision
        if d is None or d.selected is None or state.connected is None:
            return None
        if d.selected == state.connected:
            return None
        selected = next((g for g in self.config.gateways if g.host == d.selected), None)
        if selected is not None and state.connected in (*selected.backups,
                                                        *selected.load_balancing):
            # On the optimal server's own backup (or cluster member): failover put the
            # user there because it failed; OGS does not move them back (DESIGN.md §1).
            return None
        return f"switch to '{d.selected}': {d.reason_text}"

    async def selection(self) -> Json:
        return api.selection_json(self.decision)

    async def results(self) -> Json:
        return self._decision_json()

    def _decision_json(self) -> Json:
        """The published decision's wire shape, with what triggered it."""
        out = api.decision_json(self.decision)
        out["trigger"] = self.trigger.value if self.trigger else None
        return out

    async def evaluate(self, *, wait: bool, connect: bool = False, full: bool = False) -> Json:
        job = await self.submit(Trigger.CONNECT if connect else Trigger.FORCED, full=full)
        if not wait:
            return {"started": True, "message": "evaluation queued"}
        await job.done.wait()
        if job.error is not None:
            raise api.ApiError(api.INTERNAL, f"evaluation failed: {job.error}")
        out = api.decision_json(job.decision)
        out["trigger"] = job.trigger.value
        return out

    async def cache_list(self) -> Json:
        entries = await _stored(self.store.list_entries)
        return {"entries": [api.cache_entry_json(e) for e in entries]}

    async def cache_clear(self) -> Json:
        cleared = await _stored(self.store.clear_cache)
        await self._update_state(cache_cleared_at=self.clock())
        await self.submit(Trigger.EVALUATE)
        log.info("cache cleared", entries=cleared)
        return {"cleared": cleared}

    async def gateways(self) -> Json:
        return {"gateways": [api.gateway_json(g) for g in self.config.gateways]}

    async def diag(self) -> Json:
        from ogsd.daemon import diag  # noqa: PLC0415 (a support bundle, rarely)

        decisions, entries, store_error = [], [], None
        try:
            decisions = await _stored(functools.partial(self.store.decisions, diag.DECISIONS))
            entries = await _stored(self.store.list_entries)
        except api.ApiError as exc:  # a failing disk is just what a bundle is wanted for
            store_error = exc.message
        latest = self.decision  # published first, written after: it may not be stored yet
        if latest is not None and (not decisions or decisions[0].decided_at < latest.decided_at):
            decisions.insert(0, latest)
        m = self.metrics
        extra = {"rounds": self.rounds, "published": self._decision_json(),
                 "store_error": store_error,
                 "metrics": None if m is None else {"address": m.address,
                                                    "textfile": m.config.textfile},
                 "networkmanager": await self.nm.report() if self.nm.config.enabled else None}
        return diag.daemon_report(
            self.config, status=await self.status(), state=state_to_dict(await self._state()),
            decisions=[api.decision_json(d) for d in decisions],
            cache=[api.cache_entry_json(e) for e in entries], log_events=logs.recent(),
            extra=extra)

    async def notify_connected(self, *, host: str | None = None, device: str | None = None,
                               nm_uuid: str | None = None) -> Json:
        if nm_uuid is not None:  # NetworkManager's dispatcher: the server its dialog chose
            try:
                host = await self.nm.connected_host(nm_uuid)
            except NmError as exc:
                raise api.ApiError(api.BAD_PARAMS, f"notify.connected: {exc}") from None
        if host is None:
            raise api.ApiError(api.BAD_PARAMS, "notify.connected: missing param 'host' "
                                               "(or 'nm_uuid')")
        # Client hooks may only know the address (openconnect's $VPNGATEWAY), users type
        # the URL form: name it after the gateway it was probed as, so thresholds compare
        # the right figures.
        with contextlib.suppress(ValueError):
            host = split_address(host).host
        address = host if _is_ip(host) else None
        host = self._gateways_by_address().get(host, host)
        await self.where.connected(host, device=device, address=address, by="client")
        log.info("VPN connected", host=host, device=device, address=address)
        await self._observe()  # status says at once where the location now comes from
        return {"message": f"connected to {host}" + (f" on {device}" if device else "")}

    async def notify_disconnected(self, *, device: str | None = None) -> Json:
        state = await self._state()
        if device is not None and state.connected_device not in (None, device):
            # Another tunnel went down (two VPN clients, or a stale hook): not ours.
            log.info("VPN disconnect ignored: not the connected tunnel", device=device,
                     connected_device=state.connected_device)
            return {"message": f"{device} is not the connected tunnel "
                               f"({state.connected_device}); nothing changed"}
        if state.connected is not None:
            await self.where.disconnected(state)
            await self._observe()
        return {"message": "disconnected"}

    async def nm_apply(self, *, name: str | None = None) -> Json:
        try:
            done = await self.nm.apply(self._decision_json(), name)
        except NmError as exc:
            raise api.ApiError(api.INTERNAL, f"nm.apply: {exc}") from None
        return {"connections": done}

    async def notify_sleep(self) -> Json:
        await self._going_to_sleep()
        return {"message": "sleep recorded"}

    async def notify_resume(self) -> Json:
        return {"message": await self._resumed(None)}

    async def reload(self) -> Json:
        """Apply every setting of the files now, or name those that need a restart."""
        self.notifier.reloading()
        try:
            config = await anyio.to_thread.run_sync(self._load_config)
            d = config.daemon
            if self._server is not None:  # admins and limits: checked before anything moves
                try:
                    self._server.configure(
                        admin_uids=d.admin_uids, admin_group=d.admin_group,
                        max_clients=d.max_clients, max_clients_per_uid=d.max_clients_per_uid,
                        admin_reserved=d.admin_reserved_clients,
                        request_max_bytes=d.request_max_bytes,
                        idle_timeout=d.idle_timeout.total_seconds())
                except ValueError as exc:
                    raise ConfigError(f"[daemon] {exc}") from None
        except ConfigError as exc:
            self.notifier.ready(status=self._status_line())
            raise api.ApiError(api.BAD_PARAMS, f"reload failed, old configuration kept: "
                                               f"{exc}") from None
        old, self.config = self._configured, config
        self._configured = self.engine.config = config
        self.nm.config = config.networkmanager
        if self.nm.config.enabled:
            self._use(await self.nm.with_gateways(config))
        self.resume.max_wait = config.daemon.resume_network_wait.total_seconds()
        self.net.sources = dataclasses.replace(self.net.sources, resolv_conf=config.resolv_conf)
        changed = changed_keys(old, config)
        later = sorted(RESTART_KEYS.intersection(changed))
        if {"[daemon] continuous", "[daemon] period_minutes", "[daemon] period_jitter",
                "[ogs] cache_lifetime_days"}.intersection(changed):
            self._rearm.set()
        if self._net_scope is not None and {"[daemon] debounce_s",
                                            "[dns] resolv_conf"}.intersection(changed):
            # READY=1 means the new settings hold: a file changed after it is seen.
            started = self._net_started = anyio.Event()
            self._net_scope.cancel()
            with anyio.move_on_after(NET_RESTART_WAIT_S) as waited:
                await started.wait()
            if waited.cancelled_caught:
                log.warning("network watcher not restarted yet", waited_s=NET_RESTART_WAIT_S)
        for warning in config.warnings:
            log.warning(warning)
        self.notifier.ready(status=self._status_line())
        log.info("configuration reloaded", changed=changed,
                 gateways=[g.host for g in config.gateways])
        if later:
            log.warning("settings not applied until ogsd restarts", settings=later)
        if (await self._observe())[1]:
            await self.submit(Trigger.LOCATION)
        elif (config.gateways, config.settings) != (old.gateways, old.settings):
            # The decision published may name a gateway just removed: decide again (the
            # cache answers unless the change needs probes, see core.cache.fit_to_gateways).
            await self.submit(Trigger.EVALUATE)
        message = "configuration reloaded"
        if later:
            message += f"; not applied until ogsd restarts: {', '.join(later)}"
        return {"message": message, "changed": changed, "restart_needed": later}

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Json]]:
        return self.feed.subscribe()


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
        raise api.ApiError(api.INTERNAL, f"state database: {exc}") from None


async def supervise(name: str, run: Callable[[], Any], *,
                    backoff: tuple[float, float] = RESTART_BACKOFF_S,
                    healthy_after: float = HEALTHY_AFTER_S) -> None:
    """Keep a watcher running: a crash is logged and retried, never fatal."""
    first, ceiling = backoff
    delay = first
    while True:
        started = anyio.current_time()
        try:
            await run()
            return
        except Exception as exc:  # the daemon outlives any one watcher
            if anyio.current_time() - started >= healthy_after:
                delay = first  # a failure after a healthy run is not part of a crash loop
            log.error("watcher failed, restarting", watcher=name, error=repr(exc),
                      retry_in_s=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, ceiling)


def socket_activated() -> bool:
    """True when systemd passed us our listening socket (LISTEN_PID is our pid)."""
    return os.environ.get("LISTEN_PID") == str(os.getpid())
