"""Real TLS and plain-HTTP servers on 127.0.0.1 for tests, each in its own threads.

    with LoopbackServer() as gw:                 # TLS, answers "HTTP/1.1 200 OK"
        gw.port; gw.connections; gw.requests; gw.request_heads; gw.server_names
    LoopbackServer(delay=0.05)                   # answer each request 50 ms late
    LoopbackServer(handshake_stall=0.2)          # hold the whole ClientHello 200 ms, then TLS
    LoopbackServer(silent=True)                  # accept, never answer
    LoopbackServer(trickle=0.05)                 # TLS, then a head 1 byte per 50 ms, forever
    LoopbackServer(garbage=b"SSH-2.0-x\r\n")     # these bytes instead of TLS, then silence
    LoopbackServer(tls=False, status=407)        # plain HTTP, e.g. a proxy check answer
    LoopbackServer(tls=False, status=302, location="http://portal.example/login")
    LoopbackServer(tls=False, response=b"HTTP/1.1 \xef\xbc\x9200 OK\r\n\r\n")  # raw bytes
    LoopbackServer(host="::1")                   # IPv6 loopback
    with refused_port() as port: ...             # connect gets RST at once
    with blackholed_port() as port: ...          # SYN never answered (full accept queue)

The certificate is a throwaway trustme one; clients are expected not to verify it.
Counters are updated before the client can observe the effect (a connection is counted
on accept, a request before its answer is sent); `wait_connections` waits for accepts
that may lag a client's connect.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
from collections.abc import Iterator
from http import HTTPStatus
from types import TracebackType

import trustme

# Bounds every blocking call of a handler so a forgotten client cannot hang the suite.
IO_TIMEOUT = 5.0
HEAD_LIMIT = 16 * 1024
TLS_RECORD_HEADER = 5


@functools.cache
def _certificate() -> tuple[trustme.CA, trustme.LeafCert]:
    ca = trustme.CA()
    return ca, ca.issue_cert("localhost", "127.0.0.1", "::1")


class LoopbackServer:
    """A TLS (or plain) HTTP/1.1 server on `host` (127.0.0.1 unless given):<port>.

    Any 127.x.y.z address works on Linux loopback, so tests give each gateway its own
    address (gateways are identified by host) and may ask for port 443 itself.
    """

    def __init__(
        self,
        *,
        tls: bool = True,
        status: int = 200,
        location: str | None = None,
        delay: float = 0.0,
        handshake_stall: float = 0.0,
        silent: bool = False,
        trickle: float = 0.0,
        garbage: bytes | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        response: bytes | None = None,
    ) -> None:
        self.host = host
        self.response = response  # sent as is instead of a well-formed answer
        self.tls = tls
        self.status = status
        self.location = location
        self.delay = delay
        self.handshake_stall = handshake_stall
        self.silent = silent
        self.trickle = trickle  # seconds between the bytes of a head that never ends
        self.garbage = garbage
        self.connections = 0  # TCP connections accepted
        self.requests = 0  # HTTP requests answered
        self.request_heads: list[bytes] = []
        self.server_names: list[str | None] = []  # SNI of each TLS handshake
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._context: ssl.SSLContext | None = None
        if tls:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _certificate()[1].configure_cert(self._context)
            self._context.sni_callback = self._record_sni

    def __enter__(self) -> LoopbackServer:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, cut open connections and join every thread (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._changed:
            for conn in self._open:
                _shutdown(conn)
        for thread in self._threads:
            thread.join(IO_TIMEOUT)

    def wait_connections(self, count: int, timeout: float = 2.0) -> bool:
        """Wait until at least `count` connections were accepted."""
        with self._changed:
            return self._changed.wait_for(lambda: self.connections >= count, timeout)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener shut down
            with self._changed:
                self.connections += 1
                self._open.add(conn)
                self._changed.notify_all()
            self._spawn(self._serve, conn)

    def _record_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            conn.settimeout(IO_TIMEOUT)
            if self.silent:
                self._stop.wait()
                return
            if self.garbage is not None:
                conn.sendall(self.garbage)
                self._stop.wait()
                return
            if self._context is not None:
                if self.handshake_stall and (
                    not _client_hello_queued(conn) or self._stop.wait(self.handshake_stall)
                ):
                    return
                sock = self._context.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                head += chunk
            if self.delay and self._stop.wait(self.delay):
                return
            if self.trickle:
                self._dribble(sock)
                return
            with self._changed:
                self.request_heads.append(head)
                self.requests += 1
                self._changed.notify_all()
            sock.sendall(self._response())
        except OSError:
            return  # the client went away (e.g. a cancelled probe): nothing to answer
        finally:
            with self._changed:
                self._open.discard(conn)
            sock.close()
            conn.close()

    def _dribble(self, sock: socket.socket) -> None:
        """A response head that never ends, a byte at a time (slow-loris, server side)."""
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
        while not self._stop.wait(self.trickle):
            sock.sendall(b"a")

    def _response(self) -> bytes:
        if self.response is not None:
            return self.response
        reason = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {reason}", "Content-Length: 0", "Connection: close"]
        if self.location is not None:
            lines.append(f"Location: {self.location}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _client_hello_queued(conn: socket.socket) -> bool:
    """Block until a whole TLS record (the ClientHello) is queued, without consuming it."""
    flags = socket.MSG_PEEK | socket.MSG_WAITALL
    header = conn.recv(TLS_RECORD_HEADER, flags)
    if len(header) < TLS_RECORD_HEADER:
        return False
    need = TLS_RECORD_HEADER + int.from_bytes(header[3:5], "big")
    return len(conn.recv(need, flags)) == need


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its handler
        conn.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that answers SYN with RST (bound, not listening, so not reused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def blackholed_port() -> Iterator[int]:
    """A loopback port whose SYNs are dropped: its accept queue (backlog 0) is kept full."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT):
            yield port
