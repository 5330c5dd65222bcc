"""The decoder (ogsd.wire.decode): good input round-trips, each kind of bad input is an
error naming its path."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any

import pytest

from ogsd.core.models import DaemonState, Location
from ogsd.wire.decode import DecodeError, decode
from ogsd.wire.shapes import state_to_dict


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


def _short(value: str) -> str | None:
    return "must be at most 3 characters" if len(value) > 3 else None


@dataclass(frozen=True, slots=True)
class Inner:
    n: int
    x: float | None = None


@dataclass(frozen=True, slots=True)
class Outer:
    name: str
    flag: bool
    colour: Colour
    at: datetime
    inners: tuple[Inner, ...]
    tags: list[str] = field(default_factory=list)
    maybe: Inner | None = None
    code: Annotated[str | None, _short] = None

    def __post_init__(self) -> None:
        if self.name == "bad":
            raise ValueError("name may not be 'bad'")


T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "name": "n", "flag": True, "colour": "blue", "at": "2024-05-01T19:00:00.123456+09:00",
    "inners": [{"n": 1}, {"n": 2, "x": 2}, {"n": 3, "x": None, "extra": "ignored"}],
    "tags": ["a"], "maybe": {"n": 4, "x": 0.5}, "code": "abc", "unknown": [1, 2],
}


def test_good_object_decodes() -> None:
    got = decode(Outer, GOOD, "o")
    assert got == Outer(name="n", flag=True, colour=Colour.BLUE, at=T0,
                        inners=(Inner(1), Inner(2, 2.0), Inner(3)), tags=["a"],
                        maybe=Inner(4, 0.5), code="abc")
    assert got.at.tzinfo is UTC
    assert type(got.inners[1].x) is float  # an integer is a number
    minimal = {key: GOOD[key] for key in ("name", "flag", "colour", "at", "inners")}
    assert decode(Outer, minimal, "o") == Outer("n", True, Colour.BLUE, T0,
                                                (Inner(1), Inner(2, 2.0), Inner(3)))


@pytest.mark.parametrize(("tp", "value", "expected"), [
    (int, 3, 3),
    (float, 3, 3.0),
    (float, 2.5, 2.5),
    (bool, False, False),
    (str, "", ""),
    (str | None, None, None),
    (tuple[int, ...], [1, 2], (1, 2)),
    (list[str], ("a",), ["a"]),
    (Colour, "red", Colour.RED),
    (datetime, "2024-05-01T10:00:00.123456Z", T0),
    (datetime, "2024-05-01T12:00:00.123456+02:00", T0),
])
def test_good_values_decode(tp: Any, value: object, expected: object) -> None:
    got = decode(tp, value, "v")
    assert (got, type(got)) == (expected, type(expected))


def test_core_types_round_trip() -> None:
    state = DaemonState(last_gateway="vpn-a.example", connected_servers=("198.18.0.53",),
                        sleep_started_at=T0.astimezone(timezone(timedelta(hours=9))),
                        connected_at_sleep=True)
    assert decode(DaemonState, state_to_dict(state), "state") == state
    location = Location("corp.example", ("198.18.0.53",), ("lab.example",))
    assert decode(Location, {"domain": "corp.example", "servers": ["198.18.0.53"],
                             "search": ["lab.example"], "keys": ["derived"]}, "l") == location


def test_nan_and_infinity_are_numbers_as_before() -> None:
    assert math.isnan(decode(float, math.nan, "v"))
    assert decode(float, math.inf, "v") == math.inf


def bad(**changes: object) -> dict[str, Any]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(("tp", "value", "message"), [
    (int, True, "v: expected an integer, got True"),
    (int, 1.5, "v: expected an integer, got 1.5"),
    (float, "1", "v: expected a number, got '1'"),
    (float, False, "v: expected a number, got False"),
    (float | None, "x", "v: expected a number or null, got 'x'"),
    (bool, 1, "v: expected true or false, got 1"),
    (str, None, "v: expected text, got null"),
    (str | None, 5, "v: expected text or null, got 5"),
    (tuple[str, ...], "ab", "v: expected a list, got 'ab'"),
    (tuple[str, ...], ["a", 2], "v[1]: expected text, got 2"),
    (list[tuple[int, ...]], [[1], [2, "3"]], "v[1][1]: expected an integer, got '3'"),
    (Colour, "green", "v: unknown value 'green' (one of: red, blue)"),
    (Colour, 1, "v: unknown value 1 (one of: red, blue)"),
    (datetime, "2024-05-01T10:00:00", "v: time without a UTC offset: '2024-05-01T10:00:00'"),
    (datetime, "soon", "v: not an ISO 8601 time: 'soon'"),
    (datetime, 5, "v: expected an ISO 8601 time, got 5"),
    (Outer, [1], "v: expected an object, got [1]"),
    (Outer, {k: v for k, v in GOOD.items() if k != "flag"}, "v: missing 'flag'"),
    (Outer, bad(name=None), "v.name: expected text, got null"),
    (Outer, bad(inners=[{"n": 1}, {"x": 1}]), "v.inners[1]: missing 'n'"),
    (Outer, bad(inners=[{"n": "1"}]), "v.inners[0].n: expected an integer, got '1'"),
    (Outer, bad(inners=[{"n": 1, "x": "x"}]),
     "v.inners[0].x: expected a number or null, got 'x'"),
    (Outer, bad(maybe=3), "v.maybe: expected an object or null, got 3"),
    (Outer, bad(tags=[None]), "v.tags[0]: expected text, got null"),
    (Outer, bad(code="abcd"), "v.code: must be at most 3 characters"),
    (Outer, bad(code=4), "v.code: expected text or null, got 4"),
    (Outer, bad(name="bad"), "v: name may not be 'bad'"),  # __post_init__ refused it
])
def test_bad_input_names_the_path(tp: Any, value: object, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(tp, value, "v")
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_without_nulls_an_optional_field_may_be_absent_but_not_null() -> None:
    assert decode(Inner, {"n": 1}, "p", nulls=False) == Inner(1)
    with pytest.raises(DecodeError, match=r"^p\.x: expected a number, got null$") as caught:
        decode(Inner, {"n": 1, "x": None}, "p", nulls=False)
    # What the socket API words its own errors from.
    assert (caught.value.path, caught.value.expected, caught.value.got) == (("p", "x"), float,
                                                                            None)
    assert (caught.value.problem) == "expected a number, got null"


@pytest.mark.parametrize("tp", [bytes, int | str, tuple[int, str], dict[str, int]])
def test_a_type_without_a_rule_is_a_programming_error(tp: Any) -> None:
    with pytest.raises(TypeError, match="no rule for type"):
        decode(tp, [1], "v")
