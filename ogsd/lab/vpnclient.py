"""openconnect in the lab's client namespace, with its script calls reported to the caller.

`Lab.openconnect(host)` starts the real openconnect with a small hook as `--script`: the
hook runs the stock vpnc-script (or the script the caller named), which really rewrites
the namespace's routes and resolv.conf, then writes one line per call (`reason`, the
script's exit status and the variables vpnc-script read) to a pipe the caller reads.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VPNC_SCRIPT = "/usr/share/vpnc-scripts/vpnc-script"
OPENCONNECT = "/usr/sbin/openconnect"
# What the hook reports of each call (vpnc-script's inputs that tests look at).
REPORTED = (
    "TUNDEV",
    "VPNGATEWAY",
    "VPNPID",
    "INTERNAL_IP4_ADDRESS",
    "INTERNAL_IP4_NETADDR",
    "INTERNAL_IP4_NETMASKLEN",
    "INTERNAL_IP4_DNS",
    "CISCO_DEF_DOMAIN",
    "CISCO_SPLIT_INC",
)
# The hook reports after the script has run, so a caller woken by `connect` finds the routes
# and resolv.conf already set; `trap '' PIPE`: a reader gone away must not fail the call.
# bash, not sh: dash cannot redirect to a descriptor above 9.
HOOK = """#!/bin/bash
# Written by ogsd.lab: run the real script for this openconnect call, then report it.
trap '' PIPE
"${{OGSD_LAB_VPNC_SCRIPT:-{script}}}"
status=$?
if [ -n "$OGSD_LAB_EVENT_FD" ]; then
    printf 'reason=%s\\tstatus=%s\\thook=%s{fields}\\n' "$reason" "$status" "$$" {values} \\
        >&"$OGSD_LAB_EVENT_FD" 2>/dev/null
fi
exit $status
""".format(
    fields="".join(f"\\t{name}=%s" for name in REPORTED),
    values=" ".join(f'"${name}"' for name in REPORTED),
    script=VPNC_SCRIPT,
)
# In the lab's state directory: the pids of the openconnect processes Lab.openconnect started.
OPENCONNECT_PIDS = "openconnect.pids"
# A password login takes ~10 RTTs plus ~100 ms here; 30 s covers a 2 s RTT and a busy box.
CONNECT_TIMEOUT_S = 30.0
# A clean logout is one more round trip and the script's restore.
EXIT_TIMEOUT_S = 15.0


class VpnError(RuntimeError):
    """openconnect did not reach the awaited state; the message carries its last output."""


@dataclass(frozen=True, slots=True)
class VpnEvent:
    """One call of openconnect's script: the reason and what vpnc-script was told."""

    reason: str  # pre-init, connect, disconnect, attempt-reconnect, reconnect
    env: dict[str, str]
    at: float  # time.monotonic() when the caller read it


def _wait_gone(pid: str, deadline: float) -> None:
    """Wait (until `deadline`) for the hook process `pid` to exit.

    openconnect waits for its script in waitpid(); a SIGINT landing there makes it log
    "Failed to spawn script" and skip the disconnect script, leaving routes and resolv.conf
    as the VPN set them. Once the hook has exited, openconnect's wait is over.
    """
    if not pid.isdigit():
        return
    try:
        fd = os.pidfd_open(int(pid))
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(fd)


def write_hook(path: Path) -> Path:
    """Write the hook script (executable) at `path`."""
    path.write_text(HOOK)
    path.chmod(0o755)
    return path


def parse_event(line: str, at: float) -> VpnEvent:
    """One hook line -> VpnEvent."""
    fields = dict(part.split("=", 1) for part in line.rstrip("\n").split("\t") if "=" in part)
    return VpnEvent(fields.pop("reason", ""), fields, at)


@dataclass
class VpnClient:
    """A running openconnect in the client namespace. Read its script calls, stop it."""

    host: str
    proc: subprocess.Popen[bytes]
    events_fd: int  # read end of the hook's pipe
    log: Path  # openconnect's stdout and stderr
    started: float  # time.monotonic() before it was started
    events: list[VpnEvent] = field(default_factory=list)
    _buffer: bytes = b""
    _cursor: int = 0  # events before this index were returned or passed over by wait_for

    @property
    def pid(self) -> int:
        """openconnect's pid (`ip netns exec` execs it: no wrapper process)."""
        return self.proc.pid

    def output(self) -> str:
        """What openconnect has printed so far."""
        return self.log.read_text(errors="replace")

    def _read_events(self, timeout: float) -> bool:
        """Read what the hook wrote within `timeout`; False at end of file (openconnect gone)."""
        ready, _, _ = select.select([self.events_fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        chunk = os.read(self.events_fd, 65536)
        if not chunk:
            return False
        self._buffer += chunk
        now = time.monotonic()
        *lines, self._buffer = self._buffer.split(b"\n")
        self.events += [parse_event(line.decode(errors="replace"), now) for line in lines]
        return True

    def wait_for(self, reason: str, timeout: float = CONNECT_TIMEOUT_S) -> VpnEvent:
        """The next script call with `reason` after the last one returned; VpnError if none."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self._cursor, len(self.events)):
                if self.events[i].reason == reason:
                    self._cursor = i + 1
                    _wait_gone(self.events[i].env.get("hook", ""), deadline)
                    return self.events[i]
            left = deadline - time.monotonic()
            if left <= 0:
                raise VpnError(
                    f"openconnect to {self.host}: no {reason!r} in {timeout:g} s; "
                    f"output: {self._tail()}"
                )
            if not self._read_events(left):
                self.proc.wait()
                raise VpnError(
                    f"openconnect to {self.host} exited ({self.proc.returncode}) before "
                    f"{reason!r}; output: {self._tail()}"
                )

    def wait_connected(self, timeout: float = CONNECT_TIMEOUT_S) -> VpnEvent:
        """The `connect` call: routes and resolv.conf are set once this returns."""
        return self.wait_for("connect", timeout)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """openconnect's exit status, once every script call it made has been read."""
        deadline = time.monotonic() + timeout
        while self._read_events(deadline - time.monotonic()):
            if time.monotonic() >= deadline:
                raise VpnError(f"openconnect to {self.host} still running after {timeout:g} s")
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise VpnError(
                f"openconnect to {self.host} still running after {timeout:g} s"
            ) from None

    def disconnect(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """SIGINT (a clean logout: vpnc-script restores routes and resolv.conf); exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL: no logout, no script; what a crash leaves behind stays."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Stop openconnect if it still runs and release the pipe."""
        if self.proc.poll() is None:
            try:
                self.disconnect()
            except VpnError:
                self.kill()
        with contextlib.suppress(OSError):
            os.close(self.events_fd)

    def _tail(self) -> str:
        return " | ".join(self.output().strip().splitlines()[-5:]) or "nothing"


def start_openconnect(
    popen: Callable[..., subprocess.Popen[Any]],
    argv: Sequence[str],
    *,
    target: str,
    password: str,
    script: str | None,
    state_dir: Path,
) -> VpnClient:
    """Start `argv` (openconnect with `--passwd-on-stdin`) through `popen`, with the hook.

    `popen` starts a command in the client namespace (Lab.popen). The pid goes to
    `state_dir`/OPENCONNECT_PIDS, so a teardown can remove what vpnc-script left for it.
    """
    hook = write_hook(state_dir / "vpnc-hook")
    read_end, write_end = os.pipe()
    env = {**os.environ, "OGSD_LAB_EVENT_FD": str(write_end)}
    if script is not None:
        env["OGSD_LAB_VPNC_SCRIPT"] = script
    log = state_dir / f"openconnect-{time.monotonic_ns()}.log"
    started = time.monotonic()
    try:
        with log.open("wb") as out:
            proc = popen(
                [*argv, "--script", str(hook)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
                env=env,
            )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    with (state_dir / OPENCONNECT_PIDS).open("a") as pids:
        pids.write(f"{proc.pid}\n")
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(f"{password}\n".encode())
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    return VpnClient(target, proc, read_end, log, started)
