"""When a probe round may stop early: the pure rule, fed with probe states and `now`.

Why early: OGS waits for every probe of every gateway (or the 7 s deadline). Once the
best complete figure is known, a gateway can only still win if one of its unfinished
probes could come in *under* it. A running probe's figure is at least its elapsed time
(for the exchange metric; for the network metric it is known exactly once TCP is up),
so as time passes, slow or blackholed gateways drop out on their own: a round where a
healthy gateway answers in 10 ms and another never answers SYN is settled ~10 ms after
the blackholed probes started, not at the deadline. Ties do not beat (the first-found
best stays). A round is also settled once every probe has finished.

The leader's own unfinished probes are held to the same test: they cannot change the
winner, but while they could still lower its figure they are let finish, so the winner
normally reports AnyConnect's min-of-3. That costs at most one more best figure of time
(its probes started together), and nothing when they are as fast as the first.

Why the probes of one gateway run concurrently, each on its own connection: a lost SYN
(1 s retransmit) on one probe then does not make a good gateway lose, because its other
probes complete; and the winner is known after about one exchange instead of three
sequential ones. The cost is three simultaneous handshakes per gateway, which is what
AnyConnect's per-probe figure (min of 3) tolerates anyway.

What early settlement gives up: the losers' figures are lower bounds only ("could not
beat"), and the winner keeps the minimum of the probes it finished. A caller that must
compare exact figures (the resume improvement threshold) can run the round to the end.

GlobalProtect tiers (ogsd.core.selection): the leader is the fastest of the best tier
with a figure; a probe of a better tier can beat it with any figure, so it is waited for
(until it fails, its timeout or the deadline: the price of "a lower tier only when every
gateway above is down"); a probe of a worse tier can never beat it.

Times here are monotonic seconds (`started`, `now`); figures are milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ogsd.core.models import Metric, ProbeSample
from ogsd.core.report import CANCELLED

# An exchange is the TCP handshake, TLS 1.3's one round trip (1.2's two) and the request's,
# each waiting for the previous answer: at least 3 round trips. Two are counted, so a
# round trip or two shorter than the handshake's (jitter) never drops a probe unfairly.
EXCHANGE_MIN_RTTS = 2


@dataclass(frozen=True, slots=True)
class ProbeState:
    """One probe as the round sees it: pending, running, connected, done or failed."""

    started: float | None = None  # monotonic s of its SYN; None while still pending
    connected_ms: float | None = None  # TCP handshake time, once connected
    done: ProbeSample | None = None  # the finished probe (complete or with an error)
    failed: bool = False  # can no longer produce a figure (error, or gateway unresolvable)
    # Connected and waiting for its TLS turn (ogsd.probing.pacing): the wait is left out of its
    # exchange figure, so its clock is stopped; `started` moves on by the wait after it.
    held: bool = False

    @property
    def finished(self) -> bool:
        """Whether this probe will not change any more."""
        return self.failed or self.done is not None

    def figure(self, metric: Metric) -> float | None:
        """The exact figure of a completed probe, else None."""
        if self.failed or self.done is None:
            return None
        return self.done.figure(metric)

    def beatable_until(self, best: float, metric: Metric) -> float | None:
        """Monotonic time until which this probe could still come in under `best`.

        `math.inf` means "until some event says otherwise" (pending, or a known figure
        below `best`); None means it cannot beat `best` at all.
        """
        if self.finished:
            figure = self.figure(metric)
            return None if figure is None or figure >= best else math.inf
        if self.started is None:
            return math.inf  # not started: its figure could be anything
        if metric is Metric.NETWORK and self.connected_ms is not None:
            return math.inf if self.connected_ms < best else None
        if self.connected_ms is not None and self.connected_ms * EXCHANGE_MIN_RTTS >= best:
            return None  # the exchange takes that many round trips at least
        if self.held:
            return math.inf  # its exchange clock is stopped until its turn
        return self.started + best / 1000.0


Tiers = Mapping[str, float]  # gateway -> GlobalProtect priority tier (lower first)


def _tier(tiers: Tiers | None, gateway: str) -> float:
    return math.inf if tiers is None else tiers.get(gateway, math.inf)


def best(states: Mapping[str, Sequence[ProbeState]], metric: Metric,
         tiers: Tiers | None = None) -> tuple[str, float] | None:
    """The gateway with the lowest complete figure so far, and that figure (first wins ties);
    with `tiers`, the lowest figure of the best tier that has one."""
    found: tuple[str, float] | None = None
    for gateway, probes in states.items():
        for probe in probes:
            figure = probe.figure(metric)
            if figure is not None and (found is None or leads(gateway, figure, found, tiers)):
                found = (gateway, figure)
    return found


def leads(gateway: str, figure: float, leader: tuple[str, float], tiers: Tiers | None) -> bool:
    """Whether `figure` of `gateway` takes the lead from `leader`: a better tier, or the
    same tier and a lower figure."""
    mine, theirs = _tier(tiers, gateway), _tier(tiers, leader[0])
    return mine < theirs or (mine == theirs and figure < leader[1])


def beatable_until(probe: ProbeState, gateway: str, leader: tuple[str, float],
                   metric: Metric, tiers: Tiers | None = None) -> float | None:
    """`probe.beatable_until` in a round with tiers: a probe of a better tier than the
    leader's beats it with any figure (until it fails); one of a worse tier never does."""
    mine, theirs = _tier(tiers, gateway), _tier(tiers, leader[0])
    if mine > theirs:
        return None
    if mine < theirs:
        return None if probe.finished else math.inf
    return probe.beatable_until(leader[1], metric)


def settle_time(states: Mapping[str, Sequence[ProbeState]], metric: Metric,
                leader: tuple[str, float] | None = None,
                tiers: Tiers | None = None) -> float | None:
    """Earliest monotonic time at which the round is settled if no probe changes state.

    `-math.inf` when it already is regardless of time; None when only an event (a probe
    starting, connecting or finishing) can settle it. `leader` is `best(states, metric)`
    when the caller keeps it up to date (a round of thousands of probes does).
    """
    if all(probe.finished for probes in states.values() for probe in probes):
        return -math.inf
    leader = leader or best(states, metric, tiers)
    if leader is None:
        return None
    at = -math.inf
    for gateway, probes in states.items():
        for probe in probes:
            until = beatable_until(probe, gateway, leader, metric, tiers)
            if until is not None:
                at = max(at, until)
    return None if at == math.inf else at


def settled(states: Mapping[str, Sequence[ProbeState]], metric: Metric, now: float,
            tiers: Tiers | None = None) -> bool:
    """Whether no unfinished probe can change the round's winner any more."""
    at = settle_time(states, metric, tiers=tiers)
    return at is not None and now >= at


def cancel_reason(states: Mapping[str, Sequence[ProbeState]], metric: Metric,
                  leader: tuple[str, float] | None = None, tiers: Tiers | None = None) -> str:
    """The error recorded for probes stopped because the round settled early."""
    leader = leader or best(states, metric, tiers)
    if leader is None:
        return CANCELLED
    return f"{CANCELLED}: could not beat {leader[0]} ({leader[1]:.1f} ms)"
