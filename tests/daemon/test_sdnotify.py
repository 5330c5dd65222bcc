"""sd_notify and socket activation against real sockets standing in for systemd (not PID 1 here)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from ogsd.daemon.sdnotify import (
    ActivationError,
    Notifier,
    listen_fds,
    listen_fds_with_names,
    watchdog_loop,
)
from tests.daemon_helpers import datagram_socket

RECV_TIMEOUT_S = 5.0  # bound on every wait for a datagram: a failure, not a hang


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where systemd's NOTIFY_SOCKET would be."""
    with datagram_socket("notify", RECV_TIMEOUT_S) as bound:
        yield bound


def recv_fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_with_status(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready("watching 3 gateways")
        assert recv_fields(sock) == ["READY=1", "STATUS=watching 3 gateways"]
        assert notifier.ready()
        assert recv_fields(sock) == ["READY=1"]


def test_status_stays_one_assignment(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.status("line one\nREADY=1")
    assert recv_fields(sock) == ["STATUS=line one READY=1"]


def test_reloading_carries_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv_fields(sock)
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping_and_watchdog(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.stopping()
        assert recv_fields(sock) == ["STOPPING=1"]
        assert notifier.watchdog()
        assert recv_fields(sock) == ["WATCHDOG=1"]
        notifier.close()
        assert notifier.watchdog()  # reopens after close
        assert recv_fields(sock) == ["WATCHDOG=1"]


def test_abstract_socket() -> None:
    name = f"ogsd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT_S)
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready()
        assert recv_fields(sock) == ["READY=1"]


@pytest.mark.parametrize("value", ["", "relative/notify", "vsock:2:1234"])
def test_no_usable_notify_socket_is_a_noop(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not notifier.enabled
    for sent in (notifier.ready("x"), notifier.status("x"), notifier.reloading(),
                 notifier.stopping(), notifier.watchdog()):
        assert sent is False


def test_vanished_receiver_is_reported_not_raised(tmp_path: Path) -> None:
    with Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is False


def test_full_receiver_never_blocks(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver  # never read: its queue fills (net.unix.max_dgram_qlen)
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        started = time.monotonic()
        results = [notifier.watchdog() for _ in range(2000)]
    elapsed = time.monotonic() - started
    assert results[0] is True
    assert False in results  # dropped (EAGAIN) instead of waiting
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env, pid=4242).watchdog_interval() == expected


def test_watchdog_interval_default_pid_is_ours() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval() == 0.5


def test_watchdog_loop_pings_at_the_interval(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    interval = 0.02
    pings = 5
    arrivals: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog_loop, notifier, interval)  # as the daemon starts it
            with anyio.fail_after(RECV_TIMEOUT_S):
                while len(arrivals) < pings:
                    await anyio.wait_readable(sock)
                    assert sock.recv(4096) == b"WATCHDOG=1"
                    arrivals.append(time.monotonic())
            tg.cancel_scope.cancel()

    with notifier:
        anyio.run(main)
    # First ping at once, then one per interval: never faster (sleep never returns early).
    assert arrivals[-1] - arrivals[0] >= (pings - 1) * interval * 0.95
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # and it stopped when cancelled


def test_watchdog_loop_rejects_nonpositive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        anyio.run(lambda: watchdog_loop(Notifier({}), interval=0))


def _unused_fds(count: int) -> int:
    """First fd of `count` consecutive unused descriptors."""
    start = 100
    while True:
        fds = range(start, start + count)
        if all(not _is_open(fd) for fd in fds):
            return start
        start += count


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_listen_fds_injected() -> None:
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    start = _unused_fds(2)
    os.dup2(a.fileno(), start)  # inheritable, as systemd passes them
    os.dup2(b.fileno(), start + 1)
    a.close()
    b.close()
    env = {"LISTEN_PID": "77", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "api:extra", "OTHER": "x"}
    pairs = listen_fds_with_names(env, pid=77, start=start)
    try:
        assert [(name, s.fileno(), s.family, s.type) for name, s in pairs] == [
            ("api", start, socket.AF_UNIX, socket.SOCK_STREAM),
            ("extra", start + 1, socket.AF_INET, socket.SOCK_STREAM),
        ]
        assert not any(os.get_inheritable(s.fileno()) for _, s in pairs)
        assert env == {"OTHER": "x"}
    finally:
        for _, s in pairs:
            s.close()


def test_listen_fds_for_another_pid_are_not_ours() -> None:
    env = {"LISTEN_PID": "77", "LISTEN_FDS": "1"}
    assert listen_fds(env, pid=78) == []
    assert env == {}  # unset all the same: our children must not take them either


def test_listen_fds_without_activation() -> None:
    env = {"PATH": "/bin"}
    assert listen_fds(env, pid=1) == []
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LISTEN_PID": "self", "LISTEN_FDS": "1"}, "LISTEN_PID is not a process id"),
        ({"LISTEN_PID": "77", "LISTEN_FDS": "-1"}, "LISTEN_FDS is not a count"),
        ({"LISTEN_PID": "77"}, "LISTEN_FDS is not a count"),
        ({"LISTEN_PID": "77", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "api"},
         "LISTEN_FDNAMES has 1 names for LISTEN_FDS=2"),
    ],
)
def test_listen_fds_malformed(env: dict[str, str], message: str) -> None:
    with pytest.raises(ActivationError, match=message):
        listen_fds(env, pid=77)
    assert "LISTEN_PID" not in env


def test_listen_fds_rejects_non_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        env = {"LISTEN_PID": "77", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "api"}
        with pytest.raises(ActivationError, match=rf"passed fd {read_end} \(api\) is not"):
            listen_fds(env, pid=77, start=read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


CHILD = """
import json, os
from ogsd.daemon.sdnotify import listen_fds_with_names
pairs = listen_fds_with_names()
report = {
    "fds": [[name, s.fileno(), s.family.name, s.type.name, os.get_inheritable(s.fileno())]
            for name, s in pairs],
    "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}
conn, _ = pairs[0][1].accept()
with conn:
    conn.recv(16)
    conn.sendall(json.dumps(report).encode())
"""


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate not installed (package systemd)")
def test_listen_fds_under_systemd_socket_activate() -> None:
    """systemd's own activator passes the socket; the child takes it and serves on it."""
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        path = os.path.join(tmp, "ogsd.sock")
        proc = subprocess.Popen(
            ["systemd-socket-activate", "--listen", path, "--fdname=api",
             sys.executable, "-c", CHILD],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stderr is not None
            # It says "Listening on <path> as 3." once bound: wait for that, not for time.
            line = proc.stderr.readline()
            assert "Listening on" in line, line
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(RECV_TIMEOUT_S)
                client.connect(path)  # this connection is what starts the child
                client.sendall(b"hello")
                chunks = []
                while chunk := client.recv(4096):
                    chunks.append(chunk)
            report = json.loads(b"".join(chunks))
            assert proc.wait(timeout=RECV_TIMEOUT_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    assert report == {
        "fds": [["api", 3, "AF_UNIX", "SOCK_STREAM", False]],
        "env_left": [],
    }
