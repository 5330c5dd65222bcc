"""Network change detection: netlink links/addresses/routes and resolv.conf, debounced.

pyroute2 (0.9.x) cannot open its netlink socket on a uvloop loop, and the daemon runs
uvloop. So the watcher runs in its own thread with no event loop at all: a plain netlink
socket, an inotify fd (ogsd.sensing.dirwatch) and a wake-up pipe under `select()`,
pyroute2's message classes to encode dump requests and decode replies (ogsd.sensing.routes).
Changes reach the main loop through `call_soon_threadsafe`, so any asyncio loop (uvloop
included) can consume them.

Each change is confirmed by a fresh dump: events whose net effect is nil (an address
added then removed, an IPv6 lifetime refresh on every router advertisement) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from ogsd.sensing.dirwatch import DirWatch
from ogsd.sensing.routes import (
    JOIN_TIMEOUT,
    NetSnapshot,
    NetWatchError,
    RoutingState,
    dump_state,
    enter_netns,
    parse_gateways,
)
from ogsd.sensing.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

log = structlog.get_logger(__name__)

# A network join (carrier, DHCP, RA, routes) lands within a second or two: report it once.
DEBOUNCE_DEFAULT = 2.0
# A link that flaps forever must still be reported: wait at most this many quiet periods.
MAX_DELAY_FACTOR = 5
# A join sends hundreds of messages at once; the kernel caps the request at rmem_max
# and ENOBUFS is survived anyway (reopen + resync).
RCVBUF_DEFAULT = 1 << 20

REASON_LINK, REASON_ADDR, REASON_ROUTE = "link", "addr", "route"
REASON_RESOLV_CONF, REASON_RESYNC = "resolv.conf", "resync"
# rtnetlink message type -> reason (RTM_NEW/DELLINK, NEW/DELADDR, NEW/DELROUTE).
_EVENT_REASONS = {
    16: REASON_LINK,
    17: REASON_LINK,
    20: REASON_ADDR,
    21: REASON_ADDR,
    24: REASON_ROUTE,
    25: REASON_ROUTE,
}
_GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """One debounced burst of changes: what kinds of event, and the state after it."""

    reasons: tuple[str, ...]  # sorted subset of link, addr, route, resolv.conf, resync
    snapshot: NetSnapshot


# What the watcher thread hands to run(): the initial snapshot, changes, or its failure.
_Item = NetSnapshot | NetworkChange | NetWatchError
_Post = Callable[[_Item], None]


class NetWatcher:
    """Watch links, addresses, routes and resolv.conf files; emit debounced changes."""

    def __init__(
        self,
        *,
        debounce: float = DEBOUNCE_DEFAULT,
        netns: str | None = None,
        watch_files: Sequence[Path] = (),
        gateways: Iterable[str] = (),
        rcvbuf: int = RCVBUF_DEFAULT,
    ) -> None:
        if not (debounce >= 0 and math.isfinite(debounce)):
            raise ValueError(f"debounce must be a finite number of seconds >= 0, not {debounce}")
        self._debounce = debounce
        self._netns = netns
        self._watch_files = tuple(watch_files)
        self._gateways = parse_gateways(gateways)
        self._rcvbuf = rcvbuf
        # Netlink wake-ups of the thread, counted before each drain (see quiet_since).
        self._event_count = 0
        self._events: _Events | None = None  # while the thread watches

    def event_mark(self) -> int | None:
        """A mark for `quiet_since`, taken before a dump; None while nothing is watched."""
        return self._event_count if self._events is not None else None

    def quiet_since(self, mark: int | None) -> bool:
        """Whether the kernel has reported no link, address or route change since `mark`:
        a dump now would read what a dump right after the mark read.

        Notifications are queued on the watcher's socket as the kernel makes the change,
        and the thread counts each wake-up before it drains the socket: a change is either
        counted or still readable, so this never misses one the kernel made before it.
        """
        events = self._events
        if events is None or mark is None or mark != self._event_count:
            return False
        try:
            readable, _, _ = select.select([events], [], [], 0)
        except (OSError, ValueError):  # closed under us: the watcher is stopping
            return False
        return not readable and mark == self._event_count

    def set_gateways(self, gateways: Iterable[str]) -> None:
        """Addresses whose host routes the snapshots report (from the next dump on)."""
        self._gateways = parse_gateways(gateways)  # one atomic rebind, read by the thread

    async def run(
        self,
        send: anyio.abc.ObjectSendStream[NetworkChange],
        *,
        task_status: anyio.abc.TaskStatus[NetSnapshot] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch until cancelled; `task_group.start(run)` returns the initial snapshot."""
        loop = asyncio.get_running_loop()
        inbox_send, inbox = anyio.create_memory_object_stream[_Item](math.inf)

        def deliver(item: _Item) -> None:
            with contextlib.suppress(anyio.ClosedResourceError):  # run() is gone
                inbox_send.send_nowait(item)

        def post(item: _Item) -> None:  # called from the watcher thread
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(deliver, item)

        wake_r, wake_w = os.pipe()  # a byte here stops the thread's select()
        thread = threading.Thread(
            target=self._thread_main, args=(post, wake_r), name="ogsd-netwatch", daemon=True
        )
        thread.start()
        try:
            async with inbox, inbox_send:
                first = await inbox.receive()
                if isinstance(first, NetWatchError):
                    raise first
                assert isinstance(first, NetSnapshot)
                task_status.started(first)
                while True:
                    # A slow consumer gets one merged change, not a backlog.
                    await send.send(_merge(await inbox.receive(), inbox))
        finally:
            os.write(wake_w, b"x")
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, JOIN_TIMEOUT)
            if thread.is_alive():
                # Leave its fd open: closing it could hand the number to a new file.
                log.warning("netlink watcher thread did not stop", timeout_s=JOIN_TIMEOUT)
            else:
                os.close(wake_r)
            os.close(wake_w)

    def _thread_main(self, post: _Post, wake: int) -> None:
        events: _Events | None = None
        files: DirWatch | None = None
        try:
            if self._netns is not None:
                enter_netns(self._netns)
            events = _Events(self._rcvbuf)
            files = DirWatch(self._watch_files)
            state = dump_state(self._gateways)
            post(state.snapshot)
            self._events = events  # quiet_since may trust it from now on
            self._loop(post, wake, events, files, state)
        except Exception as exc:
            post(_as_watch_error(exc))
        finally:
            self._events = None
            if events is not None:
                events.close()
            if files is not None:
                files.close()

    def _loop(
        self, post: _Post, wake: int, events: _Events, files: DirWatch, state: RoutingState
    ) -> None:
        max_delay = self._debounce * MAX_DELAY_FACTOR
        pending: set[str] = set()
        first_at = quiet_at = 0.0
        while True:
            timeout = None
            if pending:
                due = min(quiet_at, first_at + max_delay)
                timeout = max(0.0, due - time.monotonic())
            fds: list[int | _Events | DirWatch] = [wake, events]
            if files.active:
                fds.append(files)
            ready, _, _ = select.select(fds, [], [], timeout)
            if wake in ready:
                return
            got: set[str] = set()
            if events in ready:
                self._event_count += 1  # before draining: quiet_since relies on the order
                got |= events.drain()
            if files in ready and files.changed():
                got.add(REASON_RESOLV_CONF)
            now = time.monotonic()
            if got:
                if not pending:
                    first_at = now
                pending |= got
                quiet_at = now + self._debounce
            if pending and now >= min(quiet_at, first_at + max_delay):
                new = dump_state(self._gateways)
                forced = pending & {REASON_RESOLV_CONF, REASON_RESYNC}
                if forced or new.fingerprint != state.fingerprint:
                    post(NetworkChange(tuple(sorted(pending)), new.snapshot))
                state, pending = new, set()


class _Events:
    """The netlink notification socket; reopened after an overrun."""

    def __init__(self, rcvbuf: int) -> None:
        self._rcvbuf = rcvbuf
        self._sock = _open_event_socket(rcvbuf)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> set[str]:
        """Read every queued notification; only their kinds matter (a dump has the state)."""
        try:
            return _drain(self._sock)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
        # The kernel dropped notifications: start clean and compare whole states instead.
        log.warning("netlink buffer overrun; resynchronising")
        self._sock.close()
        self._sock = _open_event_socket(self._rcvbuf)
        return {REASON_RESYNC}

    def close(self) -> None:
        self._sock.close()


def _merge(item: _Item, inbox: MemoryObjectReceiveStream[_Item]) -> NetworkChange:
    reasons: set[str] = set()
    while True:
        if isinstance(item, NetWatchError):
            raise item
        assert isinstance(item, NetworkChange)
        reasons.update(item.reasons)
        latest = item
        try:
            item = inbox.receive_nowait()
        except anyio.WouldBlock:
            return NetworkChange(tuple(sorted(reasons)), latest.snapshot)


def _open_event_socket(rcvbuf: int) -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, _GROUPS))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket) -> set[str]:
    reasons: set[str] = set()
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return reasons
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind in _EVENT_REASONS:
                reasons.add(_EVENT_REASONS[kind])
            offset += (length + 3) & ~3


def _as_watch_error(exc: Exception) -> NetWatchError:
    if isinstance(exc, NetWatchError):
        return exc
    return NetWatchError(f"network watcher failed: {exc}")
