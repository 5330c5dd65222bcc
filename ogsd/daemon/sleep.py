"""Sleep and resume as the daemon handles them: the sleep record and the resume it awaits.

Going to sleep records whether a VPN was up and when (persisted: a restart while asleep,
e.g. by a resume hook, still handles the resume). A resume is decided at once, or, when it
may re-run OGS, once the network is back (ogsd.daemon.resume); the record is cleared only
when that round is decided. logind and the sleep hook both report each sleep and resume:
the second report of one is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import structlog

from ogsd.core.triggers import Trigger
from ogsd.daemon.resume import PendingResume, ResumeWaiter
from ogsd.daemon.rounds import Observe, Rounds
from ogsd.daemon.whereabouts import Whereabouts
from ogsd.store.persist import Persister

if TYPE_CHECKING:
    from ogsd.sensing.netenv import NetEnvResult

log = structlog.get_logger("ogsd.daemon.daemon")


class Sleeps:
    """The daemon's sleeps and resumes; `resume` waits for the network when it must."""

    def __init__(self, rounds: Rounds, where: Whereabouts, persister: Persister, *,
                 clock: Callable[[], datetime], observe: Observe, netns: str | None) -> None:
        self._rounds = rounds
        self._where = where
        self._persister = persister
        self._clock = clock
        self._observe = observe
        self._netns = netns
        self.resume = ResumeWaiter(
            self._resume_test, self._resume_decide,
            max_wait=rounds.config.daemon.resume_network_wait.total_seconds())
        self._resuming: datetime | None = None  # sleep record of the resume being handled

    async def going_to_sleep(self) -> None:
        if self.resume.pending is not None:
            # Asleep again before the network came back: the next resume takes over the
            # sleep record still kept, counted from when the first sleep began.
            log.info("going to sleep with a resume still waiting for the network")
            self.resume.drop()
            self._resuming = None
        state = await self._persister.state()
        # A record whose resume is still being decided is the previous sleep, not this one
        # (the lid closed again within a round): this sleep replaces it.
        if state.sleep_started_at is not None and state.sleep_started_at != self._resuming:
            return  # already recorded (logind and the sleep hook both tell us)
        await self._persister.update_state(connected_at_sleep=state.connected is not None,
                                           sleep_started_at=self._clock())
        log.info("going to sleep: state saved", connected=state.connected)

    async def resumed(self, slept: timedelta | None) -> str:
        """Handle a resume without waiting for the network; says what happens next."""
        state = await self._persister.state()
        started = state.sleep_started_at
        if started is not None and started == self._resuming:
            log.info("resume already being handled")  # logind and the sleep hook both tell us
            return "resume already being handled"
        if started is not None:
            slept = max(slept or timedelta(0), self._clock() - started)
        elif slept is None:
            log.info("resume already handled")
            return "resume already handled"
        self._resuming = started
        await self._observe()
        # The sleep record is cleared by the worker once this resume is decided, not
        # here: the rules read connected_at_sleep, and a restart before the decision
        # must handle the resume again.
        if state.connected_at_sleep and slept >= self._rounds.config.settings.suspend_time:
            self.resume.start(PendingResume(started, slept))
            return "resume noted: re-evaluating once the network is back"
        await self._decide(slept, True, started)
        return "resume handled"

    async def _resume_test(self) -> NetEnvResult:
        """The network-environment test, from the physical uplink while a VPN is up."""
        # Imported on a resume (its DNS queries need dnspython's wire side), not at start.
        from ogsd.sensing.netenv import NetEnvResult, network_environment_test  # noqa: PLC0415

        view, _ = await self._observe()
        location = self._where.location
        if location is None:
            return NetEnvResult(False, False, False, "no DNS configuration to test")
        path = self._where.net.probe_path(await self._persister.state(), view)
        return await network_environment_test(
            location, gateway_names=[g.host for g in self._rounds.config.gateways],
            device=path.device, netns=self._netns)

    async def _resume_decide(self, pending: PendingResume, netenv_ok: bool) -> None:
        await self._decide(pending.slept, netenv_ok, pending.sleep_started_at)

    async def _decide(self, slept: timedelta, netenv_ok: bool,
                      started: datetime | None) -> None:
        settle = None if started is None else partial(self._sleep_handled, started)
        await self._rounds.submit(Trigger.RESUME, slept=slept, netenv_ok=netenv_ok,
                                  settle=settle)

    async def _sleep_handled(self, started: datetime) -> None:
        """The resume from the sleep recorded at `started` is decided: forget that sleep."""
        if self._resuming == started:
            self._resuming = None
        state = await self._persister.state()
        if state.sleep_started_at == started:  # not a newer sleep recorded meanwhile
            await self._persister.update_state(connected_at_sleep=False, sleep_started_at=None)
