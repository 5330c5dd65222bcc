"""systemd-journald's native protocol: each log event as one entry of fields.

Under systemd, stderr is a stream to journald and a JSON line there is one opaque
MESSAGE. Sent natively, an event's text is the MESSAGE (`journalctl -u ogsd` shows
"OGS ping results for vpn.example.com: (219 218 132)") and each of its keys a field of
its own (`journalctl -u ogsd OGSD_HOST=vpn.example.com -o json`). No libsystemd: the
protocol is datagrams of KEY=VALUE lines to journald's socket (systemd.journal-fields(7)).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "ogsd"
# structlog's levels as syslog priorities.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
              "critical": 2, "fatal": 2}
# Keys the entry carries otherwise: the text is MESSAGE, the level PRIORITY, and journald
# stamps each entry itself.
_AS_FIELDS = {"event": "MESSAGE", "level": None, "timestamp": None}
_NOT_IN_NAME = re.compile(r"[^A-Z0-9_]")


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the one systemd connected to journald: $JOURNAL_STREAM names its
    device and inode (systemd.exec(5)), so a stderr redirected elsewhere is not taken for it."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not inode:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation: no descriptor (a test's capture)
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def field_name(key: str) -> str:
    """An event key as a journal field name: OGSD_ and the key in capitals, A-Z 0-9 _ only."""
    return "OGSD_" + _NOT_IN_NAME.sub("_", key.upper())


def fields(event: Mapping[str, Any]) -> dict[str, str]:
    """The journal entry of a structlog event dict (strings as they are, the rest JSON)."""
    out = {"MESSAGE": str(event.get("event", "")),
           "PRIORITY": str(PRIORITIES.get(str(event.get("level", "info")), 6)),
           "SYSLOG_IDENTIFIER": IDENTIFIER}
    for key, value in event.items():
        if key in _AS_FIELDS:
            continue
        out[field_name(key)] = value if isinstance(value, str) else json.dumps(
            value, default=str, separators=(",", ":"))
    return out


def encode(entry: Mapping[str, str]) -> bytes:
    """The datagram: KEY=VALUE lines; a value with a newline in the binary-safe form
    (KEY, newline, its length as 64-bit little-endian, the value, newline)."""
    parts = []
    for key, value in entry.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class JournalLogger:
    """structlog's logger: sends each rendered entry to journald; a datagram journald
    does not take (too large, journald restarting) goes to stderr as a JSON line, so
    nothing is lost, only flattened."""

    def __init__(self, path: str = SOCKET) -> None:
        self._path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def msg(self, payload: bytes, fallback: str) -> None:
        try:
            self._sock.sendto(payload, self._path)
        except OSError:
            # sys.stderr looked up now: a replaced stderr is honoured.
            print(fallback, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def close(self) -> None:
        self._sock.close()


def render(_logger: object, _method: str, event: MutableMapping[str, Any]
           ) -> tuple[tuple[bytes, str], dict[str, Any]]:
    """structlog's last processor: the datagram, and the JSON line to fall back on."""
    return (encode(fields(event)), json.dumps(event, default=str)), {}
