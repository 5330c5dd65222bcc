"""What ogsctl connect tries: ogsd's decision under the connect-time rules, as attempts.

Shared by `ogsd.client.connect` (dry run, start) and `ogsd.client.supervise` (each
reconnect asks again). Stdlib only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ogsd.client.conn import EXIT_ERROR, EXIT_FORBIDDEN, WAIT_TIMEOUT_S, Connection, CtlError
from ogsd.client.openconnect import Attempt, plan_attempts
from ogsd.config.address import HTTPS_PORT, split_address

FALLBACK_NOTE = ("not allowed to evaluate (needs ogsd admin rights): showing ogsd's current "
                 "selection; a real connect applies the connect-time rules")


def say(message: str) -> None:
    """One line of ogsctl's own, on stderr (stdout is openconnect's)."""
    print(f"ogsctl: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision and the attempts it gives."""

    decision: dict[str, Any]
    attempts: tuple[Attempt, ...]
    gateways: tuple[dict[str, Any], ...]  # ogsd's configured primaries (`gateways`)
    rules: str  # "connect": evaluated under the connect-time rules; "selection": read only
    note: str | None = None

    @property
    def summary(self) -> str:
        d = self.decision
        return (f"ogsd's choice: {d.get('selected')} ({d.get('source') or '-'}: "
                f"{d.get('reason') or '-'})")


def fetch_plan(socket_path: str, *, read_only_ok: bool, protocol: str | None = None,
               portal: str | None = None) -> Plan:
    """evaluate under the connect-time rules (admin); with `read_only_ok`, fall back to the
    read-only selection when that is forbidden. CtlError when there is nothing to try, or
    when `protocol` ("anyconnect", "gp"; None: whatever ogsd's gateways speak) is not
    what ogsd's gateways speak. GlobalProtect gateways are reached through `portal`, else
    the portal ogsd read them from."""
    conn = Connection(socket_path, WAIT_TIMEOUT_S)
    try:
        listed = conn.request("gateways")
        gateways = listed.get("gateways") or []
        known = tuple(g for g in gateways if isinstance(g, dict) and g.get("host"))
        portal = portal or (str(listed["portal"]) if listed.get("portal") else None)
        if protocol == "gp" and portal is not None and not known:
            # No gateway known yet: openconnect logs into the portal and chooses (or
            # asks); the list it prints goes to ogsd, which chooses from the next connect.
            address = split_address(portal)
            first = Attempt(address.host, address.port or HTTPS_PORT, portal, None,
                            "the portal's own choice: ogsd learns its gateways now",
                            portal=portal)
            return Plan({"selected": None, "source": None,
                         "reason": "no gateway of the portal known yet"}, (first,), (),
                        "portal")
        rules, note = "connect", None
        try:
            decision = conn.request("evaluate", {"wait": True, "connect": True})
        except CtlError as exc:
            if exc.code != EXIT_FORBIDDEN or not read_only_ok:
                raise
            rules, note = "selection", FALLBACK_NOTE
            decision = conn.request("selection")
    finally:
        conn.close()
    order = [str(h) for h in decision.get("order") or []]
    if not order:
        raise CtlError(EXIT_ERROR, "ogsd has no gateway to connect to: "
                       + str(decision.get("reason") or "no decision"))
    speaks = {str(g.get("protocol") or "anyconnect") for g in known}
    if protocol is not None and speaks and protocol not in speaks:
        theirs = " and ".join(sorted(PROTOCOL_NAMES.get(p, p) for p in speaks))
        raise CtlError(EXIT_ERROR, f"--protocol {protocol}: ogsd's gateways are {theirs} "
                       "gateways (a GlobalProtect portal goes in ogsd.toml's [globalprotect])")
    portals = sorted({str(g["portal"]) for g in known if g.get("portal")})
    if portal is not None and portals and portal not in portals:
        note = ((note + "; ") if note else "") + (
            f"ogsd read its gateways from portal {', '.join(portals)}; logging into "
            f"{portal} as asked")
    attempts = plan_attempts(order, known, portal=portal)
    return Plan(decision, tuple(attempts), known, rules, note)


PROTOCOL_NAMES = {"gp": "GlobalProtect", "anyconnect": "AnyConnect"}
