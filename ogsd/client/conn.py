"""The connection to ogsd's socket: one request, one reply, in order; and ogsctl's exit codes.

Standard library only: every ogsctl command opens one, so it costs no more than a socket.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1  # the daemon answered an error, or no gateway is selected
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_NO_DAEMON = 3  # no socket, nobody listening, or no answer
EXIT_FORBIDDEN = 4  # the daemon (or the socket's mode) refused us

# status & co. are answered from memory; a loaded laptop still answers within a second.
DEFAULT_TIMEOUT_S = 5.0
# evaluate --wait spans a round: 7 s deadline, the proxy check before it, the cache write.
WAIT_TIMEOUT_S = 30.0
FORBIDDEN = -32001  # ogsd.wire.api.FORBIDDEN; the wire module is not imported, to start fast
RECV_CHUNK = 65536


class CtlError(Exception):
    """What to tell the user, and the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Connection:
    """One connection to ogsd; requests are answered in order."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self._buffer = b""
        self._next_id = 1
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except FileNotFoundError:
            raise self._fail(EXIT_NO_DAEMON, f"ogsd is not running (no socket at {path})") from None
        except ConnectionRefusedError:
            raise self._fail(EXIT_NO_DAEMON,
                             f"ogsd is not running (nothing listens on {path})") from None
        except PermissionError:
            raise self._fail(
                EXIT_FORBIDDEN, f"permission denied on {path} (are you in ogsd's socket group?)"
            ) from None
        except TimeoutError:
            raise self._fail(
                EXIT_NO_DAEMON, f"ogsd did not accept a connection on {path} within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise self._fail(EXIT_NO_DAEMON,
                             f"cannot connect to ogsd at {path}: {exc.strerror or exc}") from None

    def _fail(self, code: int, message: str) -> CtlError:
        self._sock.close()
        return CtlError(code, message)

    def close(self) -> None:
        self._sock.close()

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its result, or raise CtlError for its error."""
        req_id = self._next_id
        self._next_id += 1
        line = json.dumps({"id": req_id, "method": method, "params": params or {}})
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise CtlError(EXIT_NO_DAEMON,
                           f"lost the connection to ogsd at {self.path}: {exc}") from None
        reply = self.receive()
        error = reply.get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), str(error.get("message", "unknown error"))
            raise CtlError(EXIT_FORBIDDEN if code == FORBIDDEN else EXIT_ERROR,
                           f"ogsd: {message}")
        result = reply.get("result")
        if reply.get("id") != req_id or not isinstance(result, dict):
            raise CtlError(EXIT_ERROR, f"unexpected reply from ogsd: {_clip(reply)}")
        return result

    def receive(self) -> dict[str, Any]:
        """The next JSON object the daemon sends."""
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(RECV_CHUNK)
            except TimeoutError:
                raise CtlError(EXIT_NO_DAEMON, f"ogsd did not answer within "
                               f"{self._sock.gettimeout():g} s ({self.path})") from None
            except OSError as exc:
                raise CtlError(EXIT_NO_DAEMON,
                               f"lost the connection to ogsd at {self.path}: {exc}") from None
            if not chunk:
                raise CtlError(EXIT_NO_DAEMON, f"ogsd closed the connection ({self.path})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise CtlError(EXIT_ERROR, f"unreadable reply from ogsd: {_clip(line)}") from None
        if not isinstance(message, dict):
            raise CtlError(EXIT_ERROR, f"unexpected reply from ogsd: {_clip(message)}")
        return message

    def detach(self) -> tuple[socket.socket, bytes]:
        """The socket and what was read past the last reply: for a caller's own loop."""
        sock, pending, self._buffer = self._sock, self._buffer, b""
        return sock, pending

    def events(self) -> Iterator[dict[str, Any]]:
        """Watch events, forever: no timeout once the stream is set up."""
        self._sock.settimeout(None)
        while True:
            yield self.receive()


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."

