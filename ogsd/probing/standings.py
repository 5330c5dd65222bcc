"""Where a round's probes stand, and the watcher that ends the round when they are settled.

Every probe reports its state (ogsd.core.rounds.ProbeState) here as it goes; the leader
is kept as probes finish. The watcher applies ogsd.core.rounds' rules to the live probes:
it ends the round once no unfinished probe can change the winner (after asking the
kernel about connects the loop has not yet seen) or every probe has finished, and drops
a running probe as soon as it can no longer beat the best, freeing its socket.
"""

from __future__ import annotations

import math
import socket
import time

import anyio

from ogsd.core.models import Metric
from ogsd.core.rounds import ProbeState, Tiers, beatable_until, cancel_reason, leads, settle_time
from ogsd.probing.probesock import TCP_ESTABLISHED, tcp_info

# The settle watcher's passes are O(probes): after a pass that took t, wait at least
# this many t before the next, so a 3,000-probe round cannot spend the loop on them.
WATCH_THROTTLE = 3.0


class Standings:
    """The probe states of one round, by gateway key and probe index; `watch` decides when
    to stop."""

    def __init__(self, *, metric: Metric, probe_count: int, hosts: list[str],
                 settle_early: bool, tiers: Tiers | None = None) -> None:
        self.metric = metric
        self.tiers = tiers  # GlobalProtect priority tiers by key (ogsd.core.rounds)
        self.settle_early = settle_early
        self.states = {h: [ProbeState()] * probe_count for h in hosts}
        self.leader: tuple[str, float] | None = None  # == best(self.states, self.metric)
        self.running: dict[tuple[str, int], anyio.CancelScope] = {}
        self.connecting: dict[tuple[str, int], socket.socket] = {}
        self.dropped: dict[tuple[str, int], str] = {}
        self.settled_early = False
        self.changed = anyio.Event()

    def set_state(self, key: str, index: int, state: ProbeState) -> None:
        self.states[key][index] = state
        figure = state.figure(self.metric)
        if figure is not None and (self.leader is None
                                   or leads(key, figure, self.leader, self.tiers)):
            self.leader = (key, figure)  # best(), kept as probes finish: O(1), not O(probes)
        self.changed.set()

    async def watch(self, probes: anyio.CancelScope) -> None:
        """Cancel `probes` once the round is settled; drop probes that cannot win;
        re-check on every change or when due."""
        while True:
            self.changed = anyio.Event()
            began = time.perf_counter()
            at = self._settle_pass(began)
            if at == -math.inf:
                probes.cancel()  # settled (or all finished)
                return
            cost = time.perf_counter() - began
            if cost * WATCH_THROTTLE > 0.001:
                await anyio.sleep(cost * WATCH_THROTTLE)
            wait = math.inf if at is None else max(0.0, at - time.perf_counter())
            with anyio.move_on_after(wait):
                await self.changed.wait()

    def _settle_pass(self, now: float) -> float | None:
        """One look: -inf when the round is over, else when to look again (None: on change)."""
        if all(p.finished for probes in self.states.values() for p in probes):
            return -math.inf
        if not self.settle_early:
            return None
        at = settle_time(self.states, self.metric, self.leader, self.tiers)
        if at is not None and now >= at:
            if self._sweep():
                return 0.0  # the kernel knew of connects we had not seen: look again
            self.settled_early = True
            return -math.inf
        self._drop_hopeless(now)
        return at

    def _sweep(self) -> bool:
        """Record connects the kernel has completed but the loop has not yet reported."""
        seen = False
        for (key, index), sock in list(self.connecting.items()):
            state, rtt_us = tcp_info(sock)
            current = self.states[key][index]
            if state == TCP_ESTABLISHED and rtt_us and current.connected_ms is None:
                self.states[key][index] = ProbeState(current.started, rtt_us / 1000)
                seen = True
        return seen

    def _drop_hopeless(self, now: float) -> None:
        """Cancel running probes that can no longer come in under the best figure."""
        leader = self.leader
        if leader is None:
            return
        doomed = self._doomed(leader, now)
        if doomed and self._sweep():  # a connect the loop missed may save some of them
            doomed = self._doomed(leader, now)
        reason = cancel_reason(self.states, self.metric, leader, self.tiers) if doomed else ""
        for probe in doomed:
            self.settled_early = True  # the round ends sooner than its slowest probe
            self.dropped[probe] = reason
            self.running.pop(probe).cancel()

    def _doomed(self, leader: tuple[str, float], now: float) -> list[tuple[str, int]]:
        doomed = []
        for key, index in self.running:
            state = self.states[key][index]
            if state.finished or state.started is None:
                continue
            until = beatable_until(state, key, leader, self.metric, self.tiers)
            if until is None or until <= now:
                doomed.append((key, index))
        return doomed
