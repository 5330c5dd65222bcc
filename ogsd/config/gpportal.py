"""GlobalProtect portal configurations: their external gateways, as ogsd's headends.

A GlobalProtect (GP) portal hands each client, after login, a configuration: the XML
that `POST /global-protect/getconfig.esp` returns. What openconnect reads of it (its
source, `auth-globalprotect.c`, `parse_portal_xml()`; checked at commit 70d1e79,
July 2026):

- the gateways are `policy/gateways/external/list/entry`; the `name` attribute is the
  address (`host[:port]`), `<description>` the label users see;
- `<priority-rule>` holds `<entry name="REGION"><priority>N</priority></entry>`; only
  entries named as the client's region (which the portal's *prelogin* answer gives,
  `<region>`) or `Any` count, the lowest N of them wins, lower N first; a gateway with
  no matching entry is "unprioritized" (INT_MAX: after every numbered one). openconnect
  sorts by that only since v9.20 (commit e39b2cc4); Debian 12's 9.01 keeps XML order;
- the choice: `--authgroup=LABEL` (a case-insensitive prefix of the label, `main.c`
  `match_choice_label()`), else a `GATEWAY:` prompt (the CLI), else the first (the
  library, NetworkManager's auth dialog). openconnect never measures anything.

What Palo Alto's own client does ("GlobalProtect Portals Agent External Tab", PAN-OS
web interface help): the source region first, then the priority (Highest, High, Medium,
Low, Lowest, Manual only); it contacts every gateway of the best priorities and takes
the fastest to answer, a lower priority only when those are unreachable; "Manual only"
gateways are never chosen automatically. The portal encodes the six choices as 0-5
(Prisma Access's configuration API lists `priority_rule` values 0..5): 1 Highest ..
5 Lowest, and 0 "Manual only" — the one value openconnect, sorting lowest first, would
put first.

ogsd reads the same entries: the priority of our region's own entry if there is one,
else of `Any` (the region is the admin's `[globalprotect] region`; without it only
`Any` counts); 0 is manual-only. The configuration may carry the user's portal cookies
(`portal-userauthcookie`, ...): they are never kept, only the gateways are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ogsd.config.address import HTTPS_PORT, split_address
from ogsd.config.safexml import Node, parse_xml
from ogsd.core.models import Gateway

ROOT = "policy"
# Real portal configurations are tens of KB (HIP categories, root CAs, welcome pages).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MANUAL_ONLY = 0  # the priority value of PAN's "Manual only"
ANY_REGION = "Any"
# Elements that hold the user's credentials for the gateways: never kept by ogsd.
SECRET_ELEMENTS = ("portal-userauthcookie", "portal-prelogonuserauthcookie")

_DIGITS = re.compile(r"[0-9]+")


class PortalError(ValueError):
    """A portal configuration that cannot be used; the message names file, line, element."""


@dataclass(frozen=True)
class PortalConfig:
    """A portal's external gateways (all of them, manual-only too, in the portal's order)."""

    origin: Path
    gateways: tuple[Gateway, ...]
    region: str | None
    warnings: tuple[str, ...] = ()

    @property
    def automatic(self) -> tuple[Gateway, ...]:
        """The gateways ogsd may choose by itself."""
        return tuple(g for g in self.gateways if not g.manual_only)


def parse_portal_config(origin: Path, data: bytes, *, portal: str | None = None,
                        region: str | None = None) -> PortalConfig:
    """The gateways of a portal configuration held in memory; `origin` names it in
    messages, `portal` is the portal they come from, `region` whose priorities count."""
    if len(data) > MAX_CONFIG_BYTES:
        raise PortalError(f"{origin}: larger than {MAX_CONFIG_BYTES} bytes")
    root = parse_xml(origin, data, PortalError, "a portal configuration")
    return _Reader(origin, portal, region).config(root)


def load_portal_config(path: Path, *, portal: str | None = None,
                       region: str | None = None) -> PortalConfig:
    """Parse the portal configuration an admin saved at `path`."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise PortalError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_portal_config(path, data, portal=portal, region=region)


class _Reader:
    def __init__(self, origin: Path, portal: str | None, region: str | None) -> None:
        self.origin, self.portal, self.region = origin, portal, region
        self.warnings: list[str] = []

    def error(self, line: int | None, where: str, problem: str) -> PortalError:
        at = f"line {line}: " if line else ""
        return PortalError(f"{self.origin}: {at}{where}: {problem}")

    def warn(self, line: int, where: str, problem: str) -> None:
        self.warnings.append(f"{self.origin}: line {line}: {where}: {problem}")

    def config(self, root: Node) -> PortalConfig:
        if root.tag != ROOT:
            raise self.error(root.line, root.tag, f"root element must be <{ROOT}> (what "
                             "/global-protect/getconfig.esp returns)")
        for secret in SECRET_ELEMENTS:
            found = next((n for n in _descendants(root) if n.tag == secret
                          and n.text and n.text != "empty"), None)
            if found is not None:
                self.warn(found.line, secret, "holds your portal login cookie: ogsd reads "
                          "only the gateways, but the file should not keep it (remove the "
                          "element's text, or make the file readable by root only)")
        lists = [lst for gws in root.all("gateways") for ext in gws.all("external")
                 for lst in ext.all("list")]
        if not lists:
            raise self.error(root.line, "policy/gateways/external/list",
                             "missing: the configuration lists no external gateway")
        gateways: dict[str, Gateway] = {}
        index = 0
        for entry in (e for lst in lists for e in lst.all("entry")):
            index += 1
            where = f"gateways/external/list/entry[{index}]"
            gateway = self.entry(entry, where)
            if gateway.host in gateways:
                self.warn(entry.line, where, f"{gateway.host} listed twice; keeping the first")
                continue
            gateways[gateway.host] = gateway
        if not gateways:
            raise self.error(lists[0].line, "policy/gateways/external/list",
                             "has no <entry>: the configuration lists no external gateway")
        return PortalConfig(self.origin, tuple(gateways.values()), self.region,
                            tuple(self.warnings))

    def entry(self, entry: Node, where: str) -> Gateway:
        name = entry.attrib.get("name", "").strip()
        if not name:
            raise self.error(entry.line, where, 'needs a name="host[:port]" attribute')
        try:
            address = split_address(name)
        except ValueError as e:
            raise self.error(entry.line, f'{where} name="{name}"', str(e)) from None
        descriptions = [d.text for d in entry.all("description") if d.text]
        priority = self.priority(entry, where)
        return Gateway(host=address.host, name=descriptions[0] if descriptions else "",
                       port=address.port or HTTPS_PORT, protocol="gp",
                       priority=None if priority == MANUAL_ONLY else priority,
                       manual_only=priority == MANUAL_ONLY, portal=self.portal)

    def priority(self, entry: Node, where: str) -> int | None:
        """Our region's entry's priority, else Any's; None when neither has one."""
        found: dict[str, int] = {}
        for rules in entry.all("priority-rule"):
            for rule in rules.all("entry"):
                region = rule.attrib.get("name", "")
                if region not in (ANY_REGION, self.region):
                    continue
                for value in rule.all("priority"):
                    if not _DIGITS.fullmatch(value.text):
                        self.warn(value.line, f"{where}/priority-rule/entry[@name={region}]"
                                  "/priority", f"{value.text!r} is not a whole number: "
                                  "ignored")
                        continue
                    number = int(value.text)
                    found[region] = min(found.get(region, number), number)
        if self.region is not None and self.region in found:
            return found[self.region]
        return found.get(ANY_REGION)


def _descendants(node: Node) -> list[Node]:
    out: list[Node] = []
    stack = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(current.children)
    return out
