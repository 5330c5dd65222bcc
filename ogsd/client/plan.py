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


def fetch_plan(socket_path: str, *, read_only_ok: bool) -> Plan:
    """evaluate under the connect-time rules (admin); with `read_only_ok`, fall back to the
    read-only selection when that is forbidden. CtlError when there is nothing to try."""
    conn = Connection(socket_path, WAIT_TIMEOUT_S)
    try:
        rules, note = "connect", None
        try:
            decision = conn.request("evaluate", {"wait": True, "connect": True})
        except CtlError as exc:
            if exc.code != EXIT_FORBIDDEN or not read_only_ok:
                raise
            rules, note = "selection", FALLBACK_NOTE
            decision = conn.request("selection")
        gateways = conn.request("gateways").get("gateways") or []
    finally:
        conn.close()
    order = [str(h) for h in decision.get("order") or []]
    if not order:
        raise CtlError(EXIT_ERROR, "ogsd has no gateway to connect to: "
                       + str(decision.get("reason") or "no decision"))
    known = tuple(g for g in gateways if isinstance(g, dict) and g.get("host"))
    return Plan(decision, tuple(plan_attempts(order, known)), known, rules, note)
