"""Builders for core tests: results and entries from plain numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ogsd.core.models import (
    CacheEntry,
    GatewayResult,
    Location,
    Metric,
    ProbeSample,
)

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
HOME = Location("home.example", ("198.18.0.53", "198.18.0.54"))
HOTEL = Location("hotel.example", ("198.18.9.53",))


def result(host: str, *network: float | None, exchange_extra: float = 5.0,
           error: str | None = None) -> GatewayResult:
    """A result whose probes have these network figures (None = failed probe)."""
    samples = tuple(
        ProbeSample(started_at=0.0, network_rtt_ms=n, exchange_ms=n + exchange_extra)
        if n is not None
        else ProbeSample(started_at=0.0, error="timed out")
        for n in network
    )
    return GatewayResult(host=host, address="198.19.0.1", samples=samples, error=error)


def entry(location: Location = HOME, created: datetime = T0,
          lifetime: timedelta = timedelta(days=14)) -> CacheEntry:
    return CacheEntry(location=location, order=("a", "b"), results=(), metric=Metric.NETWORK,
                      created_at=created, expires_at=created + lifetime)
