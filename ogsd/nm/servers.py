"""The servers NetworkManager-openconnect's auth dialog lists for a connection, and where
ogsd points the connection after a decision (pure: no D-Bus; ogsd.nm.connections reads
and writes, ogsd.nm.sync decides when).

What the sources say (NetworkManager-openconnect's auth-dialog/main.c, 1.2.8 as in Debian
12 and the same today; openconnect's auth-globalprotect.c, 9.01 as in Debian 12 and
later):

- `vpn.data`: `gateway` is what the user typed (`host[:port][/path]`); `protocol` is
  openconnect's protocol name ("anyconnect", absent in old connections; "gp" for
  GlobalProtect; also "nc", "pulse", "f5", "fortinet", "array"). `get_config` hands it
  to `openconnect_set_protocol`. For "gp", `gateway` is normally the portal.
- `xmlconfig` (secret, base64) is what openconnect's `write_new_config` callback gave the
  dialog at the last login. AnyConnect: the profile the server pushed. GlobalProtect:
  `parse_portal_xml` (on a portal login only) writes
  `<GPPortal><ServerList><HostEntry><HostName>PORTAL-NAME</HostName><HostAddress>
  portal[:port]/global-protect</HostAddress></HostEntry>` then, for each gateway of the
  portal's list, `<HostEntry><HostName>DESCRIPTION</HostName><HostAddress>
  NAME/ssl-vpn</HostAddress></HostEntry>` where NAME is the entry's `host[:port]`.
  9.01 writes the portal's entry only if the portal names itself and gateways only if
  they have a description, in the portal's order; 9.2x always writes the portal's entry
  (HostName "unknown" if unnamed) and sorts gateways by priority for the region (the
  priorities themselves are not kept).
- The dialog (`get_config`, `parse_xmlconfig`) lists `gateway` first, then every
  HostEntry of xmlconfig's ServerList that has a HostName and a HostAddress, whatever
  the root element (so GPPortal too); the first one is dropped when an entry has its
  address and group. `populate_vpnhost_combo` pre-selects the *last* listed host whose
  HostName equals the `lasthost` secret (else the first); `connect_host` hands that
  host's HostAddress to `openconnect_parse_url` and saves its HostName as `lasthost`.
- openconnect's `gpst_obtain_cookie` logs in to a gateway directly when the URL path is
  `ssl-vpn...` or `gateway`, to a portal for `global-protect...` or `portal`, and tries
  portal then gateway otherwise. So a GP xmlconfig's `/ssl-vpn` entries are gateways
  the dialog logs in to without the portal; the dialog never lists the portal's
  gateways itself (a portal login's gateway choice is a form, `authgroup`).

So pointing a connection at a server means making the dialog pre-select it:
- AnyConnect: `gateway` = the entry's address and `lasthost` = its HostName (as before);
- GlobalProtect: `lasthost` = the gateway's HostName; `gateway` stays the portal (the
  dialog's first host, the one whose login refreshes xmlconfig);
- an entry whose HostName a later listed host also has cannot be pre-selected
  (`lasthost` names the later one): it is never chosen;
- an AnyConnect connection with no xmlconfig yet lists its `gateway` alone: if that is
  one of ogsd's configured gateways, `gateway` = the best configured gateway (its group
  kept if the configured one has none). A GlobalProtect connection without xmlconfig
  names its portal, which is no gateway: it is left alone.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from ogsd.config.address import HTTPS_PORT, Address, split_address
from ogsd.config.profile import ProfileError, parse_profile_data
from ogsd.config.safexml import Node, parse_xml
from ogsd.core.models import Gateway

ANYCONNECT, GLOBALPROTECT = "anyconnect", "gp"
GP_ROOT = "GPPortal"
ALREADY = "already pointed at the optimal server"


@dataclass(frozen=True, slots=True)
class Entry:
    """One server of xmlconfig the auth dialog lists."""

    name: str  # HostName: what `lasthost` holds
    address: str  # HostAddress as written: host[:port][/group or /ssl-vpn]
    gateway: Gateway
    shadowed: bool = False  # a later listed host has the same HostName: never pre-selected


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a connection should point (`gateway`, `lasthost`; None: `lasthost` kept),
    or why it is left as it is (`note`)."""

    gateway: str | None = None
    lasthost: str | None = None
    note: str | None = None


def gateway_of(text: str) -> Gateway | None:
    """`host[:port][/group]` (or an https:// URL) as a Gateway; None if it is no address."""
    try:
        address = split_address(text)
    except ValueError:
        return None
    return Gateway(host=address.host, user_group=address.group,
                   port=address.port or HTTPS_PORT)


def entry_address(gateway: Gateway) -> str:
    """What `vpn.data gateway` says for a gateway (the auth dialog's host/group form)."""
    host = Address(gateway.host, gateway.port).text
    return f"{host}/{gateway.user_group}" if gateway.user_group else host


def entries_from_xmlconfig(encoded: str, origin: str, protocol: str = ANYCONNECT,
                           portal: str | None = None) -> tuple[Entry, ...]:
    """The listed servers of a base64 xmlconfig: a profile, or (protocol "gp") a GPPortal
    server list whose gateways name `portal`. ProfileError if it cannot be read."""
    try:
        data = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ProfileError(f"{origin}: not base64: {exc}") from None
    if protocol == GLOBALPROTECT:
        return _gp_entries(Path(origin), data, portal)
    profile = parse_profile_data(Path(origin), data)
    # The dialog lists only entries with both a HostName and a HostAddress.
    named = [g for g in profile.gateways if g.name]
    return _shadow([(g.name, Entry(g.name, entry_address(g), g)) for g in named])


def _gp_entries(origin: Path, data: bytes, portal: str | None) -> tuple[Entry, ...]:
    root = parse_xml(origin, data, ProfileError, "a GlobalProtect server list")
    if root.tag != GP_ROOT:
        raise ProfileError(f"{origin}: line {root.line}: {root.tag}: root element must be "
                           f"<{GP_ROOT}> (openconnect's GlobalProtect server list)")
    listed: list[tuple[str, Entry | None]] = []
    for servers in root.all("ServerList"):
        for host in servers.all("HostEntry"):
            name, address = _text(host, "HostName"), _text(host, "HostAddress")
            if name is None or address is None:
                continue  # the dialog lists neither
            listed.append((name, _gp_entry(name, address, portal)))
        break  # the dialog reads the first ServerList only
    return _shadow(listed)


def _gp_entry(name: str, address: str, portal: str | None) -> Entry | None:
    """A listed host as a GP gateway; None for the portal (or a path openconnect would
    try as a portal first)."""
    try:
        where = split_address(address)
    except ValueError:
        return None
    path = where.group or ""
    if not (path.startswith("ssl-vpn") or path == "gateway"):
        return None
    gateway = Gateway(host=where.host, name=name, port=where.port or HTTPS_PORT,
                      protocol=GLOBALPROTECT, portal=portal)
    return Entry(name, address, gateway)


def _text(parent: Node, tag: str) -> str | None:
    """The text of the last `tag` child (libxml2's walk keeps the last), None if absent
    or empty (an empty HostName cannot be told from no lasthost)."""
    found = [child.text for child in parent.all(tag)]
    return found[-1] if found and found[-1] else None


def _shadow(listed: Sequence[tuple[str, Entry | None]]) -> tuple[Entry, ...]:
    """The entries, each marked if a later listed host has its HostName."""
    out = []
    for i, (name, entry) in enumerate(listed):
        if entry is not None:
            later = any(other == name for other, _ in listed[i + 1:])
            out.append(Entry(entry.name, entry.address, entry.gateway, shadowed=later))
    return tuple(out)


def choose(entries: Sequence[Entry], order: Sequence[str],
           never: Collection[str] = ()) -> Entry | None:
    """The first host of a decision's failover order among the listed servers the
    dialog can pre-select (backups are not listed, so never chosen here), skipping the
    hosts in `never` (GlobalProtect's manual-only gateways)."""
    by_host: dict[str, Entry] = {}
    for entry in entries:
        if not entry.shadowed and entry.gateway.host not in never:
            by_host.setdefault(entry.gateway.host, entry)
    return next((by_host[host] for host in order if host in by_host), None)


def plan(*, protocol: str, gateway: str, lasthost: str | None, entries: Sequence[Entry],
         problem: str | None, order: Sequence[str], headends: Sequence[Gateway]) -> Plan:
    """Where a connection (its protocol, `vpn.data gateway`, `lasthost`, xmlconfig's
    entries) should point after a decision, ogsd's configured gateways being
    `headends`; or why it is left as it is."""
    never = {g.host for g in headends if g.manual_only}
    if protocol not in (ANYCONNECT, GLOBALPROTECT):
        return Plan(note=f"protocol {protocol!r}: ogsd chooses among AnyConnect and "
                         "GlobalProtect servers only")
    if entries:
        target = choose(entries, order, never)
        if target is None:
            return Plan(note="none of its servers is in the failover order")
        if protocol == GLOBALPROTECT:  # the portal stays the dialog's first host
            wanted = Plan(gateway, target.name)
        else:
            wanted = Plan(target.address, target.name)
        return Plan(note=ALREADY) if (wanted.gateway, wanted.lasthost) == (
            gateway, lasthost) else wanted
    if problem is not None:
        return Plan(note=f"its server list is unknown: {problem}")
    if protocol == GLOBALPROTECT:
        return Plan(note="no server list (xmlconfig) yet: its gateway is the GlobalProtect "
                         "portal, whose gateways only a login tells")
    return _plan_headend(gateway, order, headends, never)


def _plan_headend(gateway: str, order: Sequence[str], headends: Sequence[Gateway],
                  never: Collection[str]) -> Plan:
    """A connection without xmlconfig: its gateway alone, moved among ours if it is ours."""
    own = gateway_of(gateway)
    if own is None:
        return Plan(note=f"no server list (xmlconfig) yet, and its gateway {gateway!r} is no "
                         "server address")
    ours = [g for g in headends if g.protocol == ANYCONNECT]
    if own.host not in {g.host for g in ours}:
        return Plan(note=f"no server list (xmlconfig) yet, and its gateway {own.host} is "
                         "not one of ogsd's configured gateways")
    by_host: dict[str, Gateway] = {}
    for headend in ours:
        if headend.host not in never:
            by_host.setdefault(headend.host, headend)
    target = next((by_host[host] for host in order if host in by_host), None)
    if target is None:
        return Plan(note="none of ogsd's configured gateways is in the failover order")
    group = target.user_group or own.user_group  # the group the user typed, if ours has none
    wanted = Gateway(target.host, port=target.port, user_group=group)
    if (own.host, own.port, own.user_group) == (wanted.host, wanted.port, wanted.user_group):
        return Plan(note=ALREADY)
    return Plan(entry_address(wanted))
