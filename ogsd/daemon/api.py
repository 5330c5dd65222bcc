"""The Unix-socket API server: newline-delimited JSON requests, authorised by SO_PEERCRED.

Read methods are open to whoever may connect (the socket's mode and group decide, see
ogsd.daemon.socketfile); state-changing methods need an admin (ogsd.daemon.peers). Each
client holds a slot (`max_clients`, per uid, some kept for admins) until it hangs up, goes
idle or, for a `watch` stream, falls behind. The wire (error codes, the Handler protocol,
methods and params, the result shapes) is ogsd.wire.api.
"""

from __future__ import annotations

import errno
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from ogsd.daemon import socketfile
from ogsd.daemon.peers import Admins, Peer, group_id, peer_credentials
from ogsd.wire.api import (
    BUSY,
    FORBIDDEN,
    INTERNAL,
    TOO_LARGE,
    ApiError,
    Handler,
    Json,
    Method,
    decode_request,
    request_error,
    request_id,
    request_params,
    resolve_method,
)

# The wire names ogsd.daemon.daemon reaches as `api.ApiError` & co are exported for it;
# other code imports them from ogsd.wire.api.
# A client that reads nothing must not hold a send forever, nor a busy notice delay accept.
BUSY_SEND_TIMEOUT_S = 1.0
# accept() failing on EMFILE & co is transient; retrying at once would spin a core.
ACCEPT_BACKOFF_S = 0.1
# Decisions come minutes apart; 64 unread means the watcher is gone or stuck.
WATCH_BUFFER = 64

log = structlog.get_logger("ogsd.daemon.api")


class DecisionFeed:
    """Fans decisions out to `watch` clients; one that falls behind is dropped, never waited on."""

    def __init__(self, buffer: int = WATCH_BUFFER) -> None:
        self._buffer = buffer
        self._subscribers: set[MemoryObjectSendStream[Json]] = set()

    @property
    def subscribers(self) -> int:
        """How many watchers are attached."""
        return len(self._subscribers)

    def publish(self, data: Json) -> None:
        """Queue `data` for every watcher (call from the event loop's thread)."""
        for sender in list(self._subscribers):
            try:
                sender.send_nowait(data)
            except anyio.WouldBlock:
                log.warning("api watcher too slow, dropping it", buffer=self._buffer)
                self._drop(sender)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._drop(sender)

    def close(self) -> None:
        """End every watch stream (shutdown)."""
        for sender in list(self._subscribers):
            self._drop(sender)

    def _drop(self, sender: MemoryObjectSendStream[Json]) -> None:
        self._subscribers.discard(sender)
        sender.close()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Json]]:
        """Decisions published from now until exit; the iterator ends if dropped."""
        sender, receiver = anyio.create_memory_object_stream[Json](self._buffer)
        self._subscribers.add(sender)
        try:
            with receiver:
                yield receiver
        finally:
            self._drop(sender)


class _Hangup(Exception):
    """The client went away or stopped reading; end its conversation."""


class ApiServer:
    """Serves `Handler` on a Unix socket it binds at `path`, or on a systemd-passed `sock`."""

    def __init__(self, handler: Handler, *, path: Path | None = None,
                 sock: socket.socket | None = None, socket_group: str | None = None,
                 admin_uids: Collection[int] = (), admin_group: str | None = None,
                 max_clients: int = 32, request_max_bytes: int = 65536,
                 idle_timeout: float = 300.0, request_timeout: float = 60.0,
                 max_clients_per_uid: int | None = None, admin_reserved: int = 0) -> None:
        if (path is None) == (sock is None):
            raise ValueError("ApiServer needs exactly one of path= or sock=")
        if path is not None:
            socketfile.check_path(path)
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {request_timeout}")
        self._handler = handler
        self._path = path
        self._sock = sock
        self._group = None if socket_group is None else group_id(socket_group, "socket_group")
        self._request_timeout = request_timeout
        self._clients = 0
        self._per_uid: Counter[int] = Counter()  # connections being served, by uid
        self._generation = 0  # of the admin settings; a connection re-checks when it moves
        self.configure(admin_uids=admin_uids, admin_group=admin_group,
                       max_clients=max_clients, request_max_bytes=request_max_bytes,
                       idle_timeout=idle_timeout, max_clients_per_uid=max_clients_per_uid,
                       admin_reserved=admin_reserved)

    def configure(self, *, admin_uids: Collection[int] = (), admin_group: str | None = None,
                  max_clients: int = 32, request_max_bytes: int = 65536,
                  idle_timeout: float = 300.0, max_clients_per_uid: int | None = None,
                  admin_reserved: int = 0) -> None:
        """Who is an admin, and the limits; a reload calls it on the running server. Open
        connections see the change at their next request. ValueError, and nothing
        changed, if a value cannot be used."""
        for label, value in (("max_clients", max_clients),
                             ("request_max_bytes", request_max_bytes),
                             ("idle_timeout", idle_timeout)):
            if value <= 0:
                raise ValueError(f"{label} must be positive, got {value}")
        if max_clients_per_uid is not None and max_clients_per_uid <= 0:
            raise ValueError(f"max_clients_per_uid must be positive, got {max_clients_per_uid}")
        if admin_reserved < 0:
            raise ValueError(f"admin_reserved must not be negative, got {admin_reserved}")
        self._admins = Admins.of(admin_uids, admin_group)
        self._max_clients = max_clients
        # Non-admins: at most this many connections per uid (watch streams included), and
        # never the last `admin_reserved` slots, so no reader can lock admins out.
        self._max_per_uid = max_clients if max_clients_per_uid is None else max_clients_per_uid
        self._admin_reserved = min(admin_reserved, max_clients - 1)  # one slot for anyone
        self._max_bytes = request_max_bytes
        self._idle_timeout = idle_timeout
        self._generation += 1

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return self._clients

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept clients until cancelled; `started` once connections are accepted."""
        identity: tuple[int, int] | None = None
        if self._sock is not None:
            sock = self._sock  # systemd owns the path: never unlink it
        else:
            assert self._path is not None
            sock, identity = await anyio.to_thread.run_sync(socketfile.bind, self._path,
                                                            self._group)
        try:
            listener = await SocketListener.from_socket(sock)
            async with listener, anyio.create_task_group() as tg:
                log.info("api listening", socket=str(self._path or sock.getsockname()))
                task_status.started()
                await self._accept_loop(listener, tg)
        finally:
            sock.close()
            if identity is not None:
                assert self._path is not None
                socketfile.unlink_if_ours(self._path, identity)

    async def _accept_loop(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("api accept failed, backing off", error=str(exc))
                await anyio.sleep(ACCEPT_BACKOFF_S)
                continue
            tg.start_soon(self._client, stream)

    async def _client(self, stream: SocketStream) -> None:
        async with stream:
            raw = stream.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not Django)
            try:
                peer = peer_credentials(raw)
                admin = await self._admins.include(peer)
            except OSError:
                return  # gone before we could ask who it was
            refusal = self._refusal(peer, admin)
            if refusal is not None:
                log.warning("api client refused", uid=peer.uid, pid=peer.pid, reason=refusal)
                with anyio.move_on_after(BUSY_SEND_TIMEOUT_S), suppress(_Hangup):
                    await self._send(stream, request_error(
                        None, BUSY, f"busy: {refusal}; try again"))
                return
            self._clients += 1
            self._per_uid[peer.uid] += 1
            try:
                await self._converse(stream, peer, admin)
            except _Hangup:
                pass
            except Exception:  # one client's failure must never stop the server
                log.exception("api client failed")
            finally:
                self._clients -= 1
                self._per_uid[peer.uid] -= 1
                if not self._per_uid[peer.uid]:
                    del self._per_uid[peer.uid]

    def _refusal(self, peer: Peer, admin: bool) -> str | None:
        """Why this connection may not have a slot now, or None."""
        if admin:
            if self._clients >= self._max_clients:
                return f"{self._clients} clients connected (max_clients={self._max_clients})"
            return None
        if self._per_uid[peer.uid] >= self._max_per_uid:
            return (f"uid {peer.uid} has {self._per_uid[peer.uid]} connections "
                    f"(max_clients_per_uid={self._max_per_uid})")
        if self._clients >= self._max_clients - self._admin_reserved:
            return (f"{self._clients} clients connected (max_clients={self._max_clients}, "
                    f"{self._admin_reserved} kept for admins)")
        return None

    async def _converse(self, stream: SocketStream, peer: Peer, admin: bool) -> None:
        reader = BufferedByteReceiveStream(stream)
        # Looked up when connected; again on a write request if the settings changed.
        checked: tuple[int, bool] = (self._generation, admin)
        while True:
            try:
                with anyio.fail_after(self._idle_timeout):
                    line = await reader.receive_until(b"\n", self._max_bytes)
            except TimeoutError:
                log.info("api client idle, closing", uid=peer.uid, pid=peer.pid,
                         idle_timeout=self._idle_timeout)
                return
            except anyio.DelimiterNotFound:
                too_large = True
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError,
                    anyio.ClosedResourceError):
                return  # gone, possibly mid-line: nothing to answer
            else:
                too_large = len(line) > self._max_bytes
            if too_large:
                # The rest of the line is unread, so the stream cannot be re-synchronised.
                await self._send(stream, request_error(
                    None, TOO_LARGE, f"request too large: over {self._max_bytes} bytes"))
                return
            if not line.strip():
                continue
            req_id = None
            try:
                request = decode_request(line)
                req_id = request_id(request)
                name, method = resolve_method(request)
            except ApiError as exc:
                await self._send(stream, request_error(req_id, exc.code, exc.message))
                continue
            if method.write:
                if checked[0] != self._generation:
                    checked = (self._generation, await self._admins.include(peer))
                if not checked[1]:
                    log.warning("api request forbidden", method=name, uid=peer.uid,
                                pid=peer.pid)
                    await self._send(stream, request_error(
                        req_id, FORBIDDEN,
                        f"forbidden: '{name}' needs admin rights; uid {peer.uid} is not an "
                        "admin (root, the daemon's user, admin_uids or admin_group)"))
                    continue
            try:
                params = request_params(request, name, method)
            except ApiError as exc:
                await self._send(stream, request_error(req_id, exc.code, exc.message))
                continue
            if name == "watch":
                await self._watch(stream, reader, req_id)
                return
            await self._send(stream, await self._call(req_id, name, method, params, peer))

    async def _call(self, req_id: Any, name: str, method: Method, params: Json,
                    peer: Peer) -> Json:
        call = getattr(self._handler, method.attr)
        result: Any = None
        try:
            with anyio.move_on_after(self._request_timeout) as scope:
                result = await call(**params)
        except ApiError as exc:
            return request_error(req_id, exc.code, exc.message)
        except Exception:
            log.exception("api handler failed", method=name, uid=peer.uid, pid=peer.pid)
            return request_error(req_id, INTERNAL, f"internal error in '{name}' (see the ogsd log)")
        if scope.cancelled_caught:
            log.warning("api handler timed out", method=name, timeout=self._request_timeout)
            return request_error(req_id, INTERNAL,
                          f"'{name}' timed out after {self._request_timeout:g} s")
        if not isinstance(result, dict):
            log.error("api handler returned a non-object", method=name,
                      type=type(result).__name__)
            return request_error(req_id, INTERNAL, f"internal error in '{name}' (see the ogsd log)")
        return {"id": req_id, "result": result}

    async def _watch(self, stream: SocketStream, reader: BufferedByteReceiveStream,
                     req_id: Any) -> None:
        # Subscribe before replying: every event after the reply reaches the client.
        async with self._handler.subscribe() as events, anyio.create_task_group() as tg:
            await self._send(stream, {"id": req_id, "result": {"watching": True}})
            tg.start_soon(_until_hangup, reader, tg.cancel_scope)
            async for data in events:
                await self._send(stream, {"event": "decision", "data": data})
            tg.cancel_scope.cancel()  # the feed ended (shutdown, or we fell behind)

    async def _send(self, stream: SocketStream, message: Json) -> None:
        try:
            payload = json.dumps(message, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            log.error("api reply is not JSON", error=str(exc))
            payload = json.dumps(request_error(message.get("id"), INTERNAL,
                                        "internal error: reply not encodable"))
        try:
            with anyio.fail_after(self._idle_timeout):  # a client that never reads
                await stream.send(payload.encode() + b"\n")
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError) as exc:
            raise _Hangup from exc



async def _until_hangup(reader: BufferedByteReceiveStream, scope: anyio.CancelScope) -> None:
    """Discard what a watcher sends; cancel `scope` when it closes."""
    try:
        while True:
            await reader.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        scope.cancel()
