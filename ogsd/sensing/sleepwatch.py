"""Suspend and resume detection: logind's PrepareForSleep with a delay lock, or clock gaps.

With logind (system bus) ogsd holds a "delay" sleep inhibitor so it can save state before
the machine sleeps: PrepareForSleep(true) -> SleepEvent "sleep" -> the daemon saves and
calls `ready_for_sleep()` (or RELEASE_AFTER passes) -> lock released -> the machine
sleeps. PrepareForSleep(false) -> lock taken again -> SleepEvent "resume".

Without logind (no bus, no logind on it, or the connection dropped) suspends are inferred
from CLOCK_BOOTTIME - CLOCK_MONOTONIC: the two clocks tick together except while
suspended, when only boottime advances, so growth of their difference is time spent
asleep. Meanwhile the bus is retried with backoff; logind mode returns when it is back.
"""

from __future__ import annotations

import os
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
from dbus_fast import BusType, DBusError, Message, MessageType

# The parser connect() itself uses: a bad address is rejected at construction, as config.
from dbus_fast._private.address import parse_address
from dbus_fast.aio import MessageBus

log = structlog.get_logger(__name__)

LOGIND_NAME = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER_INTERFACE = "org.freedesktop.login1.Manager"
SLEEP_MATCH = (
    f"type='signal',sender='{LOGIND_NAME}',path='{LOGIND_PATH}',"
    f"interface='{MANAGER_INTERFACE}',member='PrepareForSleep'"
)
SYSTEM_BUS_DEFAULT = "unix:path=/var/run/dbus/system_bus_socket"
# Inhibit(what, who, why, mode): "delay" lets the daemon save state, never blocks sleep.
INHIBIT_ARGS = ("sleep", "ogsd", "save state before suspend", "delay")

# Errors meaning "no logind here" (rather than "logind said no").
LOGIND_ABSENT = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
})
# logind sleeps anyway after InhibitDelayMaxSec (default 5 s, logind.conf(5)); release a
# second before so our log, not a logind timeout, says that the daemon was too slow.
RELEASE_AFTER = 4.0
# Clock mode notices a resume at most this late. A network is rarely usable sooner after
# resume (Wi-Fi association and DHCP take seconds), and three vDSO clock reads every 2 s
# cost nothing measurable, so a shorter period would buy nothing.
POLL_INTERVAL = 2.0
# Gap growth below this is not reported: a suspend under a second changes nothing a
# gateway choice depends on, and it keeps clock-read noise far from a false resume.
SLEEP_THRESHOLD = 1.0
# A sample whose two monotonic reads are further apart was descheduled mid-read (a loaded
# 2-core box); read again rather than risk taking the stall for a short suspend.
MAX_READ_SKEW = 0.010
READ_ATTEMPTS = 3
# Reconnect backoff: a bus restart takes well under a second, so retry soon; then at
# most once a minute, so a machine without logind is not woken for nothing.
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
# A bus that accepts the connection but never answers must not stall the watcher.
CALL_TIMEOUT = 5.0
# PrepareForSleep comes in pairs, seconds apart; a backlog means the watcher is stuck.
SIGNAL_BUFFER = 16

Clock = Callable[[], float]
SleepKind = Literal["sleep", "resume"]
SleepSource = Literal["logind", "clock", "socket"]
Mode = Literal["logind", "clock"]


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


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


@dataclass(frozen=True, slots=True)
class ClockSample:
    """CLOCK_BOOTTIME and CLOCK_MONOTONIC read together, in seconds."""

    boottime: float
    monotonic: float

    @property
    def asleep(self) -> float:
        """Total time suspended since boot: boottime advances in suspend, monotonic not."""
        return self.boottime - self.monotonic


def slept_between(
    before: ClockSample, after: ClockSample, threshold: float = SLEEP_THRESHOLD
) -> timedelta | None:
    """Time suspended between two samples, or None if under `threshold` seconds."""
    gap = after.asleep - before.asleep
    return timedelta(seconds=gap) if gap >= threshold else None


class SleepWatcher:
    """Reports suspend and resume; holds logind's delay lock while logind is reachable."""

    def __init__(
        self,
        *,
        bus_address: str | None = None,
        clock_boottime: Clock = _boottime,
        clock_monotonic: Clock = _monotonic,
        clock_wall: Clock = time.time,
        poll_interval: float = POLL_INTERVAL,
        sleep_threshold: float = SLEEP_THRESHOLD,
        release_after: float = RELEASE_AFTER,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        if bus_address is not None:
            try:
                parse_address(bus_address)
            except ValueError as exc:
                raise ValueError(f"invalid D-Bus address {bus_address!r}: {exc}") from None
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
        self._fd: int | None = None  # logind's inhibitor: sleep waits while it is open
        self._ready: anyio.Event | None = None  # set while a sleep waits for the daemon
        self._sleep_id = 0  # the latest PrepareForSleep(true)
        self._sleep_sample: ClockSample | None = None  # taken at PrepareForSleep(true)
        self._last: ClockSample | None = None  # clock mode's previous sample
        self._refused = False  # logind said no to the lock in this session

    @property
    def inhibitor_held(self) -> bool:
        """Whether we hold logind's delay lock (the machine cannot sleep without us)."""
        return self._fd is not None

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
        self._release("daemon ready for sleep")
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
            self._release("watcher stopping")
            self._mode = None
            self._ready = None
            self._last = None

    @property
    def _bus_name(self) -> str:
        if self._bus_address is not None:
            return self._bus_address
        # The D-Bus specification's default, as dbus-fast resolves it: logs name the path.
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", SYSTEM_BUS_DEFAULT)

    # -- logind -------------------------------------------------------------------------

    async def _logind_session(
        self,
        send: ObjectSendStream[SleepEvent],
        started: Callable[[Mode], Awaitable[None]],
    ) -> bool:
        """Watch logind until the bus drops; False if logind could not be reached."""
        signals_tx, signals_rx = anyio.create_memory_object_stream[bool](SIGNAL_BUFFER)
        bus: MessageBus | None = None
        self._refused = False
        try:
            with signals_tx, signals_rx:
                add_match = Message(
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                    body=[SLEEP_MATCH],
                )
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        bus = await MessageBus(
                            bus_address=self._bus_address,
                            bus_type=BusType.SYSTEM,
                            negotiate_unix_fd=True,
                        ).connect()
                        # Subscribe before taking the lock: a sleep may start in between.
                        bus.add_message_handler(partial(self._on_message, signals_tx))
                        await _call(bus, add_match)
                        await self._try_inhibitor(bus)
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
            self._release("leaving logind mode")
            self._ready = None
            self._sleep_sample = None
            if bus is not None:
                bus.disconnect()
                # Let dbus-fast close its socket before we go on (or the loop ends).
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(CALL_TIMEOUT),
                    suppress(Exception),
                ):
                    await _disconnected(bus)

    def _log_unavailable(self, exc: Exception) -> None:
        if isinstance(exc, DBusError):
            error = f"{exc.type}: {exc.text}"
        else:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._mode == "clock":  # still down: said so already
            log.debug("logind still unavailable", bus=self._bus_name, error=error)
        else:
            log.warning(
                "logind unavailable; detecting suspend from clock gaps",
                bus=self._bus_name, error=error,
            )

    def _on_message(self, signals: MemoryObjectSendStream[bool], msg: Message) -> bool:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.interface == MANAGER_INTERFACE
            and msg.member == "PrepareForSleep"
            and msg.path == LOGIND_PATH
            and msg.signature == "b"
        ):
            try:
                signals.send_nowait(bool(msg.body[0]))
            except anyio.WouldBlock:
                log.error("PrepareForSleep backlog; signal dropped", start=msg.body[0])
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # arrived while this session was closing: the next one re-subscribes
            return True
        return False

    async def _watch_logind(
        self,
        bus: MessageBus,
        signals: ObjectReceiveStream[bool],
        send: ObjectSendStream[SleepEvent],
    ) -> None:
        async with anyio.create_task_group() as tg:

            async def until_disconnected() -> None:
                with suppress(Exception):  # how it ended is logged by the caller
                    await _disconnected(bus)
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
        self._release("ready_for_sleep timeout")

    async def _on_resume(self, bus: MessageBus, send: ObjectSendStream[SleepEvent]) -> None:
        if self._ready is not None:
            self._ready.set()  # stops the release timer: the lock is kept if still held
            self._ready = None
        before, self._sleep_sample = self._sleep_sample, None
        slept = None
        if before is not None:  # logind says it slept: any gap, even under the threshold
            slept = timedelta(seconds=max(0.0, self._sample().asleep - before.asleep))
        if self._fd is None and not self._refused:
            try:
                with anyio.fail_after(CALL_TIMEOUT):
                    await self._take_inhibitor(bus)
            except Exception as exc:  # the next resume tries again; sleep is not held up
                log.error("could not take the sleep inhibitor again", error=str(exc))
        log.info("system resumed", slept_s=None if slept is None else slept.total_seconds())
        await send.send(SleepEvent("resume", "logind", at=self._now(), slept=slept))

    async def _try_inhibitor(self, bus: MessageBus) -> None:
        """Take the lock; if logind is there but refuses it, watch signals without it."""
        try:
            await self._take_inhibitor(bus)
        except DBusError as exc:
            if exc.type in LOGIND_ABSENT:
                raise
            self._refused = True  # policy, not chance: asking at every resume is noise
            log.warning(
                "logind refused the sleep inhibitor; suspend will not wait for ogsd",
                error=f"{exc.type}: {exc.text}",
            )

    async def _take_inhibitor(self, bus: MessageBus) -> None:
        reply = await _call(bus, Message(
            destination=LOGIND_NAME, path=LOGIND_PATH, interface=MANAGER_INTERFACE,
            member="Inhibit", signature="ssss", body=list(INHIBIT_ARGS),
        ))
        fds = list(reply.unix_fds)
        index = reply.body[0] if reply.signature == "h" else -1
        if not 0 <= index < len(fds):
            for fd in fds:
                os.close(fd)
            raise RuntimeError("Inhibit returned no file descriptor (fd passing refused?)")
        self._release("replaced")
        self._fd = fds.pop(index)
        for fd in fds:
            os.close(fd)
        log.debug("sleep inhibitor taken", fd=self._fd)

    def _release(self, why: str) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            log.debug("sleep inhibitor released", why=why)

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
        for _ in range(READ_ATTEMPTS):
            first = self._monotonic()
            boot = self._boottime()
            last = self._monotonic()
            if last - first <= MAX_READ_SKEW:
                break
        return ClockSample(boottime=boot, monotonic=(first + last) / 2)

    def _now(self) -> datetime:
        return _utc(self._wall())


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def _call(bus: MessageBus, msg: Message) -> Message:
    """Call a method; an error reply raises DBusError."""
    reply = await bus.call(msg)
    if reply.message_type is MessageType.ERROR:
        text = str(reply.body[0]) if reply.body else ""
        raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", text, reply)
    return reply


async def _disconnected(bus: MessageBus) -> None:
    """Wait until `bus` is closed (raises if it failed rather than being disconnected)."""
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # untyped upstream
