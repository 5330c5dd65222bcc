"""The socket API server against real Unix sockets, on uvloop, with a canned handler."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
import uvloop
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ogsd.core.models import (
    CacheEntry,
    Decision,
    GatewayResult,
    Location,
    Metric,
    ProbeSample,
    Reason,
    Source,
)
from ogsd.daemon.api import ApiServer, DecisionFeed
from ogsd.daemon.peers import in_group
from ogsd.daemon.socketfile import ApiSetupError
from ogsd.wire.api import (
    BAD_PARAMS,
    BUSY,
    FORBIDDEN,
    INTERNAL,
    INVALID_REQUEST,
    METHODS,
    PARSE_ERROR,
    TOO_LARGE,
    UNKNOWN_METHOD,
    ApiError,
    Json,
    PortalGatewayParams,
    cache_entry_json,
    decision_json,
    selection_json,
    status_json,
)

NOBODY = 65534  # Debian's nobody:nogroup
T0 = datetime(2026, 11, 26, 7, 30, tzinfo=UTC)
LOCATION = Location("corp.example.com", ("10.0.0.53", "10.0.0.54"))
WRITE_METHODS = sorted(name for name, m in METHODS.items() if m.write)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", {"use_uvloop": True}


def sample(network: float, exchange: float, at: float = 1_795_000_000.0) -> ProbeSample:
    return ProbeSample(started_at=at, network_rtt_ms=network, tcp_info_rtt_ms=network,
                       exchange_ms=exchange)


def canned_decision(decided_at: datetime = T0, selected: str = "vpn-tokyo.example.com"
                    ) -> Decision:
    """A round over three gateways: two answered, one refused every probe."""
    results = (
        GatewayResult("vpn-tokyo.example.com", "198.18.1.10",
                      (sample(23.4, 141.0), sample(24.1, 139.5), sample(23.9, 260.2))),
        GatewayResult("vpn-osaka.example.com", "198.18.2.10",
                      (sample(31.0, 98.0), sample(30.2, 97.1), sample(30.8, 99.4))),
        GatewayResult("vpn-sydney.example.com", "198.18.3.10",
                      tuple(ProbeSample(started_at=1_795_000_000.0, error="refused")
                            for _ in range(3)), error="refused"),
    )
    return Decision(
        location=LOCATION, source=Source.PROBES, reason=Reason.PROBES,
        reason_text=f"Selected '{selected}' (23.4 ms network RTT) from 3 gateways",
        selected=selected,
        order=(selected, "vpn-tokyo-backup.example.com", "vpn-osaka.example.com",
               "vpn-sydney.example.com"),
        metric=Metric.NETWORK, decided_at=decided_at, results=results)


class CannedHandler:
    """A handler with realistic fixed answers, recording what it was asked."""

    def __init__(self) -> None:
        self.decision: Decision | None = canned_decision()
        self.connected: str | None = None
        self.calls: list[tuple[str, Json]] = []
        self.feed = DecisionFeed()
        self.fail_with: Exception | None = None
        self.loop_types: list[type] = []
        self.release = anyio.Event()  # evaluate(wait=True) blocks on it when `block`
        self.block = False
        self.subscribed = anyio.Event()  # set when a watch starts
        self.unsubscribed = anyio.Event()  # set when a watch ends

    def _record(self, name: str, **params: Any) -> None:
        self.loop_types.append(type(asyncio.get_running_loop()))
        self.calls.append((name, params))
        if self.fail_with is not None:
            raise self.fail_with

    async def status(self) -> Json:
        self._record("status")
        return status_json(self.decision, connected=self.connected,
                           recommendation="stay on vpn-tokyo.example.com")

    async def selection(self) -> Json:
        self._record("selection")
        return selection_json(self.decision)

    async def results(self) -> Json:
        self._record("results")
        return decision_json(self.decision)

    async def evaluate(self, *, wait: bool, connect: bool = False, full: bool = False) -> Json:
        self._record("evaluate", wait=wait, connect=connect, **({"full": True} if full else {}))
        if not wait:
            return {"started": True, "message": "evaluation started"}
        if self.block:
            await self.release.wait()
        return decision_json(self.decision)

    async def cache_list(self) -> Json:
        self._record("cache_list")
        entry = CacheEntry(LOCATION, canned_decision().order, (), Metric.NETWORK,
                           T0, T0 + timedelta(days=14), entry_id=7)
        return {"entries": [cache_entry_json(entry)]}

    async def cache_clear(self) -> Json:
        self._record("cache_clear")
        return {"cleared": 1}

    async def gateways(self) -> Json:
        self._record("gateways")
        return {"gateways": []}

    async def diag(self) -> Json:
        self._record("diag")
        return {"decisions": [decision_json(self.decision)], "status": {}}

    async def notify_connected(self, *, host: str | None = None, device: str | None = None,
                               nm_uuid: str | None = None) -> Json:
        self._record("notify_connected", host=host, **({"device": device} if device else {}),
                     **({"nm_uuid": nm_uuid} if nm_uuid else {}))
        if self.decision is None or host not in self.decision.order:
            raise ApiError(BAD_PARAMS, f"notify.connected: unknown gateway '{host}'")
        self.connected = host
        return {"message": f"connected to {host}"}

    async def nm_apply(self, *, name: str | None = None) -> Json:
        self._record("nm_apply", connection=name)
        return {"connections": []}

    async def notify_portal(self, *, portal: str,
                            gateways: tuple[PortalGatewayParams, ...]) -> Json:
        self._record("notify_portal", portal=portal, gateways=len(gateways))
        return {"learnt": True, "message": f"learnt {len(gateways)} gateways of {portal}"}

    async def notify_disconnected(self, *, device: str | None = None) -> Json:
        self._record("notify_disconnected", **({"device": device} if device else {}))
        self.connected = None
        return {"message": "disconnected"}

    async def notify_sleep(self) -> Json:
        self._record("notify_sleep")
        return {"message": "sleeping"}

    async def notify_resume(self) -> Json:
        self._record("notify_resume")
        return {"message": "resumed; re-evaluating after the network test"}

    async def reload(self) -> Json:
        self._record("reload")
        return {"message": "reloaded 1 profile, 3 gateways"}

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Json]]:
        try:
            async with self.feed.subscribe() as events:
                self.subscribed.set()
                yield events
        finally:
            self.unsubscribed.set()


class Client:
    """A raw protocol client over a real connection."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self._id = 0

    @classmethod
    async def connect(cls, path: Path) -> Client:
        return cls(await anyio.connect_unix(path))

    async def send_line(self, data: bytes) -> None:
        await self.stream.send(data + b"\n")

    async def recv(self) -> Json:
        with anyio.fail_after(5):
            message: Json = json.loads(await self.reader.receive_until(b"\n", 1 << 20))
        return message

    async def call(self, method: str, params: Json | None = None) -> Json:
        self._id += 1
        request: Json = {"id": self._id, "method": method}
        if params is not None:
            request["params"] = params
        await self.send_line(json.dumps(request).encode())
        reply = await self.recv()
        assert reply["id"] == self._id
        return reply

    async def closed_by_server(self) -> bool:
        """True once the server closes; False if it sends anything instead."""
        with anyio.fail_after(5):
            try:
                await self.reader.receive()
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def serving(handler: CannedHandler, path: Path, **options: Any
                  ) -> AsyncIterator[ApiServer]:
    server = ApiServer(handler, path=path, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server
        tg.cancel_scope.cancel()


def error_of(reply: Json) -> tuple[int, str]:
    assert "result" not in reply, reply
    return reply["error"]["code"], reply["error"]["message"]


def run_as(uid: int, gid: int, action: Callable[[], int]) -> int:
    """Fork, drop to uid/gid (no supplementary groups), run `action`; its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 99
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            code = action()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def requests_as(uid: int, gid: int, path: Path, requests: list[Json]) -> list[Json]:
    """Send `requests` on one connection as another user; the replies (blocking)."""
    read_fd, write_fd = os.pipe()

    def child() -> int:
        os.close(read_fd)
        with socket.socket(socket.AF_UNIX) as sock, os.fdopen(write_fd, "w") as out:
            sock.settimeout(5)
            try:
                sock.connect(os.fspath(path))
            except OSError as exc:
                out.write(json.dumps([{"connect_errno": exc.errno}]))
                return 0
            replies = []
            stream = sock.makefile("rb")
            for request in requests:
                sock.sendall(json.dumps(request).encode() + b"\n")
                replies.append(json.loads(stream.readline()))
            out.write(json.dumps(replies))
        return 0

    try:
        code = run_as(uid, gid, child)
    finally:
        os.close(write_fd)
        with os.fdopen(read_fd) as data:
            text = data.read()
    assert code == 0, text
    replies: list[Json] = json.loads(text)
    return replies


# --- tests -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_method_answers_with_its_shape(tmp_path: Path) -> None:
    handler = CannedHandler()
    async with serving(handler, tmp_path / "api.sock") as server:
        client = await Client.connect(tmp_path / "api.sock")
        status = (await client.call("status"))["result"]
        assert status["selected"] == "vpn-tokyo.example.com"
        assert status["source"] == "probes"
        assert status["reason_code"] == "probes"
        assert status["location"] == {
            "domain": "corp.example.com", "servers": ["10.0.0.53", "10.0.0.54"], "search": [],
            "keys": ["corp.example.com|10.0.0.53", "corp.example.com|10.0.0.54"]}
        assert status["decided_at"] == "2026-11-26T07:30:00.000000+00:00"
        assert status["connected"] is None
        assert status["recommendation"] == "stay on vpn-tokyo.example.com"
        assert "results" not in status

        selection = (await client.call("selection"))["result"]
        assert selection["order"] == ["vpn-tokyo.example.com", "vpn-tokyo-backup.example.com",
                                      "vpn-osaka.example.com", "vpn-sydney.example.com"]
        assert selection["reason"].startswith("Selected 'vpn-tokyo.example.com'")

        rows = (await client.call("results"))["result"]["results"]
        assert [r["host"] for r in rows] == ["vpn-tokyo.example.com", "vpn-osaka.example.com",
                                             "vpn-sydney.example.com"]
        assert rows[0]["rtt_ms"] == 23.4  # min of the network figures, not of the exchanges
        assert rows[0]["exchange_ms"] == [141.0, 139.5, 260.2]
        assert rows[2]["rtt_ms"] is None
        assert rows[2]["error"] == "refused"

        assert (await client.call("evaluate"))["result"]["started"] is True
        assert (await client.call("evaluate", {"wait": True}))["result"]["selected"] == (
            "vpn-tokyo.example.com")
        entries = (await client.call("cache.list"))["result"]["entries"]
        assert entries[0]["id"] == 7
        assert entries[0]["expires_at"] == "2026-12-10T07:30:00.000000+00:00"
        assert (await client.call("cache.clear"))["result"] == {"cleared": 1}
        reply = await client.call("notify.connected", {"host": "vpn-osaka.example.com"})
        assert reply["result"]["message"] == "connected to vpn-osaka.example.com"
        assert (await client.call("status"))["result"]["connected"] == "vpn-osaka.example.com"
        for name in ("notify.disconnected", "notify.sleep", "notify.resume", "reload"):
            assert "message" in (await client.call(name))["result"]
        # A handler's own refusal reaches the client with its code.
        code, message = error_of(await client.call("notify.connected", {"host": "vpn-x"}))
        assert (code, message) == (BAD_PARAMS, "notify.connected: unknown gateway 'vpn-x'")
        assert server.clients == 1
        await client.aclose()

    assert ("evaluate", {"wait": False, "connect": False}) in handler.calls
    assert ("evaluate", {"wait": True, "connect": False}) in handler.calls
    assert ("notify_connected", {"host": "vpn-osaka.example.com"}) in handler.calls
    assert {name for name, _ in handler.calls} >= {
        "status", "selection", "results", "cache_list", "cache_clear", "notify_disconnected",
        "notify_sleep", "notify_resume", "reload"}
    assert set(handler.loop_types) == {uvloop.Loop}
    assert not (tmp_path / "api.sock").exists()  # unlinked on exit


@pytest.mark.root  # setresuid / chown
@pytest.mark.anyio
async def test_socket_is_0660_with_group_in_a_created_parent(tmp_path: Path) -> None:
    path = tmp_path / "run" / "ogsd" / "api.sock"
    async with serving(CannedHandler(), path, socket_group="nogroup"):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660  # nothing for "other": not world-writable
        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
        parent = os.stat(path.parent)
        assert stat.S_IMODE(parent.st_mode) == 0o750
        assert parent.st_gid == st.st_gid


@pytest.mark.root  # setresuid / chown
@pytest.mark.anyio
async def test_unprivileged_peer_reads_but_cannot_write(shared_dir: Path) -> None:
    handler = CannedHandler()
    path = shared_dir / "api.sock"
    requests: list[Json] = [{"id": 1, "method": "status"}, {"id": 2, "method": "cache.list"}]
    valid: dict[str, Json] = {
        "notify.connected": {"host": "vpn-osaka.example.com"},
        "notify.portal": {"portal": "vpn.example.com", "gateways": [{"address": "gw-1"}]}}
    requests += [{"id": 10 + i, "method": name, "params": valid.get(name, {})}
                 for i, name in enumerate(WRITE_METHODS)]
    async with serving(handler, path, socket_group="nogroup"):
        replies = await anyio.to_thread.run_sync(requests_as, NOBODY, NOBODY, path, requests)
    assert replies[0]["result"]["selected"] == "vpn-tokyo.example.com"
    assert replies[1]["result"]["entries"]
    for name, reply in zip(WRITE_METHODS, replies[2:], strict=True):
        code, message = error_of(reply)
        assert code == FORBIDDEN
        assert f"'{name}'" in message
        assert "uid 65534" in message
    assert {name for name, _ in handler.calls} == {"status", "cache_list"}


@pytest.mark.root  # setresuid / chown
@pytest.mark.anyio
async def test_socket_group_decides_who_connects(shared_dir: Path) -> None:
    path = shared_dir / "api.sock"
    async with serving(CannedHandler(), path):  # root's group only
        replies = await anyio.to_thread.run_sync(
            requests_as, NOBODY, NOBODY, path, [{"id": 1, "method": "status"}])
    assert replies == [{"connect_errno": 13}]  # EACCES from the file mode


# Not nobody/nogroup: that is the overflow id, which ogsd refuses as an admin (issue 8).
USER = 4242  # no passwd entry: only what the test grants
USERS = grp.getgrnam("users").gr_gid  # base-passwd's group 100


@pytest.mark.root  # setresuid / chown
@pytest.mark.anyio
@pytest.mark.parametrize(("grant", "admin"), [
    ({"admin_uids": [USER]}, True), ({"admin_group": "users"}, True),
    ({"admin_uids": [USER + 1]}, False), ({}, False)])
async def test_admin_uids_and_admin_group_grant_writes(shared_dir: Path, grant: Json,
                                                       admin: bool) -> None:
    handler = CannedHandler()
    path = shared_dir / "api.sock"
    async with serving(handler, path, socket_group="users", **grant):
        replies = await anyio.to_thread.run_sync(
            requests_as, USER, USERS, path, [{"id": 1, "method": "cache.clear"}])
    if admin:
        assert replies == [{"id": 1, "result": {"cleared": 1}}]
    else:
        assert replies[0]["error"]["code"] == FORBIDDEN
        assert f"uid {USER} is not an admin" in replies[0]["error"]["message"]


def test_group_membership_comes_from_the_user_database() -> None:
    assert in_group(0, 0)
    assert not in_group(NOBODY, 0)
    assert in_group(NOBODY, NOBODY)
    assert not in_group(3_999_999, 0)  # no passwd entry: a member of nothing


@pytest.mark.anyio
@pytest.mark.parametrize("with_newline", [False, True])
async def test_oversize_request_is_refused_then_closed(tmp_path: Path,
                                                       with_newline: bool) -> None:
    async with serving(CannedHandler(), tmp_path / "api.sock", request_max_bytes=1024):
        client = await Client.connect(tmp_path / "api.sock")
        other = await Client.connect(tmp_path / "api.sock")
        body = b'{"method": "status", "params": {"pad": "' + b"x" * 3000 + b'"}}'
        await client.stream.send(body + (b"\n" if with_newline else b""))
        code, message = error_of(await client.recv())
        assert code == TOO_LARGE
        assert "1024 bytes" in message
        assert await client.closed_by_server()
        assert (await other.call("status"))["result"]["selected"]
        await client.aclose()
        await other.aclose()


@pytest.mark.anyio
async def test_bad_requests_get_errors_and_nobody_is_disturbed(tmp_path: Path) -> None:
    cases: list[tuple[bytes, int, str]] = [
        (b"{not json", PARSE_ERROR, "parse error"),
        (b"\xff\xfe", PARSE_ERROR, "parse error"),
        (b"[1, 2]", INVALID_REQUEST, "expected a JSON object"),
        (b'{"id": 3}', INVALID_REQUEST, "'method' must be a string"),
        (b'{"method": 5}', INVALID_REQUEST, "'method' must be a string"),
        (b'{"method": "shutdown"}', UNKNOWN_METHOD, "unknown method 'shutdown'"),
        (b'{"method": "status", "params": [1]}', BAD_PARAMS, "'params' must be an object"),
        (b'{"method": "evaluate", "params": {"wait": "yes"}}', BAD_PARAMS,
         "evaluate: param 'wait' must be a boolean, got a string"),
        (b'{"method": "evaluate", "params": {"wait": 1}}', BAD_PARAMS,
         "must be a boolean, got an integer"),
        (b'{"method": "evaluate", "params": {"now": true}}', BAD_PARAMS,
         "evaluate: unknown param(s): now"),
        (b'{"method": "notify.connected"}', BAD_PARAMS, "missing param 'host'"),
        (b'{"method": "notify.connected", "params": {"nm_uuid": "x"}}', BAD_PARAMS,
         "param 'nm_uuid' must be a UUID"),
        (b'{"method": "nm.apply", "params": {"name": ""}}', BAD_PARAMS,
         "param 'name' must be a connection name"),
        (b'{"method": "notify.connected", "params": {"host": 5}}', BAD_PARAMS,
         "param 'host' must be a string, got an integer"),
        (b'{"method": "notify.connected", "params": {"host": "a b"}}', BAD_PARAMS,
         "must be a host name"),
        (b'{"method": "notify.connected", "params": {"host": "h", "device": "tun 0"}}',
         BAD_PARAMS, "param 'device' must be a network interface name"),
        (b'{"method": "notify.connected", "params": {"host": "h", "device": "../x"}}',
         BAD_PARAMS, "param 'device' must be a network interface name"),
        (b'{"method": "notify.disconnected", "params": {"device": "sixteen-chars-xx"}}',
         BAD_PARAMS, "param 'device' must be a network interface name"),
        (b'{"method": "notify.disconnected", "params": {"device": null}}', BAD_PARAMS,
         "param 'device' must be a string, got null"),
    ]
    handler = CannedHandler()
    async with serving(handler, tmp_path / "api.sock"):
        bad = await Client.connect(tmp_path / "api.sock")
        good = await Client.connect(tmp_path / "api.sock")
        for line, code, text in cases:
            await bad.send_line(line)
            got_code, message = error_of(await bad.recv())
            assert (got_code, text in message) == (code, True), (line, message)
            assert (await good.call("selection"))["result"]["selected"]
        await bad.send_line(b'{"id": "x7", "method": "nope"}')
        assert (await bad.recv())["id"] == "x7"  # errors answer the request's id
        await bad.send_line(b"")  # blank lines are ignored, not errors
        assert (await bad.call("status"))["result"]["selected"]  # still usable
        # A client that vanishes mid-line disturbs nobody.
        await bad.stream.send(b'{"method": "sta')
        await bad.aclose()
        assert (await good.call("status"))["result"]["selected"]
        await good.aclose()
    assert [name for name, _ in handler.calls].count("notify_connected") == 0
    assert [name for name, _ in handler.calls].count("notify_disconnected") == 0


@pytest.mark.anyio
async def test_busy_when_max_clients_are_connected(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    async with serving(CannedHandler(), path, max_clients=2,
                       request_max_bytes=1024) as server, AsyncExitStack() as stack:
        first, second = (await Client.connect(path), await Client.connect(path))
        for client in (first, second):
            stack.push_async_callback(client.aclose)
            assert (await client.call("status"))["result"]  # both are being served
        third = await Client.connect(path)
        stack.push_async_callback(third.aclose)
        code, message = error_of(await third.recv())
        assert code == BUSY
        assert "max_clients=2" in message
        assert await third.closed_by_server()
        # The server closes `first` after freeing its slot, so EOF means the slot is free.
        await first.send_line(b"x" * 2000)
        assert error_of(await first.recv())[0] == TOO_LARGE
        assert await first.closed_by_server()
        assert server.clients == 1
        fourth = await Client.connect(path)
        stack.push_async_callback(fourth.aclose)
        assert (await fourth.call("status"))["result"]  # the slot was freed


@pytest.mark.anyio
async def test_idle_client_is_closed_but_a_watcher_is_not(tmp_path: Path) -> None:
    handler = CannedHandler()
    path = tmp_path / "api.sock"
    async with serving(handler, path, idle_timeout=0.2):
        started = time.monotonic()
        idle = await Client.connect(path)
        watcher = await Client.connect(path)
        assert (await watcher.call("watch"))["result"] == {"watching": True}
        assert await idle.closed_by_server()
        # uvloop's clock ticks in whole milliseconds: allow one tick early.
        assert 0.19 <= time.monotonic() - started < 3
        await anyio.sleep(0.3)  # well past the idle timeout: the watcher must stay
        handler.feed.publish({"selected": "vpn-osaka.example.com"})
        event = await watcher.recv()
        assert event == {"event": "decision", "data": {"selected": "vpn-osaka.example.com"}}
        await idle.aclose()
        await watcher.aclose()


@pytest.mark.anyio
async def test_handler_exception_is_internal_error_without_traceback(tmp_path: Path) -> None:
    handler = CannedHandler()
    async with serving(handler, tmp_path / "api.sock"):
        client = await Client.connect(tmp_path / "api.sock")
        handler.fail_with = RuntimeError("database is locked at /var/lib/ogsd/ogsd.db")
        with structlog.testing.capture_logs() as logs:
            code, message = error_of(await client.call("results"))
        assert code == INTERNAL
        assert message == "internal error in 'results' (see the ogsd log)"
        failures = [e for e in logs if e["event"] == "api handler failed"]
        assert failures
        assert failures[0]["method"] == "results"
        assert failures[0]["exc_info"] is True
        handler.fail_with = None
        assert (await client.call("results"))["result"]["selected"]  # still usable
        await client.aclose()


@pytest.mark.anyio
async def test_slow_handler_times_out(tmp_path: Path) -> None:
    handler = CannedHandler()
    handler.block = True
    async with serving(handler, tmp_path / "api.sock", request_timeout=0.2):
        client = await Client.connect(tmp_path / "api.sock")
        code, message = error_of(await client.call("evaluate", {"wait": True}))
        assert (code, message) == (INTERNAL, "'evaluate' timed out after 0.2 s")
        assert (await client.call("status"))["result"]
        await client.aclose()


@pytest.mark.anyio
async def test_watch_streams_decisions_published_after_subscribing(tmp_path: Path) -> None:
    handler = CannedHandler()
    path = tmp_path / "api.sock"
    async with serving(handler, path):
        handler.feed.publish({"selected": "before anyone watched"})
        first, second = await Client.connect(path), await Client.connect(path)
        for client in (first, second):
            assert (await client.call("watch"))["result"] == {"watching": True}
        assert handler.feed.subscribers == 2
        events = [decision_json(canned_decision(T0 + timedelta(minutes=m))) for m in (1, 2)]
        for event in events:
            handler.feed.publish(event)
        for client in (first, second):
            got = [await client.recv(), await client.recv()]
            assert got == [{"event": "decision", "data": e} for e in events]
        await first.aclose()
        with anyio.fail_after(5):
            await handler.unsubscribed.wait()
        assert handler.feed.subscribers == 1
        handler.feed.close()  # shutdown ends the stream and the connection
        assert await second.closed_by_server()
        await second.aclose()


@pytest.mark.anyio
async def test_feed_drops_a_watcher_that_falls_behind() -> None:
    feed = DecisionFeed(buffer=2)
    async with feed.subscribe() as events:
        for n in range(3):
            feed.publish({"n": n})
        assert feed.subscribers == 0
        assert [e async for e in events] == [{"n": 0}, {"n": 1}]


@pytest.mark.anyio
async def test_stale_socket_is_replaced_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(os.fspath(path))  # left behind by a crashed daemon
    async with serving(CannedHandler(), path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with (pytest.raises(ApiSetupError, match="another ogsd is already listening on"),
              anyio.fail_after(5)):
            await ApiServer(CannedHandler(), path=path).serve()
        client = await Client.connect(path)  # the first server is undisturbed
        assert (await client.call("status"))["result"]
        await client.aclose()


@pytest.mark.anyio
async def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("precious")
    with pytest.raises(ApiSetupError, match="exists and is not a socket"), anyio.fail_after(5):
        await ApiServer(CannedHandler(), path=path).serve()
    assert path.read_text() == "precious"


@pytest.mark.anyio
async def test_unusable_directory_is_a_setup_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ApiSetupError,
                       match=r"cannot listen on .*file/ogsd/api\.sock: Not a directory"):
        await ApiServer(CannedHandler(), path=tmp_path / "file" / "ogsd" / "api.sock").serve()


@pytest.mark.anyio
async def test_exit_leaves_a_replaced_socket_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as newer:
        async with serving(CannedHandler(), path):
            path.unlink()
            newer.bind(os.fspath(path))  # e.g. a new daemon took over the path
        assert path.exists()


@pytest.mark.anyio
async def test_serves_a_socket_passed_by_systemd(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(path))
        sock.listen()
        server = ApiServer(CannedHandler(), sock=sock)
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            client = await Client.connect(path)
            assert (await client.call("status"))["result"]["selected"]
            await client.aclose()
            tg.cancel_scope.cancel()
    assert path.exists()  # systemd owns the path


@pytest.mark.parametrize(("options", "match"), [
    ({}, "exactly one of path= or sock="),
    ({"path": Path("/run/x.sock"), "socket_group": "no-such-group-ogsd"},
     "socket_group: unknown group 'no-such-group-ogsd'"),
    ({"path": Path("/run/x.sock"), "admin_group": "no-such-group-ogsd"},
     "admin_group: unknown group"),
    ({"path": Path("/run/" + "x" * 120)}, "socket path too long"),
    ({"path": Path("/run/x.sock"), "admin_uids": [NOBODY]},
     "admin_uids: 65534 is the overflow uid"),
    ({"path": Path("/run/x.sock"), "admin_group": "nogroup"},
     "admin_group: gid 65534 is the overflow gid"),
    ({"path": Path("/run/x.sock"), "max_clients": 0}, "max_clients must be positive"),
])
def test_bad_configuration_is_named(options: Json, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ApiServer(CannedHandler(), **options)
