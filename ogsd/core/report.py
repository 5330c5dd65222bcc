"""The AnyConnect-style selection table, from plain rows (shared by `ogsd` and `ogsctl`)."""

from __future__ import annotations

from collections.abc import Sequence

# Error prefix of a probe stopped because its gateway could no longer win the round.
# Here, not in ogsd.core.models, so ogsctl prints tables without loading the models.
CANCELLED = "cancelled"
HEADER = "*** OGS Selection Results ***"
HOST_WIDTH = 40


def format_rtt(rtt_ms: float | None, note: str | None) -> str:
    """Whole milliseconds like AnyConnect, or the note saying why there is no figure
    (beside a figure, a note says how it was measured)."""
    if rtt_ms is None:
        return note or "unreachable"
    figure = f"{rtt_ms:.0f}" if rtt_ms >= 10 else f"{rtt_ms:.1f}"
    return f"{figure} ({note})" if note else figure


def path_note(family: str | None, proxy: str | None) -> str | None:
    """How a figure was measured, when not the usual direct IPv4: through a proxy (its
    CONNECT round trip), or over IPv6."""
    if proxy:
        return f"via proxy {proxy}: CONNECT round trip"
    return family if family == "IPv6" else None


def with_tier(note: str | None, tier: str | None) -> str | None:
    """A row's note with its GlobalProtect tier ("priority 1", "manual only") in front."""
    if not tier:
        return note
    return f"{tier}; {note}" if note else tier


def row_note(error: str | None) -> str:
    """What the table shows for a gateway without a figure, from its error text."""
    if error is not None and error.startswith(CANCELLED):
        return "cut short: could not win"
    return f"unreachable: {error}" if error else "unreachable"


def selection_table(
    rows: Sequence[tuple[str, float | None, str | None]], selected: str | None
) -> list[str]:
    """`*** OGS Selection Results ***`, a `Server Address  RTT (ms)` table, the verdict."""
    width = max([HOST_WIDTH, *(len(host) + 2 for host, _, _ in rows)])
    lines = [HEADER, f"{'Server Address':<{width}}RTT (ms)"]
    lines += [f"{host:<{width}}{format_rtt(rtt, note)}" for host, rtt, note in rows]
    if selected is not None:
        lines.append(f"Selected '{selected}' as the optimal server.")
    else:
        lines.append("No server could be selected.")
    return lines
