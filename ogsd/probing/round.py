"""Probe rounds: every gateway, N probes each, each on its own TCP connection, paced.

A probe (ogsd.probing.probe) is AnyConnect's: one minimal HTTPS exchange with port 443, on
its own connection. A gateway not cached also gets AnyConnect's plain-HTTP request to port
80 (ogsd.probing.portal): a captive portal or proxy answering it ends the round.

Pacing (ogsd.probing.pacing): a round holds at most `in_flight` sockets at once (probes, port-80
checks, DNS lookups), served in gateway order, each gateway's probes together; TLS
handshakes take turns, lowest TCP figure first. Pacing cannot bias a
figure (the network one is the kernel's; a probe's wait for its turn is left out of its
exchange figure), and an unstarted probe blocks settlement (it could be anything). A
probe that can no longer beat the best is dropped at once, freeing its socket.

The round stops when `ogsd.core.rounds.settle_time` says no unfinished probe can change
the winner (ogsd.probing.standings watches), when every probe has finished, when a port-80
check meets a captive portal, or at the deadline.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import SocketStream, TaskGroup

from ogsd.config.proxy import Proxy
from ogsd.core.addrorder import Candidate
from ogsd.core.models import Gateway, GatewayResult, Metric, ProbeSample, ProxyCheck
from ogsd.core.rounds import ProbeState, cancel_reason
from ogsd.core.selection import tier_of
from ogsd.probing import portal
from ogsd.probing.addresses import ResolveError, Resolver, resolve
from ogsd.probing.pacing import EXCHANGE_TLS_TURNS, IN_FLIGHT_MAX, TLS_TURNS, Turns, socket_budget
from ogsd.probing.probe import Prober
from ogsd.probing.probesock import describe_error, established, syn
from ogsd.probing.standings import Standings

__all__ = ["RoundOutcome", "probe_round"]

log = structlog.get_logger("ogsd.probing.probe")

# A port-80 check still unanswered when probing is over gets this much longer. A portal
# answers port 80 in about one of its round trips, sooner than our 443 exchanges through
# it (three), so this only absorbs scheduling noise; a silent port 80 costs this, once.
CHECK_GRACE_AFTER_ROUND_S = 0.1
_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What one probe round produced, results in the gateways' input order."""

    results: tuple[GatewayResult, ...]
    started_at: float  # wall-clock epoch seconds
    elapsed_s: float
    settled_early: bool  # stopped because no unfinished probe could change the winner
    deadline_hit: bool
    # A port-80 check met a captive portal or authenticating proxy: (host, its answer).
    # The figures are then the portal's: do not rank or cache them.
    portal: tuple[str, ProxyCheck] | None = None


async def probe_round(
    gateways: Sequence[Gateway],
    *,
    metric: Metric,
    probe_count: int = 3,
    deadline: float = 7.0,
    probe_timeout: float = 5.0,
    proxy_check_for: Collection[str] = (),
    resolver: Resolver | None = None,
    http_port: int = 80,
    clock: Callable[[], float] = time.time,
    settle_early: bool = True,
    device: str | None = None,
    proxy: Proxy | None = None,
    in_flight: int = IN_FLIGHT_MAX,
) -> RoundOutcome:
    """Probe every gateway and stop as soon as the winner is certain.

    `settle_early=False` waits for every probe (or the deadline): for callers that need
    the losers' exact figures, not just the winner. `device` binds every connection to
    that interface (the physical uplink while a VPN tunnel holds the default route).
    `proxy_check_for` names the hosts that get the port-80 check (those not cached).
    """
    hosts = [_key(g) for g in gateways]
    duplicates = sorted(h for h, n in Counter(hosts).items() if n > 1)
    if duplicates:
        raise ValueError(f"gateway listed twice: {', '.join(duplicates)}")
    if probe_count < 1:
        raise ValueError(f"probe_count must be at least 1, not {probe_count}")
    if not deadline > 0 or not probe_timeout > 0:
        raise ValueError(f"deadline and probe_timeout must be > 0 ({deadline}, {probe_timeout})")
    round_ = _Round(metric=metric, probe_count=probe_count, probe_timeout=probe_timeout,
                    resolver=resolver, clock=clock, hosts=hosts, settle_early=settle_early,
                    device=device, proxy=proxy, in_flight=socket_budget(in_flight),
                    tiers=_tiers(gateways))
    started_at = clock()
    t0 = time.perf_counter()
    with anyio.move_on_after(deadline) as deadline_scope:
        async with anyio.create_task_group() as checks:
            async with anyio.create_task_group() as probes:
                round_.probes_scope = probes.cancel_scope
                probes.start_soon(round_.standings.watch, probes.cancel_scope)
                for gateway in gateways:  # admitted in order as sockets free up
                    check = _key(gateway) in proxy_check_for or gateway.host in proxy_check_for
                    await round_.slots.acquire_on_behalf_of(token := object())
                    probes.start_soon(round_.run_gateway, gateway, probes,
                                      checks if check else None, http_port, token)
            with anyio.move_on_after(CHECK_GRACE_AFTER_ROUND_S):
                await round_.checks_done()
            checks.cancel_scope.cancel()
    deadline_hit = deadline_scope.cancelled_caught and round_.portal is None
    results = tuple(round_.result(g, deadline_hit) for g in gateways)
    elapsed = time.perf_counter() - t0
    for result in results:
        _log_result(result, probe_count)
    settled_early = round_.standings.settled_early and not deadline_hit
    log.info("OGS probe round finished", elapsed_s=round(elapsed, 4),
             settled_early=settled_early, deadline_hit=deadline_hit,
             portal=round_.portal[0] if round_.portal else None, in_flight=round_.limit)
    return RoundOutcome(results=results, started_at=started_at, elapsed_s=elapsed,
                        settled_early=settled_early, deadline_hit=deadline_hit,
                        portal=round_.portal)


class _Round:
    """The mutable state of one round; tasks report into it, its `standings` decide when
    to stop."""

    def __init__(self, *, metric: Metric, probe_count: int, probe_timeout: float,
                 resolver: Resolver | None, clock: Callable[[], float], hosts: list[str],
                 settle_early: bool, device: str | None, proxy: Proxy | None,
                 in_flight: int, tiers: dict[str, float] | None = None) -> None:
        self.resolver = resolver
        self.clock = clock
        self.device = device
        self.proxy = proxy
        self.limit = in_flight
        self.slots = anyio.CapacityLimiter(in_flight)
        self.standings = Standings(metric=metric, probe_count=probe_count, hosts=hosts,
                                   settle_early=settle_early, tiers=tiers)
        self.prober = Prober(
            standings=self.standings, timeout=probe_timeout, proxy=proxy, syn=self._syn_paced,
            turns=Turns(TLS_TURNS if metric is Metric.NETWORK else EXCHANGE_TLS_TURNS))
        self.walls: dict[str, list[float | None]] = {h: [None] * probe_count for h in hosts}
        self.addresses: dict[str, str] = {}
        self.proxied: set[str] = set()
        self.errors: dict[str, str] = {}
        self.checks: dict[str, ProxyCheck | None] = {}  # None while running
        self.check_started: dict[str, float] = {}
        self.released = anyio.Event()  # a socket slot was given back
        self.check_finished = anyio.Event()
        self.portal: tuple[str, ProxyCheck] | None = None
        self.probes_scope = anyio.CancelScope()

    async def checks_done(self) -> None:
        """Return once no port-80 check is running."""
        while any(c is None for c in self.checks.values()):
            self.check_finished = anyio.Event()
            await self.check_finished.wait()

    # --- one gateway ----------------------------------------------------------------

    async def run_gateway(self, gateway: Gateway, probes: TaskGroup,
                          checks: TaskGroup | None, http_port: int, admitted: object) -> None:
        """Resolve (on the admission's socket slot), then start the check and probes."""
        host, key = gateway.host, _key(gateway)
        log.info(f"OGS starting thread named {host}", host=host, port=gateway.port)
        target: str | None = None
        if self.proxy is not None and not self.proxy.bypassed(host, gateway.port):
            self.proxied.add(key)  # the proxy resolves the name; no port-80 check through it
            self._release(admitted)
        else:
            try:
                try:
                    candidates = await self._resolve(host)
                finally:
                    self._release(admitted)
            except (ResolveError, OSError) as exc:
                why = exc if isinstance(exc, ResolveError) else describe_error(exc, "resolving")
                self.errors[key] = f"cannot resolve {host}: {why}"
                for index in range(len(self.standings.states[key])):
                    self.standings.set_state(key, index, ProbeState(failed=True))
                return
            target = self.addresses[key] = candidates[0].destination
            if checks is not None:
                self.checks[key] = None
                self.check_started[key] = time.perf_counter()
                await self.slots.acquire_on_behalf_of(token := object())
                checks.start_soon(self.port80_check, key, host, target, http_port, token)
        for index in range(len(self.standings.states[key])):
            await self.slots.acquire_on_behalf_of(token := object())
            probes.start_soon(self.probe, gateway, target, index, token)

    async def _resolve(self, host: str) -> list[Candidate]:
        """The gateway's addresses, best first, waiting for descriptors if none are left."""
        while True:
            try:
                candidates, self.resolver = await resolve(host, self.resolver, self.device)
                return candidates
            except OSError as exc:
                if exc.errno not in _FD_EXHAUSTED or self.slots.borrowed_tokens <= 1:
                    raise
            await self._fewer_sockets()

    def _release(self, token: object) -> None:
        """Give a socket slot back and wake whoever waits for a descriptor."""
        self.slots.release_on_behalf_of(token)
        self.released.set()
        self.released = anyio.Event()

    async def _fewer_sockets(self) -> None:
        """Out of descriptors while others hold some: admit fewer, wait for one to close."""
        self.limit = self.slots.total_tokens = max(1, self.slots.borrowed_tokens - 1)
        log.warning("out of file descriptors: fewer probes at once", in_flight=self.limit)
        await self.released.wait()

    async def port80_check(self, key: str, host: str, address: str, port: int,
                           token: object) -> None:
        """AnyConnect's plain-HTTP request: a portal or proxy answering it ends the round."""
        try:
            found = await portal.check(host, address, port, self._connect)
        finally:
            self._release(token)
        self.checks[key] = found
        self.check_finished.set()
        log.info(f"OGS proxy check for {host}: {found.error or found.status}", host=host,
                 status=found.status, location=found.location,
                 proxy_detected=found.proxy_detected, elapsed_ms=found.elapsed_ms)
        if found.proxy_detected and self.portal is None:
            self.portal = (host, found)
            self.probes_scope.cancel()

    async def _connect(self, address: str, port: int) -> SocketStream:
        sock, _ = syn(address, port, self.device)
        await established(sock)
        return await SocketStream.from_socket(sock)

    # --- one probe --------------------------------------------------------------------

    async def probe(self, gateway: Gateway, address: str | None, index: int,
                    token: object) -> None:
        key, standings = _key(gateway), self.standings
        try:
            with anyio.CancelScope() as scope:
                standings.running[(key, index)] = scope
                wall = self.walls[key][index] = self.clock()
                sample = await self.prober.probe(gateway, key, index, address, wall)
        finally:
            standings.running.pop((key, index), None)
            standings.connecting.pop((key, index), None)
            self._release(token)
        if scope.cancelled_caught:  # dropped: it could not beat the best any more
            state = standings.states[key][index]
            sample = ProbeSample(self.walls[key][index] or 0.0, state.connected_ms,
                                 error=standings.dropped.get((key, index), "cancelled"))
        state = standings.states[key][index]
        standings.set_state(key, index, ProbeState(state.started, state.connected_ms,
                                                   done=sample, failed=sample.error is not None))

    async def _syn_paced(self, address: str, port: int) -> tuple[socket.socket, int]:
        """`syn`, waiting for sockets to free up when the process runs out of them."""
        while True:
            try:
                return syn(address, port, self.device)
            except OSError as exc:
                if exc.errno not in _FD_EXHAUSTED or self.slots.borrowed_tokens <= 1:
                    raise
            await self._fewer_sockets()

    # --- the outcome ------------------------------------------------------------------

    def result(self, gateway: Gateway, deadline_hit: bool) -> GatewayResult:
        """The gateway's result once the round has stopped, unfinished probes as errors."""
        host, key, standings = gateway.host, _key(gateway), self.standings
        if self.portal is not None:
            stopped = f"stopped: {portal.describe(*self.portal)}"
        else:
            stopped = "deadline" if deadline_hit else cancel_reason(
                standings.states, standings.metric, standings.leader, standings.tiers)
        samples = []
        for state, wall in zip(standings.states[key], self.walls[key], strict=True):
            if state.done is not None:
                samples.append(state.done)
            elif state.started is not None and wall is not None:
                samples.append(ProbeSample(wall, network_rtt_ms=state.connected_ms, error=stopped))
        error = self.errors.get(key)
        if error is None and not any(s.complete for s in samples):
            reasons = list(dict.fromkeys(s.error for s in samples if s.error))
            if key not in self.addresses and key not in self.proxied:
                reasons = [f"{stopped} while resolving {host}"]
            error = "; ".join(reasons) or f"{stopped} before probing started"
        check = None
        if key in self.checks:
            when = "at the deadline" if deadline_hit else "when the round ended"
            elapsed = (time.perf_counter() - self.check_started[key]) * 1000
            check = self.checks[key] or ProxyCheck(error=f"unanswered {when}",
                                                   elapsed_ms=elapsed)
        return GatewayResult(host, self.addresses.get(key), tuple(samples), error, check,
                             self.proxy.label if key in self.proxied and self.proxy else None)


def _tiers(gateways: Sequence[Gateway]) -> dict[str, float] | None:
    """GlobalProtect tiers by round key (ogsd.core.rounds); None when no gateway has one.
    A manual-only gateway is measured (it is shown) but never leads."""
    if not any(g.priority is not None or g.manual_only for g in gateways):
        return None
    return {_key(g): tier_of(g) for g in gateways}


def _key(gateway: Gateway) -> str:
    """How the round names a gateway: its host, with the port when not 443."""
    return gateway.host if gateway.port == 443 else f"{gateway.host}:{gateway.port}"


def _log_result(result: GatewayResult, probe_count: int) -> None:
    samples = list(result.samples)
    figures = [f"{s.exchange_ms:.0f}" if s.complete and s.exchange_ms is not None else "-"
               for s in samples]
    figures += ["-"] * (probe_count - len(figures))
    log.info(
        f"OGS ping results for {result.host}: ({' '.join(figures)})",
        host=result.host,
        address=result.address,
        family=result.family,
        proxy=result.proxy,
        network_rtt_ms=[_ms(s.network_rtt_ms) for s in samples],
        tcp_info_rtt_ms=[_ms(s.tcp_info_rtt_ms) for s in samples],
        exchange_ms=[_ms(s.exchange_ms) for s in samples],
        started_at=[round(s.started_at, 6) for s in samples],
        errors=[s.error for s in samples],
        error=result.error,
    )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
