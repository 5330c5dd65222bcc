"""Tunables of the OGS rules, with AnyConnect's defaults and ranges."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # Why `enabled` is what it is (`resolve_enabled`): explains, never decides.
    enabled_why: str = field(default="", compare=False)
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
    # "static": probes CONNECT through this (else https_proxy from the environment).
    proxy_url: str | None = None
    # A PAC file is automatic proxy configuration: set, OGS is not performed.
    pac_url: str | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """A boolean as one source set it; `where` names the file and line for people."""

    value: bool
    where: str


@dataclass(frozen=True, slots=True)
class Resolved:
    value: bool
    why: str
    ignored: str | None = None  # a setting that lost, said as a warning


def _onoff(value: bool) -> str:
    return "true" if value else "false"


def resolve_enabled(profile: Choice | None, user_controllable: bool,
                    user: Choice | None) -> Resolved:
    """Whether OGS runs: the profile's EnableAutomaticServerSelection against ogsd.toml.

    As in AnyConnect, the profile is the administrator's: its value is the default, and
    only `UserControllable="true"` lets the user's preference (ogsd.toml's [ogs] enabled)
    override it. Without that attribute the profile's value stands whatever ogsd.toml
    says. A profile that does not set the element expresses no policy: ogsd.toml decides,
    and running ogsd is asking for OGS, so it is on by default.
    """
    if profile is None:
        if user is None:
            return Resolved(True, "on by default (no profile or ogsd.toml sets it)")
        return Resolved(user.value, f"[ogs] enabled = {_onoff(user.value)} ({user.where})")
    element = f"EnableAutomaticServerSelection is {_onoff(profile.value)} ({profile.where})"
    if user_controllable and user is not None:
        return Resolved(user.value, f"[ogs] enabled = {_onoff(user.value)} ({user.where}); "
                                    f"the profile lets users choose (UserControllable)")
    if user_controllable:
        return Resolved(profile.value, element)
    why = f"{element} and users may not change it (UserControllable is not true)"
    if user is None or user.value == profile.value:
        return Resolved(profile.value, why)
    return Resolved(profile.value, why,
                    ignored=f"{user.where}: [ogs] enabled = {_onoff(user.value)} is ignored: "
                            f"{element} without UserControllable=\"true\"")
