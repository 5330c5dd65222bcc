"""A static HTTP proxy for probes: which one, whether a gateway bypasses it, CONNECT.

The OGS contract supports a statically configured proxy. Probes then go through it with
HTTP CONNECT (RFC 9110 §9.3.6), one tunnel per probe as one connection per probe direct.
What can be timed honestly through a proxy: the CONNECT round trip (our CONNECT sent to
"200" back: the proxy's own connect to the gateway plus our round trip to the proxy) and
the whole exchange. The network RTT to the gateway itself cannot be seen from here, so
with a proxy the ranking figure (`network_rtt_ms`) is the CONNECT round trip: it orders
gateways by the proxy's distance to each, offset by the same round trip to the proxy.

`no_proxy` follows curl's reading, the de facto standard: comma- or space-separated
entries; `*` alone bypasses everything; a name matches itself and its subdomains, with or
without a leading dot; an IP literal or CIDR matches a gateway given as an address in it;
`host:port` only for that port. Names are compared case-insensitively, without the final
dot. Gateway names are not resolved for this (the proxy resolves them).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from anyio.abc import ByteStream

from ogsd.probing.httphead import HeadError, authority, parse_head, read_head

# curl's default port for an http:// proxy URL without one.
DEFAULT_PROXY_PORT = 1080
PROXY_ENV = ("https_proxy", "HTTPS_PROXY")
# 407 is the proxy's own "who are you"; some proxies (tinyproxy's BasicAuth) send 401.
AUTH_REQUIRED = frozenset({401, 407})
NO_PROXY_ENV = ("no_proxy", "NO_PROXY")


class ProxyError(Exception):
    """The proxy refused or failed the CONNECT; the message is what the round records."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy probes tunnel through; credentials (if any) never appear in `label`."""

    host: str
    port: int = DEFAULT_PROXY_PORT
    credentials: str | None = None  # "user:password" for Basic Proxy-Authorization
    no_proxy: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How results and logs name the proxy (no credentials)."""
        return authority(self.host, self.port, 0)

    def bypassed(self, host: str, port: int) -> bool:
        """Whether `no_proxy` sends `host`:`port` direct."""
        return any(_matches(entry, host, port) for entry in self.no_proxy)

    def connect_request(self, host: str, port: int) -> bytes:
        """The CONNECT request for a tunnel to `host`:`port`."""
        target = authority(host, port, 0)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.credentials is not None:
            token = base64.b64encode(self.credentials.encode()).decode("ascii")
            lines.append(f"Proxy-Authorization: Basic {token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_proxy_url(text: str, no_proxy: tuple[str, ...] = ()) -> Proxy:
    """`http://[user:password@]host[:port][/]` (scheme optional); ValueError says why not."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"not a proxy URL: {text!r} ({exc})") from None
    if parts.scheme.lower() != "http":
        raise ValueError(f"not a proxy URL: {text!r} (only http:// proxies are supported)")
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"not a proxy URL: {text!r} (expected http://host:port)")
    credentials = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return Proxy(host, port or DEFAULT_PROXY_PORT, credentials, no_proxy)


def split_no_proxy(text: str) -> tuple[str, ...]:
    """The entries of a no_proxy value."""
    return tuple(e for e in text.replace(",", " ").split() if e)


def from_environment(env: Mapping[str, str], url: str | None = None) -> Proxy | None:
    """The proxy for probes: `url` (ogsd.toml), else https_proxy/HTTPS_PROXY; no_proxy from env.

    ValueError names the variable when its value is not a proxy URL.
    """
    no_proxy = next((split_no_proxy(env[k]) for k in NO_PROXY_ENV if env.get(k)), ())
    if url is not None:
        return parse_proxy_url(url, no_proxy)
    for name in PROXY_ENV:
        value = env.get(name, "").strip()
        if value:
            try:
                return parse_proxy_url(value, no_proxy)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    return None


def _matches(entry: str, host: str, port: int) -> bool:
    entry = entry.strip()
    if entry == "*":
        return True
    entry_port: int | None = None
    if entry.startswith("["):  # [v6]:port or [v6]
        literal, _, tail = entry[1:].partition("]")
        entry = literal
        if tail.startswith(":") and tail[1:].isdigit():
            entry_port = int(tail[1:])
    elif entry.count(":") == 1:  # name:port or v4:port (a bare v6 has several colons)
        name, _, tail = entry.partition(":")
        if tail.isdigit():
            entry, entry_port = name, int(tail)
    if entry_port is not None and entry_port != port:
        return False
    target = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    name = entry.lstrip(".").rstrip(".").lower()
    return bool(name) and (target == name or target.endswith("." + name))


async def open_tunnel(stream: ByteStream, proxy: Proxy, host: str, port: int) -> None:
    """CONNECT `host`:`port` over `stream` (connected to the proxy); ProxyError if refused."""
    await stream.send(proxy.connect_request(host, port))
    try:
        head = parse_head(await read_head(stream))
    except HeadError as exc:
        raise ProxyError(f"proxy {proxy.label}: {exc}") from None
    if head.status in AUTH_REQUIRED:
        given = "rejected the credentials given" if proxy.credentials else "needs credentials"
        raise ProxyError(f"proxy {proxy.label} requires authentication ({head.status} "
                         f"{head.reason}): it {given}; put them in proxy_url as "
                         "http://user:password@host:port".replace(" ()", ""))
    if not 200 <= head.status < 300:
        raise ProxyError(f"proxy {proxy.label} refused CONNECT {authority(host, port, 0)}: "
                         f"{head.status} {head.reason}".rstrip())
