"""Location cache rules: keys, matching and validity (AnyConnect's OGS cache)."""

from __future__ import annotations

from datetime import datetime, timedelta

from ogsd.core.models import CacheEntry, Decision, Location


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
