"""The little HTTP/1.1 a probe speaks: one request out, one response head back.

Everything here reads what a network sent, and a network may send anything (a captive
portal, an intercepting box, garbage): parsing raises only `HeadError`, whose message is
what the round records. Nothing else may escape, whatever the bytes (fuzzed in tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from anyio import EndOfStream
from anyio.abc import ByteStream

from ogsd import __version__
from ogsd.config.address import authority

# We only need the status line and headers; cap what a misbehaving server can make us buffer.
RESPONSE_HEAD_LIMIT = 16 * 1024
USER_AGENT = f"ogsd/{__version__} OGS probe"
# RFC 9112 §4: HTTP-version SP 3DIGIT, ASCII digits only (a fullwidth one is no status);
# RFC 9110 §15: codes run 100-599.
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] [1-5][0-9]{2}(?: |$)")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class HeadError(Exception):
    """The answer is not an HTTP response head; the message says what was seen."""


@dataclass(frozen=True, slots=True)
class Head:
    """A response's status line and the headers we look at."""

    status: int
    reason: str
    location: str | None = None


def request(host: str, port: int, default_port: int, *, probe: bool = True) -> bytes:
    """A minimal GET: no cookies, no credentials, nothing but what HTTP/1.1 requires."""
    lines = ["GET / HTTP/1.1", f"Host: {authority(host, port, default_port)}"]
    if probe:
        lines.append(f"User-Agent: {USER_AGENT}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


# GlobalProtect: the gateway's prelogin, as openconnect sends it (auth-globalprotect.c):
# every GP gateway answers it without credentials (200, a <prelogin-response>: its auth
# method, SAML or not), so it is the one exchange that both measures and identifies one.
GP_PRELOGIN_PATH = "/ssl-vpn/prelogin.esp?tmp=tmp&clientVer=4100&clientos=Linux"
GP_USER_AGENT = "PAN GlobalProtect"  # what gateways expect; some answer others with 4xx
GP_PRELOGIN_BODY = b"cas-support=yes"


def gp_prelogin(host: str, port: int, default_port: int) -> bytes:
    """A GlobalProtect gateway's prelogin POST: no cookie, no credentials."""
    lines = [f"POST {GP_PRELOGIN_PATH} HTTP/1.1",
             f"Host: {authority(host, port, default_port)}",
             f"User-Agent: {GP_USER_AGENT}",
             "Content-Type: application/x-www-form-urlencoded",
             f"Content-Length: {len(GP_PRELOGIN_BODY)}",
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + GP_PRELOGIN_BODY


async def read_head(stream: ByteStream) -> bytes:
    """Read until the end of the response headers (or EOF after some bytes)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < RESPONSE_HEAD_LIMIT:
        try:
            head += await stream.receive()
        except EndOfStream:
            if head:
                break
            raise HeadError("connection closed before any response") from None
    return head


def parse_head(data: bytes) -> Head:
    """Status and Location of a response head; HeadError for anything else."""
    head = data.split(b"\r\n\r\n", 1)[0]
    first, *rest = head.split(b"\r\n")
    if not _STATUS_LINE.match(first):
        shown = first[:60].decode("latin-1")
        raise HeadError(f"not an HTTP response: {shown!r}")
    status = int(first[9:12])
    reason = first[13:].decode("latin-1").strip()[:80]
    location = None
    for line in rest:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"location":
            location = value.decode("latin-1").strip()[:300]
    return Head(status, reason, location)


def redirect_host(location: str | None) -> str | None:
    """The host a Location header points to; None when relative or unreadable."""
    if not location:
        return None
    try:
        host = urlsplit(location).hostname
    except ValueError:  # "http://[::1": not a URL, so no host we could compare
        return None
    return host.rstrip(".").lower() if host else None
