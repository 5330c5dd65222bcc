"""A private system bus with a stand-in logind, for a daemon measured as on a laptop.

This machine has no system bus and no logind (systemd is not PID 1); without them ogsd's
sleep watcher falls back to watching clock gaps, which polls. A laptop has both, so the
footprint benchmark gives the daemon a real dbus-daemon and the tests' fake logind on it
(`tests.fakelogind`: real inhibitor fds, signals on demand; logind itself cannot run here).

    with private_logind() as address:   # DBUS_SYSTEM_BUS_ADDRESS for the daemon
        ...
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.dbus_fixtures import DBusDaemon
from tests.fakelogind import FakeLogind

# The stand-in logind is up once it printed its line; Python start-up plus a bus call.
READY_TIMEOUT_S = 20.0


async def _serve(address: str) -> None:
    logind = FakeLogind(address)
    await logind.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await logind.stop()


@contextmanager
def private_logind() -> Iterator[str]:
    """A dbus-daemon with a fake logind on it, for as long as the block runs; its address."""
    directory = Path(tempfile.mkdtemp(prefix="obus", dir="/tmp"))
    bus = DBusDaemon(directory)
    bus.start()
    proc = subprocess.Popen([sys.executable, "-m", "bench.logind", bus.address],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the fake logind did not start (exit {proc.poll()})")
        yield bus.address
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
