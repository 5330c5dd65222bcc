from __future__ import annotations

from datetime import timedelta

import pytest

from ogsd.core.cache import entry_from_decision, expiry, is_valid, same_location, usable_entry
from ogsd.core.models import Decision as D
from ogsd.core.models import Location, Metric, Reason, Source
from tests.core.helpers import HOME, HOTEL, T0, entry


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
