"""Faults: hostile and careless clients on the daemon's socket (issue 9).

A real daemon behind its real socket; clients are real processes (another uid through
a subprocess that drops privileges) or real connections from here. After each fault the
daemon answers a real `status` and the store still holds its decision and cache entry.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.abc import UNIXSocketStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ogsd.wire.api import (
    BUSY,
    FORBIDDEN,
    INVALID_REQUEST,
    METHODS,
    PARSE_ERROR,
    TOO_LARGE,
)
from tests.daemon_helpers import (
    START_WAIT,
    WAIT,
    ApiClient,
    DaemonProcess,
    FakeClock,
    NotifySocket,
    Setup,
    api_client,
    running_daemon,
    short_dir,
)
from tests.fault_helpers import (
    FAST,
    NO_BUS,
    SLOW,
    answers,
    anyio_backend,  # noqa: F401 (a fixture: uvloop)
    bare,
    loopback_pair,
    make_site,
    scaled,
    site_dir,
    stored,
)
from tests.tlsserver import LoopbackServer

NOBODY = 65534
WRITE_METHODS = sorted(name for name, m in METHODS.items() if m.write)


@pytest.fixture
def servers() -> Iterator[tuple[LoopbackServer, LoopbackServer]]:
    with loopback_pair(0.1) as pair:
        yield pair


def setup_for(directory: Path, servers: tuple[LoopbackServer, ...], extra: str = "") -> Setup:
    return make_site(directory, [(s.host, s.port) for s in servers], extra=extra)


def nothing_lost(setup: Setup, first: dict[str, Any]) -> None:
    """The decision published first and its cache entry are still stored."""
    decisions, entries = stored(setup.state)
    assert bare(first) in [bare(d) for d in decisions]
    assert entries
    assert entries[-1].order[0] == first["selected"]


# --- defects ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_deep_nesting_and_odd_ids_get_error_replies(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    with site_dir() as directory:
        setup = setup_for(directory, servers)
        options = setup.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, setup.config, FakeClock()) as (_, feed):
            first = await feed.next()
            deep = 20_000  # 40 kB: under request_max_bytes
            cases = [
                (b"[" * deep + b"]" * deep, PARSE_ERROR),
                (b'{"method": "status", "params": {"a": ' + b"[" * deep + b"]" * deep + b"}}",
                 PARSE_ERROR),
                # Under the parser's limit, but echoing it back would recurse again.
                (b'{"id": ' + b"[" * 900 + b"]" * 900 + b', "method": "status"}',
                 INVALID_REQUEST),
                (b'{"id": {"a": 1}, "method": "status"}', INVALID_REQUEST),
                (b'{"id": NaN, "method": "status"}', INVALID_REQUEST),
                (b'{"id": true, "method": "status"}', INVALID_REQUEST),
                # Python refuses to parse integers of 4,300 digits and more.
                (b'{"id": ' + b"7" * 5000 + b', "method": "status"}', PARSE_ERROR),
            ]
            async with api_client(setup.socket) as client:
                for line, code in cases:
                    await client.send_raw(line + b"\n")
                    reply = await client.receive()
                    assert reply["id"] is None, line[:40]
                    assert reply["error"]["code"] == code, (line[:40], reply)
                # The same connection is still served.
                assert (await client.result("status"))["selected"] == FAST
            assert (await answers(setup.socket))["selected"] == FAST
        nothing_lost(setup, first)


# A stdlib-only client for the system interpreter, run as nobody: opens argv[2]
# connections, starts a watch on each, prints the first line each got, then holds them
# all until its stdin closes.
HOLD_AS_NOBODY = r"""
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    try:
        sock.sendall(b'{"id": 1, "method": "watch"}\n')
    except BrokenPipeError:
        pass  # refused: the busy line is already waiting to be read
    print(sock.makefile("rb").readline().decode().strip(), flush=True)
    held.append(sock)
sys.stdin.read()
"""


def hold_as(uid: int, socket_path: Path, count: int) -> subprocess.Popen[str]:
    """`count` watch streams held open by a process of user `uid` (group nogroup)."""
    return subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", HOLD_AS_NOBODY, str(socket_path), str(count)],
        user=uid, group=NOBODY, extra_groups=[], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)


def lines_of(proc: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    return [json.loads(proc.stdout.readline()) for _ in range(count)]


@pytest.mark.root
@pytest.mark.anyio
async def test_one_reader_cannot_take_every_slot_and_admins_always_get_in(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    directory = short_dir("ogsd-fault-")
    directory.chmod(0o755)  # nobody must reach the socket
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        setup = setup_for(directory, servers, extra=(
            'socket_group = "nogroup"\nmax_clients = 8\nmax_clients_per_uid = 4\n'
            "admin_reserved_clients = 2\n"))
        setup.socket = directory / "run" / "ogsd.sock"
        options = setup.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, setup.config, FakeClock()) as (daemon, feed):
            first = await feed.next()
            # One user: four watch streams (they never time out), then refused.
            reader = hold_as(NOBODY, setup.socket, 5)
            stack.callback(reader.kill)
            replies = await anyio.to_thread.run_sync(lines_of, reader, 5)
            assert [r.get("result") for r in replies[:4]] == [{"watching": True}] * 4
            assert replies[4]["error"]["code"] == BUSY
            assert "max_clients_per_uid=4" in replies[4]["error"]["message"]
            # Root fills the unreserved slots, so another user's reader finds it busy...
            async with (api_client(setup.socket) as a, api_client(setup.socket) as b):
                await a.result("status")
                await b.result("status")
                other = hold_as(NOBODY - 1, setup.socket, 1)
                stack.callback(other.kill)
                refused = (await anyio.to_thread.run_sync(lines_of, other, 1))[0]
                assert refused["error"]["code"] == BUSY
                assert "2 kept for admins" in refused["error"]["message"]
                # ...while the root sleep hook still gets in and is served.
                async with api_client(setup.socket) as hook:
                    assert (await hook.result("notify.sleep")) == {"message": "sleep recorded"}
                    assert (await hook.result("notify.resume"))["message"]
                    assert (await hook.result("status"))["selected"] == FAST
            reader.communicate("", timeout=WAIT)
            other.communicate("", timeout=WAIT)
            assert (await answers(setup.socket))["selected"] == FAST
            assert await daemon.persister.save(())
        nothing_lost(setup, first)


# --- the matrix -------------------------------------------------------------------------

# Every state-changing method, with valid params, from a stdlib client run as nobody.
WRITES_AS_NOBODY = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(10)
sock.connect(sys.argv[1])
lines = sock.makefile("rwb")
for i, (method, params) in enumerate(json.loads(sys.argv[2])):
    lines.write(json.dumps({"id": i, "method": method, "params": params}).encode() + b"\n")
    lines.flush()
    print(lines.readline().decode().strip(), flush=True)
"""
VALID_PARAMS = {"evaluate": {"wait": True}, "notify.connected": {"host": FAST}}


@pytest.mark.root
@pytest.mark.anyio
async def test_unprivileged_uid_can_change_nothing(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    directory = short_dir("ogsd-fault-")
    directory.chmod(0o755)
    try:
        setup = setup_for(directory, servers, extra='socket_group = "nogroup"\n')
        setup.socket = directory / "run" / "ogsd.sock"
        options = setup.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, setup.config, FakeClock()) as (daemon, feed):
            first = await feed.next()
            assert await daemon.persister.save(())
            state = await anyio.to_thread.run_sync(daemon.store.load_state)
            rounds = daemon.rounds.finished
            calls = [(m, VALID_PARAMS.get(m, {})) for m in WRITE_METHODS]
            done = await anyio.to_thread.run_sync(lambda: subprocess.run(
                ["/usr/bin/python3", "-I", "-c", WRITES_AS_NOBODY, str(setup.socket),
                 json.dumps(calls)],
                user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
                timeout=WAIT, check=False))
            assert done.returncode == 0, done.stderr
            replies = [json.loads(line) for line in done.stdout.splitlines()]
            assert len(replies) == len(WRITE_METHODS)
            for (method, _), reply in zip(calls, replies, strict=True):
                assert reply["error"]["code"] == FORBIDDEN, (method, reply)
                assert f"'{method}' needs admin rights" in reply["error"]["message"]
            assert await anyio.to_thread.run_sync(daemon.store.load_state) == state
            assert daemon.rounds.finished == rounds
            assert (await answers(setup.socket))["decided_at"] == first["decided_at"]
        nothing_lost(setup, first)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def connect(path: Path) -> socket.socket:
    """A blocking connect (no Python timeout: that makes it non-blocking, and a full
    backlog then fails at once); the kernel gives up after SO_SNDTIMEO."""
    sock = socket.socket(socket.AF_UNIX)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", int(WAIT), 0))
    sock.connect(str(path))
    sock.setblocking(False)
    return sock


def send_and_read(path: Path, data: bytes) -> bytes:
    """Send `data` (the daemon may close before taking it all), then read until EOF."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


@pytest.mark.anyio
async def test_huge_half_open_and_idle_clients(
        servers: tuple[LoopbackServer, LoopbackServer]) -> None:
    with site_dir() as directory:
        setup = setup_for(directory, servers, extra="idle_timeout_s = 0.5\n")
        options = setup.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, setup.config, FakeClock()) as (_, feed):
            first = await feed.next()
            # A 1 MiB line: refused at the limit, that connection closed, nothing read past.
            huge = b'{"id": 1, "method": "status", "x": "' + b"a" * (1 << 20) + b'"}\n'
            reply = await anyio.to_thread.run_sync(send_and_read, setup.socket, huge)
            assert json.loads(reply.splitlines()[0])["error"]["code"] == TOO_LARGE
            assert len(reply.splitlines()) == 1  # then closed: nothing read past the limit
            # Half-open: the request, then our side shut for writing; the reply still comes.
            sock = await anyio.to_thread.run_sync(socket.socket, socket.AF_UNIX)
            with sock:
                sock.settimeout(WAIT)
                await anyio.to_thread.run_sync(sock.connect, str(setup.socket))
                sock.sendall(b'{"id": 5, "method": "status"}\n')
                sock.shutdown(socket.SHUT_WR)
                reply = await anyio.to_thread.run_sync(lambda: sock.makefile("rb").read())
            assert json.loads(reply)["result"]["selected"] == FAST  # then EOF
            # Idle (nothing sent, or half a line): closed after idle_timeout_s.
            async with (api_client(setup.socket) as idle, api_client(setup.socket) as half):
                await half.send_raw(b'{"id": 1, "meth')
                for client in (idle, half):
                    with pytest.raises((anyio.EndOfStream, anyio.IncompleteRead)):
                        await client.receive(within=WAIT)
            assert (await answers(setup.socket))["selected"] == FAST
        nothing_lost(setup, first)


@pytest.mark.anyio
@pytest.mark.parametrize("max_clients", [1024, 32])
async def test_a_thousand_concurrent_clients(
        servers: tuple[LoopbackServer, LoopbackServer], max_clients: int) -> None:
    """Every client gets one reply: a status, or (past max_clients) a clear busy."""
    clients = 1000
    with site_dir() as directory:
        setup = setup_for(directory, servers, extra=f"max_clients = {max_clients}\n")
        options = setup.options(watch_network=False, watch_sleep=False)
        async with running_daemon(options, setup.config, FakeClock()) as (_, feed):
            first = await feed.next()
            replies: list[dict[str, Any]] = []
            connections: list[object] = []
            connected = anyio.Event()
            # Blocking connects in threads, as ogsctl does: the kernel holds each one until
            # the daemon accepts it (a non-blocking connect spins on a full backlog).
            limiter = anyio.CapacityLimiter(50)

            async def one() -> None:
                raw = await anyio.to_thread.run_sync(connect, setup.socket, limiter=limiter)
                async with await UNIXSocketStream.from_socket(raw) as stream:
                    client = ApiClient(stream)
                    connections.append(client)
                    if len(connections) == clients:
                        connected.set()
                    await connected.wait()  # all connected before anyone asks
                    with contextlib.suppress(anyio.BrokenResourceError):  # refused: closed
                        await client.send_raw(b'{"id": 1, "method": "status"}\n')
                    replies.append(await client.receive(within=3 * WAIT))

            with anyio.fail_after(6 * WAIT):
                async with anyio.create_task_group() as tg:
                    for _ in range(clients):
                        tg.start_soon(one)
            assert len(replies) == clients
            served = [r for r in replies if "result" in r]
            busy = [r for r in replies if r.get("error", {}).get("code") == BUSY]
            assert len(served) + len(busy) == clients
            if max_clients > clients:
                assert len(served) == clients
            else:  # (a slot freed by one served is taken by one queued in the backlog)
                assert served
                assert busy
            assert all(r["result"]["selected"] == FAST for r in served)
            assert (await answers(setup.socket))["selected"] == FAST
        nothing_lost(setup, first)


# --- property-based fuzzing of requests ----------------------------------------------------

# Not fuzzed: cache.clear (it deletes what the suite checks is kept; its refusal and
# effect are tested elsewhere).
FUZZ_METHODS = sorted(set(METHODS) - {"cache.clear"})
PARAM_NAMES = sorted({f.name for m in METHODS.values() for f in fields(m.params)} | {"x"})

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(PARAM_NAMES), inner, max_size=4),
    max_leaves=12)
requests = st.fixed_dictionaries(
    {"method": st.sampled_from(FUZZ_METHODS) | st.text(max_size=12)},
    optional={"id": json_values,
              "params": json_values | st.dictionaries(st.sampled_from(PARAM_NAMES),
                                                      json_values, max_size=3),
              "jsonrpc": json_values})
lines = (
    requests.map(lambda r: json.dumps(r).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    # (Blank lines are keep-alives and get no reply.)
    | st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")).filter(bytes.strip)
    | st.integers(1, 20_000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 20_000).map(lambda n: b'{"a":' * n)
)


class FuzzClient:
    """One connection at a time to the fuzzed daemon; reconnects after a watch or a close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.sent = 0

    def ask(self, line: bytes) -> dict[str, Any]:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(3 * WAIT)
            self.sock.connect(str(self.path))
            self.reader = self.sock.makefile("rb")
        try:
            self.sock.sendall(line + b"\n")
            reply = json.loads(self.reader.readline())
        except (OSError, ValueError) as exc:
            self.close()  # the next example starts afresh
            raise AssertionError(f"no reply to {line[:200]!r}: {exc!r}") from exc
        assert isinstance(reply, dict)
        if (reply.get("result") == {"watching": True}  # a decision stream now
                or reply.get("error", {}).get("code") == TOO_LARGE):  # closed after it
            self.close()
        return reply

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = None


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[Setup, DaemonProcess, FuzzClient]]:
    """A daemon process (root: every method allowed) with gateways, for the whole module."""
    with ExitStack() as stack:
        directory = short_dir("ogsd-fuzz-")
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        fast = stack.enter_context(LoopbackServer(host=FAST))
        slow = stack.enter_context(LoopbackServer(host=SLOW, delay=0.05))
        setup = setup_for(directory, (fast, slow))
        notify = stack.enter_context(NotifySocket(directory / "notify"))
        daemon = DaemonProcess(config=setup.config, state=setup.state,
                               socket_path=setup.socket, log=directory / "log",
                               env={"NOTIFY_SOCKET": str(notify.path),
                                    "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS})
        stack.callback(daemon.stop)
        notify.expect("READY=1", START_WAIT)
        notify.expect_status()  # the first decision is published
        client = FuzzClient(setup.socket)
        stack.callback(client.close)
        yield setup, daemon, client


def expected_id(line: bytes) -> tuple[bool, Any]:
    """(whether the reply must echo an id, which) for a request line."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return False, None
    if not isinstance(request, dict):
        return False, None
    req_id = request.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, str | int | float | None):
        return False, None
    if isinstance(req_id, float) and not math.isfinite(req_id):
        return False, None
    return True, req_id


@settings(max_examples=scaled(400, 10_000), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(line=lines)
def test_fuzzed_requests_always_get_one_clear_reply(
        fuzzed: tuple[Setup, DaemonProcess, FuzzClient], line: bytes) -> None:
    _, daemon, client = fuzzed
    reply = client.ask(line)
    assert set(reply) in ({"id", "result"}, {"id", "error"}), reply
    if "error" in reply:
        assert isinstance(reply["error"]["code"], int)
        assert reply["error"]["message"].strip()
        assert "\n" not in reply["error"]["message"]
    echoes, req_id = expected_id(line)
    if echoes:
        assert reply["id"] == req_id
    elif "error" in reply:
        assert reply["id"] is None
    assert daemon.proc.poll() is None


def test_after_fuzzing_the_daemon_answers_and_lost_nothing(
        fuzzed: tuple[Setup, DaemonProcess, FuzzClient]) -> None:
    """Runs after the fuzzing above (same module daemon): no traceback was logged."""
    setup, daemon, client = fuzzed
    reply = client.ask(b'{"id": "last", "method": "status"}')
    assert reply["id"] == "last"
    assert reply["result"]["selected"] in (FAST, SLOW)
    assert not [line for line in daemon.log_lines() if "raw" in line or "exception" in line]
    decisions, entries = stored(setup.state)
    assert decisions
    assert entries
    assert sys.getrecursionlimit()  # (the test process too survived the nesting)
