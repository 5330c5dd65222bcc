"""One evaluation: location -> trigger rules -> cache or probe round -> decision -> store.

Shared by `ogsd evaluate` and the daemon. Owns no policy (that is `ogsd.core`); it
fetches what the rules need, runs the round they ask for, and records the outcome.
`decide` and the writes it returns are separate so the daemon can publish a decision
before (and whether or not) the disk takes it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread
import structlog

from ogsd.config.model import Config
from ogsd.config.proxy import Proxy, from_environment
from ogsd.core.cache import check_due, entry_from_decision
from ogsd.core.models import DaemonState, Decision, Location, ProxyCheck, Reason, Source
from ogsd.core.report import path_note, row_note, selection_table
from ogsd.core.selection import (
    decide_from_cache,
    decide_round,
    decide_skipped,
    failover_order,
    rank,
)
from ogsd.core.triggers import Action, Trigger, plan
from ogsd.probing.path import DIRECT, ProbePath
from ogsd.probing.portal import describe
from ogsd.store.files import StoreError
from ogsd.store.persist import Write
from ogsd.store.store import Store

if TYPE_CHECKING:
    import dns.asyncresolver

    from ogsd.probing.round import RoundOutcome

log = structlog.get_logger("ogsd.daemon.engine")

Clock = Callable[[], datetime]
# Where the system configures automatic proxy detection (a sentence), or None.
AutoProxyProbe = Callable[[], Awaitable[str | None]]
_A = TypeVar("_A")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: Decision
    writes: tuple[Write, ...]  # in order: cache entry, decision history, state


class Engine:
    """Evaluates the current location with one config, one store and one clock."""

    def __init__(self, config: Config, store: Store, *, clock: Clock,
                 resolver: dns.asyncresolver.Resolver | None = None,
                 wall_clock: Callable[[], float] | None = None,
                 environ: Mapping[str, str] | None = None,
                 auto_proxy: AutoProxyProbe | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.resolver = resolver
        self.environ = os.environ if environ is None else environ
        self.auto_proxy = auto_proxy
        # Probe timestamps (epoch seconds) come from the same injected clock.
        self.wall_clock = wall_clock or (lambda: self.clock().timestamp())
        # Told of every probe round as it ends (ogsd.daemon.metrics); must not block.
        self.on_round: Callable[[RoundOutcome], None] | None = None

    async def evaluate(self, trigger: Trigger, location: Location, *,
                       slept: timedelta | None = None, netenv_ok: bool = True,
                       path: ProbePath = DIRECT, full: bool = False) -> Decision:
        """Decide for `location` as `trigger` requires, store and log the outcome."""
        outcome = await self.decide(trigger, location, slept=slept, netenv_ok=netenv_ok,
                                    path=path, full=full)
        for write in outcome.writes:
            await anyio.to_thread.run_sync(write.run)
        return outcome.decision

    async def decide(self, trigger: Trigger, location: Location, *,
                     slept: timedelta | None = None, netenv_ok: bool = True,
                     path: ProbePath = DIRECT, state: DaemonState | None = None,
                     full: bool = False) -> Outcome:
        """Decide and log; the store writes that record it are returned, not done.

        `state`: the daemon's (it may hold changes the disk has not taken); else stored.
        `full`: a round waits for every probe (every gateway's exact figures, not only
        the winner's).
        """
        settings = self.config.settings
        gateways = self.config.gateways
        store = self.store
        if state is None:
            state = await anyio.to_thread.run_sync(store.load_state)
        entry = await _read(store.find_entry, location.keys, default=None, what="the cache")
        auto_proxy = await self.auto_proxy() if self.auto_proxy is not None else None
        now = self.clock()
        p = plan(trigger, settings=settings, state=state, location=location, entry=entry,
                 now=now, slept=slept, netenv_ok=netenv_ok, gateways=gateways,
                 auto_proxy=auto_proxy)
        log.info("evaluation planned", trigger=trigger.value, action=p.action.value,
                 why=p.text, domain=location.domain, servers=list(location.servers),
                 auto_proxy=auto_proxy)

        writes: list[Write] = []
        if p.action is Action.CACHE and p.entry is not None:
            log.info(p.text)
            decision = decide_from_cache(
                location=location, order=p.entry.order, results=p.entry.results,
                metric=p.entry.metric, cached_at=p.entry.created_at,
                expires_at=p.entry.expires_at, now=now, note=p.note)
        elif p.action is Action.SKIP:
            log.info(p.text, found=auto_proxy)
            text = f"{p.text} Found: {auto_proxy}." if auto_proxy else p.text
            decision = decide_skipped(location=location, reason=p.reason or Reason.DISABLED,
                                      text=text, metric=settings.metric, now=now,
                                      last_gateway=state.last_gateway, gateways=gateways)
        elif p.action is Action.KEEP or path.blocked is not None:
            text = p.text if p.action is Action.KEEP else f"{path.blocked}; previous selection kept"
            log.info(text)
            previous: list[Decision] = await _read(store.decisions, 1, default=[],
                                                   what="the last decision")
            decision = self._keep(previous, location, text, state.last_gateway, now)
        else:
            # Imported when a round runs: a cache hit (most evaluations) needs no sockets,
            # TLS or name resolution.
            from ogsd.probing.round import probe_round  # noqa: PLC0415

            outcome = await probe_round(
                gateways, metric=settings.metric, probe_count=settings.probe_count,
                deadline=settings.round_deadline.total_seconds(),
                probe_timeout=settings.probe_timeout.total_seconds(),
                proxy_check_for=check_due([g.host for g in gateways], entry, location, now,
                                          settings.cache_lifetime),
                resolver=path.resolver or self.resolver, device=path.device,
                clock=self.wall_clock, proxy=self._proxy(),
                # The threshold compares the current gateway's own figure: it must not be
                # cut short just because another gateway is already known to be faster.
                settle_early=not (p.apply_threshold or full))
            if self.on_round is not None:
                self.on_round(outcome)
            now = self.clock()
            log.info("round finished", elapsed_s=round(outcome.elapsed_s, 3),
                     settled_early=outcome.settled_early, deadline_hit=outcome.deadline_hit)
            if outcome.portal is not None:
                previous = await _read(store.decisions, 1, default=[], what="the last decision")
                kept = self._keep(previous, location, self._portal_text(*outcome.portal),
                                  state.last_gateway, now, reason=Reason.PORTAL)
                # This round's results go with it: the check's answer is the evidence.
                decision = dataclasses.replace(kept, results=outcome.results)
            else:
                decision = decide_round(
                    location=location, gateways=gateways, results=outcome.results,
                    settings=settings, now=now, current=state.connected,
                    last_gateway=state.last_gateway, apply_threshold=p.apply_threshold)
            if decision.source is Source.PROBES and not path.cache:
                log.info("round not cached: the location may be out of date")
            elif decision.source is Source.PROBES:
                # The cache keeps the measured order even when the threshold kept the
                # user where they are: it answers "what is best here", not "where am I".
                measured = rank(outcome.results, settings.metric, gateways).hosts
                cached = entry_from_decision(
                    dataclasses.replace(decision, order=failover_order(
                        measured[0], measured, gateways)),
                    settings.cache_lifetime)
                writes.append(Write("cache entry", functools.partial(store.save_entry, cached)))

        self._log_table(decision)
        writes.append(Write("decision", functools.partial(store.add_decision, decision)))
        # The fallback target is the gateway in use: while connected that is the
        # connection's (set when it is reported), otherwise the latest selection.
        if (decision.selected is not None and state.connected is None
                and decision.selected != state.last_gateway):
            writes.append(Write("last gateway", functools.partial(
                store.update_state, last_gateway=decision.selected),
                state={"last_gateway": decision.selected}))
        return Outcome(decision, tuple(writes))

    def _portal_text(self, host: str, check: ProxyCheck) -> str:
        daemon = self.config.daemon
        again = f"in {daemon.portal_retry.total_seconds():g} s or " if daemon.continuous else ""
        text = (f"{describe(host, check)}: the round measured it, not the gateways, so it "
                f"is neither ranked nor cached; previous selection kept; evaluating again "
                f"{again}when the network changes")
        log.warning(text)
        return text

    def _proxy(self) -> Proxy | None:
        """The static proxy probes go through, if one is configured."""
        settings = self.config.settings
        if settings.proxy_mode != "static":
            return None
        try:
            proxy = from_environment(self.environ, settings.proxy_url)
        except ValueError as exc:
            log.warning("proxy setting unusable: probing direct", error=str(exc))
            return None
        if proxy is None:
            log.warning('proxy = "static" but no proxy_url and no https_proxy in the '
                        "environment: probing direct")
        return proxy

    def _keep(self, previous: list[Decision], location: Location, text: str,
              last_gateway: str | None, now: datetime, *,
              reason: Reason = Reason.KEPT) -> Decision:
        """The previous selection stands: republish it with the reason it was kept."""
        gateways = self.config.gateways
        if previous:
            prev = previous[0]
            return dataclasses.replace(prev, source=Source.KEPT, reason=reason,
                                       reason_text=text, decided_at=now, location=location)
        kept = decide_skipped(location=location, reason=reason, text=text,
                              metric=self.config.settings.metric, now=now,
                              last_gateway=last_gateway, gateways=gateways)
        return dataclasses.replace(kept, source=Source.KEPT)

    @staticmethod
    def _log_table(decision: Decision) -> None:
        rows = table_rows(decision)
        for line in selection_table(rows, decision.selected):
            log.info(line, source=decision.source.value, reason=decision.reason.value)


async def _read(call: Callable[[_A], _T], arg: _A, *, default: _T, what: str) -> _T:
    """A store read the decision can do without: an unreadable cache means probing."""
    try:
        return await anyio.to_thread.run_sync(call, arg)
    except StoreError as exc:
        log.warning(f"cannot read {what}, deciding without it", error=str(exc))
        return default


def table_rows(decision: Decision) -> list[tuple[str, float | None, str | None]]:
    """(host, figure, note) for the selection table, fastest first."""
    metric = decision.metric
    ranked = rank(decision.results, metric).hosts
    by_host = {r.host: r for r in decision.results}
    rows = []
    for host in ranked:
        result = by_host[host]
        rtt = result.rtt(metric)
        note = row_note(result.error) if rtt is None else path_note(result.family, result.proxy)
        rows.append((host, rtt, note))
    return rows
