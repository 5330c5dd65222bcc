"""`ogsd run`: wiring and lifecycle only.

Start the store, the socket API and the watchers; route their events to one evaluation
worker (rounds never overlap); notify systemd; shut down cleanly. Policy lives in
`ogsd.core`, one evaluation in `ogsd.engine`.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus

from ogsd import api
from ogsd.config import Config, ConfigError
from ogsd.core.cache import expiry
from ogsd.core.models import DaemonState, Decision, Location
from ogsd.core.triggers import Trigger
from ogsd.dnsenv import DnsConfigError, read_location, resolver_for
from ogsd.engine import Engine
from ogsd.netenv import network_environment_test
from ogsd.netwatch import NetWatcher, NetworkChange
from ogsd.sdnotify import Notifier, listen_fds, watchdog_loop
from ogsd.sleepwatch import SleepEvent, SleepWatcher
from ogsd.store import Store, StoreError

log = structlog.get_logger("ogsd.daemon")

Json = dict[str, Any]
Clock = Callable[[], datetime]

# A watcher that crashes is restarted after this, doubling up to the maximum.
RESTART_BACKOFF_S = (1.0, 60.0)
UPLINK_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")


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
    done: anyio.Event = field(default_factory=anyio.Event)
    decision: Decision | None = None
    error: str | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """The running service; implements `ogsd.api.Handler` for the socket API."""

    def __init__(self, options: Options, config: Config, store: Store, *,
                 load_config: Callable[[], Config], clock: Clock = _utcnow,
                 notifier: Notifier | None = None) -> None:
        self.options = options
        self.config = config
        self.store = store
        self.clock = clock
        self._load_config = load_config
        self.notifier = notifier or Notifier()
        self.engine = Engine(config, store, clock=clock)
        self.feed = api.DecisionFeed()
        self.location: Location | None = None
        self.decision: Decision | None = None
        self.trigger: Trigger | None = None  # what caused `decision` (None: from the store)
        self._jobs_send, self._jobs_recv = anyio.create_memory_object_stream[_Job](32)
        self._sleep_watcher: SleepWatcher | None = None
        self._net_watcher: NetWatcher | None = None
        self._tunnel_detected: str | None = None
        self._resuming: datetime | None = None  # sleep record of the resume job queued
        self.rounds = 0  # evaluations finished (tests and status read it)

    # --- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation)."""
        previous = await anyio.to_thread.run_sync(self.store.decisions, 1)
        self.decision = previous[0] if previous else None
        await self._refresh_location()
        server = self._api_server()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve)
                tg.start_soon(self._worker)
                tg.start_soon(self._signals, tg.cancel_scope)
                interval = self.notifier.watchdog_interval()
                if interval is not None:
                    tg.start_soon(watchdog_loop, self.notifier, interval)
                if self.options.watch_network:
                    tg.start_soon(self._supervise, "network", self._watch_network)
                if self.options.watch_sleep:
                    tg.start_soon(self._supervise, "sleep", self._watch_sleep)
                if self.config.daemon.continuous:
                    tg.start_soon(self._periodic)
                self.notifier.ready(status=self._status_line())
                log.info("ogsd ready", socket=str(self.options.socket_path or "LISTEN_FDS"),
                         gateways=[g.host for g in self.config.gateways])
                task_status.started()
                await self._startup_evaluation()
        finally:
            self.notifier.stopping()
            self.feed.close()
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
        return api.ApiServer(
            self, path=self.options.socket_path, sock=sock, socket_group=d.socket_group,
            admin_uids=d.admin_uids, admin_group=d.admin_group, max_clients=d.max_clients,
            request_max_bytes=d.request_max_bytes,
            idle_timeout=d.idle_timeout.total_seconds())

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

    async def _supervise(self, name: str, run: Callable[[], Any]) -> None:
        """Keep a watcher running: a crash is logged and retried, never fatal."""
        delay, ceiling = RESTART_BACKOFF_S
        while True:
            try:
                await run()
                return
            except Exception as exc:  # the daemon outlives any one watcher
                log.error("watcher failed, restarting", watcher=name, error=repr(exc),
                          retry_in_s=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, ceiling)

    # --- evaluations -------------------------------------------------------------

    async def submit(self, trigger: Trigger, *, slept: timedelta | None = None,
                     netenv_ok: bool = True, sleep_started_at: datetime | None = None) -> _Job:
        job = _Job(trigger, slept, netenv_ok, sleep_started_at)
        await self._jobs_send.send(job)
        return job

    async def _worker(self) -> None:
        async for job in self._jobs_recv:
            try:
                if self.location is None:
                    raise DnsConfigError("no DNS configuration: location unknown")
                job.decision = await self.engine.evaluate(
                    job.trigger, self.location, slept=job.slept, netenv_ok=job.netenv_ok)
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

    def _published(self, decision: Decision, trigger: Trigger) -> None:
        self.decision, self.trigger = decision, trigger
        if self._net_watcher is not None:  # host routes to these mean "VPN up"
            self._net_watcher.set_gateways(list(self._gateways_by_address()))
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
        d = self.config.daemon
        while True:
            period = d.period.total_seconds()
            delay = period * (1 + random.uniform(-d.period_jitter, d.period_jitter))  # noqa: S311
            expiry = await self._next_expiry()
            if expiry is not None:
                delay = min(delay, max(1.0, (expiry - self.clock()).total_seconds()))
            await anyio.sleep(delay)
            await self.submit(Trigger.PERIODIC)

    async def _next_expiry(self) -> datetime | None:
        """When the current location's cache entry stops being valid, if it has one."""
        if self.location is None:
            return None
        entry = await anyio.to_thread.run_sync(self.store.find_entry, self.location.keys)
        if entry is None:
            return None
        return expiry(entry, self.config.settings.cache_lifetime)

    # --- state -------------------------------------------------------------------

    async def _state(self) -> DaemonState:
        return await anyio.to_thread.run_sync(self.store.load_state)

    async def _update_state(self, **changes: Any) -> DaemonState:
        return await anyio.to_thread.run_sync(
            functools.partial(self.store.update_state, **changes))

    # --- events ------------------------------------------------------------------

    async def _refresh_location(self) -> bool:
        """Re-read the DNS configuration; True when the location's key set changed."""
        path = self.config.resolv_conf
        try:
            location = await anyio.to_thread.run_sync(read_location, path)
            self.engine.resolver = await anyio.to_thread.run_sync(resolver_for, path)
        except DnsConfigError as exc:
            log.warning("cannot read the DNS configuration", error=str(exc))
            return False
        changed = self.location is None or set(location.keys) != set(self.location.keys)
        if changed:
            log.info("location", domain=location.domain, servers=list(location.servers))
        self.location = location
        return changed

    async def _watch_network(self) -> None:
        files = [self.config.resolv_conf or Path("/etc/resolv.conf"), UPLINK_RESOLV_CONF]
        watcher = NetWatcher(debounce=self.config.daemon.debounce.total_seconds(),
                             netns=self.options.netns, watch_files=files,
                             gateways=list(self._gateways_by_address()))
        self._net_watcher = watcher
        send, recv = anyio.create_memory_object_stream[NetworkChange](16)
        # Both ends closed on the way out (a restart by _supervise makes a new pair).
        async with send, recv, anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            async for change in recv:
                await self._network_changed(change)

    async def _network_changed(self, change: NetworkChange) -> None:
        log.info("network changed", reasons=list(change.reasons),
                 default_route=change.snapshot.default_v4 or change.snapshot.default_v6)
        await self._detect_tunnel(change)
        await self._refresh_location()
        # Same location: the rules answer from the cache without probing; a new one
        # probes. Either way one evaluation per debounced burst.
        await self.submit(Trigger.LOCATION)

    def _gateways_by_address(self) -> dict[str, str]:
        """Probed address -> gateway host, from the latest decision."""
        d = self.decision
        return {r.address: r.host for r in d.results if r.address} if d else {}

    async def _detect_tunnel(self, change: NetworkChange) -> None:
        """A tunnel device plus a host route to a probed gateway's address means that
        gateway's VPN is up; only that unambiguous case is acted on."""
        addresses = self._gateways_by_address()
        snap = change.snapshot
        hits = {addresses[a] for a in snap.host_routes if a in addresses}
        state = await self._state()
        if snap.tunnels and len(hits) == 1 and state.connected is None:
            host = hits.pop()
            self._tunnel_detected = host
            log.info("VPN connection detected from routes", host=host)
            await self.notify_connected(host=host)
        elif not snap.tunnels and self._tunnel_detected and state.connected:
            log.info("VPN tunnel gone", host=self._tunnel_detected)
            self._tunnel_detected = None
            await self.notify_disconnected()

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
                        watcher.ready_for_sleep()
                else:
                    await self._resumed(event.slept)

    async def _going_to_sleep(self) -> None:
        state = await self._state()
        if state.sleep_started_at is not None:
            return  # already recorded (logind and the sleep hook both tell us)
        await self._update_state(connected_at_sleep=state.connected is not None,
                                 sleep_started_at=self.clock())
        log.info("going to sleep: state saved", connected=state.connected)

    async def _resumed(self, slept: timedelta | None) -> _Job | None:
        state = await self._state()
        started = state.sleep_started_at
        if started is not None and started == self._resuming:
            log.info("resume already being handled")  # logind and the sleep hook both tell us
            return None
        self._resuming = started
        if started is not None:
            slept = max(slept or timedelta(0), self.clock() - started)
        elif slept is None:
            log.info("resume already handled")
            return None
        await self._refresh_location()
        netenv_ok = True
        if state.connected_at_sleep and self.location is not None:
            result = await network_environment_test(
                self.location, gateway_names=[g.host for g in self.config.gateways])
            netenv_ok = result.ok
            log.info("network environment test", ok=result.ok, detail=result.detail)
        # The sleep record is cleared by the worker once this job is decided, not here:
        # the rules read connected_at_sleep, and a restart before the decision must
        # handle the resume again.
        return await self.submit(Trigger.RESUME, slept=slept, netenv_ok=netenv_ok,
                                 sleep_started_at=started)

    async def _sleep_handled(self, started: datetime) -> None:
        """The resume from the sleep recorded at `started` is decided: forget that sleep."""
        if self._resuming == started:
            self._resuming = None
        state = await self._state()
        if state.sleep_started_at == started:  # not a newer sleep recorded meanwhile
            await self._update_state(connected_at_sleep=False, sleep_started_at=None)

    # --- api.Handler -------------------------------------------------------------

    async def status(self) -> Json:
        state = await self._state()
        out = api.status_json(self.decision, connected=state.connected,
                              recommendation=self._recommendation(state))
        out["trigger"] = self.trigger.value if self.trigger else None
        out["connected_device"] = state.connected_device
        return out

    def _recommendation(self, state: DaemonState) -> str | None:
        d = self.decision
        if d is None or d.selected is None or state.connected is None:
            return None
        if d.selected == state.connected:
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

    async def evaluate(self, *, wait: bool, connect: bool = False) -> Json:
        job = await self.submit(Trigger.CONNECT if connect else Trigger.FORCED)
        if not wait:
            return {"started": True, "message": "evaluation queued"}
        await job.done.wait()
        if job.error is not None:
            raise api.ApiError(api.INTERNAL, f"evaluation failed: {job.error}")
        out = api.decision_json(job.decision)
        out["trigger"] = job.trigger.value
        return out

    async def cache_list(self) -> Json:
        entries = await anyio.to_thread.run_sync(self.store.list_entries)
        return {"entries": [api.cache_entry_json(e) for e in entries]}

    async def cache_clear(self) -> Json:
        cleared = await anyio.to_thread.run_sync(self.store.clear_cache)
        await self._update_state(cache_cleared_at=self.clock())
        await self.submit(Trigger.EVALUATE)
        log.info("cache cleared", entries=cleared)
        return {"cleared": cleared}

    async def gateways(self) -> Json:
        return {"gateways": [api.gateway_json(g) for g in self.config.gateways]}

    async def notify_connected(self, *, host: str, device: str | None = None) -> Json:
        # Client hooks may only know the address (openconnect's $VPNGATEWAY): name it
        # after the gateway it was probed as, so thresholds compare the right figures.
        address = host if _is_ip(host) else None
        host = self._gateways_by_address().get(host, host)
        await self._update_state(connected=host, connected_device=device,
                                 connected_address=address, last_gateway=host,
                                 last_connect_at=self.clock())
        log.info("VPN connected", host=host, device=device, address=address)
        return {"message": f"connected to {host}" + (f" on {device}" if device else "")}

    async def notify_disconnected(self, *, device: str | None = None) -> Json:
        state = await self._state()
        if device is not None and state.connected_device not in (None, device):
            # Another tunnel went down (two VPN clients, or a stale hook): not ours.
            log.info("VPN disconnect ignored: not the connected tunnel", device=device,
                     connected_device=state.connected_device)
            return {"message": f"{device} is not the connected tunnel "
                               f"({state.connected_device}); nothing changed"}
        await self._update_state(connected=None, connected_device=None,
                                 connected_address=None, last_disconnect_at=self.clock())
        log.info("VPN disconnected", host=state.connected, device=state.connected_device)
        return {"message": "disconnected"}

    async def notify_sleep(self) -> Json:
        await self._going_to_sleep()
        return {"message": "sleep recorded"}

    async def notify_resume(self) -> Json:
        job = await self._resumed(None)
        return {"message": "resume handled" if job else "resume already handled"}

    async def reload(self) -> Json:
        self.notifier.reloading()
        try:
            config = await anyio.to_thread.run_sync(self._load_config)
        except ConfigError as exc:
            self.notifier.ready(status=self._status_line())
            raise api.ApiError(api.BAD_PARAMS, f"reload failed, old configuration kept: "
                                               f"{exc}") from None
        self.config = config
        self.engine.config = config
        self.notifier.ready(status=self._status_line())
        log.info("configuration reloaded", gateways=[g.host for g in config.gateways])
        if await self._refresh_location():
            await self.submit(Trigger.LOCATION)
        return {"message": "configuration reloaded"}

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[Json]]:
        return self.feed.subscribe()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def socket_activated() -> bool:
    """True when systemd passed us our listening socket (LISTEN_PID is our pid)."""
    return os.environ.get("LISTEN_PID") == str(os.getpid())
