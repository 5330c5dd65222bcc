"""A resume that waits for the network: OGS after resume runs once the network is usable.

AnyConnect re-runs OGS after resume only when the network-environment test passes
(DESIGN.md §1). On a laptop the test cannot pass the moment resume is signalled: Wi-Fi
re-associates and DHCP answers seconds later. So a resume that may re-run OGS (a VPN was
up at sleep, the suspension lasted at least the suspend time) stays *pending*: the test
is re-run on every network or resolv.conf change, and on a backing-off timer (DNS can
come back with no route change), until it passes or `max_wait` (`[daemon]
resume_network_wait_s`, default 300 s) has gone by. Then the rules decide, with the
test's outcome.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import structlog

if TYPE_CHECKING:
    from ogsd.sensing.netenv import NetEnvResult

# Long enough for a slow Wi-Fi join, DHCP and a hotel's captive DNS; a network that has
# not come back by then is not the one OGS should be judged on.
MAX_WAIT_DEFAULT_S = 300.0
# Re-tests between network events: quick at first (most networks are back within
# seconds), then every half minute.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

log = structlog.get_logger(__name__)


@dataclass
class PendingResume:
    """A resume waiting for the network-environment test."""

    sleep_started_at: datetime | None  # the sleep record it settles
    slept: timedelta
    since: float = field(default_factory=time.monotonic)
    tests: int = 0
    last: str = "not tested yet"

    def as_json(self, max_wait: float) -> dict[str, object]:
        waited = time.monotonic() - self.since
        return {"slept_s": round(self.slept.total_seconds()), "tests": self.tests,
                "waiting_s": round(waited, 1),
                "give_up_in_s": round(max(0.0, max_wait - waited), 1), "last_test": self.last}


Test = Callable[[], Awaitable["NetEnvResult"]]
Decide = Callable[[PendingResume, bool], Awaitable[None]]


class ResumeWaiter:
    """Runs the network-environment test for the pending resume until it passes."""

    def __init__(self, test: Test, decide: Decide, *,
                 max_wait: float = MAX_WAIT_DEFAULT_S) -> None:
        self._test = test
        self._decide = decide
        self.max_wait = max_wait
        self.pending: PendingResume | None = None
        self._poke = anyio.Event()

    def start(self, pending: PendingResume) -> None:
        """Wait for the network on behalf of `pending` (replaces an older one)."""
        self.pending = pending
        self._poke.set()

    def poke(self) -> None:
        """The network changed: test again now, if a resume is pending."""
        if self.pending is not None:
            self._poke.set()

    def drop(self) -> None:
        """Forget the pending resume (the machine is going to sleep again)."""
        self.pending = None

    async def run(self) -> None:
        """Serve pending resumes until cancelled."""
        while True:
            await self._poke.wait()
            self._poke = anyio.Event()
            await self._until_decided()

    async def _until_decided(self) -> None:
        while (pending := self.pending) is not None:
            result = await self._test()
            if pending is not self.pending:
                continue  # replaced or dropped while testing
            pending.tests += 1
            pending.last = result.detail
            expired = time.monotonic() - pending.since >= self.max_wait
            log.info("network environment test after resume", ok=result.ok,
                     detail=result.detail, attempt=pending.tests)
            if result.ok or expired:
                if not result.ok:
                    log.warning("the network did not come back after resume",
                                waited_s=self.max_wait)
                self.pending = None
                await self._decide(pending, result.ok)
                return
            delay = RETRY_DELAYS_S[min(pending.tests - 1, len(RETRY_DELAYS_S) - 1)]
            left = pending.since + self.max_wait - time.monotonic()
            with anyio.move_on_after(max(0.0, min(delay, left))):
                await self._poke.wait()
            self._poke = anyio.Event()

