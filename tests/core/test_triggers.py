from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from ogsd.core.models import CacheEntry, DaemonState, Reason
from ogsd.core.settings import Settings
from ogsd.core.triggers import (
    ALREADY_TEXT,
    CACHE_TEXT,
    PROXY_SKIP_TEXT,
    Action,
    Trigger,
    plan,
)
from tests.core.helpers import HOME, HOTEL, T0, entry

H = timedelta(hours=1)


@dataclass(frozen=True)
class Case:
    name: str
    trigger: Trigger
    expected: Action
    state: DaemonState = field(default_factory=DaemonState)
    entry: CacheEntry | None = None
    now: datetime = T0
    slept: timedelta | None = None
    netenv_ok: bool = True
    settings: Settings = field(default_factory=Settings)
    text: str | None = None
    threshold: bool = False


CONNECTED = DaemonState(last_gateway="a", connected="a", connected_at_sleep=True)

CASES = [
    Case("first run, nothing cached", Trigger.EVALUATE, Action.PROBE,
         text="no cache entry for this location: probing"),
    Case("cached location", Trigger.EVALUATE, Action.CACHE, entry=entry(), text=CACHE_TEXT),
    Case("cached 13 days ago", Trigger.LOCATION, Action.CACHE, entry=entry(),
         now=T0 + timedelta(days=13)),
    Case("expired entry", Trigger.LOCATION, Action.PROBE, entry=entry(),
         now=T0 + timedelta(days=14), text="cache entry expired: probing"),
    Case("configurable lifetime", Trigger.LOCATION, Action.PROBE, entry=entry(),
         now=T0 + timedelta(days=2), settings=Settings(cache_lifetime=timedelta(days=1)),
         ),
    Case("entry of another location", Trigger.LOCATION, Action.PROBE,
         entry=entry(location=HOTEL)),
    Case("cache cleared", Trigger.EVALUATE, Action.PROBE,
         state=DaemonState(last_gateway="a", cache_cleared_at=T0), text="cache cleared: probing"),
    Case("forced ignores cache", Trigger.FORCED, Action.PROBE, entry=entry()),
    Case("auto proxy skips", Trigger.EVALUATE, Action.SKIP,
         settings=Settings(proxy_mode="auto"), text=PROXY_SKIP_TEXT),
    Case("pac skips even forced", Trigger.FORCED, Action.SKIP,
         settings=Settings(proxy_mode="pac"), text=PROXY_SKIP_TEXT),
    Case("static proxy is fine", Trigger.EVALUATE, Action.PROBE,
         settings=Settings(proxy_mode="static")),
    Case("disabled by profile", Trigger.EVALUATE, Action.SKIP, settings=Settings(enabled=False)),
    Case("first connection", Trigger.CONNECT, Action.PROBE),
    Case("reconnect after 3 h", Trigger.CONNECT, Action.KEEP,
         state=DaemonState(last_gateway="a", last_disconnect_at=T0 - 3 * H), text=ALREADY_TEXT),
    Case("reconnect after exactly 4 h", Trigger.CONNECT, Action.PROBE,
         state=DaemonState(last_gateway="a", last_disconnect_at=T0 - 4 * H)),
    Case("reconnect after 5 h uses a valid cache", Trigger.CONNECT, Action.CACHE, entry=entry(),
         state=DaemonState(last_gateway="a", last_disconnect_at=T0 - 5 * H)),
    Case("reconnect threshold configurable", Trigger.CONNECT, Action.PROBE,
         state=DaemonState(last_gateway="a", last_disconnect_at=T0 - 2 * H),
         settings=Settings(suspend_time=H)),
    Case("resume without VPN up at sleep", Trigger.RESUME, Action.KEEP, slept=10 * H,
         state=DaemonState(last_gateway="a")),
    Case("short suspend", Trigger.RESUME, Action.KEEP, state=CONNECTED, slept=H),
    Case("unknown suspend length", Trigger.RESUME, Action.KEEP, state=CONNECTED),
    Case("long suspend, network test failed", Trigger.RESUME, Action.KEEP, state=CONNECTED,
         slept=5 * H, netenv_ok=False),
    Case("long suspend re-probes with threshold, cache or not", Trigger.RESUME, Action.PROBE,
         state=CONNECTED, slept=5 * H, entry=entry(), threshold=True),
    Case("periodic while connected uses threshold", Trigger.PERIODIC, Action.PROBE,
         state=CONNECTED, entry=entry(), threshold=True, text="periodic re-evaluation: probing"),
    Case("periodic while disconnected", Trigger.PERIODIC, Action.PROBE, entry=entry()),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(case: Case) -> None:
    p = plan(case.trigger, settings=case.settings, state=case.state, location=HOME,
             entry=case.entry, now=case.now, slept=case.slept, netenv_ok=case.netenv_ok)
    assert p.action is case.expected
    assert p.apply_threshold is case.threshold
    if case.text is not None:
        assert p.text == case.text
    if p.action is Action.CACHE:
        assert p.entry is case.entry
        assert p.reason is Reason.CACHE
    if p.action is Action.KEEP:
        assert p.reason is Reason.KEPT
