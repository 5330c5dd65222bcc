"""Tunables of the OGS rules, with AnyConnect's defaults and ranges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ogsd.core.models import Metric

# AnyConnect profile schema: AutoServerSelectionImprovement, percent.
IMPROVEMENT_PERCENT_DEFAULT = 20
IMPROVEMENT_PERCENT_RANGE = (10, 100)
# AnyConnect profile schema: AutoServerSelectionSuspendTime, hours.
SUSPEND_TIME_HOURS_DEFAULT = 4
SUSPEND_TIME_HOURS_RANGE = (1, 100)
# Below a few ms, a percentage compares noise: 20 % of 3 ms is scheduler jitter on a
# loaded laptop (DESIGN.md §5: single samples off by ~10 ms, medians by 0.2 ms). Require
# an absolute gain too, so two nearby gateways never flip-flop.
IMPROVEMENT_FLOOR_MS_DEFAULT = 5.0
# Seed: "OGS location entries are cached for 14 days" (CSCtk66531 made it configurable).
CACHE_LIFETIME_DEFAULT = timedelta(days=14)
# Seed: 3 HTTP/443 requests per headend.
PROBE_COUNT_DEFAULT = 3
# Seed: if OGS ping results are not back within 7 s, the previous gateway is used.
ROUND_DEADLINE_DEFAULT = timedelta(seconds=7)


@dataclass(frozen=True, slots=True)
class Settings:
    """Rule settings after merging profiles and ogsd.toml (validated by the loader)."""

    enabled: bool = True  # EnableAutomaticServerSelection
    improvement_percent: int = IMPROVEMENT_PERCENT_DEFAULT
    improvement_floor_ms: float = IMPROVEMENT_FLOOR_MS_DEFAULT
    suspend_time: timedelta = timedelta(hours=SUSPEND_TIME_HOURS_DEFAULT)
    cache_lifetime: timedelta = CACHE_LIFETIME_DEFAULT
    probe_count: int = PROBE_COUNT_DEFAULT
    round_deadline: timedelta = ROUND_DEADLINE_DEFAULT
    probe_timeout: timedelta = timedelta(seconds=5)
    metric: Metric = Metric.NETWORK
    # "auto" (WPAD) or "pac": AnyConnect performs no OGS; "static"/"none" are fine.
    proxy_mode: str = "none"
