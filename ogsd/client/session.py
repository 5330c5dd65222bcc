"""One openconnect run under `ogsctl connect`, supervised until it exits.

Its output passes through unchanged (and its lines are kept for `classify`), ogsd's hook
reports each step on a FIFO, and signals reach it as openconnect itself defines them
(SIGINT/SIGTERM: logout; SIGHUP: detach; SIGUSR1: statistics; SIGUSR2: reconnect).
Stdlib only.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import select
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ogsd.client.openconnect import STOPPING, Attempt

# A stop signal arriving while openconnect runs its script waits for the script to end:
# openconnect stops waiting for it on EINTR, and a connect script then races the
# disconnect one (routes were seen lost). vpnc-script takes ~0.1 s; the hook's ogsctl
# call is bounded at 3 s. Whether a script runs is read from /proc, this often.
SCRIPT_HOLD_S = 10.0
SCRIPT_POLL_S = 0.02
# In the terminal's process group openconnect gets Ctrl-C itself, and a second SIGINT
# from us could land in its disconnect script (it stops waiting for the script on EINTR).
# There a stop signal is passed on only if openconnect shows no sign of stopping by then.
FORWARD_GRACE_S = 0.5
# Output lines kept per attempt for classify(): the failure is in the last few.
KEPT_LINES = 400
READ_CHUNK = 65536
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PASS_SIGNALS = (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGUSR2)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Outcome:
    """One openconnect run."""

    attempt: Attempt
    code: int = 0
    authenticated: bool = False  # the hook ran for pre-init: the login was accepted
    established_at: float | None = None  # the hook finished connect: the tunnel is up
    device: str | None = None
    tunnel_down: bool = False  # the hook ran for disconnect
    stopping: bool = False  # openconnect is logging out (its text, or its disconnect hook)
    stopped_by: int | None = None  # a stop signal from the user, passed on
    switch_to: dict[str, Any] | None = None  # --follow: the decision to move to
    portal_reported: bool = False  # its GlobalProtect portal's gateways told to ogsd
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=KEPT_LINES))


class Watcher(Protocol):
    """What else is watched while the tunnel is up (ogsd's decisions, for --follow)."""

    def start(self, outcome: Outcome) -> None:
        """The tunnel is up."""

    def stop(self) -> None:
        """The tunnel is down, or the run is over."""

    def fileno(self) -> int | None:
        """A descriptor to wait on, if any now."""

    def deadline(self) -> float | None:
        """When `tick` wants to run (monotonic), if ever."""

    def readable(self, outcome: Outcome) -> bool:
        """Its descriptor is readable; True: log out, the session moves elsewhere."""

    def tick(self, now: float) -> None:
        """A deadline passed."""


class HookFifo:
    """The FIFO ogsd's hook reports on ($OGSD_CONNECT_FIFO), in a private directory."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="ogsctl-connect-"))
        self.path = self._dir / "hook"
        os.mkfifo(self.path, 0o600)
        # Read-write: the FIFO never reports EOF, and a hook's open never blocks.
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._buffer = b""

    def events(self) -> list[list[str]]:
        """Lines from the hook: REASON PHASE DEVICE GATEWAY (PHASE: start, or the exit
        status of the vpnc-script it ran)."""
        try:
            self._buffer += os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return []
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode(errors="replace").split() for line in lines if line.strip()]

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)
        self._dir.rmdir()


class Session:
    """Runs openconnect once; `busy` from just before it starts until it is reaped."""

    def __init__(self, wake_fd: int, hook: HookFifo, watcher: Watcher,
                 say: Callable[[str], None]) -> None:
        self.busy = False
        self._wake_fd = wake_fd  # signal.set_wakeup_fd's pipe: the signals received
        self._hook = hook
        self._watcher = watcher
        self._say = say
        self._selector = selectors.DefaultSelector()

    def close(self) -> None:
        self._selector.close()

    def run(self, attempt: Attempt, argv: Sequence[str], env: Mapping[str, str], *,
            secret: bytes | bytearray | None) -> Outcome:
        """openconnect `argv` until it exits; `secret` (if any) is its stdin. OSError if it
        cannot be started."""
        outcome = Outcome(attempt)
        # openconnect reads the terminal only for prompts on an inherited terminal stdin;
        # otherwise it gets a process group of its own, so signals meant for the group
        # (Ctrl-C, `kill -- -PGID`) reach it once, through us.
        own_group = secret is not None or not _tty_stdin()
        drain_wakeups(self._wake_fd)  # signals from before this run are not for it
        self.busy = True
        try:
            proc = subprocess.Popen(
                argv, env=dict(env), stdin=subprocess.PIPE if secret is not None else None,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                process_group=0 if own_group else None,
                # openconnect keeps ignoring SIGPIPE: if we die, its writes to our pipes
                # fail instead of killing it before its logout and disconnect hook.
                restore_signals=False, preexec_fn=_parent_death_signal())  # noqa: PLW1509
        except BaseException:
            self.busy = False
            raise
        try:
            if proc.stdin is not None and secret is not None:
                # A pipe holds 64 KiB; the secret is at most STDIN_MAX: this never blocks.
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write(secret)
                    proc.stdin.close()
            self._supervise(proc, outcome, shared_group=not own_group)
        finally:
            self._watcher.stop()
            self.busy = False
        return outcome

    def _supervise(self, proc: subprocess.Popen[bytes], outcome: Outcome, *,
                   shared_group: bool) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        outputs = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
        partial = {fd: b"" for fd in outputs}
        signals = _Forwarder(proc, outcome, shared_group=shared_group)
        for fd in (*outputs, self._wake_fd, self._hook.fd):
            self._selector.register(fd, selectors.EVENT_READ)
        watched: int | None = None
        try:
            while True:
                # Registered afresh each time: a watch reopened after ogsd restarted may
                # reuse the number of the closed one, which epoll has forgotten.
                if watched is not None:
                    self._selector.unregister(watched)
                watched = self._watcher.fileno()
                if watched is not None:
                    self._selector.register(watched, selectors.EVENT_READ)
                now = time.monotonic()
                deadlines = [t for t in (self._watcher.deadline(), signals.due(now))
                             if t is not None]
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                for key, _ in self._selector.select(timeout):
                    if key.fd in outputs:
                        if not _pump(key.fd, outputs, partial, outcome):
                            self._selector.unregister(key.fd)
                            del outputs[key.fd]
                    elif key.fd == self._hook.fd:
                        for event in self._hook.events():
                            self._hook_event(event, outcome)
                    elif key.fd == watched and self._watcher.readable(outcome):
                        signals.move(time.monotonic())  # openconnect's clean logout
                now = time.monotonic()
                for signum in drain_wakeups(self._wake_fd):
                    signals.received(signum, now)
                signals.flush(now)
                if (deadline := self._watcher.deadline()) is not None and now >= deadline:
                    self._watcher.tick(now)
                code = proc.poll()
                if code is not None:
                    _drain_outputs(outputs, partial, outcome)
                    outcome.code = code if code >= 0 else 128 - code
                    return
        finally:
            for key in list(self._selector.get_map().values()):
                self._selector.unregister(key.fileobj)
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()

    def _hook_event(self, event: list[str], outcome: Outcome) -> None:
        if len(event) < 3:
            return
        reason, phase, device = event[0], event[1], event[2]
        if phase == "start":
            if reason == "disconnect":
                outcome.stopping = True
            return
        if reason == "pre-init":
            outcome.authenticated = True
        elif reason == "connect":
            outcome.established_at = time.monotonic()
            outcome.device = None if device == "-" else device
            self._say(f"connected to {outcome.attempt.label}"
                      + (f" on {outcome.device}" if outcome.device else "")
                      + (f" (vpnc-script exit {phase})" if phase != "0" else ""))
            self._watcher.start(outcome)
        elif reason == "disconnect":
            outcome.tunnel_down = True
            self._watcher.stop()


class _Forwarder:
    """Signals for openconnect, passed on when it can take them: not while its script
    runs (it would stop waiting for it), and a stop signal only if it is not stopping
    already (from Ctrl-C at a terminal it shares with us, after FORWARD_GRACE_S)."""

    def __init__(self, proc: subprocess.Popen[bytes], outcome: Outcome, *,
                 shared_group: bool) -> None:
        self._proc = proc
        self._outcome = outcome
        self._grace = FORWARD_GRACE_S if shared_group else 0.0
        self._stops: list[int] = []  # SIGINT, SIGTERM, SIGHUP not passed on yet
        self._others: list[int] = []  # SIGUSR1, SIGUSR2
        self._forward_at = self._stops_until = self._others_until = 0.0

    def received(self, signum: int, now: float) -> None:
        if signum == signal.SIGCHLD:
            return
        if signum not in STOP_SIGNALS:
            if not self._others:
                self._others_until = now + SCRIPT_HOLD_S
            self._others.append(signum)
            return
        self._outcome.stopped_by = signum
        self._stop(signum, now, self._grace)

    def move(self, now: float) -> None:
        """Log out so that the session moves (--follow): not the user's stop."""
        self._stop(signal.SIGINT, now, 0.0)

    def _stop(self, signum: int, now: float, grace: float) -> None:
        if not self._stops:
            self._forward_at, self._stops_until = now + grace, now + SCRIPT_HOLD_S
        self._stops.append(signum)

    def due(self, now: float) -> float | None:
        """When to look again: a signal waits for its grace or for the script to end."""
        if self._stops:
            return max(self._forward_at, now + SCRIPT_POLL_S)
        return now + SCRIPT_POLL_S if self._others else None

    def flush(self, now: float) -> None:
        pid = self._proc.pid
        if self._stops and now >= self._forward_at and (
                now >= self._stops_until or not _script_running(pid)):
            if not self._outcome.stopping:  # else it has the signal already
                for signum in self._stops:
                    self._proc.send_signal(signum)
            self._stops.clear()
        if self._others and (now >= self._others_until or not _script_running(pid)):
            for signum in self._others:
                self._proc.send_signal(signum)
            self._others.clear()


def drain_wakeups(fd: int) -> list[int]:
    """The signal numbers signal.set_wakeup_fd wrote since the last call."""
    try:
        return list(os.read(fd, 256))
    except BlockingIOError:
        return []


def wait_readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _pump(fd: int, outputs: dict[int, int], partial: dict[int, bytes],
          outcome: Outcome) -> bool:
    """Pass openconnect's bytes on unchanged, keep its lines; False at EOF."""
    try:
        data = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return True
    if not data:
        if partial[fd]:
            outcome.lines.append(partial[fd].decode(errors="replace"))
        return False
    _write_all(outputs[fd], data)
    *lines, partial[fd] = (partial[fd] + data).split(b"\n")
    for line in lines:
        text = line.decode(errors="replace")
        outcome.lines.append(text)
        if STOPPING.match(text):
            outcome.stopping = True
    return True


def _drain_outputs(outputs: dict[int, int], partial: dict[int, bytes],
                   outcome: Outcome) -> None:
    """What openconnect wrote before it exited (a child it left may hold the pipes)."""
    for fd in list(outputs):
        os.set_blocking(fd, False)
        while _pump(fd, outputs, partial, outcome) and wait_readable(fd, 0):
            pass


def _parent_death_signal() -> Callable[[], None]:
    """A preexec_fn: openconnect gets SIGTERM (a clean logout, its disconnect hook) if we
    die, instead of living on with nobody to supervise it."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def setup() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # we died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _script_running(pid: int) -> bool:
    """Whether openconnect (single-threaded) has a child: its --script, running."""
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:  # gone, or a kernel without CONFIG_PROC_CHILDREN: nothing to wait for
        return False


def _tty_stdin() -> bool:
    try:
        return os.isatty(0)
    except OSError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    """Our stdout or stderr; if it is gone, openconnect's output is dropped, never fatal."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except OSError:
            return
        view = view[written:]
