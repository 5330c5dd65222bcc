"""Gateway addresses as admins write them, parsed once for profiles and ogsd.toml.

Accepted: `host`, `host:port`, `host[:port]/group`, `[IPv6]:port`, a bare IPv6 literal,
and AnyConnect's URL form `https://host[:port][/group][/]` (scheme in any case). The host
is a name (IDN names become their ASCII form) or an IP literal; surrounding whitespace is
ignored. Anything else (another scheme, user info, a query, a fragment, whitespace inside,
an empty host or port) is refused with a message saying what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

HTTPS_PORT = 443

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# ASCII only: int() would also take digits of other scripts (fullwidth, Devanagari...).
_DIGITS = re.compile(r"[0-9]+")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
# A host spelt like a scheme is a URL whose "://" went wrong ("https//vpn", "https:/vpn").
_SCHEME_NAMES = ("http", "https")


class Address(NamedTuple):
    """One parsed address; `port` and `group` are None when not written."""

    host: str
    port: int | None = None
    group: str | None = None

    @property
    def text(self) -> str:
        """`host[:port]`, the default port left out: one spelling per failover address."""
        if self.port is None or self.port == HTTPS_PORT:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_host(text: str) -> str:
    """A host name or IP literal, normalised (lower case, ASCII, no trailing dot).

    ValueError if it is neither, or is an address nothing can be probed at.
    """
    host = text.strip()
    shown = repr(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    name = host.lower().removesuffix(".")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(f"{shown} is not a unicast address")
        return str(ip)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{shown} is not a host name or IP address "
                             "(not a valid internationalised name)") from None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{shown} is not a host name or IP address")
    if labels[-1].isdigit():
        # Not a name (no top-level domain is numeric), and not an address ipaddress takes:
        # the resolver would read "010.1.1.1" as octal or "10.1" as 10.0.0.1.
        raise ValueError(f"{shown} is not a valid IP address")
    if name in _SCHEME_NAMES:
        raise ValueError(f"{shown} is a scheme, not a host: write https://host/")
    return name


def split_address(text: str) -> Address:
    """Parse one address (see the module docstring); ValueError says what is wrong."""
    raw = text.strip()
    shown = repr(raw)
    if not raw:
        raise ValueError("empty address")
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise ValueError(f"{shown} is not a host name or IP address (whitespace or control "
                         "characters inside)")
    rest, url = raw, False
    if scheme := _SCHEME.match(raw):
        if scheme[1].lower() != "https":
            raise ValueError(f"{shown}: scheme {scheme[1]}:// is not supported: use https:// "
                             "or no scheme")
        rest, url = raw[scheme.end():], True
    for char, what in (("?", "a query"), ("#", "a fragment")):
        if char in rest:
            raise ValueError(f"{shown}: {what} ('{char}...') is not allowed")
    authority, _, path = rest.partition("/")
    if "@" in authority:
        raise ValueError(f"{shown}: user info ('...@') is not allowed")
    host, port_text = _split_authority(authority, shown, url)
    if not host:
        raise ValueError(f"{shown}: no host")
    try:
        host = check_host(host)
    except ValueError as e:
        raise ValueError(str(e) if host == raw else f"{shown}: {e}") from None
    port: int | None = None
    if port_text is not None:
        if not port_text:
            raise ValueError(f"{shown}: empty port after ':'")
        if not _DIGITS.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{shown}: port must be between 1 and 65535")
        port = int(port_text)
    return Address(host, port, path.strip("/") or None)


def _split_authority(authority: str, shown: str, url: bool) -> tuple[str, str | None]:
    """(host, port text or None when no ':port' was written)."""
    if authority.startswith("["):  # [IPv6]:port
        inside, sep, tail = authority[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ValueError(f"{shown}: bad bracketed IPv6 address")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise ValueError(f"{shown}: [{inside}] is not an IPv6 address") from None
        return inside, tail[1:] if tail else None
    colons = authority.count(":")
    if colons == 1:
        host, _, port = authority.partition(":")
        return host, port
    if colons > 1 and url:
        raise ValueError(f"{shown}: an IPv6 address in a URL goes in brackets "
                         "(https://[2001:db8::1]/), and a port comes once")
    return authority, None  # a bare IPv6 literal has several colons and no port


def authority(host: str, port: int, default_port: int) -> str:
    """`host[:port]` as HTTP writes it (IPv6 literals in brackets)."""
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"
