"""Location cache rules: keys, matching and validity (AnyConnect's OGS cache)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ogsd.core.models import CacheEntry, Decision, Gateway, Location, Metric
from ogsd.core.selection import failover_order, rank


def same_location(a: Location, b: Location) -> bool:
    """True when one `domain|server-ip` key is shared: AnyConnect's "same location"."""
    return not set(a.keys).isdisjoint(b.keys)


def expiry(entry: CacheEntry, lifetime: timedelta | None = None) -> datetime:
    """When the entry stops being used, counted from when it was first cached.

    A `lifetime` shorter than the one the entry was stored with wins: lowering the
    setting takes effect for entries already cached.
    """
    if lifetime is None:
        return entry.expires_at
    return min(entry.expires_at, entry.created_at + lifetime)


def is_valid(entry: CacheEntry, now: datetime, lifetime: timedelta | None = None) -> bool:
    """True between the entry's creation and its `expiry`."""
    return entry.created_at <= now < expiry(entry, lifetime)


def usable_entry(
    entry: CacheEntry | None, location: Location, now: datetime,
    lifetime: timedelta | None = None,
) -> CacheEntry | None:
    """The entry if it belongs to `location` and is still valid at `now`, else None."""
    if entry is None or not same_location(entry.location, location):
        return None
    return entry if is_valid(entry, now, lifetime) else None


@dataclass(frozen=True, slots=True)
class Fit:
    """A valid entry held against the configured gateways: what may be served, and why
    the stored entry is not served as it is (empty when it is)."""

    entry: CacheEntry | None  # None: probe
    why: str = ""


def fit_to_gateways(entry: CacheEntry, gateways: Sequence[Gateway], metric: Metric) -> Fit:
    """The entry as it may serve the gateways configured now.

    A round measured other gateways than those configured answers another question:
    - a gateway was added (or the ranking metric changed): probe, the new one may be best;
    - gateways were only removed: the figures of those left are as good as when measured,
      so serve the stored ranking without the removed ones, no probe.
    The failover order is rebuilt from the current configuration either way, so edited
    backup lists apply at once.
    """
    hosts = [g.host for g in gateways]
    cached = {r.host for r in entry.results}
    if entry.metric is not metric:
        return Fit(None, f"cached ranking is by {entry.metric.value} RTT, "
                         f"now {metric.value}")
    if added := [h for h in hosts if h not in cached]:
        return Fit(None, f"gateways added since it was cached: {', '.join(added)}")
    kept = tuple(r for r in entry.results if r.host in hosts)
    ranked = rank(kept, metric, gateways)
    if not ranked.usable:
        return Fit(None, "no gateway left in it with a figure")
    order = failover_order(ranked.hosts[0], ranked.hosts, gateways)
    served = dataclasses.replace(entry, results=kept, order=order)
    removed = sorted(cached - set(hosts))
    return Fit(served, f"without gateways removed since: {', '.join(removed)}" if removed else "")


def check_due(gateways: Iterable[str], entry: CacheEntry | None, location: Location,
              now: datetime, lifetime: timedelta | None = None) -> tuple[str, ...]:
    """Gateways whose port-80 check is due: those the valid entry has no result for.

    AnyConnect sends the check before probing a headend with no cache entry; an expired
    entry, or one of another location, is none.
    """
    valid = usable_entry(entry, location, now, lifetime)
    known = {r.host for r in valid.results} if valid is not None else set()
    return tuple(host for host in gateways if host not in known)


def entry_from_decision(decision: Decision, lifetime: timedelta) -> CacheEntry:
    """A new cache entry for a decision made from fresh probes."""
    return CacheEntry(
        location=decision.location,
        order=decision.order,
        results=decision.results,
        metric=decision.metric,
        created_at=decision.decided_at,
        expires_at=decision.decided_at + lifetime,
    )
