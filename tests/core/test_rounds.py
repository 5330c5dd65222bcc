"""The early-decision rule, as tables of (probe states, metric, now) -> settled."""

from __future__ import annotations

import math

import pytest

from ogsd.core.models import Metric, ProbeSample
from ogsd.core.rounds import ProbeState, best, cancel_reason, settle_time, settled

N, X = Metric.NETWORK, Metric.EXCHANGE
PENDING = ProbeState()
FAILED = ProbeState(started=0.0, failed=True)


def running(started: float) -> ProbeState:
    return ProbeState(started=started)


def connected(started: float, ms: float) -> ProbeState:
    return ProbeState(started=started, connected_ms=ms)


def held(started: float, ms: float) -> ProbeState:
    return ProbeState(started=started, connected_ms=ms, held=True)


def done(network: float, exchange: float) -> ProbeState:
    sample = ProbeSample(started_at=0.0, network_rtt_ms=network, exchange_ms=exchange)
    return ProbeState(started=0.0, connected_ms=network, done=sample)


def errored(network: float | None = None) -> ProbeState:
    sample = ProbeSample(started_at=0.0, network_rtt_ms=network, error="connection reset")
    return ProbeState(started=0.0, connected_ms=network, done=sample, failed=True)


CASES = [
    # (why, states, metric, now, settled)
    ("nothing started", {"a": [PENDING], "b": [PENDING]}, X, 100.0, False),
    ("all failed: nothing left to wait for", {"a": [FAILED, errored(3.0)]}, X, 0.0, True),
    ("all done", {"a": [done(1, 10)], "b": [done(2, 20)]}, X, 0.0, True),
    ("running, no figure yet", {"a": [running(0.0)], "b": [done(2, 20), FAILED]}, X, 0.0, False),
    ("other still under best", {"a": [done(1, 10)], "b": [running(0.0)]}, X, 0.009, False),
    ("tie with best does not beat", {"a": [done(1, 10)], "b": [running(0.0)]}, X, 0.010, True),
    ("other past best", {"a": [done(1, 10)], "b": [running(0.0)]}, X, 5.0, True),
    ("pending other can still win", {"a": [done(1, 10)], "b": [PENDING]}, X, 100.0, False),
    ("late start keeps it alive", {"a": [done(1, 10)], "b": [running(1.0)]}, X, 1.009, False),
    ("net: connected under best", {"a": [done(10, 50)], "b": [connected(0.0, 5)]}, N, 99.0, False),
    ("net: connected at best", {"a": [done(10, 50)], "b": [connected(0.0, 10)]}, N, 0.0, True),
    ("net: not connected yet", {"a": [done(10, 50)], "b": [running(0.0)]}, N, 0.009, False),
    ("net: SYN older than best", {"a": [done(10, 50)], "b": [running(0.0)]}, N, 0.010, True),
    ("exchange >= its connect", {"a": [done(1, 10)], "b": [connected(5.0, 12)]}, X, 5.0, True),
    ("exch: fast connect, timing", {"a": [done(1, 10)], "b": [connected(0.0, 3)]}, X, 0.005, False),
    # An exchange is 3 round trips at least; two are counted (jitter): 2 x 5 >= 10.
    ("exch: two connects >= best", {"a": [done(1, 10)], "b": [connected(0.0, 5)]}, X, 0.0, True),
    ("exch: two connects < best", {"a": [done(1, 10)], "b": [connected(0.0, 4.9)]}, X, 0.0, False),
    # Waiting for its TLS turn, a probe's exchange clock is stopped: time does not drop it.
    ("exch: held", {"a": [done(1, 10)], "b": [held(0.0, 3)]}, X, 100.0, False),
    ("exch: held, too far", {"a": [done(1, 10)], "b": [held(0.0, 6)]}, X, 100.0, True),
    ("net: held under best", {"a": [done(10, 50)], "b": [held(0.0, 5)]}, N, 100.0, False),
    ("leader's own probe may lower it", {"a": [done(1, 10), running(0.0)]}, X, 0.009, False),
    ("leader's own probe can't", {"a": [done(1, 10), running(0.0)]}, X, 0.010, True),
    ("worse + running", {"a": [done(1, 10)], "b": [done(2, 12), running(0.0)]}, X, 0.009, False),
    ("failed probes cannot win", {"a": [done(1, 10)], "b": [FAILED, errored(1.0)]}, X, 0.0, True),
    ("errored sample has no figure", {"a": [errored(1.0), running(0.0)]}, N, 100.0, False),
    ("min is best", {"a": [done(9, 90)], "b": [done(1, 10)], "c": [running(0.0)]}, X, 0.01, True),
]


@pytest.mark.parametrize(
    ("why", "states", "metric", "now", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_settled(
    why: str, states: dict[str, list[ProbeState]], metric: Metric, now: float, expected: bool
) -> None:
    assert settled(states, metric, now) is expected, why


def test_settle_time_is_when_the_last_contender_drops_out() -> None:
    states = {"a": [done(1, 10)], "b": [running(0.0), running(0.002)], "c": [connected(0.001, 4)]}
    # exchange: every unfinished probe could still come in under 10 ms until start + 10 ms
    assert settle_time(states, X) == pytest.approx(0.012)
    # network: c's 4 ms is known and loses to 1 ms; b's SYNs drop out 1 ms after each left
    assert settle_time(states, N) == pytest.approx(0.003)
    # a connected probe under the best can only be ruled out by an event
    assert settle_time({"a": [done(10, 50)], "b": [connected(0.0, 5)]}, N) is None


def test_settle_time_special_values() -> None:
    assert settle_time({"a": [done(1, 10)]}, X) == -math.inf
    assert settle_time({"a": [running(0.0)]}, X) is None  # no figure: only an event settles
    assert settle_time({}, X) == -math.inf


def test_best_and_cancel_reason() -> None:
    states = {"a": [done(3, 30)], "b": [done(2, 40), done(2, 30)], "c": [running(0.0)]}
    assert best(states, X) == ("a", 30)  # first found wins a tie
    assert best(states, N) == ("b", 2)
    assert cancel_reason(states, X) == "cancelled: could not beat a (30.0 ms)"
    assert best({"a": [FAILED]}, X) is None
    assert cancel_reason({"a": [FAILED]}, X) == "cancelled"
