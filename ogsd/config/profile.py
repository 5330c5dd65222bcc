"""AnyConnect client profile loading: the XML's ServerList and OGS settings, as core types.

Profiles come from whoever administers the VPN, so the parser is defensive: DTDs, entity
declarations (expansion bombs) and external entities are refused, the size is capped, and
every error names the file, the line and the element.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogsd.config.address import HTTPS_PORT, Address, split_address
from ogsd.config.safexml import Node, parse_xml
from ogsd.core.models import Gateway
from ogsd.core.settings import IMPROVEMENT_PERCENT_RANGE, SUSPEND_TIME_HOURS_RANGE, Choice

# The namespace real profiles declare; elements are matched by local name, so a profile
# written without it (or with another one) is read the same way.
ANYCONNECT_NAMESPACE = "http://schemas.xmlsoap.org/encoding/"
ROOT = "AnyConnectProfile"
# Real profiles are a few KB (a few hundred HostEntries stay under 100 KB); anything far
# larger is a mistake or an attack, refused before it reaches the parser.
MAX_PROFILE_BYTES = 1024 * 1024
# AnyConnect's PrimaryProtocol values (profile schema), normalised to this spelling.
PROTOCOLS = {"ssl": "SSL", "ipsec": "IPsec"}

_DIGITS = re.compile(r"[0-9]+")  # ASCII only, unlike int()


class ProfileError(ValueError):
    """A profile that cannot be used; the message names file, line (if known) and field."""


@dataclass(frozen=True)
class Profile:
    """One parsed profile: its primary gateways and its OGS settings (None = not set)."""

    path: Path
    gateways: tuple[Gateway, ...]
    automatic_selection: bool | None
    improvement_percent: int | None
    suspend_time_hours: int | None
    warnings: tuple[str, ...] = ()
    # EnableAutomaticServerSelection's UserControllable (absent: false) and line.
    automatic_selection_controllable: bool = False
    automatic_selection_line: int | None = None

    @property
    def automatic_selection_choice(self) -> Choice | None:
        """The element's value and where it is written, if the profile sets it."""
        if self.automatic_selection is None:
            return None
        return Choice(self.automatic_selection, f"{self.path} line {self.automatic_selection_line}")


@dataclass(frozen=True)
class MergedProfiles:
    """Several profiles as one: gateways deduplicated, first profile's settings win."""

    gateways: tuple[Gateway, ...] = ()
    gateway_sources: tuple[Path, ...] = ()  # the profile each gateway came from
    automatic_selection: Choice | None = None
    automatic_selection_controllable: bool = False
    improvement_percent: int | None = None
    suspend_time_hours: int | None = None
    warnings: tuple[str, ...] = ()


class _Reader:
    """Walks one profile's tree, raising ProfileError with file, line and element path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []

    def error(self, line: int | None, where: str, problem: str) -> ProfileError:
        at = f"line {line}: " if line else ""
        return ProfileError(f"{self.path}: {at}{where}: {problem}")

    def one(self, parent: Node, tag: str, where: str) -> Node | None:
        found = list(parent.all(tag))
        if len(found) > 1:
            raise self.error(found[1].line, f"{where}/{tag}",
                             f"appears more than once (first on line {found[0].line})")
        return found[0] if found else None

    def boolean(self, node: Node, where: str, text: str | None = None) -> bool:
        value = (node.text if text is None else text).lower()
        if value not in ("true", "false"):
            raise self.error(node.line, where, f"{value!r} must be true or false")
        return value == "true"

    def integer(self, node: Node, where: str, bounds: tuple[int, int]) -> int:
        lo, hi = bounds
        if not _DIGITS.fullmatch(node.text) or not lo <= int(node.text) <= hi:
            raise self.error(node.line, where,
                             f"{node.text!r} must be a whole number between {lo} and {hi}")
        return int(node.text)

    def address(self, node: Node, where: str) -> Address:
        try:
            return split_address(node.text)
        except ValueError as e:
            raise self.error(node.line, where, str(e)) from None

    def host_entry(self, entry: Node, where: str) -> Gateway:
        name_node = self.one(entry, "HostName", where)
        address_node = self.one(entry, "HostAddress", where)
        name = name_node.text if name_node else ""
        if address_node is not None and address_node.text:
            host, port, group = self.address(address_node, f"{where}/HostAddress")
        elif name:
            # AnyConnect resolves HostName itself when there is no HostAddress.
            assert name_node is not None
            host, port, group = self.address(name_node, f"{where}/HostName (no HostAddress)")
        else:
            raise self.error(entry.line, where, "needs a HostAddress or a HostName")
        user_group = self.one(entry, "UserGroup", where)
        protocol = self.one(entry, "PrimaryProtocol", where)
        protocol_text: str | None = None
        if protocol is not None and protocol.text:
            protocol_text = PROTOCOLS.get(protocol.text.lower())
            if protocol_text is None:
                raise self.error(protocol.line, f"{where}/PrimaryProtocol",
                                 f"{protocol.text!r} must be SSL or IPsec")
        return Gateway(
            host=host,
            name=name,
            user_group=(user_group.text if user_group is not None else "") or group,
            backups=self.addresses(entry, "BackupServerList", where),
            load_balancing=self.addresses(entry, "LoadBalancingServerList", where),
            primary_protocol=protocol_text,
            port=port or HTTPS_PORT,
        )

    def addresses(self, entry: Node, tag: str, where: str) -> tuple[str, ...]:
        found = self.one(entry, tag, where)
        if found is None:
            return ()
        # dict: one entry per address, however many ways it was written
        return tuple(dict.fromkeys(self.address(node, f"{where}/{tag}/HostAddress").text
                                   for node in found.all("HostAddress")))

    def profile(self, root: Node) -> Profile:
        if root.tag != ROOT:
            raise self.error(root.line, root.tag, f"root element must be <{ROOT}>")
        automatic = improvement = suspend = None
        controllable = False
        init = self.one(root, "ClientInitialization", ROOT)
        ogs = self.one(init, "EnableAutomaticServerSelection", "ClientInitialization") \
            if init else None
        if ogs is not None:
            where = "ClientInitialization/EnableAutomaticServerSelection"
            if ogs.text:
                automatic = self.boolean(ogs, where)
            if "UserControllable" in ogs.attrib:
                controllable = self.boolean(ogs, f"{where} UserControllable",
                                            ogs.attrib["UserControllable"])
            if (node := self.one(ogs, "AutoServerSelectionImprovement", where)) is not None:
                improvement = self.integer(node, f"{where}/AutoServerSelectionImprovement",
                                           IMPROVEMENT_PERCENT_RANGE)
            if (node := self.one(ogs, "AutoServerSelectionSuspendTime", where)) is not None:
                suspend = self.integer(node, f"{where}/AutoServerSelectionSuspendTime",
                                       SUSPEND_TIME_HOURS_RANGE)
        gateways: dict[str, Gateway] = {}
        index = 0
        for server_list in root.all("ServerList"):
            for entry in server_list.all("HostEntry"):
                index += 1
                gateway = self.host_entry(entry, f"ServerList/HostEntry[{index}]")
                if gateway.host in gateways:
                    self.warnings.append(f"{self.path}: line {entry.line}: HostEntry "
                                         f"{gateway.host} listed twice; keeping the first")
                    continue
                gateways[gateway.host] = gateway
        return Profile(self.path, tuple(gateways.values()), automatic, improvement, suspend,
                       tuple(self.warnings), automatic_selection_controllable=controllable,
                       automatic_selection_line=ogs.line if ogs is not None else None)


def parse_profile(path: Path) -> Profile:
    """Parse one AnyConnect profile XML file."""
    reader = _Reader(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise reader.error(None, "file", f"cannot read: {e.strerror or e}") from None
    return parse_profile_data(path, data)


def parse_profile_data(origin: Path, data: bytes) -> Profile:
    """Parse a profile held in memory; `origin` names it in messages (a file, or e.g. a
    NetworkManager connection's xmlconfig)."""
    reader = _Reader(origin)
    if len(data) > MAX_PROFILE_BYTES:
        raise reader.error(None, "file", f"larger than {MAX_PROFILE_BYTES} bytes")
    return reader.profile(_parse_xml(origin, data))


def _parse_xml(path: Path, data: bytes) -> Node:
    return parse_xml(path, data, ProfileError, "a profile")


def _expand(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.glob("*.xml") if p.is_file())
        else:
            yield path


def load_profiles(paths: Sequence[Path]) -> tuple[Profile, ...]:
    """Parse profiles; a directory stands for all its *.xml files, sorted by name."""
    return tuple(parse_profile(path) for path in _expand(paths))


def merge_profiles(profiles: Sequence[Profile]) -> MergedProfiles:
    """One view of several profiles: first occurrence of a gateway and of a setting wins
    (for EnableAutomaticServerSelection, the first that users may not change)."""
    warnings = [w for profile in profiles for w in profile.warnings]
    gateways: dict[str, tuple[Gateway, Path]] = {}
    for profile in profiles:
        for gateway in profile.gateways:
            if gateway.host in gateways:
                warnings.append(f"{profile.path}: gateway {gateway.host} already listed in "
                                f"{gateways[gateway.host][1]}; keeping that one")
            else:
                gateways[gateway.host] = (gateway, profile.path)
    settings: dict[str, Any] = {}
    for name in ("automatic_selection", "improvement_percent", "suspend_time_hours"):
        ordered = list(profiles)
        if name == "automatic_selection":
            # A value users may not change is the administrator's word: it wins over one
            # they may, whatever the file order (a stable sort keeps that order otherwise).
            ordered.sort(key=lambda p: p.automatic_selection_controllable)
        chosen: Profile | None = None
        for profile in ordered:
            value = getattr(profile, name)
            if value is None:
                continue
            if chosen is None:
                chosen = profile
            elif value != (kept := getattr(chosen, name)):
                warnings.append(f"{profile.path}: {name} = {value} disagrees with "
                                f"{chosen.path} ({kept}); using {kept}")
        settings[name] = getattr(chosen, name) if chosen else None
        if name == "automatic_selection" and chosen is not None:
            settings[name] = chosen.automatic_selection_choice
            settings["automatic_selection_controllable"] = chosen.automatic_selection_controllable
    return MergedProfiles(
        gateways=tuple(g for g, _ in gateways.values()),
        gateway_sources=tuple(p for _, p in gateways.values()),
        warnings=tuple(warnings),
        **settings,
    )
