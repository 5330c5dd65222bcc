"""Ranking, the improvement threshold, failover order and the 7-second fallback."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ogsd.core.models import Decision, Gateway, GatewayResult, Location, Metric, Reason, Source
from ogsd.core.settings import Settings


@dataclass(frozen=True, slots=True)
class Ranked:
    """Hosts with a usable figure, best tier first and fastest first within a tier; then
    those the round cut short (they could not win), by their fastest TCP connect; then
    failed ones in configured order. Manual-only gateways are in none of these: they are
    never chosen automatically (only shown).
    """

    usable: tuple[tuple[str, float], ...]
    unusable: tuple[str, ...]
    tiers: Mapping[str, float] = field(default_factory=dict)  # host -> tier (inf: none)
    manual: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()  # the unusable ones the round cut short (alive, slower)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The failover order: tier by tier, those answering (fastest first, then the cut
        short); then the failed ones, tier by tier. One tier: as AnyConnect orders."""
        alive = [h for h, _ in self.usable] + list(self.cut)
        failed = [h for h in self.unusable if h not in self.cut]
        alive.sort(key=self.tier)  # stable: figures, then cut short, within a tier
        return tuple(alive) + tuple(failed)

    def tier(self, host: str) -> float:
        return self.tiers.get(host, math.inf)


# A gateway without a priority for our region: after every numbered tier (openconnect's
# INT_MAX); a manual-only one after even those (math.inf): measured, never to lead.
NO_PRIORITY = float(2**31 - 1)


def tier_of(gateway: Gateway) -> float:
    """A gateway's GlobalProtect tier as a sort key, lower first (AnyConnect gateways,
    with no priority, share one)."""
    if gateway.manual_only:
        return math.inf
    return NO_PRIORITY if gateway.priority is None else float(gateway.priority)


def tier_name(tier: float) -> str:
    if math.isinf(tier):
        return "manual only"
    return "no priority" if tier == NO_PRIORITY else f"priority {tier:g}"


def tier_labels(gateways: Sequence[Gateway]) -> dict[str, str]:
    """Each gateway's tier as tables show it; empty when none has one (AnyConnect)."""
    if not any(g.priority is not None or g.manual_only for g in gateways):
        return {}
    return {g.host: tier_name(tier_of(g)) for g in gateways}


def rank(results: Sequence[GatewayResult], metric: Metric,
         gateways: Sequence[Gateway] = ()) -> Ranked:
    """Order by priority tier (GlobalProtect's; AnyConnect gateways share one), then by
    the gateway figure (min of its probes); ties keep the configured order."""
    tiers = {g.host: tier_of(g) for g in gateways}
    manual = {g.host for g in gateways if g.manual_only}
    usable: list[tuple[str, float]] = []
    cut: list[tuple[str, float]] = []
    failed: list[str] = []
    for result in results:
        if result.host in manual:
            continue
        rtt = result.rtt(metric)
        if rtt is not None:
            usable.append((result.host, rtt))
        elif result.cut_short:
            hint = result.network_hint
            cut.append((result.host, math.inf if hint is None else hint))
        else:
            failed.append(result.host)

    def key(pair: tuple[str, float]) -> tuple[float, float]:
        return tiers.get(pair[0], math.inf), pair[1]

    usable.sort(key=key)  # stable: equal figures keep profile order
    cut.sort(key=key)
    failed.sort(key=lambda host: tiers.get(host, math.inf))
    return Ranked(tuple(usable), tuple(h for h, _ in cut) + tuple(failed), tiers,
                  tuple(r.host for r in results if r.host in manual), tuple(h for h, _ in cut))


def improvement_met(current_ms: float, best_ms: float, settings: Settings) -> bool:
    """Switch only for a relative gain of N % *and* an absolute gain of the floor in ms.

    The percentage is AnyConnect's AutoServerSelectionImprovement; the floor stops two
    gateways a few ms apart from flip-flopping on measurement noise.
    """
    if current_ms <= 0:
        return False
    gain = current_ms - best_ms
    return (
        gain * 100 >= settings.improvement_percent * current_ms
        and gain >= settings.improvement_floor_ms
    )


def failover_order(
    first: str, ranked_hosts: Sequence[str], gateways: Iterable[Gateway]
) -> tuple[str, ...]:
    """Optimal gateway, its BackupServerList, then the rest in OGS order, each followed
    by its own backups (our choice: a backup is closer to its primary than to strangers).
    """
    backups = {g.host: g.backups for g in gateways}
    order: list[str] = []
    for host in (first, *ranked_hosts):
        for candidate in (host, *backups.get(host, ())):
            if candidate not in order:
                order.append(candidate)
    return tuple(order)


def configured(host: str | None, gateways: Iterable[Gateway]) -> str | None:
    """`host` if it is still a configured address (a gateway, a backup or a cluster
    member), else None: a previous gateway removed from the profiles is no fallback."""
    if host is None:
        return None
    known = {a for g in gateways for a in (g.host, *g.backups, *g.load_balancing)}
    return host if host in known else None


def _fmt(ms: float) -> str:
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def decide_round(
    *,
    location: Location,
    gateways: Sequence[Gateway],
    results: Sequence[GatewayResult],
    settings: Settings,
    now: datetime,
    current: str | None = None,
    last_gateway: str | None = None,
    apply_threshold: bool = False,
) -> Decision:
    """Turn a probe round into a decision.

    `current` is the gateway the user is on (the threshold compares against it when
    `apply_threshold`); `last_gateway` is the fallback when nothing answered in time.
    """
    metric = settings.metric
    ranked = rank(results, metric, gateways)
    automatic = _automatic(gateways)

    def decision(source: Source, reason: Reason, text: str, selected: str | None,
                 order: tuple[str, ...]) -> Decision:
        return Decision(location=location, source=source, reason=reason, reason_text=text,
                        selected=selected, order=order, metric=metric, decided_at=now,
                        results=tuple(results))

    if not ranked.usable:
        hosts = tuple(g.host for g in automatic)
        deadline_s = settings.round_deadline.total_seconds()
        last_gateway = configured(last_gateway, automatic)
        if last_gateway is not None:
            return decision(
                Source.FALLBACK, Reason.FALLBACK,
                f"no probe result within {deadline_s:g} s; previous gateway "
                f"'{last_gateway}' used",
                last_gateway, failover_order(last_gateway, hosts, gateways))
        return decision(Source.FALLBACK, Reason.NO_GATEWAY,
                        f"no probe result within {deadline_s:g} s and no previous gateway",
                        None, ())

    best_host, best_ms = ranked.usable[0]
    best_tier = ranked.tier(best_host)
    figures = dict(ranked.usable)
    if apply_threshold and current is not None and current != best_host:
        current_ms = figures.get(current)
        # Hysteresis within a tier; a better tier answering is a reason of its own.
        if (current_ms is not None and ranked.tier(current) == best_tier
                and not improvement_met(current_ms, best_ms, settings)):
            return decision(
                Source.PROBES, Reason.THRESHOLD_NOT_MET,
                f"'{best_host}' ({_fmt(best_ms)}) is not at least "
                f"{settings.improvement_percent} % and {settings.improvement_floor_ms:g} ms "
                f"better than current '{current}' ({_fmt(current_ms)}); staying",
                current, failover_order(current, ranked.hosts, gateways))
    if not any(g.priority is not None or g.manual_only for g in gateways):
        text = f"fastest by {metric.value} RTT: {_fmt(best_ms)}"
        if len(ranked.usable) > 1:
            runner, runner_ms = ranked.usable[1]
            text += f"; next '{runner}' at {_fmt(runner_ms)}"
    else:
        text = _tiered_text(ranked, best_tier, best_ms, metric, automatic)
    return decision(Source.PROBES, Reason.PROBES, text, best_host,
                    failover_order(best_host, ranked.hosts, gateways))


def _automatic(gateways: Sequence[Gateway]) -> tuple[Gateway, ...]:
    """The gateways ogsd may choose, best tier first (configured order within one)."""
    return tuple(sorted((g for g in gateways if not g.manual_only), key=tier_of))


def _tiered_text(ranked: Ranked, best_tier: float, best_ms: float, metric: Metric,
                 automatic: Sequence[Gateway]) -> str:
    """Why this gateway, in GlobalProtect's terms: the best tier answering, its fastest."""
    above = [g.host for g in automatic if tier_of(g) < best_tier]
    text = f"fastest of {tier_name(best_tier)} by {metric.value} RTT: {_fmt(best_ms)}"
    same = [(h, ms) for h, ms in ranked.usable[1:] if ranked.tier(h) == best_tier]
    if same:
        text += f"; next '{same[0][0]}' at {_fmt(same[0][1])}"
    if above:
        tiers = sorted({ranked.tier(h) for h in above})
        text = (f"no answer from {' or '.join(tier_name(t) for t in tiers)} "
                f"({', '.join(above)}); {text}")
    if ranked.manual:
        text += f"; manual-only, never chosen: {', '.join(ranked.manual)}"
    return text


def decide_from_cache(
    *, location: Location, order: tuple[str, ...], results: tuple[GatewayResult, ...],
    metric: Metric, cached_at: datetime, expires_at: datetime, now: datetime, note: str = "",
) -> Decision:
    """A decision served from a valid cache entry: no probes were sent."""
    return Decision(
        location=location, source=Source.CACHE, reason=Reason.CACHE,
        reason_text=(f"cached for this location since {cached_at.isoformat(timespec='seconds')}"
                     f", valid until {expires_at.isoformat(timespec='seconds')}"
                     + (f"; {note}" if note else "")),
        selected=order[0] if order else None, order=order, metric=metric, decided_at=now,
        results=results)


def decide_skipped(*, location: Location, reason: Reason, text: str, metric: Metric,
                   now: datetime, last_gateway: str | None,
                   gateways: Sequence[Gateway]) -> Decision:
    """No OGS performed (proxy auto-detection, disabled): keep the previous gateway, if
    it is still configured, else take the first configured one (AnyConnect's default)."""
    automatic = _automatic(gateways)
    hosts = tuple(g.host for g in automatic)
    first = configured(last_gateway, automatic) or (hosts[0] if hosts else None)
    order = failover_order(first, hosts, gateways) if first else ()
    return Decision(location=location, source=Source.SKIPPED, reason=reason,
                    reason_text=text, selected=first, order=order, metric=metric,
                    decided_at=now)
