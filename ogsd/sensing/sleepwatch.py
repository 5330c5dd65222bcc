"""Suspend and resume detection: logind's PrepareForSleep with a delay lock, or clock gaps.

With logind (system bus) ogsd holds a "delay" sleep inhibitor so it can save state before
the machine sleeps: PrepareForSleep(true) -> SleepEvent "sleep" -> the daemon saves and
calls `ready_for_sleep()` (or RELEASE_AFTER passes) -> lock released -> the machine
sleeps. PrepareForSleep(false) -> lock taken again -> SleepEvent "resume".

Without logind (no bus, no logind on it, or the connection dropped) suspends are inferred
from CLOCK_BOOTTIME - CLOCK_MONOTONIC: the two clocks tick together except while
suspended, when only boottime advances, so growth of their difference is time spent
asleep (ogsd.sensing.clockgap). Meanwhile the bus is retried with backoff; logind mode
returns when it is back. The D-Bus side is ogsd.sensing.logind.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Literal

import anyio
import structlog
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from dbus_fast.aio import MessageBus

from ogsd.sensing import logind
from ogsd.sensing.clockgap import (
    SLEEP_THRESHOLD,
    Clock,
    ClockSample,
    boottime,
    monotonic,
    read_clocks,
    slept_between,
)
from ogsd.sensing.logind import CALL_TIMEOUT, Inhibitor

log = structlog.get_logger(__name__)

# logind sleeps anyway after InhibitDelayMaxSec (default 5 s, logind.conf(5)); release a
# second before so our log, not a logind timeout, says that the daemon was too slow.
RELEASE_AFTER = 4.0
# Clock mode notices a resume at most this late. A network is rarely usable sooner after
# resume (Wi-Fi association and DHCP take seconds), and three vDSO clock reads every 2 s
# cost nothing measurable, so a shorter period would buy nothing.
POLL_INTERVAL = 2.0
# Reconnect backoff: a bus restart takes well under a second, so retry soon; then at
# most once a minute, so a machine without logind is not woken for nothing.
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
# PrepareForSleep comes in pairs, seconds apart; a backlog means the watcher is stuck.
SIGNAL_BUFFER = 16

SleepKind = Literal["sleep", "resume"]
SleepSource = Literal["logind", "clock", "socket"]
Mode = Literal["logind", "clock"]


@dataclass(frozen=True, slots=True)
class SleepEvent:
    """The machine is about to sleep (or, from clocks, slept), or it has resumed."""

    kind: SleepKind
    source: SleepSource
    at: datetime  # when it happened; a clock-detected sleep's start is an estimate
    slept: timedelta | None = None  # on resume, time spent suspended when known
    # Which sleep a "sleep" event is: `ready_for_sleep(sleep_id)` releases the lock for
    # that one only (bookkeeping for an earlier sleep must not let the next one go).
    sleep_id: int = field(default=0, compare=False)


class SleepWatcher:
    """Reports suspend and resume; holds logind's delay lock while logind is reachable."""

    def __init__(
        self,
        *,
        bus_address: str | None = None,
        clock_boottime: Clock = boottime,
        clock_monotonic: Clock = monotonic,
        clock_wall: Clock = time.time,
        poll_interval: float = POLL_INTERVAL,
        sleep_threshold: float = SLEEP_THRESHOLD,
        release_after: float = RELEASE_AFTER,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        if bus_address is not None:
            logind.check_bus_address(bus_address)
        durations = {
            "poll_interval": poll_interval,
            "sleep_threshold": sleep_threshold,
            "release_after": release_after,
            "retry_initial": retry_initial,
            "retry_max": retry_max,
        }
        for name, value in durations.items():
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value}")
        self._bus_address = bus_address
        self._boottime = clock_boottime
        self._monotonic = clock_monotonic
        self._wall = clock_wall
        self._poll_interval = poll_interval
        self._threshold = sleep_threshold
        self._release_after = release_after
        self._retry_initial = retry_initial
        self._retry_max = max(retry_max, retry_initial)
        self._mode: Mode | None = None
        self._inhibitor = Inhibitor()  # logind's delay lock: sleep waits while it is held
        self._ready: anyio.Event | None = None  # set while a sleep waits for the daemon
        self._sleep_id = 0  # the latest PrepareForSleep(true)
        self._sleep_sample: ClockSample | None = None  # taken at PrepareForSleep(true)
        self._last: ClockSample | None = None  # clock mode's previous sample

    @property
    def inhibitor_held(self) -> bool:
        """Whether we hold logind's delay lock (the machine cannot sleep without us)."""
        return self._inhibitor.held

    @property
    def mode(self) -> Mode | None:
        """How suspends are detected right now; None when not running."""
        return self._mode

    def ready_for_sleep(self, sleep_id: int | None = None) -> None:
        """The daemon has saved its state for sleep `sleep_id` (None: the pending one):
        release the lock so the machine can sleep."""
        if self._ready is None:
            return  # no sleep pending: keep the lock for the next one
        if sleep_id is not None and sleep_id != self._sleep_id:
            log.debug("ready for an earlier sleep; the pending one still waits",
                      ready_for=sleep_id, pending=self._sleep_id)
            return
        self._inhibitor.release("daemon ready for sleep")
        self._ready.set()

    async def run(
        self,
        send: ObjectSendStream[SleepEvent],
        *,
        task_status: TaskStatus[Mode] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send sleep events until cancelled; `task_status` gets the first mode."""
        status: TaskStatus[Mode] = task_status

        async def started(mode: Mode) -> None:
            nonlocal status
            self._mode = mode
            status.started(mode)
            status = anyio.TASK_STATUS_IGNORED

        retry = self._retry_initial
        try:
            while True:
                if await self._logind_session(send, started):
                    retry = self._retry_initial
                    log.warning(
                        "lost the D-Bus connection; detecting suspend from clock gaps "
                        "until it is back", bus=self._bus_name
                    )
                if self._mode != "clock":
                    self._last = self._sample()
                    await started("clock")
                await self._watch_clock(send, retry)
                retry = min(retry * 2, self._retry_max)
        finally:
            self._inhibitor.release("watcher stopping")
            self._mode = None
            self._ready = None
            self._last = None

    @property
    def _bus_name(self) -> str:
        return logind.bus_name(self._bus_address)

    # -- logind -------------------------------------------------------------------------

    async def _logind_session(
        self,
        send: ObjectSendStream[SleepEvent],
        started: Callable[[Mode], Awaitable[None]],
    ) -> bool:
        """Watch logind until the bus drops; False if logind could not be reached."""
        signals_tx, signals_rx = anyio.create_memory_object_stream[bool](SIGNAL_BUFFER)
        bus: MessageBus | None = None
        try:
            with signals_tx, signals_rx:
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        bus = await logind.connect(self._bus_address)
                        # Subscribe before taking the lock: a sleep may start in between.
                        await logind.subscribe(bus, partial(self._on_prepare, signals_tx))
                        await self._inhibitor.try_take(bus)
                # dbus-fast documents plain Exception for "any other connection error".
                except Exception as exc:
                    self._log_unavailable(exc)
                    return False
                if self._last is not None:
                    # Leaving clock mode: report a suspend since its last sample.
                    await self._check_clock(send)
                    self._last = None
                log.info("watching logind for suspend", bus=self._bus_name)
                await started("logind")
                await self._watch_logind(bus, signals_rx, send)
                return True
        finally:
            self._inhibitor.release("leaving logind mode")
            self._ready = None
            self._sleep_sample = None
            if bus is not None:
                await logind.disconnect(bus)

    def _log_unavailable(self, exc: Exception) -> None:
        error = logind.describe(exc)
        if self._mode == "clock":  # still down: said so already
            log.debug("logind still unavailable", bus=self._bus_name, error=error)
        else:
            log.warning(
                "logind unavailable; detecting suspend from clock gaps",
                bus=self._bus_name, error=error,
            )

    def _on_prepare(self, signals: MemoryObjectSendStream[bool], start: bool) -> None:
        try:
            signals.send_nowait(start)
        except anyio.WouldBlock:
            log.error("PrepareForSleep backlog; signal dropped", start=start)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # arrived while this session was closing: the next one re-subscribes

    async def _watch_logind(
        self,
        bus: MessageBus,
        signals: ObjectReceiveStream[bool],
        send: ObjectSendStream[SleepEvent],
    ) -> None:
        async with anyio.create_task_group() as tg:

            async def until_disconnected() -> None:
                with suppress(Exception):  # how it ended is logged by the caller
                    await logind.disconnected(bus)
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnected)
            async for start in signals:
                if start:
                    await self._on_sleep(tg, send)
                else:
                    await self._on_resume(bus, send)

    async def _on_sleep(self, tg: TaskGroup, send: ObjectSendStream[SleepEvent]) -> None:
        if self._ready is not None:
            return  # a repeated PrepareForSleep(true): that sleep is already handled
        self._sleep_sample = self._sample()
        ready = self._ready = anyio.Event()
        self._sleep_id += 1
        tg.start_soon(self._release_unless_ready, ready)
        log.info("system is preparing to sleep", inhibitor_held=self.inhibitor_held)
        await send.send(SleepEvent("sleep", "logind", at=self._now(),
                                   sleep_id=self._sleep_id))

    async def _release_unless_ready(self, ready: anyio.Event) -> None:
        with anyio.move_on_after(self._release_after):
            await ready.wait()
            return
        log.warning(
            "daemon not ready for sleep in time; releasing the inhibitor anyway",
            after_s=self._release_after,
        )
        self._inhibitor.release("ready_for_sleep timeout")

    async def _on_resume(self, bus: MessageBus, send: ObjectSendStream[SleepEvent]) -> None:
        if self._ready is not None:
            self._ready.set()  # stops the release timer: the lock is kept if still held
            self._ready = None
        before, self._sleep_sample = self._sleep_sample, None
        slept = None
        if before is not None:  # logind says it slept: any gap, even under the threshold
            slept = timedelta(seconds=max(0.0, self._sample().asleep - before.asleep))
        if not self._inhibitor.held and not self._inhibitor.refused:
            try:
                with anyio.fail_after(CALL_TIMEOUT):
                    await self._inhibitor.take(bus)
            except Exception as exc:  # the next resume tries again; sleep is not held up
                log.error("could not take the sleep inhibitor again", error=str(exc))
        log.info("system resumed", slept_s=None if slept is None else slept.total_seconds())
        await send.send(SleepEvent("resume", "logind", at=self._now(), slept=slept))

    # -- clocks -------------------------------------------------------------------------

    async def _watch_clock(self, send: ObjectSendStream[SleepEvent], duration: float) -> None:
        # A deadline, not a cancel scope: cancelling could split a sleep/resume pair.
        deadline = anyio.current_time() + duration
        while (left := deadline - anyio.current_time()) > 0:
            await anyio.sleep(min(self._poll_interval, left))  # the poll period itself
            await self._check_clock(send)

    async def _check_clock(self, send: ObjectSendStream[SleepEvent]) -> None:
        before, after = self._last, self._sample()
        self._last = after
        if before is None or (slept := slept_between(before, after, self._threshold)) is None:
            return
        now = self._wall()
        # The suspend began between the two samples, minus the time slept; the middle of
        # that window is off by at most half the awake time between samples.
        awake = after.monotonic - before.monotonic
        began = now - slept.total_seconds() - awake / 2
        log.info("resumed from suspend (clock gap)", slept_s=round(slept.total_seconds(), 3))
        await send.send(SleepEvent("sleep", "clock", at=_utc(began)))
        await send.send(SleepEvent("resume", "clock", at=_utc(now), slept=slept))

    def _sample(self) -> ClockSample:
        return read_clocks(self._boottime, self._monotonic)

    def _now(self) -> datetime:
        return _utc(self._wall())


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
