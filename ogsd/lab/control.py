"""The lab processes' control protocol: one JSON line in, one JSON line out, on a Unix socket."""

from __future__ import annotations

import json
import socket
from typing import Any

# Replies come from a local process doing a table swap or a few binds: a second is ample,
# and a wedged process must not hang `set` or `status`.
CONTROL_TIMEOUT_S = 5.0


class ControlError(RuntimeError):
    """A lab process did not answer, or answered with an error."""


def request(
    path: str, op: str, timeout: float = CONTROL_TIMEOUT_S, **fields: Any
) -> dict[str, Any]:
    """Send `{"op": op, **fields}` to the control socket at `path`; return the reply or raise."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(f"{path}: {op}: {exc}") from None
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError(f"{path}: {op}: unreadable reply {data[:80]!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: {op}: unreadable reply {data[:80]!r}")
    if not reply.get("ok"):
        raise ControlError(f"{path}: {op}: {reply.get('error', 'failed')}")
    return reply


def handle_line(line: bytes, handlers: dict[str, Any]) -> bytes:
    """Dispatch one request line to `handlers[op]()`; the reply line, errors included."""
    try:
        op = json.loads(line).get("op")
        handler = handlers[op]
    except (json.JSONDecodeError, AttributeError, KeyError):
        reply: dict[str, Any] = {"ok": False, "error": f"bad request {line[:80]!r}"}
    else:
        try:
            reply = {"ok": True, **handler()}
        except Exception as exc:  # the process must survive a bad spec; the caller gets why
            reply = {"ok": False, "error": str(exc)}
    return json.dumps(reply).encode() + b"\n"
