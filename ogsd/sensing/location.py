"""Where we are: the physical network's DNS, also while a VPN has rewritten resolv.conf.

OGS keys its cache by the network's DNS (DESIGN.md §1). A VPN pushes its own servers and
domain, and vpnc-script writes them into /etc/resolv.conf: taken at face value, every
connection would look like a new location and rounds would be cached under the VPN's
keys. So, best source first:

1. systemd-resolved's per-link DNS of the physical uplink (where resolved runs);
2. resolv.conf written by vpnc-script (its mark): the copy it saved before rewriting it
   (/run/vpnc/resolv.conf-backup.<pid> of a live openconnect);
3. not connected: resolv.conf (past resolved's stub, see ogsd.sensing.dnsenv);
4. connected otherwise: the location recorded when the VPN came up; after a change of
   the physical uplink (a Wi-Fi roam) resolv.conf is the new network's, as DHCP wrote it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from ogsd.core.models import Location
from ogsd.core.uplink import Uplink
from ogsd.sensing.dnsenv import DnsConfigError, inspect_dns, parse_resolv_conf
from ogsd.sensing.resolved import ResolvedClient

# vpnc-script marks the resolv.conf it writes, and saves the previous one per VPN pid.
VPNC_MARK = "#@VPNC_GENERATED@"
VPNC_DIR = Path("/run/vpnc")
VPNC_BACKUP_PREFIX = "resolv.conf-backup."


@dataclass(frozen=True, slots=True)
class Reading:
    """A location and where it came from; `current` is False when it may be out of date
    (the uplink changed and nothing says what the new network's DNS is)."""

    location: Location
    source: str
    current: bool = True


@dataclass(frozen=True, slots=True)
class Sources:
    """What the location is read from (paths injectable for tests)."""

    resolv_conf: Path | None = None  # None: /etc/resolv.conf
    uplink_conf: Path | None = None  # None: resolved's uplink file
    vpnc_dir: Path = VPNC_DIR
    resolved: ResolvedClient | None = None


async def read_location(
    sources: Sources,
    *,
    uplink: Uplink | None,
    uplink_index: int | None,
    connected: bool,
    at_connect: Location | None = None,
    uplink_at_connect: Uplink | None = None,
) -> Reading:
    """The physical network's location (DnsConfigError when there is none to read)."""
    if sources.resolved is not None and uplink is not None and uplink_index is not None:
        link = await sources.resolved.link_dns(uplink_index)
        if link is not None and link.servers:
            domain, *search = link.domains or ("",)
            return Reading(Location(domain, link.servers, tuple(search)),
                           f"systemd-resolved, link {uplink.device}")
    # The files, off the event loop (a wedged file system must not stall the daemon).
    return await anyio.to_thread.run_sync(functools.partial(
        _from_files, sources, uplink=uplink, connected=connected, at_connect=at_connect,
        uplink_at_connect=uplink_at_connect))


def _from_files(sources: Sources, *, uplink: Uplink | None, connected: bool,
                at_connect: Location | None, uplink_at_connect: Uplink | None) -> Reading:
    try:
        text = _read(sources.resolv_conf or Path("/etc/resolv.conf"))
    except DnsConfigError:
        text = ""
    if VPNC_MARK in text:  # whatever the state says: the file is the VPN's
        backup = newest_vpnc_backup(sources.vpnc_dir)
        if backup is not None:
            conf = parse_resolv_conf(_read(backup))
            if conf.servers:
                return Reading(conf.location, f"{backup} (saved by vpnc-script)")
    if not connected:
        env = inspect_dns(sources.resolv_conf, uplink_conf=sources.uplink_conf)
        return Reading(env.location, str(env.source))
    roamed = (uplink is not None and uplink_at_connect is not None
              and (uplink.device, uplink.gateway)
              != (uplink_at_connect.device, uplink_at_connect.gateway))
    if roamed and text and VPNC_MARK not in text:
        conf = parse_resolv_conf(text)
        if conf.servers:
            return Reading(conf.location,
                           f"{sources.resolv_conf or '/etc/resolv.conf'} (after the uplink "
                           "changed)")
    if at_connect is not None:
        return Reading(at_connect, "recorded when the VPN came up", current=not roamed)
    # Connected before we ever saw the network: the file is all there is.
    env = inspect_dns(sources.resolv_conf, uplink_conf=sources.uplink_conf)
    return Reading(env.location, f"{env.source} (may be the VPN's)", current=False)


def newest_vpnc_backup(directory: Path) -> Path | None:
    """vpnc-script's saved resolv.conf, of a VPN process that still runs if that can be
    told, newest first.

    vpnc-script removes its backup at disconnect, so only a crash leaves one behind. Under
    the shipped unit (ProtectProc=invisible) root's processes cannot be seen: then the
    newest file stands, which is the live connection's (it was written at connect).
    """
    try:
        candidates = list(directory.glob(VPNC_BACKUP_PREFIX + "*"))
    except OSError:
        return None
    found: list[tuple[bool, float, Path]] = []
    for path in candidates:
        pid = path.name.removeprefix(VPNC_BACKUP_PREFIX)
        try:
            found.append((Path(f"/proc/{pid}").exists() if pid.isdigit() else False,
                          path.stat().st_mtime, path))
        except OSError:
            continue
    return max(found)[2] if found else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DnsConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
