"""Pytest fixtures: a private dbus-daemon per test and a fake logind on it.

The daemon listens on a fixed socket path so a test can kill it and start it again at
the same address (a bus restart, as after `systemctl restart dbus`).
"""

from __future__ import annotations

import selectors
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fakelogind import FakeLogind

# dbus-daemon prints its address once it listens; it takes ~10 ms here. The bound is
# for a loaded CI machine, not an expected duration.
STARTUP_TIMEOUT = 10.0

# Everything allowed: the bus is private to one test. EXTERNAL auth is what dbus-fast
# and dbus-daemon speak over a unix socket; it also allows fd passing.
_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class DBusDaemon:
    """A dbus-daemon process on `unix:path=<dir>/bus`; restartable at the same address."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "bus"
        self.address = f"unix:path={self.socket}"
        self.config = directory / "bus.conf"
        self.config.write_text(_CONFIG.format(socket=self.socket))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and return once it listens (it has printed its address)."""
        if self._proc is not None:
            raise RuntimeError("dbus-daemon is already running")
        self.socket.unlink(missing_ok=True)  # left behind by a killed daemon
        proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self._proc = proc
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(STARTUP_TIMEOUT):
                self.stop()
                raise RuntimeError(f"dbus-daemon printed no address in {STARTUP_TIMEOUT} s")
        line = proc.stdout.readline().decode().strip()
        if not line.startswith(self.address):
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start: printed {line!r}")

    def stop(self) -> None:
        """Terminate the daemon (clients see their connection drop)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, STARTUP_TIMEOUT)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`; the stdout pipe closed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def dbus_daemon() -> Iterator[DBusDaemon]:
    """A private, running dbus-daemon."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed (Debian: apt install dbus-daemon)")
    # Not tmp_path: its long names can exceed the 108-byte limit of a unix socket path.
    directory = Path(tempfile.mkdtemp(prefix="ogsd-dbus-"))
    daemon = DBusDaemon(directory)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def fake_logind(dbus_daemon: DBusDaemon) -> AsyncIterator[FakeLogind]:
    """A fake logind owning org.freedesktop.login1 on `dbus_daemon` (asyncio backends)."""
    fake = FakeLogind(dbus_daemon.address)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
        fake.close()

