"""`ogsd run`: wiring and lifecycle only.

Start the store, the socket API and the watchers; route their events to one evaluation
worker (rounds never overlap, ogsd.daemon.rounds); notify systemd; shut down cleanly.
Policy lives in `ogsd.core`, one evaluation in `ogsd.daemon.engine`, the socket's methods
in `ogsd.daemon.handlers`, sleep and resume in `ogsd.daemon.sleep`, a reload in
`ogsd.daemon.reload`.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus

from ogsd.config.model import Config, ConfigError
from ogsd.core.triggers import Trigger
from ogsd.daemon import api
from ogsd.daemon.engine import Engine
from ogsd.daemon.handlers import Handlers
from ogsd.daemon.reload import Reloader
from ogsd.daemon.rounds import Rounds
from ogsd.daemon.sdnotify import Notifier, listen_fds, watchdog_loop
from ogsd.daemon.sleep import Sleeps
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.nm.sync import NmSync
from ogsd.sensing.autoproxy import AutoProxy
from ogsd.sensing.dnsenv import DnsConfigError, resolver_for
from ogsd.sensing.location import Sources
from ogsd.sensing.netstate import NetState, View
from ogsd.sensing.netwatch import NetWatcher, NetworkChange
from ogsd.sensing.resolved import ResolvedClient
from ogsd.sensing.routes import DUMP_TIMEOUT, NetSnapshot
from ogsd.sensing.sleepwatch import SleepEvent, SleepWatcher
from ogsd.store.files import StoreError
from ogsd.store.persist import Persister
from ogsd.store.store import Store
from ogsd.wire.api import ApiError

if TYPE_CHECKING:
    from ogsd.daemon.metrics import Metrics

# Imported after READY=1, in a worker thread: the prober and the network-environment test.
WARM_UP_MODULES = ("ogsd.probing.round", "ogsd.sensing.netenv")

log = structlog.get_logger("ogsd.daemon.daemon")

Clock = Callable[[], datetime]

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


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """The running service: its parts, the tasks that run them, and their events routed."""

    def __init__(self, options: Options, config: Config, store: Store, *,
                 load_config: Callable[[], Config], clock: Clock = _utcnow,
                 notifier: Notifier | None = None) -> None:
        self.options = options
        self.store = store
        self.clock = clock
        self.notifier = notifier or Notifier()
        self._autoproxy = AutoProxy(os.environ, options.bus_address)
        self.engine = Engine(config, store, clock=clock, auto_proxy=self._autoproxy.detect)
        self.feed = api.DecisionFeed()
        self._sleep_watcher: SleepWatcher | None = None
        self._resolved = ResolvedClient(options.bus_address)
        self._net_scope: anyio.CancelScope | None = None  # cancelled: a new watcher starts
        self._net_started = anyio.Event()  # set once the current watcher watches
        self.persister = Persister(store)  # every write of ours goes through it
        self.where = Whereabouts(
            NetState(Sources(config.resolv_conf, resolved=self._resolved),
                     netns=options.netns),
            self.persister, clock=clock, gateways_by_address=self._gateways_by_address)
        self.nm = NmSync(config.networkmanager, options.bus_address,
                         headends=config.gateways)
        self.rounds = Rounds(self.engine, self.where, self.persister, nm=self.nm, feed=self.feed,
                             notifier=self.notifier, store=store, clock=clock,
                             observe=self._observe)
        self.sleeps = Sleeps(self.rounds, self.where, self.persister, clock=clock,
                             observe=self._observe, netns=options.netns)
        self.reloader = Reloader(load_config, self.rounds, resume=self.sleeps.resume,
                                 where=self.where, nm=self.nm, notifier=self.notifier,
                                 observe=self._observe,
                                 restart_network=self._restart_network_watcher)
        self.metrics: Metrics | None = None
        if config.metrics.enabled:
            # Imported when asked for: prometheus_client is 1.6 MB of an idle daemon's RSS.
            from ogsd.daemon.metrics import Metrics  # noqa: PLC0415

            self.metrics = Metrics(config.metrics, self.persister.state)
            self.engine.on_round = self.metrics.round_finished
        self.handlers = Handlers(self.rounds, self.sleeps, self.reloader, where=self.where,
                                 persister=self.persister, store=store, nm=self.nm,
                                 feed=self.feed, metrics=self.metrics, clock=clock,
                                 observe=self._observe)

    @property
    def config(self) -> Config:
        """The configuration in effect (`Rounds.config`)."""
        return self.rounds.config

    # --- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation)."""
        try:
            previous = await anyio.to_thread.run_sync(self.store.decisions, 1)
        except StoreError as exc:  # start anyway: the first round decides afresh
            log.warning("cannot read the last decision", error=str(exc))
            previous = []
        self.rounds.decision = previous[0] if previous else None
        # The first look, before READY=1, reads where we are; the resolver rounds use
        # (dnspython's, ~20 ms of imports) is made after it, before the first round.
        first, _ = await self.where.observe(None)
        self.rounds.configure(self.rounds.configured)  # the state is read now: what it learnt
        server = self.reloader.server = self._api_server()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve)
                if self.metrics is not None:  # subscribed before the first decision
                    tg.start_soon(supervise, "metrics",
                                  functools.partial(self.metrics.run, self.feed.subscribe))
                tg.start_soon(supervise, "networkmanager",
                              functools.partial(self.nm.follow, self.feed.subscribe))
                tg.start_soon(self.rounds.run)
                tg.start_soon(self.sleeps.resume.run)
                tg.start_soon(self._signals, tg.cancel_scope)
                interval = self.notifier.watchdog_interval()
                if interval is not None:
                    tg.start_soon(watchdog_loop, self.notifier, interval)
                if self.options.watch_network:
                    tg.start_soon(supervise, "network", self._watch_network)
                if self.options.watch_sleep:
                    tg.start_soon(supervise, "sleep", self._watch_sleep)
                tg.start_soon(supervise, "timer", self.rounds.timer)  # idle unless continuous
                self.notifier.ready(status=self.rounds.status_line())
                log.info("ogsd ready", socket=str(self.options.socket_path or "LISTEN_FDS"),
                         gateways=[g.host for g in self.config.gateways])
                task_status.started()
                if first.reading is not None:
                    await self._update_resolver()
                # What READY=1 did not wait for loads off the event loop, before a round or
                # a resume first needs it (an import runs module code: ~40 ms here).
                for module in WARM_UP_MODULES:
                    await anyio.to_thread.run_sync(importlib.import_module, module)
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
            self.rounds.close()
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
                self.handlers, path=self.options.socket_path, sock=sock,
                socket_group=d.socket_group, admin_uids=d.admin_uids, admin_group=d.admin_group,
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
                        await self.reloader.reload()
                    except ApiError as exc:
                        log.error("reload refused, keeping the running configuration",
                                  error=exc.message)
                    continue
                log.info("shutting down", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                scope.cancel()
                return

    async def _startup_evaluation(self) -> None:
        """Decide for where we are now; finish a resume a restart interrupted."""
        state = await self.persister.state()
        if state.sleep_started_at is not None:
            # We were stopped while the machine slept (e.g. restarted by a resume hook):
            # decide exactly as if we had seen the resume ourselves.
            log.info("sleep recorded before start-up: handling it as a resume",
                     sleep_started_at=state.sleep_started_at.isoformat())
            await self.sleeps.resumed(None)
        else:
            await self.rounds.submit(Trigger.EVALUATE)

    # --- events ------------------------------------------------------------------

    async def _observe(self, snapshot: NetSnapshot | None = None) -> tuple[View, bool]:
        """A look at the network (ogsd.daemon.whereabouts); the direct path's resolver follows
        resolv.conf. The view, and whether the location's key set changed."""
        view, changed = await self.where.observe(snapshot)
        if view.reading is not None:
            await self._update_resolver()
        return view, changed

    async def _update_resolver(self) -> None:
        """The direct path's resolver, from resolv.conf as it is now."""
        try:
            self.engine.resolver = await anyio.to_thread.run_sync(
                resolver_for, self.config.resolv_conf)
        except DnsConfigError as exc:
            log.warning("cannot configure a resolver", error=str(exc))

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

    async def _restart_network_watcher(self) -> None:
        """A new network watcher, with the settings now; returns once it watches."""
        if self._net_scope is None:
            return
        started = self._net_started = anyio.Event()
        self._net_scope.cancel()
        with anyio.move_on_after(NET_RESTART_WAIT_S) as waited:
            await started.wait()
        if waited.cancelled_caught:
            log.warning("network watcher not restarted yet", waited_s=NET_RESTART_WAIT_S)

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
            self.sleeps.resume.poke()  # a resume waiting for the network tests it again
            # Same location: the rules answer from the cache without probing; a new one
            # probes. Either way one evaluation per debounced burst.
            await self.rounds.submit(Trigger.LOCATION)

    def _gateways_by_address(self) -> dict[str, str]:
        """Probed address -> gateway host, from the latest decision."""
        return self.rounds.gateways_by_address()

    async def _watch_sleep(self) -> None:
        watcher = SleepWatcher(bus_address=self.options.bus_address)
        self._sleep_watcher = watcher
        send, recv = anyio.create_memory_object_stream[SleepEvent](16)
        async with send, recv, anyio.create_task_group() as tg:
            tg.start_soon(watcher.run, send)
            async for event in recv:
                if event.kind == "sleep":
                    try:
                        await self.sleeps.going_to_sleep()
                    finally:  # never hold the machine awake, even if saving failed
                        watcher.ready_for_sleep(event.sleep_id)
                else:
                    await self.sleeps.resumed(event.slept)


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
