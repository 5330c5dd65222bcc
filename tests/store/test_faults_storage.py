"""Faults: the state database fails under a running daemon (issue 9).

Real SQLite files on real file systems: a small tmpfs of our own, filled to the last byte
or remounted read-only as the kernel does to a failing disk; files garbled in place; a
daemon process killed with SIGKILL in the middle of its writes. After each fault the
daemon answers a real `status` over its socket and what was committed is still stored.
"""

from __future__ import annotations

import functools
import json
import random
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from structlog.testing import capture_logs

from ogsd.config.load import load_config
from ogsd.config.paths import DB_NAME
from ogsd.daemon.daemon import Daemon, supervise
from ogsd.store.store import Store
from tests.daemon_helpers import (
    START_WAIT,
    WAIT,
    DaemonProcess,
    FakeClock,
    NotifySocket,
    api_client,
    keys,
    netns,
    running_daemon,
    write_resolv,
)
from tests.fault_helpers import (
    FAST,
    NO_BUS,
    SLOW,
    answers,
    anyio_backend,  # noqa: F401 (a fixture: uvloop)
    bare,
    fill,
    garble,
    gateways,
    loopback_pair,
    make_site,
    remount,
    scaled,
    site_dir,
    stored,
    tmpfs,
)
from tests.tlsserver import LoopbackServer


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    with loopback_pair(0.1) as pair:
        yield pair


@pytest.fixture
def disk() -> Iterator[Path]:
    """A 4 MiB tmpfs: the daemon's state directory lives in it."""
    with tmpfs() as path:
        yield path


# --- defects: store errors must not escape the daemon's tasks ------------------------------


@pytest.mark.anyio
async def test_store_failing_from_start_up_daemon_still_decides_and_answers(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    """Every store call fails from the start (the last decision, the state, the timer's
    expiry look-up): the daemon starts, decides from fresh probes and answers."""
    with site_dir() as directory:
        site = make_site(directory, gateways(servers), extra="period_minutes = 1\n")
        # continuous: the timer task runs, and reads the cache expiry at once.
        site.config.write_text(site.config.read_text().replace(
            "continuous = false", "continuous = true"))
        with Store.open(site.state / DB_NAME) as before:
            before.update_state(last_gateway=SLOW)
        store = Store.open(site.state / DB_NAME)
        store.close()  # from here on every store call is a StoreError
        daemon = Daemon(site.options(watch_network=False, watch_sleep=False),
                        load_config(site.config), store, clock=FakeClock(),
                        load_config=lambda: load_config(site.config))
        with capture_logs() as logs:
            async with daemon.feed.subscribe() as feed, anyio.create_task_group() as tg:
                await tg.start(daemon.run)
                with anyio.fail_after(WAIT):
                    first = await feed.__anext__()
                assert (first["source"], first["selected"]) == ("probes", FAST)
                assert (await answers(site.socket))["selected"] == FAST
                assert daemon.persister.unsaved > 0  # kept in memory, not lost
                tg.cancel_scope.cancel()
        events = [e["event"] for e in logs]
        assert "cannot read the last decision" in events
        assert "cannot read the cache expiry, waking on the period" in events
        assert not [e for e in logs if "exc_info" in e]  # no traceback
        # What was stored before is still there.
        with Store.open(site.state / DB_NAME) as after:
            assert after.load_state().last_gateway == SLOW


@pytest.mark.root
@pytest.mark.anyio
async def test_network_change_with_a_failing_store_is_not_dropped(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    with site_dir() as directory, netns() as ns:
        site = make_site(directory, gateways(servers))
        options = site.options(watch_sleep=False, netns=ns)
        async with running_daemon(options, site.config, FakeClock()) as (daemon, feed):
            await feed.next()
            daemon.store.close()
            write_resolv(site.resolv, "hotel.example", ["198.18.7.53"])
            moved = await feed.next()
            assert keys(moved) == ["hotel.example|198.18.7.53"]
            assert (await answers(site.socket))["selected"] == FAST


@pytest.mark.anyio
async def test_watcher_backoff_resets_after_a_healthy_run() -> None:
    """Three quick crashes back off 1, 2, 4 units; a crash after a healthy run waits 1
    unit again, not 8. (Units of 20 ms so the test takes a second, not minutes.)"""
    unit, healthy = 0.02, 0.3
    crashes: list[float] = []

    async def watcher() -> None:
        crashes.append(anyio.current_time())
        if len(crashes) == 4:
            await anyio.sleep(healthy * 1.5)  # healthy for a while, then fails again
        if len(crashes) <= 5:
            raise OSError("netlink socket closed")

    with capture_logs() as logs:
        with anyio.fail_after(WAIT):
            await supervise("test", watcher, backoff=(unit, 64 * unit), healthy_after=healthy)
    delays = [e["retry_in_s"] for e in logs if e["event"] == "watcher failed, restarting"]
    assert delays == [unit, 2 * unit, 4 * unit, unit, 2 * unit]


# --- full and read-only disks --------------------------------------------------------------


async def round_on(socket_path: Path) -> dict[str, Any]:
    async with api_client(socket_path) as client:
        return await client.result("evaluate", {"wait": True})


@pytest.mark.root
@pytest.mark.anyio
async def test_disk_full_publishes_keeps_in_memory_and_saves_later(
        servers: tuple[LoopbackServer, LoopbackServer], disk: Path) -> None:
    fast, _ = servers
    clock = FakeClock()
    with site_dir() as directory:
        site = make_site(directory, gateways(servers), state=disk / "state")
        options = site.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, site.config, clock) as (daemon, feed):
            first = await feed.next()
            assert await daemon.persister.save(())  # on disk
            filler = fill(disk)
            fast.delay = 0.3  # now SLOW is the better gateway
            clock.advance(timedelta(minutes=1))
            second = await round_on(site.socket)
            assert second["selected"] == SLOW
            assert not await daemon.persister.save(())  # the disk refused it
            # Published all the same: `ogsctl best` and status have the new choice.
            async with api_client(site.socket) as client:
                assert (await client.result("selection"))["selected"] == SLOW
            assert (await answers(site.socket))["selected"] == SLOW
            # Nothing committed before the fault is lost.
            decisions = await anyio.to_thread.run_sync(daemon.store.decisions)
            assert [bare(d) for d in decisions] == [bare(first)]
            assert await anyio.to_thread.run_sync(daemon.store.list_entries)
            # Space again: the next round's writes land after the ones kept in memory.
            filler.unlink()
            clock.advance(timedelta(minutes=1))
            third = await round_on(site.socket)
            assert await daemon.persister.save(())
        decisions, entries = stored(site.state)
        assert [bare(d) for d in decisions] == [bare(x) for x in (third, second, first)]
        assert entries[0].order[0] == SLOW


@pytest.mark.root
@pytest.mark.anyio
async def test_read_only_remount_daemon_starts_answers_and_loses_nothing(
        servers: tuple[LoopbackServer, LoopbackServer], disk: Path) -> None:
    """The kernel remounted the state's file system read-only (disk errors) while ogsd
    was stopped (it refuses a read-only remount while files are open for writing)."""
    fast, _ = servers
    clock = FakeClock()
    with site_dir() as directory:
        site = make_site(directory, gateways(servers), state=disk / "state")
        options = site.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, site.config, clock) as (daemon, feed):
            first = await feed.next()
        remount(disk, "ro")
        fast.delay = 0.3
        clock.advance(timedelta(hours=1))
        async with running_daemon(options, site.config, clock) as (daemon, feed):
            # The last decision is read back at start-up; then the cache answers.
            assert (await answers(site.socket))["decided_at"] == first["decided_at"]
            cached = await feed.next()
            assert (cached["source"], cached["selected"]) == ("cache", FAST)
            clock.advance(timedelta(minutes=1))
            second = await round_on(site.socket)
            assert second["selected"] == SLOW
            assert not await daemon.persister.save(())
            assert (await answers(site.socket))["selected"] == SLOW
        remount(disk, "rw")
        decisions, entries = stored(site.state)
        assert [bare(d) for d in decisions] == [bare(first)]
        assert entries[0].order[0] == FAST


@pytest.mark.root
@pytest.mark.anyio
async def test_disk_full_during_resume_no_crash_loop(
        servers: tuple[LoopbackServer, LoopbackServer], disk: Path) -> None:
    """The resume is decided and its sleep record cleared in memory; a daemon restarted
    on the still-full disk handles that resume again and keeps running."""
    with site_dir() as directory:
        site = make_site(directory, gateways(servers), state=disk / "state")
        clock = FakeClock()
        options = site.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, site.config, clock) as (daemon, feed):
            first = await feed.next()
            async with api_client(site.socket) as client:
                await client.result("notify.sleep")
                clock.advance(timedelta(minutes=30))
                assert await daemon.persister.save(())  # the sleep is on disk
                filler = fill(disk)
                reply = await client.result("notify.resume")
                assert reply == {"message": "resume handled"}
                resumed = await feed.next()
                assert resumed["source"] == "kept"
                again = await client.result("notify.resume")
                assert again == {"message": "resume already handled"}
                assert (await client.result("status"))["selected"] == resumed["selected"]
        # Restarted (as systemd would) with the disk still full.
        async with running_daemon(options, site.config, clock) as (daemon, feed):
            await feed.next()
            assert (await answers(site.socket))["selected"] is not None
        filler.unlink()
        decisions, entries = stored(site.state)
        assert bare(decisions[-1]) == bare(first)
        assert entries


# --- corruption at runtime -----------------------------------------------------------------


@pytest.mark.anyio
async def test_database_corrupted_at_runtime_is_set_aside_and_replaced(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    with site_dir() as directory:
        site = make_site(directory, gateways(servers))
        options = site.options(watch_network=False, watch_sleep=False)
        with capture_logs() as logs:
            async with running_daemon(options, site.config, FakeClock()) as (daemon, feed):
                await feed.next()
                assert await daemon.persister.save(())
                damaged = garble(site.state / DB_NAME)
                after = await round_on(site.socket)
                assert await daemon.persister.save(())
                assert (await answers(site.socket))["decided_at"] == after["decided_at"]
        decisions, entries = stored(site.state)
        assert bare(decisions[0]) == bare(after)
        assert entries
        # The damaged file is kept, byte for byte, for whoever wants to look at it.
        moved = sorted(site.state.glob(f"{DB_NAME}.corrupt-*"))
        assert moved[0].read_bytes() == damaged[""]
        assert not [e for e in logs if "exc_info" in e]  # no traceback


# --- SIGKILL in the middle of writes -------------------------------------------------------


def record(into: list[str], name: str, _fields: dict[str, object]) -> None:
    into.append(name)


def hammer(socket_path: Path, replies: list[dict[str, Any]], going: threading.Event,
           stop: threading.Event) -> None:
    """Forced rounds back to back (each one decision written) until the daemon dies;
    `going` is set after the third reply."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(socket_path))
            lines = sock.makefile("rwb")
            for n in range(1_000_000):
                if stop.is_set():
                    return
                request = {"id": n, "method": "evaluate", "params": {"wait": True}}
                lines.write(json.dumps(request).encode() + b"\n")
                lines.flush()
                line = lines.readline()
                if not line:
                    return
                replies.append(json.loads(line)["result"])
                if len(replies) == 3:
                    going.set()
    except OSError:
        return  # killed under us


@pytest.mark.anyio
async def test_kill_9_during_writes_always_opens_clean_with_the_last_commit(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    kills = scaled(5, 120)
    rng = random.Random(9)
    with site_dir() as directory, ExitStack() as stack:
        site = make_site(directory, gateways(servers))
        published: list[dict[str, Any]] = []
        for run in range(kills):
            notify = stack.enter_context(NotifySocket(directory / f"notify{run}"))
            daemon = DaemonProcess(
                config=site.config, state=site.state, socket_path=site.socket,
                log=directory / "log",
                env={"NOTIFY_SOCKET": str(notify.path), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS})
            stack.callback(daemon.stop)
            await notify.aexpect("READY=1", START_WAIT)
            replies: list[dict[str, Any]] = []
            going, stop = threading.Event(), threading.Event()
            thread = threading.Thread(target=hammer, args=(site.socket, replies, going, stop))
            thread.start()
            assert await anyio.to_thread.run_sync(going.wait, WAIT)
            # Somewhere in the middle of a stream of rounds and their writes.
            await anyio.sleep(rng.uniform(0, 0.3))
            daemon.signal(signal.SIGKILL)
            assert daemon.wait() == -signal.SIGKILL
            stop.set()
            thread.join(WAIT)
            published += replies
            recovered: list[str] = []
            with Store.open(site.state / DB_NAME,
                            on_event=functools.partial(record, recovered)) as store:
                decisions = store.decisions(500)
                assert store.list_entries()
            assert recovered == [], f"run {run}: the file needed recovery"
            # Rounds are written one after another: every round answered before the
            # last answered one was committed before the next began.
            committed = [bare(d) for d in decisions]
            for reply in replies[:-1]:
                assert bare(reply) in committed, (run, reply["decided_at"])
            assert committed.index(bare(replies[-2])) <= 1
        assert len(published) >= 3 * kills
