"""Finding and stopping a lab's processes, also after a crash left them behind."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

# A process that ignores SIGTERM this long gets SIGKILL.
STOP_TIMEOUT_S = 3.0


def is_ours(pid: int, state_dir: Path) -> bool:
    """True if `pid` is a lab process of this lab (pids get reused after a crash)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ogsd.lab." in cmdline and str(state_dir).encode() in cmdline


def in_netns(netns: str) -> set[int]:
    """Every process in network namespace `netns` (all of them belong to its lab)."""
    found = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return {int(p) for p in found.stdout.split() if p.isdigit()}


def stop_all(
    pids: Iterable[int], timeout: float = STOP_TIMEOUT_S, first: signal.Signals = signal.SIGTERM
) -> None:
    """Signal each (`first`), wait for the exits on pidfds (one deadline), SIGKILL the rest.

    An exited child of the caller stays a zombie until the caller reaps it (Lab.down does).
    """
    fds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[pid] = os.pidfd_open(pid)
    try:
        for fd in fds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, first)
        waiting = set(fds.values())
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            exited, _, _ = select.select(list(waiting), [], [], left)
            waiting -= set(exited)
        for fd in waiting:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        if waiting:
            select.select(list(waiting), [], [], timeout)
    finally:
        for fd in fds.values():
            os.close(fd)

