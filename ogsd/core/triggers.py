"""When OGS must run (DESIGN.md §1 "When OGS runs"): one pure function, `plan`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ogsd.core.cache import fit_to_gateways, same_location, usable_entry
from ogsd.core.models import CacheEntry, DaemonState, Gateway, Location, Reason
from ogsd.core.settings import Settings

# AnyConnect's exact log text, which support staff grep for.
PROXY_SKIP_TEXT = "OGS will not be performed because automatic proxy detection is configured."
CACHE_TEXT = "Results obtained from OGS cache. No ping tests were performed."
ALREADY_TEXT = "OGS was already performed, previous selection will be used."


class Trigger(StrEnum):
    """What asked for an evaluation."""

    EVALUATE = "evaluate"  # one-shot `ogsd evaluate` or daemon start-up
    CONNECT = "connect"  # a VPN connection is about to be made
    LOCATION = "location"  # the DNS location changed
    RESUME = "resume"  # the machine woke up
    PERIODIC = "periodic"  # continuous mode's jittered timer or an entry's expiry
    FORCED = "forced"  # the user asked (`ogsctl evaluate`, `--no-cache`)


class Action(StrEnum):
    PROBE = "probe"
    CACHE = "cache"
    KEEP = "keep"  # previous selection stands, nothing measured
    SKIP = "skip"  # OGS not performed at all (proxy auto-detection, disabled)


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    text: str
    reason: Reason | None = None
    entry: CacheEntry | None = None  # the valid entry when action is CACHE, as it serves
    note: str = ""  # how the served entry differs from the stored one
    apply_threshold: bool = False  # switch only past the improvement threshold


def plan(
    trigger: Trigger,
    *,
    settings: Settings,
    state: DaemonState,
    location: Location,
    entry: CacheEntry | None,
    now: datetime,
    slept: timedelta | None = None,
    netenv_ok: bool = True,
    gateways: Sequence[Gateway] | None = None,
    auto_proxy: str | None = None,
) -> Plan:
    """Decide what an evaluation caused by `trigger` at `now` must do.

    `gateways`, the configured ones, are what a cache entry must fit (`fit_to_gateways`).
    `auto_proxy` says where the system configures automatic proxy detection or a PAC
    file (NetworkManager, the environment), if it does.
    """
    if settings.proxy_mode in ("auto", "pac") or settings.pac_url or auto_proxy:
        return Plan(Action.SKIP, PROXY_SKIP_TEXT, Reason.SKIPPED_PROXY)
    if not settings.enabled:
        return Plan(Action.SKIP, f"OGS is off: {settings.enabled_why or 'disabled'}",
                    Reason.DISABLED)
    if trigger is Trigger.FORCED:
        return Plan(Action.PROBE, "evaluation forced: probing")

    if trigger is Trigger.RESUME:
        # Seed: after resume OGS runs only if a connection was up at sleep, the suspension
        # lasted at least the suspend time, and the network-environment test passed.
        if not state.connected_at_sleep:
            return Plan(Action.KEEP, "resume: no VPN connection was up at sleep; "
                        "previous selection kept", Reason.KEPT)
        if slept is None or slept < settings.suspend_time:
            return Plan(Action.KEEP, f"resume: suspended {_hours(slept)}, less than "
                        f"{_hours(settings.suspend_time)}; previous selection kept", Reason.KEPT)
        if not netenv_ok:
            return Plan(Action.KEEP, "resume: network environment test failed; "
                        "previous selection kept", Reason.KEPT)
        return Plan(Action.PROBE, f"resume after {_hours(slept)}: probing; switching only "
                    f"past {settings.improvement_percent} % improvement", apply_threshold=True)

    if trigger is Trigger.CONNECT and state.last_disconnect_at is not None:
        since = now - state.last_disconnect_at
        if since < settings.suspend_time and state.last_gateway is not None:
            return Plan(Action.KEEP, ALREADY_TEXT, Reason.KEPT)

    valid = usable_entry(entry, location, now, settings.cache_lifetime)
    note = unfit = ""
    if valid is not None and gateways is not None:
        fit = fit_to_gateways(valid, gateways, settings.metric)
        valid = fit.entry
        note, unfit = (fit.why, "") if valid is not None else ("", fit.why)
    if valid is not None and trigger is not Trigger.PERIODIC:
        return Plan(Action.CACHE, CACHE_TEXT, Reason.CACHE, entry=valid, note=note)
    if valid is not None:
        why = "periodic re-evaluation"
    elif unfit:
        why = f"cache entry does not fit the configured gateways ({unfit})"
    elif entry is not None and same_location(entry.location, location):
        why = "cache entry expired"
    elif state.cache_cleared_at is not None and entry is None:
        why = "cache cleared"
    else:
        why = "no cache entry for this location"
    # Continuous re-evaluation while connected feeds the recommendation, which moves only
    # past the threshold so near-equal gateways never flap.
    return Plan(Action.PROBE, f"{why}: probing",
                apply_threshold=trigger is Trigger.PERIODIC and state.connected is not None)


def _hours(span: timedelta | None) -> str:
    if span is None:
        return "an unknown time"
    hours = span.total_seconds() / 3600
    return f"{hours:.1f} h"
