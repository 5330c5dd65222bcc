"""The location as OGS sees it: DNS search domain and DNS servers, read from resolv.conf."""

from __future__ import annotations

import io
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.exception
import dns.name
import structlog

if TYPE_CHECKING:
    import dns.asyncresolver

from ogsd.core.models import Location

RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved writes the uplink (per-network) servers here; /etc/resolv.conf then
# only names its local stub, which is the same everywhere and says nothing of location.
RESOLVED_UPLINK_CONF = Path("/run/systemd/resolve/resolv.conf")
# resolved's stub listeners: 127.0.0.53 (full stub) and 127.0.0.54 (proxy-only stub).
RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})

log = structlog.get_logger(__name__)


class DnsConfigError(Exception):
    """A resolv.conf that cannot be read or used."""


@dataclass(frozen=True, slots=True)
class DnsEnv:
    """A location and where it was read from, with a note when it is second best."""

    location: Location
    source: Path
    note: str = ""


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """The parts of resolv.conf(5) that make a location."""

    domain: str
    servers: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # nameserver values that are not IP addresses
    search: tuple[str, ...] = ()  # the winning search line's other domains

    @property
    def location(self) -> Location:
        return Location(self.domain, self.servers, self.search)


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf text: the effective search domain and the nameservers in order."""
    servers: list[str] = []
    skipped: list[str] = []
    domains: list[str] = []
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0][0] in "#;":
            continue
        keyword, args = words[0], words[1:]
        if keyword == "nameserver" and args:
            if _is_ip(args[0]):
                servers.append(args[0])
            else:
                skipped.append(args[0])
        elif keyword in ("search", "domain"):
            # resolv.conf(5): search and domain are exclusive; the last instance wins.
            # The location's domain is the first (valid) suffix of the winning line.
            names = (_normalise_domain(a) for a in args if _is_domain(a))
            domains = list(dict.fromkeys(d for d in names if d))
    return ResolvConf(domain=domains[0] if domains else "", servers=tuple(servers),
                      skipped=tuple(skipped), search=tuple(domains[1:]))


def inspect_dns(resolv_conf: Path | None = None, *, uplink_conf: Path | None = None) -> DnsEnv:
    """Read the location, looking past systemd-resolved's stub to the uplink servers."""
    path = resolv_conf or RESOLV_CONF
    uplink_path = uplink_conf or RESOLVED_UPLINK_CONF
    conf = _read(path)
    if not conf.servers or not set(conf.servers) <= RESOLVED_STUBS:
        return DnsEnv(conf.location, path)
    try:
        uplink = _read(uplink_path)
    except DnsConfigError as exc:
        note = f"only systemd-resolved's stub is configured and {exc}; using the stub"
        return DnsEnv(conf.location, path, note)
    if not uplink.servers:
        note = f"{uplink_path} lists no DNS servers; using systemd-resolved's stub"
        return DnsEnv(conf.location, path, note)
    # resolved's uplink file has the links' domains; without any, keep the stub file's.
    searched = uplink if uplink.domain else conf
    return DnsEnv(Location(searched.domain, uplink.servers, searched.search), uplink_path)


def read_location(resolv_conf: Path | None = None, *, uplink_conf: Path | None = None) -> Location:
    """The current location: first search domain (else `domain`) and nameserver IPs."""
    env = inspect_dns(resolv_conf, uplink_conf=uplink_conf)
    if env.note:
        log.warning("dns location is second best", note=env.note, source=str(env.source))
    return env.location


def resolver_for(resolv_conf: Path | None = None) -> dns.asyncresolver.Resolver:
    """An async resolver configured from resolv.conf (servers, search list, options)."""
    # dnspython's resolver (~20 ms of imports) is loaded when one is made: reading a
    # location needs only its name parser.
    import dns.asyncresolver  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    path = resolv_conf or RESOLV_CONF
    text = _read_text(path)
    resolver = dns.asyncresolver.Resolver(configure=False)
    # dnspython refuses the whole file over one `nameserver` it cannot parse
    # (`192.168.1.1#53`, a host name); such lines are dropped here, as glibc ignores
    # them (and as `_read` warns about them).
    kept = "".join(_usable(line) for line in text.splitlines(keepends=True))
    try:
        resolver.read_resolv_conf(io.StringIO(kept))
    except dns.resolver.NoResolverConfiguration as exc:
        raise DnsConfigError(f"{path} lists no usable nameserver") from exc
    except (ValueError, dns.exception.DNSException) as exc:
        raise DnsConfigError(f"{path}: {exc}") from exc
    return resolver


def _usable(line: str) -> str:
    """`line` without what dnspython would refuse the whole file for: a nameserver that
    is not an IP, search domains that are not domain names."""
    words = line.split()
    if len(words) >= 2 and words[0] == "nameserver" and not _is_ip(words[1]):
        return ""
    if words and words[0] in ("search", "domain"):
        names = [w for w in words[1:] if _is_domain(w)]
        return f"{words[0]} {' '.join(names)}\n" if names else ""
    return line


def _is_domain(text: str) -> bool:
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException:
        return False
    return True


def _read(path: Path) -> ResolvConf:
    conf = parse_resolv_conf(_read_text(path))
    if conf.skipped:
        log.warning(
            "ignoring nameserver values that are not IPs", path=str(path), values=list(conf.skipped)
        )
    return conf


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DnsConfigError(f"{path} does not exist") from exc
    except OSError as exc:
        raise DnsConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DnsConfigError(f"{path} is not UTF-8 text: {exc.reason}") from exc


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)  # accepts IPv6 with a %zone, as glibc does
    except ValueError:
        return False
    return True


def _normalise_domain(value: str) -> str:
    # "." as a search domain means "no search"; domain names compare case-insensitively.
    return value.rstrip(".").lower()
