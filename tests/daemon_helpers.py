"""Helpers for the `ogsd run` tests: configs, a movable wall clock, the socket API as a
client sees it, a stand-in NOTIFY_SOCKET, daemon subprocesses and network namespaces.

Every wait here is on an event (a datagram, a reply, a decision) with a bounded timeout.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ogsd.config.load import load_config
from ogsd.config.paths import DB_NAME
from ogsd.daemon.daemon import Daemon, Options
from ogsd.store.store import Store

Json = dict[str, Any]
T = TypeVar("T")

# Bound on every wait for the daemon: a round here takes well under a second; this is
# for a loaded shared 2-core machine, never an expected duration.
WAIT = 10.0
# Python start-up, imports (sqlalchemy, dbus-fast) and the store: ~1 s here.
START_WAIT = 20.0
# A stopping daemon cancels its tasks and closes the store at once; SHUTDOWN_GRACE_S is 5.
STOP_WAIT = 8.0
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
REPLY_MAX = 1 << 20
CLONE_NEWNET = 0x40000000


class FakeClock:
    """The daemon's wall clock, moved by the test (hours of suspend cannot pass here)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, span: timedelta) -> None:
        self.now += span


@dataclass
class Setup:
    """One daemon's files."""

    dir: Path
    resolv: Path
    config: Path
    state: Path
    socket: Path

    def options(self, **changes: Any) -> Options:
        return Options(self.config, (), self.state, self.socket, **changes)


def write_resolv(path: Path, domain: str, servers: Sequence[str]) -> None:
    """Replace `path` by rename, as DHCP clients and resolvconf do (a new inode)."""
    tmp = path.with_name(path.name + ".new")
    lines = [f"search {domain}", *(f"nameserver {s}" for s in servers)]
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def write_config(path: Path, gateways: Sequence[tuple[str, int | None]], *,
                 resolv_conf: Path | None, metric: str = "exchange", extra: str = "",
                 deadline_s: float = 3.0) -> Path:
    """An ogsd.toml with these gateways (port None: 443), quick rounds, no periodic timer;
    `resolv_conf` None: the system's (/etc/resolv.conf)."""
    parts = [
        f'[dns]\nresolv_conf = "{resolv_conf}"\n' if resolv_conf else "",
        # Loopback has no path delay: servers delay their answers, so rank by exchange.
        f'[ogs]\nmetric = "{metric}"\nround_deadline_s = {deadline_s:g}\n'
        f'probe_timeout_s = {deadline_s * 2 / 3:g}\n',
        # Not continuous: every round in these tests has a cause the test made.
        "[daemon]\ncontinuous = false\ndebounce_s = 0.3\n" + extra,
    ]
    for host, port in gateways:
        parts.append(f'[[gateway]]\nhost = "{host}"\n' + (f"port = {port}\n" if port else ""))
    path.write_text("\n".join(parts))
    return path


def short_dir(prefix: str) -> Path:
    """A fresh directory under /tmp: pytest's paths can exceed sun_path's 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# --- the socket API, as a client ------------------------------------------------------


class ApiClient:
    """One connection to the daemon's socket: raw lines out, JSON objects in."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._id = 0

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def receive(self, within: float = WAIT) -> Json:
        """The next object the daemon sends (EndOfStream if it closed the connection)."""
        with anyio.fail_after(within):
            line = await self._reader.receive_until(b"\n", REPLY_MAX)
        message = json.loads(line)
        assert isinstance(message, dict), message
        return message

    async def call(self, method: str, params: Json | None = None, *,
                   within: float = WAIT) -> Json:
        """The whole reply (result or error) to one request."""
        self._id += 1
        request = {"id": self._id, "method": method, "params": params or {}}
        await self.send_raw(json.dumps(request).encode() + b"\n")
        reply = await self.receive(within)
        assert reply.get("id") == self._id, reply
        return reply

    async def result(self, method: str, params: Json | None = None, *,
                     within: float = WAIT) -> Json:
        reply = await self.call(method, params, within=within)
        assert "result" in reply, reply
        result: Json = reply["result"]
        return result


@asynccontextmanager
async def api_client(path: Path) -> AsyncIterator[ApiClient]:
    stream = await anyio.connect_unix(path)
    async with stream:
        yield ApiClient(stream)


@dataclass
class DecisionStream:
    """Decisions as published (the daemon's feed, or a `watch` on its socket)."""

    next_item: Callable[[], Any]
    seen: list[Json] = field(default_factory=list)

    async def next(self, *, skip: Callable[[Json], bool] = lambda d: False,
                   within: float = WAIT) -> Json:
        """The next decision that `skip` does not reject."""
        with anyio.fail_after(within):
            while True:
                data: Json = await self.next_item()
                self.seen.append(data)
                if not skip(data):
                    return data

    async def none_within(self, seconds: float) -> None:
        """Assert that no decision comes in `seconds` (a bounded look, not a sync sleep)."""
        with anyio.move_on_after(seconds):
            extra = await self.next_item()
            raise AssertionError(f"unexpected decision: {extra}")


@asynccontextmanager
async def watching(path: Path) -> AsyncIterator[DecisionStream]:
    """A `watch` on the socket: every decision after this returns reaches the stream."""
    async with api_client(path) as client:
        assert (await client.result("watch")) == {"watching": True}

        async def next_item() -> Json:
            while True:
                message = await client.receive(within=3600)  # the caller bounds it
                if message.get("event") == "decision":
                    data: Json = message["data"]
                    return data

        yield DecisionStream(next_item)


def keys(decision: Json) -> list[str]:
    location = decision["location"]
    assert isinstance(location, dict), decision
    return list(location["keys"])


# --- in-process daemon ------------------------------------------------------------------


@asynccontextmanager
async def running_daemon(options: Options, config_path: Path,
                         clock: FakeClock) -> AsyncIterator[tuple[Daemon, DecisionStream]]:
    """`Daemon.run` in this event loop; the stream starts before its first decision."""
    # As `ogsd run` loads it: no gateway yet is not an error, the daemon waits.
    config = load_config(config_path, require_gateways=False)
    store = Store.open(options.state_dir / DB_NAME)
    try:
        daemon = Daemon(options, config, store, clock=clock,
                        load_config=lambda: load_config(config_path, require_gateways=False))
        async with daemon.feed.subscribe() as feed, anyio.create_task_group() as tg:
            await tg.start(daemon.run)
            yield daemon, DecisionStream(feed.__anext__)
            tg.cancel_scope.cancel()
    finally:
        store.close()


# --- sd_notify ----------------------------------------------------------------------------


@contextmanager
def datagram_socket(name: str, timeout: float) -> Iterator[tuple[socket.socket, str]]:
    """A Unix datagram socket bound in a private short directory, and its path (AF_UNIX
    paths hold 108 bytes: pytest's tmp_path can exceed that)."""
    with tempfile.TemporaryDirectory(prefix="dgm") as tmp:
        path = os.path.join(tmp, name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(timeout)
        with sock:
            yield sock, path


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(os.fspath(path))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expect(self, line: str, timeout: float = WAIT) -> list[str]:
        """Receive until a datagram has `line` as one of its lines; every datagram read."""
        return self._until(lambda lines: line in lines, line, timeout)

    def expect_status(self, timeout: float = WAIT) -> str:
        """The next STATUS= update on its own (a decision published; READY's is not one)."""
        got = self._until(lambda lines: lines[0].startswith("STATUS="), "STATUS=", timeout)
        return got[-1].removeprefix("STATUS=")

    def _until(self, match: Callable[[list[str]], bool], what: str,
               timeout: float) -> list[str]:
        got: list[str] = []
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what!r} within {timeout} s; got {got}")
            self._sock.settimeout(left)
            try:
                message = self._sock.recv(4096).decode()
            except TimeoutError:
                raise TimeoutError(f"no {what!r} within {timeout} s; got {got}") from None
            got.append(message)
            self.messages.append(message)
            if match(message.split("\n")):
                return got

    async def aexpect(self, line: str, within: float = WAIT) -> list[str]:
        return await anyio.to_thread.run_sync(self.expect, line, within)

    async def aexpect_status(self, within: float = WAIT) -> str:
        return await anyio.to_thread.run_sync(self.expect_status, within)


# --- daemon subprocesses -----------------------------------------------------------------


class DaemonProcess:
    """`python -m ogsd run` as a child process; its log (JSON lines) goes to a file."""

    def __init__(self, *, config: Path, state: Path, socket_path: Path, log: Path,
                 env: Mapping[str, str], prefix: Sequence[str] = ()) -> None:
        self.socket_path = socket_path
        self.log = log
        argv = [*prefix, sys.executable, "-m", "ogsd", "run", "--config", str(config),
                "--state-dir", str(state), "--socket", str(socket_path)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env={**os.environ, **env},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_WAIT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """End it whatever state it is in (teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_WAIT)

    def log_lines(self) -> list[Json]:
        """The JSON log lines written so far (other lines, e.g. tracebacks, as "raw")."""
        lines: list[Json] = []
        for text in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                lines.append({"raw": text})
        return lines


def faketime_env(timestamp_file: Path) -> dict[str, str]:
    """libfaketime moving only the wall clock, re-reading `timestamp_file` on every call."""
    if not FAKETIME_LIB.exists():
        raise RuntimeError(f"libfaketime is not installed ({FAKETIME_LIB}): apt install faketime")
    return {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME_TIMESTAMP_FILE": str(timestamp_file),
        "FAKETIME_NO_CACHE": "1",
        # Timers (asyncio, anyio deadlines) stay on the real monotonic clock.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


# --- network namespaces ------------------------------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str, script: str | None = None) -> None:
    subprocess.run(["ip", *args], input=script.encode() if script else None, check=True)


def ip_batch(netns: str, *commands: str) -> None:
    """iproute2 commands in one process: they land as one tight burst."""
    _ip("-n", netns, "-batch", "-", script="".join(f"{c}\n" for c in commands))


@contextmanager
def netns() -> Iterator[str]:
    """A namespace of our own (loopback up, no IPv6), deleted afterwards."""
    name = f"ogsdd-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        # IPv6 link-local addresses and routes appear on their own a moment after a link
        # comes up: netlink events no test made. IPv4 only keeps every event ours.
        _ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")
        ip_batch(name, "link set lo up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a throwaway thread inside namespace `name` (sockets it makes live there)."""
    box: list[Any] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {name}")
            finally:
                os.close(fd)
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=body, name="test-in-netns")
    thread.start()
    thread.join(WAIT)
    if isinstance(box[0], BaseException):
        raise box[0]
    result: T = box[0]
    return result
