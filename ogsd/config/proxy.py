"""A static HTTP proxy for probes, as configured: which one, and whether a gateway bypasses it.

`proxy_url` in ogsd.toml, else `https_proxy`/`HTTPS_PROXY`; `no_proxy` from the
environment. Pure: the CONNECT itself is ogsd.probing.proxy's.

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

from ogsd.config.address import authority

# curl's default port for an http:// proxy URL without one.
DEFAULT_PROXY_PORT = 1080
PROXY_ENV = ("https_proxy", "HTTPS_PROXY")
NO_PROXY_ENV = ("no_proxy", "NO_PROXY")



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
