"""Finding and stopping a lab's processes, also after a crash left them behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# A process that ignores SIGTERM this long gets SIGKILL (openconnect's logout is one RTT).
STOP_TIMEOUT_S = 3.0
# What vpnc-script leaves in /var/run/vpnc for an openconnect pid when it is not run at exit.
VPNC_STATE = Path("/var/run/vpnc")
VPNC_FILES = ("resolv.conf-backup", "defaultroute", "defaultroute_ipv6")


async def spawn(argv: Sequence[str]) -> asyncio.subprocess.Process:
    """A lab server: in a session (process group) of its own, its output on one pipe."""
    return await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)


async def until_ready(proc: asyncio.subprocess.Process, log: Path,
                      ready: Callable[[bytes], bool],
                      within: float) -> tuple[asyncio.Task[None], bool]:
    """Copy `proc`'s output to `log` as it comes (a full pipe would block it), in a task
    that lives as long as the output; whether a line made `ready` true before the output
    ended or `within` seconds passed."""
    assert proc.stdout is not None
    output = proc.stdout
    became: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def copy() -> None:
        with log.open("ab") as out:
            async for line in output:
                out.write(line)
                out.flush()
                if not became.done() and ready(line):
                    became.set_result(True)
        if not became.done():
            became.set_result(False)  # exited before it was ready

    drain = asyncio.create_task(copy())
    try:
        async with asyncio.timeout(within):
            return drain, await became
    except TimeoutError:
        return drain, False


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


def in_group(pgid: int) -> set[int]:
    """Every process in process group `pgid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # after the command: state, ppid, pgrp
            found.add(int(stat.parent.name))
    return found


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


def running(pid: int) -> bool:
    """True unless `pid` has exited (a zombie waiting to be reaped has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def remove_vpnc_state(marker: str, started: Iterable[int]) -> None:
    """Delete what vpnc-script left for openconnect processes that are gone: those whose
    saved resolv.conf carries `marker` (whoever started them: killed, they never restored
    it), and those in `started` (an uplink without an IPv4 default route leaves an empty
    defaultroute file even after a clean disconnect)."""
    pids = {int(p) for p in started}
    for backup in VPNC_STATE.glob("resolv.conf-backup.*"):
        suffix = backup.name.rsplit(".", 1)[1]
        with contextlib.suppress(OSError):
            if suffix.isdigit() and marker in backup.read_text(errors="replace"):
                pids.add(int(suffix))
    for pid in pids:
        if not running(pid):
            for name in VPNC_FILES:
                (VPNC_STATE / f"{name}.{pid}").unlink(missing_ok=True)
