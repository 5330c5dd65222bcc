from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from ogsd.core.cache import (
    Fit,
    entry_from_decision,
    expiry,
    fit_to_gateways,
    is_valid,
    same_location,
    usable_entry,
)
from ogsd.core.models import CacheEntry, DaemonState, Gateway, Location, Metric, Reason, Source
from ogsd.core.models import Decision as D
from ogsd.core.selection import failover_order, rank
from ogsd.core.settings import Settings
from ogsd.core.triggers import CACHE_TEXT, Action, Trigger, plan
from tests.core.helpers import HOME, HOTEL, T0, entry, result


def test_location_keys_are_domain_pipe_server() -> None:
    assert HOME.keys == ("home.example|198.18.0.53", "home.example|198.18.0.54")


@pytest.mark.parametrize(
    ("other", "same"),
    [
        (HOME, True),
        (Location("home.example", ("198.18.0.54",)), True),  # one pair matches
        (Location("home.example", ("198.18.0.99", "198.18.0.53")), True),
        (Location("other.example", ("198.18.0.53",)), False),  # same server, other domain
        (Location("home.example", ("198.18.0.99",)), False),
        (HOTEL, False),
        (Location("home.example", ()), False),
        # Every search domain makes keys: the network listed ours second.
        (Location("lan", ("198.18.0.53",), ("home.example",)), True),
        (Location("other.example", ("198.18.0.53",), ("lan",)), False),
    ],
)
def test_same_location_needs_one_exact_pair(other: Location, same: bool) -> None:
    assert same_location(HOME, other) is same


@pytest.mark.parametrize(
    ("age", "valid"),
    [
        (timedelta(0), True),
        (timedelta(days=13, hours=23, minutes=59), True),
        (timedelta(days=14), False),  # 14 days from first cached, not from last use
        (timedelta(days=30), False),
        (-timedelta(minutes=1), False),  # clock went backwards: do not trust
    ],
)
def test_entry_valid_for_lifetime_from_creation(age: timedelta, valid: bool) -> None:
    assert is_valid(entry(), T0 + age) is valid


def test_usable_entry_requires_location_and_validity() -> None:
    e = entry()
    assert usable_entry(e, HOME, T0) is e
    assert usable_entry(e, HOTEL, T0) is None
    assert usable_entry(e, HOME, T0 + timedelta(days=15)) is None
    assert usable_entry(None, HOME, T0) is None


def test_entry_from_decision_uses_lifetime() -> None:
    d = D(location=HOME, source=Source.PROBES, reason=Reason.PROBES, reason_text="",
          selected="a", order=("a", "b"), metric=Metric.NETWORK, decided_at=T0)
    e = entry_from_decision(d, timedelta(days=3))
    assert (e.created_at, e.expires_at, e.order) == (T0, T0 + timedelta(days=3), ("a", "b"))


def test_lowered_lifetime_applies_to_existing_entries() -> None:
    e = entry(lifetime=timedelta(days=14))
    assert is_valid(e, T0 + timedelta(days=2))
    assert not is_valid(e, T0 + timedelta(days=2), lifetime=timedelta(days=1))
    # A longer setting does not extend an entry beyond what it was stored with.
    assert not is_valid(e, T0 + timedelta(days=20), lifetime=timedelta(days=30))


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [
        (None, T0 + timedelta(days=14)),
        (timedelta(days=1), T0 + timedelta(days=1)),
        (timedelta(days=30), T0 + timedelta(days=14)),
    ],
)
def test_expiry_is_the_earlier_of_stored_and_configured(
    lifetime: timedelta | None, expected: object
) -> None:
    assert expiry(entry(), lifetime) == expected


# --- a cached round against the gateways configured now (issue 8) -----------------------

GATEWAYS = (Gateway("a", backups=("a-backup",)), Gateway("b"), Gateway("c"))


def measured(*figures: tuple[str, float | None], metric: Metric = Metric.NETWORK,
             created: datetime = T0) -> CacheEntry:
    """An entry as the engine stores it: every gateway's result, the failover order."""
    results = tuple(result(h, f) for h, f in figures)
    hosts = rank(results, metric).hosts
    return CacheEntry(location=HOME, order=failover_order(hosts[0], hosts, GATEWAYS),
                      results=results, metric=metric, created_at=created,
                      expires_at=created + timedelta(days=14))


STORED = measured(("a", 10.0), ("b", 20.0), ("c", 30.0))


@pytest.mark.parametrize(("gateways", "metric", "order", "why"), [
    (GATEWAYS, Metric.NETWORK, ("a", "a-backup", "b", "c"), ""),
    # An edited backup list applies at once: the order is rebuilt, the figures kept.
    ((Gateway("a", backups=("a-new",)), Gateway("b"), Gateway("c")), Metric.NETWORK,
     ("a", "a-new", "b", "c"), ""),
    # Removed gateways: the others' figures still hold; served without them, no probe.
    (GATEWAYS[1:], Metric.NETWORK, ("b", "c"), "without gateways removed since: a"),
    ((GATEWAYS[2],), Metric.NETWORK, ("c",), "without gateways removed since: a, b"),
    # An added gateway may be the best: probe.
    ((*GATEWAYS, Gateway("d")), Metric.NETWORK, None, "gateways added since it was cached: d"),
    ((Gateway("d"), *GATEWAYS[1:]), Metric.NETWORK, None,
     "gateways added since it was cached: d"),
    (GATEWAYS, Metric.EXCHANGE, None, "cached ranking is by network RTT, now exchange"),
])
def test_entry_fits_the_configured_gateways(gateways: tuple[Gateway, ...], metric: Metric,
                                            order: tuple[str, ...] | None, why: str) -> None:
    fit = fit_to_gateways(STORED, gateways, metric)
    assert (fit.entry.order if fit.entry else None, fit.why) == (order, why)
    if fit.entry is not None:
        assert {r.host for r in fit.entry.results} == {g.host for g in gateways}
        assert (fit.entry.created_at, fit.entry.expires_at) == (T0, STORED.expires_at)


def test_entry_without_a_figure_left_is_probed_again() -> None:
    stored = measured(("a", 10.0), ("b", None))
    fit = fit_to_gateways(stored, GATEWAYS[1:2], Metric.NETWORK)
    assert fit == Fit(None, "no gateway left in it with a figure")


@pytest.mark.parametrize(("age", "gateways", "action", "first", "text"), [
    # The case: 13 days after a profile edit removed the best gateway, the
    # cache must not name it.
    (timedelta(days=13), GATEWAYS[1:], Action.CACHE, "b", CACHE_TEXT),
    (timedelta(days=13), GATEWAYS, Action.CACHE, "a", CACHE_TEXT),
    (timedelta(days=1), (*GATEWAYS, Gateway("d")), Action.PROBE, None,
     "cache entry does not fit the configured gateways (gateways added since it was "
     "cached: d): probing"),
    (timedelta(days=15), GATEWAYS[1:], Action.PROBE, None, "cache entry expired: probing"),
])
def test_plan_serves_only_what_fits(age: timedelta, gateways: tuple[Gateway, ...],
                                    action: Action, first: str | None, text: str) -> None:
    p = plan(Trigger.LOCATION, settings=Settings(), state=DaemonState(), location=HOME,
             entry=STORED, now=T0 + age, gateways=gateways)
    assert (p.action, p.entry.order[0] if p.entry else None, p.text) == (action, first, text)
