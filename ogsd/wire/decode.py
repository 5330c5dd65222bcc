"""One small decoder from JSON data to declared types (dataclasses), driven by type hints:
`decode` builds the type or raises DecodeError naming the field at fault, e.g. "decision
3.results[0].rtt_ms: expected a number or null, got 'x'". Standard library only (not
msgspec): ogsctl imports the wire, and the .deb gains no compiled dependency.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
Path = tuple[str | int, ...]

# What a value of the wrong type should have been, as errors say it.
_KINDS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number",
                           str: "text", datetime: "an ISO 8601 time", list: "a list",
                           dict: "an object"}


class DecodeError(ValueError):
    """Bad input at `path` (the root's name, then keys and indexes). A value of the wrong
    type sets `expected` (the type it should have had) and `got`; other problems leave
    `expected` None."""

    def __init__(self, path: Path, problem: str, expected: type | None = None,
                 got: object = None) -> None:
        self.path, self.problem, self.expected, self.got = path, problem, expected, got
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
        super().__init__(f"{path[0]}{where}: {problem}")


def decode(tp: type[T], value: object, where: str, *, nulls: bool = True) -> T:
    """`value` as a `tp`, or DecodeError; `where` names the value in errors.

    Types: str, int and float (a bool is neither), bool, StrEnum (by value), aware datetime
    (ISO 8601 text), `X | None`, `tuple[X, ...]`, `list[X]`, `Annotated[X, check, ...]`
    (a check returns what is wrong, or None) and dataclasses, from objects: a field with a
    default may be absent, unknown keys are ignored (stored data carries derived keys), and
    a ValueError from `__post_init__` is the object's fault. With nulls=False an optional
    field may be left out but not given null (the socket API's params).
    """
    return _decode(tp, value, (where,), nulls)  # type: ignore[no-any-return]


@cache
def _hints(tp: type) -> dict[str, Any]:
    return get_type_hints(tp, include_extras=True)


def _wrong(tp: type, value: object, path: Path, or_null: bool) -> DecodeError:
    expected = f"{_KINDS[tp]}{' or null' if or_null else ''}"
    shown = "null" if value is None else repr(value)  # the input was JSON
    return DecodeError(path, f"expected {expected}, got {shown}", tp, value)


def _decode(tp: Any, value: object, path: Path, nulls: bool, or_null: bool = False) -> Any:
    if tp in (bool, int, float, str):
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise _wrong(tp, value, path, or_null)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        decoded = _decode(args[0], value, path, nulls)
        for check in args[1:]:
            if decoded is not None and (problem := check(decoded)):
                raise DecodeError(path, problem)
        return decoded
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        if value is None and nulls:
            return None
        inner = args[0] if args[1] is type(None) else args[1]
        return _decode(inner, value, path, nulls, or_null=nulls)
    if origin is list or (origin is tuple and args[1:] == (...,)):
        if not isinstance(value, list | tuple):
            raise _wrong(list, value, path, or_null)
        return origin(_decode(args[0], item, (*path, i), nulls) for i, item in enumerate(value))
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _wrong(dict, value, path, or_null)
        given: dict[str, Any] = {}
        for f in fields(tp):
            if f.name in value:
                given[f.name] = _decode(_hints(tp)[f.name], value[f.name], (*path, f.name), nulls)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise DecodeError(path, f"missing {f.name!r}")
        try:
            return tp(**given)
        except ValueError as exc:
            raise DecodeError(path, str(exc)) from None
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(member.value for member in tp)
            raise DecodeError(path, f"unknown value {value!r} (one of: {allowed})") from None
    if tp is datetime:
        if not isinstance(value, str):
            raise _wrong(datetime, value, path, or_null)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError(path, f"not an ISO 8601 time: {value!r}") from None
        if parsed.utcoffset() is None:
            raise DecodeError(path, f"time without a UTC offset: {value!r}")
        return parsed.astimezone(UTC)
    raise TypeError(f"decode: no rule for type {tp!r}")
