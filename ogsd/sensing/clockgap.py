"""Time spent suspended, from the clocks: CLOCK_BOOTTIME - CLOCK_MONOTONIC.

The two clocks tick together except while suspended, when only boottime advances, so
growth of their difference is time spent asleep. The sleep watcher falls back on it
without logind, and measures with it how long a sleep logind announced lasted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

# Gap growth below this is not reported: a suspend under a second changes nothing a
# gateway choice depends on, and it keeps clock-read noise far from a false resume.
SLEEP_THRESHOLD = 1.0
# A sample whose two monotonic reads are further apart was descheduled mid-read (a loaded
# 2-core box); read again rather than risk taking the stall for a short suspend.
MAX_READ_SKEW = 0.010
READ_ATTEMPTS = 3

Clock = Callable[[], float]


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True, slots=True)
class ClockSample:
    """CLOCK_BOOTTIME and CLOCK_MONOTONIC read together, in seconds."""

    boottime: float
    monotonic: float

    @property
    def asleep(self) -> float:
        """Total time suspended since boot: boottime advances in suspend, monotonic not."""
        return self.boottime - self.monotonic


def read_clocks(clock_boottime: Clock, clock_monotonic: Clock) -> ClockSample:
    """Read both clocks together: boottime between two monotonic reads, close in time."""
    for _ in range(READ_ATTEMPTS):
        first = clock_monotonic()
        boot = clock_boottime()
        last = clock_monotonic()
        if last - first <= MAX_READ_SKEW:
            break
    return ClockSample(boottime=boot, monotonic=(first + last) / 2)


def slept_between(
    before: ClockSample, after: ClockSample, threshold: float = SLEEP_THRESHOLD
) -> timedelta | None:
    """Time suspended between two samples, or None if under `threshold` seconds."""
    gap = after.asleep - before.asleep
    return timedelta(seconds=gap) if gap >= threshold else None
