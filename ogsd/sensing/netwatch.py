"""Network change detection: netlink links/addresses/routes and resolv.conf, debounced.

pyroute2 (0.9.x) cannot open its netlink socket on a uvloop loop, and the daemon runs
uvloop. So the watcher runs in its own thread with no event loop at all: a plain netlink
socket, an inotify fd and a wake-up pipe under `select()`, pyroute2's message classes to
encode dump requests and decode replies. Changes reach the main loop through
`call_soon_threadsafe`, so any asyncio loop (uvloop included) can consume them.

Each change is confirmed by a fresh dump: events whose net effect is nil (an address
added then removed, an IPv6 lifetime refresh on every router advertisement) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
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
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from ogsd.core.uplink import DefaultRoute, HostRoute
from ogsd.sensing.rtnl import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    MarshalRtnl,
    ifaddrmsg,
    ifinfmsg,
    rtmsg,
)

log = structlog.get_logger(__name__)

# A network join (carrier, DHCP, RA, routes) lands within a second or two: report it once.
DEBOUNCE_DEFAULT = 2.0
# A link that flaps forever must still be reported: wait at most this many quiet periods.
MAX_DELAY_FACTOR = 5
# A join sends hundreds of messages at once; the kernel caps the request at rmem_max
# and ENOBUFS is survived anyway (reopen + resync).
RCVBUF_DEFAULT = 1 << 20
# Stopping waits for the thread this long; it only ever blocks in select() or a dump.
JOIN_TIMEOUT = 5.0
# A dump reply never takes this long on a live kernel; do not hang on a broken one.
DUMP_TIMEOUT = 5.0
# NLM_F_DUMP_INTR: the table changed during the dump; retry, but not forever.
DUMP_RETRIES = 3
NLM_F_DUMP_INTR = 0x10
CLONE_NEWNET = 0x40000000
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}
RTNH_F_DEAD, RTNH_F_LINKDOWN = 0x1, 0x10
IFF_UP, IFF_POINTOPOINT, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x10, 0x40, 0x10000
# VPN links: openconnect/AnyConnect (and OpenVPN) use tun devices, then WireGuard and
# IPsec's xfrm/vti interfaces. Point-to-point alone is no sign: ppp0 on a 3G/DSL modem is
# a physical uplink.
TUNNEL_KINDS = frozenset({"tun", "wireguard", "xfrm", "vti", "vti6"})

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
# inotify(7): events on a watched directory that can change a file's content.
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_Q_OVERFLOW = 0x100, 0x200, 0x4000
_DIR_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_FILE_MASK = IN_MODIFY | IN_CLOSE_WRITE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class NetWatchError(Exception):
    """The watcher cannot run (namespace missing, netlink refused, ...)."""


@dataclass(frozen=True, slots=True)
class NetSnapshot:
    """What matters of the routing state: default routes, tunnels, host routes to gateways."""

    default_v4: bool  # a usable unicast default route in the main table
    default_v6: bool
    tunnels: tuple[str, ...]  # names of tunnel devices that are up (tun, wireguard, p2p)
    host_routes: tuple[HostRoute, ...] = ()  # to watched gateway addresses (/32, /128)
    defaults: tuple[DefaultRoute, ...] = ()  # every usable default route, for the uplink
    links: tuple[tuple[str, int], ...] = ()  # every link: (name, ifindex), up or not

    def ifindex(self, name: str) -> int | None:
        """The index of link `name` (None: no such link)."""
        return dict(self.links).get(name)


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """One debounced burst of changes: what kinds of event, and the state after it."""

    reasons: tuple[str, ...]  # sorted subset of link, addr, route, resolv.conf, resync
    snapshot: NetSnapshot


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# What the watcher thread hands to run(): the initial snapshot, changes, or its failure.
_Item = NetSnapshot | NetworkChange | NetWatchError
_Post = Callable[[_Item], None]


@dataclass(frozen=True, slots=True)
class _State:
    snapshot: NetSnapshot
    fingerprint: frozenset[tuple[Any, ...]]  # links, addresses, routes: compared, not read


def read_snapshot(*, netns: str | None = None, gateways: Iterable[str] = ()) -> NetSnapshot:
    """Dump the routing state now (blocking: call it from a worker thread)."""
    wanted = _parse_gateways(gateways)
    if netns is None:
        return _dump_state(wanted).snapshot
    box: list[NetSnapshot | BaseException] = []

    def in_namespace() -> None:
        try:
            _enter_netns(netns)
            box.append(_dump_state(wanted).snapshot)
        except BaseException as exc:  # handed to the caller's thread below
            box.append(exc)

    # A throwaway thread: setns() changes only the calling thread, and it dies with it.
    thread = threading.Thread(target=in_namespace, name="ogsd-netns-dump", daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    if not box:
        raise NetWatchError(f"routing dump in namespace {netns!r} did not finish")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


class DirWatch:
    """Report when any of some files changes content, via inotify on their directories.

    resolv.conf is replaced by rename (DHCP clients, VPN scripts, resolved), so a watch on
    the file would follow the old inode: watch the directory and filter by name. The file
    itself is watched too, re-armed after every change: a write through another path
    (the bind mount `ip netns exec` puts over /etc/resolv.conf, written at
    /etc/netns/NS/resolv.conf) reaches only the inode, not our directory. inotify rather
    than a stat-poll: no wake-ups while idle, no polling delay. A symlink's target
    directory (resolved's stub file) is watched too, as resolved at start.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self._files = tuple(files)
        self._names: dict[int, set[str]] = {}
        self._file_wds: set[int] = set()
        self._contents = self._read_all()
        self._fd = -1
        if not self._files:
            return
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise NetWatchError(f"inotify: {os.strerror(ctypes.get_errno())}")
        for file in self._files:
            for path in {file, Path(os.path.realpath(file))}:
                wd = _libc.inotify_add_watch(self._fd, os.fsencode(path.parent), _DIR_MASK)
                if wd < 0:
                    log.warning(
                        "cannot watch directory",
                        directory=str(path.parent),
                        error=os.strerror(ctypes.get_errno()),
                    )
                    continue
                self._names.setdefault(wd, set()).add(path.name)
        self._arm_files()

    def _arm_files(self) -> None:
        """Watch each file's current inode (a replaced file has a new one)."""
        for file in self._files:
            wd = _libc.inotify_add_watch(self._fd, os.fsencode(file), _FILE_MASK)
            if wd >= 0:
                self._file_wds.add(wd)

    @property
    def active(self) -> bool:
        return bool(self._names)

    def fileno(self) -> int:
        return self._fd

    def changed(self) -> bool:
        """Consume pending inotify events; True if a watched file's content changed."""
        relevant = False
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset + 16 <= len(data):
                wd, mask, _cookie, length = struct.unpack_from("=iIII", data, offset)
                name = os.fsdecode(data[offset + 16 : offset + 16 + length].rstrip(b"\0"))
                offset += 16 + length
                relevant |= (bool(mask & IN_Q_OVERFLOW) or wd in self._file_wds
                             or name in self._names.get(wd, ()))
        if relevant:
            self._arm_files()
        if not relevant:
            return False
        contents = self._read_all()
        if contents == self._contents:
            return False
        self._contents = contents
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_all(self) -> tuple[bytes | None, ...]:
        contents: list[bytes | None] = []
        for file in self._files:
            try:
                contents.append(file.read_bytes())
            except OSError:
                contents.append(None)  # missing or unreadable is a state too
        return tuple(contents)


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
        self._gateways = _parse_gateways(gateways)
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
        self._gateways = _parse_gateways(gateways)  # one atomic rebind, read by the thread

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
                _enter_netns(self._netns)
            events = _Events(self._rcvbuf)
            files = DirWatch(self._watch_files)
            state = _dump_state(self._gateways)
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
        self, post: _Post, wake: int, events: _Events, files: DirWatch, state: _State
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
                new = _dump_state(self._gateways)
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


def _parse_gateways(gateways: Iterable[str]) -> frozenset[_Address]:
    parsed: set[_Address] = set()
    for gateway in gateways:
        try:
            parsed.add(ipaddress.ip_address(gateway))
        except ValueError:
            raise ValueError(f"gateway address is not an IP address: {gateway!r}") from None
    return frozenset(parsed)


def _enter_netns(netns: str) -> None:
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetWatchError(f"network namespace {netns!r}: {exc.strerror} ({path})") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetWatchError(f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


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


def _dump_state(gateways: frozenset[_Address]) -> _State:
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    ) as sock:
        sock.settimeout(DUMP_TIMEOUT)
        sock.bind((0, 0))
        links = _dump(sock, ifinfmsg, RTM_GETLINK)
        addrs = _dump(sock, ifaddrmsg, RTM_GETADDR)
        routes = _dump(sock, rtmsg, RTM_GETROUTE)
    fingerprint: set[tuple[Any, ...]] = set()
    tunnels = []
    names: dict[int, tuple[str, bool]] = {}  # ifindex -> (name, is a tunnel)
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        flags = link["flags"] & (IFF_UP | IFF_RUNNING | IFF_LOWER_UP | IFF_POINTOPOINT)
        kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        fingerprint.add(("link", link["index"], name, flags, kind))
        is_tunnel = kind in TUNNEL_KINDS or name.startswith("tun")
        names[link["index"]] = (name, is_tunnel)
        if is_tunnel and flags & IFF_UP:
            tunnels.append(name)
    for addr in addrs:
        # Lifetimes and flags are left out: they change on every router advertisement.
        fingerprint.add(
            (
                "addr",
                addr["index"],
                addr["family"],
                addr["prefixlen"],
                addr.get_attr("IFA_ADDRESS"),
                addr.get_attr("IFA_LOCAL"),
            )
        )
    defaults: list[DefaultRoute] = []
    host_routes: dict[_Address, HostRoute] = {}
    for route in routes:
        table = route.get_attr("RTA_TABLE") or route["table"]
        if table == RT_TABLE_LOCAL:
            continue  # follows the addresses, already compared
        dst = route.get_attr("RTA_DST")
        fingerprint.add(
            (
                "route",
                route["family"],
                table,
                route["type"],
                dst,
                route["dst_len"],
                route.get_attr("RTA_GATEWAY"),
                route.get_attr("RTA_OIF"),
                route.get_attr("RTA_PRIORITY"),
                route["flags"],
            )
        )
        dead = route["flags"] & (RTNH_F_DEAD | RTNH_F_LINKDOWN)
        oif, gateway = route.get_attr("RTA_OIF"), route.get_attr("RTA_GATEWAY")
        if oif is None and (hops := route.get_attr("RTA_MULTIPATH")):
            # ECMP: the first next hop stands for the route (its device is what counts).
            oif, gateway = hops[0]["oif"], hops[0].get_attr("RTA_GATEWAY")
        device, is_tunnel = names.get(oif, (None, False))
        if (
            route["type"] == RTN_UNICAST
            and not dead
            and table == RT_TABLE_MAIN
            and route["dst_len"] == 0
            and route["family"] in _FAMILIES
        ):
            defaults.append(DefaultRoute(_FAMILIES[route["family"]], device, gateway,
                                         route.get_attr("RTA_PRIORITY") or 0, is_tunnel))
        address = ipaddress.ip_address(dst) if dst is not None else None
        if (address in gateways and route["dst_len"] == address.max_prefixlen
                and route["type"] == RTN_UNICAST and table == RT_TABLE_MAIN):
            host_routes[address] = HostRoute(str(address), device, gateway)
    snapshot = NetSnapshot(
        default_v4=any(r.family == 4 for r in defaults),
        default_v6=any(r.family == 6 for r in defaults),
        tunnels=tuple(sorted(tunnels)),
        host_routes=tuple(host_routes[a] for a in sorted(host_routes,
                                                         key=lambda a: (a.version, a))),
        defaults=tuple(sorted(defaults, key=lambda r: (r.family, r.metric, r.device or ""))),
        links=tuple(sorted((name, index) for index, (name, _) in names.items())),
    )
    return _State(snapshot, frozenset(fingerprint))


def _dump(sock: socket.socket, msg_class: Any, msg_type: int) -> list[Any]:
    marshal = MarshalRtnl()
    for seq in range(1, DUMP_RETRIES + 1):
        request = msg_class()
        request["family"] = socket.AF_UNSPEC  # all families (pyroute2's rtmsg defaults to v4)
        request["header"]["type"] = msg_type
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        request["header"]["sequence_number"] = seq
        request.encode()
        sock.send(request.data)
        messages: list[Any] = []
        interrupted = done = False
        while not done:
            for msg in marshal.parse(sock.recv(1 << 16)):
                header = msg["header"]
                interrupted |= bool(header["flags"] & NLM_F_DUMP_INTR)
                if header["type"] == NLMSG_DONE:
                    done = True
                elif header["type"] == NLMSG_ERROR:
                    error = header["error"]
                    if error is not None:
                        code: int = getattr(error, "code", None) or error.errno or errno.EIO
                        raise OSError(code, f"netlink dump failed: {os.strerror(code)}")
                else:
                    messages.append(msg)
        if not interrupted:
            return messages
    return messages  # still changing: the next event brings another dump


def _as_watch_error(exc: Exception) -> NetWatchError:
    if isinstance(exc, NetWatchError):
        return exc
    return NetWatchError(f"network watcher failed: {exc}")
