"""The JSON shapes of ogsd's core types: decisions, results, locations, cache entries, the
daemon's state. Shared by the store (its JSON columns and state row), the socket API and
`--json` output. The `*_from_dict` readers decode into a declared shape (ogsd.wire.decode;
the core type itself where it is the shape) and raise ValueError naming the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

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
from ogsd.wire.decode import decode


def time_text(value: datetime, what: str) -> str:
    """An aware time as fixed-width UTC ISO 8601 text: it sorts as it compares."""
    if value.utcoffset() is None:
        raise ValueError(f"{what}: naive datetime {value.isoformat()}; times must be aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def location_to_dict(location: Location) -> dict[str, object]:
    """A location as JSON-able data (keys included for readers; derived on the way back)."""
    return {"domain": location.domain, "servers": list(location.servers),
            "search": list(location.search), "keys": list(location.keys)}


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
        "proxy_check": None if proxy is None else asdict(proxy),
    }


_PER_PROBE = ("started_at", "network_rtt_ms", "tcp_info_rtt_ms", "exchange_ms", "probe_errors")


@dataclass(frozen=True, slots=True)
class _ResultShape:
    """What result_to_dict writes, as read back: a gateway's probes are aligned lists
    ("family" and "rtt_ms" are derived, so not read)."""

    host: str
    address: str | None
    error: str | None
    proxy_check: ProxyCheck | None
    started_at: tuple[float, ...]
    network_rtt_ms: tuple[float | None, ...]
    tcp_info_rtt_ms: tuple[float | None, ...]
    exchange_ms: tuple[float | None, ...]
    probe_errors: tuple[str | None, ...]
    proxy: str | None = None  # absent in rows stored before proxies were supported

    def __post_init__(self) -> None:
        sizes = {name: len(getattr(self, name)) for name in _PER_PROBE}
        if len(set(sizes.values())) > 1:
            raise ValueError("per-probe lists differ in length "
                             f"({', '.join(f'{k}={n}' for k, n in sizes.items())})")

    @property
    def result(self) -> GatewayResult:
        samples = tuple(
            ProbeSample(started_at=at, network_rtt_ms=network, tcp_info_rtt_ms=tcp_info,
                        exchange_ms=exchange, error=error)
            for at, network, tcp_info, exchange, error in zip(
                self.started_at, self.network_rtt_ms, self.tcp_info_rtt_ms, self.exchange_ms,
                self.probe_errors, strict=True))
        return GatewayResult(host=self.host, address=self.address, samples=samples,
                             error=self.error, proxy_check=self.proxy_check, proxy=self.proxy)


def result_from_dict(data: Mapping[str, object], where: str = "result") -> GatewayResult:
    """The inverse of result_to_dict; ValueError names what is wrong."""
    return decode(_ResultShape, data, where).result


def results_from(value: object, where: str) -> tuple[GatewayResult, ...]:
    """A list of result_to_dict's dicts, read back."""
    return tuple(shape.result for shape in decode(tuple[_ResultShape, ...], value, where))


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


@dataclass(frozen=True, slots=True)
class _DecisionShape:
    """What decision_to_dict writes, as read back (the location's "keys" are derived)."""

    location: Location
    source: Source
    reason_code: Reason
    reason: str
    selected: str | None
    order: tuple[str, ...]
    metric: Metric
    decided_at: datetime
    results: tuple[_ResultShape, ...]


def decision_from_dict(data: Mapping[str, object], where: str = "decision") -> Decision:
    """The inverse of decision_to_dict; ValueError names what is wrong."""
    shape = decode(_DecisionShape, data, where)
    return Decision(location=shape.location, source=shape.source, reason=shape.reason_code,
                    reason_text=shape.reason, selected=shape.selected, order=shape.order,
                    metric=shape.metric, decided_at=shape.decided_at,
                    results=tuple(r.result for r in shape.results))


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


def state_to_dict(state: DaemonState) -> dict[str, object]:
    """The daemon state as JSON-able data (times as ISO 8601 UTC)."""
    return {name: time_text(value, name) if isinstance(value, datetime)
            else list(value) if isinstance(value, tuple) else value
            for name, value in asdict(state).items()}


def state_from_dict(data: Mapping[str, object], where: str = "state") -> DaemonState:
    """The inverse of state_to_dict; absent fields keep their defaults, unknown ones are
    ignored (so a field added later reads fine from an older file)."""
    return decode(DaemonState, data, where)
