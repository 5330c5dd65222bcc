"""Sleep watcher against a real dbus-daemon with a fake logind, and with driven clocks.

A real suspend cannot happen here (a shared 2-core VM): logind is the only fake, and the
clock gap that a suspend leaves is produced by injected clock functions.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from structlog.testing import capture_logs

from ogsd.sensing.clockgap import ClockSample, slept_between
from ogsd.sensing.sleepwatch import Mode, SleepEvent, SleepWatcher
from tests.fakelogind import LOGIND_NAME, LOGIND_PATH, MANAGER_INTERFACE, FakeLogind

if TYPE_CHECKING:
    from tests.dbus_fixtures import DBusDaemon

# Bound on every wait for the watcher; far above what any step takes when it works.
WAIT = 5.0
WALL = 1_700_000_000.0  # injected wall clock: event times are exact
NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The daemon runs on uvloop; dbus-fast is asyncio-only, so both asyncio loops."""
    param: tuple[str, dict[str, Any]] = request.param
    return param


class Clocks:
    """Monotonic and boottime that move only when told; `suspend` advances boottime only."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.asleep = 0.0
        self.samples = 0  # boottime is read once per watcher sample
        self._sampled = anyio.Event()

    def monotonic(self) -> float:
        return self.mono

    def boottime(self) -> float:
        self.samples += 1
        self._sampled.set()
        return self.mono + self.asleep

    def suspend(self, seconds: float) -> None:
        self.asleep += seconds

    async def wait_samples(self, count: int) -> None:
        """Wait until the watcher has taken `count` more samples."""
        target = self.samples + count
        with anyio.fail_after(WAIT):
            while self.samples < target:
                self._sampled = anyio.Event()
                await self._sampled.wait()


def make_watcher(clocks: Clocks, bus_address: str, **kwargs: Any) -> SleepWatcher:
    return SleepWatcher(
        bus_address=bus_address,
        clock_boottime=clocks.boottime,
        clock_monotonic=clocks.monotonic,
        clock_wall=lambda: WALL,
        **kwargs,
    )


@asynccontextmanager
async def running(
    watcher: SleepWatcher,
) -> AsyncIterator[tuple[Mode, MemoryObjectReceiveStream[SleepEvent]]]:
    """Run `watcher` in a task group; yield its first mode and its event stream."""
    send, receive = anyio.create_memory_object_stream[SleepEvent](16)
    with send, receive:
        async with anyio.create_task_group() as tg:
            mode = await tg.start(watcher.run, send)
            yield mode, receive
            tg.cancel_scope.cancel()


async def next_event(receive: MemoryObjectReceiveStream[SleepEvent]) -> SleepEvent:
    with anyio.fail_after(WAIT):
        return await receive.receive()


async def wait_set(event: Any) -> None:
    with anyio.fail_after(WAIT):
        await event.wait()


# Functions, not attribute reads: mypy would narrow a property across awaits.
def held(watcher: SleepWatcher) -> bool:
    return watcher.inhibitor_held


def mode_of(watcher: SleepWatcher) -> Mode | None:
    return watcher.mode


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# -- the pure gap rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gap", "expected"),
    [
        (0.0, None),
        (0.5, None),
        (0.999, None),
        (-0.2, None),  # boottime read late in the previous sample: never a suspend
        (1.0, 1.0),
        (7.25, 7.25),
        (86_400.0, 86_400.0),
    ],
)
def test_slept_between(gap: float, expected: float | None) -> None:
    before = ClockSample(boottime=500.0, monotonic=400.0)  # 100 s asleep since boot
    after = ClockSample(boottime=530.0 + gap, monotonic=430.0)  # 30 s awake, then gap
    slept = slept_between(before, after, threshold=1.0)
    assert slept == (None if expected is None else timedelta(seconds=expected))


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"bus_address": "no-transport"}, "invalid D-Bus address 'no-transport'"),
        ({"bus_address": "unix:path"}, "invalid D-Bus address"),
        ({"poll_interval": 0}, "poll_interval must be a positive"),
        ({"release_after": -1.0}, "release_after must be a positive"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        SleepWatcher(**kwargs)


# -- logind mode ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_takes_delay_lock_at_start_and_releases_on_stop(fake_logind: FakeLogind) -> None:
    watcher = SleepWatcher(bus_address=fake_logind.address)
    async with running(watcher) as (mode, _):
        assert mode == "logind"
        assert held(watcher)
        [lock] = fake_logind.inhibitors
        assert (lock.what, lock.who, lock.mode) == ("sleep", "ogsd", "delay")
        assert (lock.uid, lock.pid) == (os.getuid(), os.getpid())
        # Seen from another client too, as `systemd-inhibit --list` would.
        rows = await list_inhibitors(fake_logind.address)
        assert rows == [("sleep", "ogsd", "save state before suspend", "delay",
                         os.getuid(), os.getpid())]
    await wait_set(lock.released)
    assert not held(watcher)
    assert mode_of(watcher) is None


@pytest.mark.anyio
async def test_sleep_holds_lock_until_ready_then_resume_retakes_it(
    fake_logind: FakeLogind,
) -> None:
    clocks = Clocks()
    watcher = make_watcher(clocks, fake_logind.address)
    async with running(watcher) as (_, events):
        first = await fake_logind.next_inhibitor(1)
        fake_logind.prepare_for_sleep(True)
        assert await next_event(events) == SleepEvent("sleep", "logind", at=utc(WALL))
        # The daemon is saving state: the machine must not sleep yet.
        assert first.active
        assert held(watcher)
        watcher.ready_for_sleep()
        await wait_set(first.released)
        assert not held(watcher)

        clocks.suspend(42.5)
        fake_logind.prepare_for_sleep(False)
        resume = await next_event(events)
        assert resume == SleepEvent("resume", "logind", at=utc(WALL),
                                    slept=timedelta(seconds=42.5))
        second = await fake_logind.next_inhibitor(2)
        assert second.active
        assert held(watcher)
        assert fake_logind.active == [second]


@pytest.mark.anyio
async def test_lock_released_when_daemon_never_ready(fake_logind: FakeLogind) -> None:
    watcher = SleepWatcher(bus_address=fake_logind.address, release_after=0.2)
    with capture_logs() as logs:
        async with running(watcher) as (_, events):
            lock = await fake_logind.next_inhibitor(1)
            fake_logind.prepare_for_sleep(True)
            assert (await next_event(events)).kind == "sleep"
            started = anyio.current_time()
            await wait_set(lock.released)
            waited = anyio.current_time() - started
            assert not held(watcher)
    assert 0.15 <= waited < 2.0  # ~release_after; the event was sent first
    assert any("not ready for sleep in time" in entry["event"] for entry in logs)


@pytest.mark.anyio
async def test_aborted_sleep_keeps_the_lock(fake_logind: FakeLogind) -> None:
    watcher = SleepWatcher(bus_address=fake_logind.address, release_after=0.2)
    async with running(watcher) as (_, events):
        lock = await fake_logind.next_inhibitor(1)
        fake_logind.prepare_for_sleep(True)
        await next_event(events)
        fake_logind.prepare_for_sleep(False)  # suspend failed before we released
        assert (await next_event(events)).kind == "resume"
        with anyio.move_on_after(0.5):  # beyond release_after: the timer must be off
            await lock.released.wait()
        assert lock.active
        watcher.ready_for_sleep()  # no sleep pending: must not drop the lock
        assert lock.active
        assert len(fake_logind.inhibitors) == 1


@pytest.mark.anyio
async def test_ready_for_an_earlier_sleep_does_not_release_the_next(
        fake_logind: FakeLogind) -> None:
    """Bookkeeping for sleep 1 finishing after sleep 2 began must not let sleep 2 go."""
    watcher = SleepWatcher(bus_address=fake_logind.address)
    async with running(watcher) as (_, events):
        lock = await fake_logind.next_inhibitor(1)
        fake_logind.prepare_for_sleep(True)
        first = await next_event(events)
        fake_logind.prepare_for_sleep(False)  # that suspend failed
        assert (await next_event(events)).kind == "resume"
        fake_logind.prepare_for_sleep(True)
        second = await next_event(events)
        assert second.sleep_id == first.sleep_id + 1
        watcher.ready_for_sleep(first.sleep_id)
        assert lock.active
        watcher.ready_for_sleep(second.sleep_id)
        await wait_set(lock.released)


@pytest.mark.anyio
async def test_refused_lock_still_reports_sleep(dbus_daemon: DBusDaemon) -> None:
    logind = FakeLogind(dbus_daemon.address, refuse_inhibit=True)
    await logind.start()
    try:
        with capture_logs() as logs:
            async with running(SleepWatcher(bus_address=dbus_daemon.address)) as (mode, events):
                assert mode == "logind"
                logind.prepare_for_sleep(True)
                assert (await next_event(events)).kind == "sleep"
                logind.prepare_for_sleep(False)
                assert (await next_event(events)).kind == "resume"
        assert logind.inhibitors == []
        problems = [e["event"] for e in logs if e["log_level"] in {"warning", "error"}]
        assert problems == ["logind refused the sleep inhibitor; suspend will not wait for ogsd"]
    finally:
        await logind.stop()
        logind.close()


async def list_inhibitors(address: str) -> list[tuple[Any, ...]]:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination=LOGIND_NAME, path=LOGIND_PATH,
                                       interface=MANAGER_INTERFACE, member="ListInhibitors"))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        rows: list[tuple[Any, ...]] = reply.body[0]
        return rows
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


# -- clock mode ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["no-bus", "no-logind"])
async def test_falls_back_to_clock_and_says_so(where: str, dbus_daemon: DBusDaemon) -> None:
    address = NO_BUS if where == "no-bus" else dbus_daemon.address
    with capture_logs() as logs:
        async with running(SleepWatcher(bus_address=address)) as (mode, _):
            assert mode == "clock"
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "logind unavailable; detecting suspend from clock gaps"
    expected = "FileNotFoundError" if where == "no-bus" else "ServiceUnknown"
    assert expected in warning["error"]


@pytest.mark.anyio
async def test_clock_gap_reports_sleep_and_resume() -> None:
    clocks = Clocks()
    # Retry far away: this test is about the clocks, not reconnecting.
    watcher = make_watcher(clocks, NO_BUS, poll_interval=0.01, retry_initial=60.0)
    async with running(watcher) as (mode, events):
        assert mode == "clock"
        clocks.suspend(0.6)  # under the 1 s threshold: absorbed, no event
        await clocks.wait_samples(2)
        clocks.mono += 3.0  # awake time between two samples
        clocks.suspend(30.0)
        sleep, resume = await next_event(events), await next_event(events)
    assert resume == SleepEvent("resume", "clock", at=utc(WALL), slept=timedelta(seconds=30))
    # Started between the samples: mid-window estimate, within half the awake time.
    assert sleep == SleepEvent("sleep", "clock", at=utc(WALL - 30.0 - 1.5))


@pytest.mark.anyio
async def test_bus_loss_falls_back_then_recovers(
    dbus_daemon: DBusDaemon, fake_logind: FakeLogind
) -> None:
    clocks = Clocks()
    watcher = make_watcher(clocks, dbus_daemon.address, poll_interval=0.01,
                           retry_initial=0.05, retry_max=0.2)
    with capture_logs() as logs:
        async with running(watcher) as (mode, events):
            assert mode == "logind"
            lock = await fake_logind.next_inhibitor(1)

            dbus_daemon.stop()
            await wait_set(lock.released)  # a lock with no logind behind it is dropped
            await clocks.wait_samples(2)  # clock mode has its baseline
            assert mode_of(watcher) == "clock"
            clocks.suspend(10.0)
            assert (await next_event(events)).source == "clock"
            assert (await next_event(events)).slept == timedelta(seconds=10)

            dbus_daemon.start()
            logind = FakeLogind(dbus_daemon.address)
            await logind.start()
            try:
                await logind.next_inhibitor(1)
                logind.prepare_for_sleep(True)
                event = await next_event(events)
                assert (event.kind, event.source) == ("sleep", "logind")
                assert mode_of(watcher) == "logind"
            finally:
                await logind.stop()
                logind.close()
    messages = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert messages[0].startswith("lost the D-Bus connection")


@pytest.mark.anyio
async def test_fake_logind_is_driven_over_the_bus(fake_logind: FakeLogind) -> None:
    watcher = SleepWatcher(bus_address=fake_logind.address)
    async with running(watcher) as (_, events):
        # Another process (as a hand-run test or a shell script would) asks for the signal.
        await anyio.run_process([
            "dbus-send", f"--bus={fake_logind.address}", "--print-reply",
            f"--dest={LOGIND_NAME}", LOGIND_PATH,
            "org.ogsd.Test.FakeLogind.EmitPrepareForSleep", "boolean:true",
        ])
        event = await next_event(events)
    assert (event.kind, event.source) == ("sleep", "logind")
