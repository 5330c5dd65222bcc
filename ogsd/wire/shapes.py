"""The JSON shapes of ogsd's core types: decisions, results, locations, cache entries, the
daemon's state. Shared by the store (its JSON columns and state row), the socket API and
`--json` output; the `*_from_dict` readers raise ValueError naming the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, get_type_hints

from ogsd.core.models import (
    CacheEntry,
    DaemonState,
    Decision,
    GatewayResult,
    Location,
    Metric,
    ProbeSample,
    ProxyCheck,
    Reason,
    Source,
)

_E = TypeVar("_E", bound=StrEnum)


def time_text(value: datetime, what: str) -> str:
    """An aware time as fixed-width UTC ISO 8601 text: it sorts as it compares."""
    if value.utcoffset() is None:
        raise ValueError(f"{what}: naive datetime {value.isoformat()}; times must be aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected an ISO 8601 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: not an ISO 8601 time: {value!r}") from None
    if parsed.utcoffset() is None:
        raise ValueError(f"{what}: time without a UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def _field(data: Mapping[str, object], key: str, where: str) -> object:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    if key not in data:
        raise ValueError(f"{where}: missing {key!r}")
    return data[key]


def _str(value: object, what: str, *, optional: bool = False) -> Any:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise ValueError(f"{what}: expected {'text or null' if optional else 'text'}, got {value!r}")


def _num(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number or null, got {value!r}")
    return float(value)


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what}: expected a list, got {value!r}")
    return list(value)


def strs(value: object, what: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{what}[{i}]") for i, v in enumerate(_list(value, what)))


def enum_value(cls: type[_E], value: object, what: str) -> _E:
    try:
        return cls(_str(value, what))
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"{what}: unknown value {value!r} (one of: {allowed})") from None


def location_to_dict(location: Location) -> dict[str, object]:
    """A location as JSON-able data (keys included for readers; derived on the way back)."""
    return {"domain": location.domain, "servers": list(location.servers),
            "search": list(location.search), "keys": list(location.keys)}


def location_from_dict(data: Mapping[str, object], where: str = "location") -> Location:
    """The inverse of location_to_dict; ValueError names what is wrong."""
    return Location(domain=_str(_field(data, "domain", where), f"{where}.domain"),
                    servers=strs(_field(data, "servers", where), f"{where}.servers"),
                    search=strs(data.get("search", []), f"{where}.search"))


def result_to_dict(result: GatewayResult, metric: Metric) -> dict[str, object]:
    """A gateway's figures; `rtt_ms` is its figure for `metric`, per-probe lists align."""
    samples = result.samples
    proxy = result.proxy_check
    return {
        "host": result.host,
        "address": result.address,
        "family": result.family,
        "proxy": result.proxy,
        "rtt_ms": result.rtt(metric),
        "network_rtt_ms": [s.network_rtt_ms for s in samples],
        "exchange_ms": [s.exchange_ms for s in samples],
        "error": result.error,
        "tcp_info_rtt_ms": [s.tcp_info_rtt_ms for s in samples],
        "started_at": [s.started_at for s in samples],
        "probe_errors": [s.error for s in samples],
        "proxy_check": None if proxy is None else {
            "status": proxy.status,
            "location": proxy.location,
            "proxy_detected": proxy.proxy_detected,
            "error": proxy.error,
            "elapsed_ms": proxy.elapsed_ms,
        },
    }


def _proxy_from_dict(data: object, where: str) -> ProxyCheck | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object or null, got {data!r}")
    status = _field(data, "status", where)
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise ValueError(f"{where}.status: expected an integer or null, got {status!r}")
    detected = _field(data, "proxy_detected", where)
    if not isinstance(detected, bool):
        raise ValueError(f"{where}.proxy_detected: expected true or false, got {detected!r}")
    return ProxyCheck(
        status=status,
        location=_str(_field(data, "location", where), f"{where}.location", optional=True),
        proxy_detected=detected,
        error=_str(_field(data, "error", where), f"{where}.error", optional=True),
        elapsed_ms=_num(_field(data, "elapsed_ms", where), f"{where}.elapsed_ms"),
    )


def result_from_dict(data: Mapping[str, object], where: str = "result") -> GatewayResult:
    """The inverse of result_to_dict (`rtt_ms` is derived, so ignored)."""
    columns = {name: _list(_field(data, name, where), f"{where}.{name}") for name in
               ("started_at", "network_rtt_ms", "tcp_info_rtt_ms", "exchange_ms", "probe_errors")}
    sizes = {len(values) for values in columns.values()}
    if len(sizes) > 1:
        raise ValueError(f"{where}: per-probe lists differ in length "
                         f"({', '.join(f'{k}={len(v)}' for k, v in columns.items())})")
    samples = []
    for i, started in enumerate(columns["started_at"]):
        at = f"{where}.started_at[{i}]"
        started_at = _num(started, at)
        if started_at is None:
            raise ValueError(f"{at}: expected a number, got null")
        samples.append(ProbeSample(
            started_at=started_at,
            network_rtt_ms=_num(columns["network_rtt_ms"][i], f"{where}.network_rtt_ms[{i}]"),
            tcp_info_rtt_ms=_num(columns["tcp_info_rtt_ms"][i], f"{where}.tcp_info_rtt_ms[{i}]"),
            exchange_ms=_num(columns["exchange_ms"][i], f"{where}.exchange_ms[{i}]"),
            error=_str(columns["probe_errors"][i], f"{where}.probe_errors[{i}]", optional=True),
        ))
    return GatewayResult(
        host=_str(_field(data, "host", where), f"{where}.host"),
        address=_str(_field(data, "address", where), f"{where}.address", optional=True),
        samples=tuple(samples),
        error=_str(_field(data, "error", where), f"{where}.error", optional=True),
        proxy_check=_proxy_from_dict(_field(data, "proxy_check", where), f"{where}.proxy_check"),
        # Absent in rows stored before proxies were supported.
        proxy=_str(data.get("proxy"), f"{where}.proxy", optional=True),
    )


def results_from(value: object, where: str) -> tuple[GatewayResult, ...]:
    items = _list(value, where)
    return tuple(result_from_dict(item, f"{where}[{i}]")  # type: ignore[arg-type]
                 for i, item in enumerate(items))


def decision_to_dict(decision: Decision) -> dict[str, object]:
    """A decision as JSON-able data: `reason` is the text, `reason_code` the Reason."""
    return {
        "location": location_to_dict(decision.location),
        "source": decision.source.value,
        "reason": decision.reason_text,
        "reason_code": decision.reason.value,
        "selected": decision.selected,
        "order": list(decision.order),
        "metric": decision.metric.value,
        "results": [result_to_dict(r, decision.metric) for r in decision.results],
        "decided_at": time_text(decision.decided_at, "decided_at"),
    }


def decision_from_dict(data: Mapping[str, object], where: str = "decision") -> Decision:
    """The inverse of decision_to_dict; ValueError names what is wrong."""
    return Decision(
        location=location_from_dict(_field(data, "location", where),  # type: ignore[arg-type]
                                    f"{where}.location"),
        source=enum_value(Source, _field(data, "source", where), f"{where}.source"),
        reason=enum_value(Reason, _field(data, "reason_code", where), f"{where}.reason_code"),
        reason_text=_str(_field(data, "reason", where), f"{where}.reason"),
        selected=_str(_field(data, "selected", where), f"{where}.selected", optional=True),
        order=strs(_field(data, "order", where), f"{where}.order"),
        metric=enum_value(Metric, _field(data, "metric", where), f"{where}.metric"),
        decided_at=parse_time(_field(data, "decided_at", where), f"{where}.decided_at"),
        results=results_from(_field(data, "results", where), f"{where}.results"),
    )


def entry_to_dict(entry: CacheEntry) -> dict[str, object]:
    """A cache entry as JSON-able data (for `ogsctl cache` and the socket API)."""
    return {
        "id": entry.entry_id,
        "location": location_to_dict(entry.location),
        "metric": entry.metric.value,
        "order": list(entry.order),
        "results": [result_to_dict(r, entry.metric) for r in entry.results],
        "created_at": time_text(entry.created_at, "created_at"),
        "expires_at": time_text(entry.expires_at, "expires_at"),
    }


_STATE_TYPES = get_type_hints(DaemonState)


def state_to_dict(state: DaemonState) -> dict[str, object]:
    """The daemon state as JSON-able data (times as ISO 8601 UTC)."""
    out: dict[str, object] = {}
    for f in fields(DaemonState):
        value = getattr(state, f.name)
        if isinstance(value, datetime):
            value = time_text(value, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def state_from_dict(data: Mapping[str, object], where: str = "state") -> DaemonState:
    """The inverse of state_to_dict; absent fields keep their defaults, unknown ones are
    ignored (so a field added later reads fine from an older file)."""
    values: dict[str, Any] = {}
    for f in fields(DaemonState):
        if f.name not in data:
            continue
        value, kind, what = data[f.name], _STATE_TYPES[f.name], f"{where}.{f.name}"
        if kind == datetime | None:
            values[f.name] = None if value is None else parse_time(value, what)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{what}: expected true or false, got {value!r}")
            values[f.name] = value
        elif kind == str | None:
            values[f.name] = _str(value, what, optional=True)
        elif kind == tuple[str, ...]:
            values[f.name] = strs(value, what)
        else:  # a new DaemonState field type: teach this function about it
            raise ValueError(f"{what}: no JSON rule for type {kind}")
    return DaemonState(**values)
