"""openconnect in the foreground, supervised: `ogsctl connect`'s failover and reconnects.

Like openconnect itself: its output passes through unchanged, signals are passed on,
its exit status is ours. What openconnect does not say in its exit status comes from
ogsd's hook (the tunnel came up: a line on a FIFO) and, before that, from its text
(`ogsd.client.openconnect.classify`). One run is `ogsd.client.session`; this is the
policy across runs and ogsd's decisions while connected. Stdlib only.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from ogsd.client.conn import DEFAULT_TIMEOUT_S, EXIT_ERROR, Connection, CtlError
from ogsd.client.openconnect import (
    Attempt,
    UserOptions,
    Verdict,
    classify,
    command,
    plan_attempts,
    portal_gateways,
)
from ogsd.client.plan import Plan, fetch_plan, say
from ogsd.client.session import (
    PASS_SIGNALS,
    READ_CHUNK,
    STOP_SIGNALS,
    HookFifo,
    Outcome,
    Session,
    drain_wakeups,
    wait_readable,
)

# A TCP connect to a server that does not answer: the kernel would retry SYNs for ~130 s
# (openconnect has no connect timeout of its own). AnyConnect-like failover moves on
# sooner; 10 s still covers three SYN retransmissions (at 1, 3 and 7 s).
PRECHECK_TIMEOUT_S = 10.0
# Reconnect delays after a session ended by itself: doubling, never a hot loop.
RECONNECT_BACKOFF_S = (1.0, 60.0)
# A session that lasted this long was a good one: the next reconnect starts from scratch.
STABLE_SESSION_S = 60.0
# A decision watch that could not open or dropped (ogsd restarting): retry this often.
WATCH_RETRY_S = 5.0
STOP_TEXT = {Verdict.AUTH: "authentication failed", Verdict.CERTIFICATE:
             "certificate not accepted", Verdict.UNKNOWN: "openconnect failed"}


class Interrupted(Exception):
    """A stop signal while no openconnect runs: exit 128+signal, like a shell."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True, slots=True)
class Settings:
    openconnect: str
    script: str  # openconnect's --script value: ogsd's hook
    socket_path: str
    ogsctl: str  # what the hook calls to notify ogsd
    once: bool = False
    follow: bool = False
    timeout: float = DEFAULT_TIMEOUT_S
    protocol: str | None = None  # --protocol
    portal: str | None = None  # the GlobalProtect portal given on the command line


def precheck(host: str, port: int, timeout: float = PRECHECK_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens within `timeout`, else why not."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    errors = []
    for family, kind, proto, _, address in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        named = "" if address[0] == host else f"{address[0]}: "
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            try:
                sock.connect(address)
                return None
            except TimeoutError:
                errors.append(f"{named}no answer within {timeout:g} s")
            except OSError as exc:
                errors.append(f"{named}{exc.strerror or exc}")
    return f"TCP connect to {where}: {'; '.join(errors) or 'timed out'}"


class Watch:
    """ogsd's decision stream (`watch`) on a non-blocking socket."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        conn = Connection(socket_path, timeout)
        try:
            conn.request("watch")
        except CtlError:
            conn.close()
            raise
        self.sock, self._buffer = conn.detach()
        self.sock.setblocking(False)

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """Decisions received so far, and whether the stream is still open."""
        try:
            chunk = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            chunk, open_ = b"", True
        except OSError:
            chunk, open_ = b"", False
        else:
            open_ = bool(chunk)
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        decisions = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == "decision" \
                    and isinstance(message.get("data"), dict):
                decisions.append(message["data"])
        return decisions, open_

    def close(self) -> None:
        self.sock.close()


def report_portal(settings: Settings, outcome: Outcome) -> None:
    """Tell ogsd the gateways openconnect listed after logging into a GlobalProtect portal
    (once per list: at the tunnel's start, and after a run that never got one)."""
    attempt = outcome.attempt
    if attempt.portal is None or outcome.portal_reported:
        return
    listed = portal_gateways(outcome.lines)
    if not listed:
        return
    outcome.portal_reported = True
    conn = Connection(settings.socket_path, settings.timeout)
    try:
        answer = conn.request("notify.portal", {"portal": attempt.portal, "gateways": listed})
    except CtlError as exc:
        say(f"could not tell ogsd the gateways of {attempt.portal}: {exc.message}")
        return
    finally:
        conn.close()
    if answer.get("learnt"):
        say(f"ogsd learnt the {len(listed)} gateways {attempt.portal} lists; it chooses "
            "among them from the next connect on")


class Follow:
    """ogsd's decisions while the tunnel is up: after resume, another gateway is
    recommended (printed) or, with --follow, the session moves there."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._watch: Watch | None = None
        self._retry_at: float | None = None
        self._recommended: set[str] = set()

    def start(self, outcome: Outcome) -> None:
        report_portal(self._settings, outcome)
        self._open()

    def _open(self) -> None:
        self._retry_at = None
        try:
            self._watch = Watch(self._settings.socket_path, self._settings.timeout)
        except CtlError:
            self._retry_at = time.monotonic() + WATCH_RETRY_S

    def stop(self) -> None:
        self._retry_at = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def fileno(self) -> int | None:
        return None if self._watch is None else self._watch.sock.fileno()

    def deadline(self) -> float | None:
        return self._retry_at

    def tick(self, now: float) -> None:
        self._open()

    def readable(self, outcome: Outcome) -> bool:
        assert self._watch is not None
        decisions, open_ = self._watch.read()
        if not open_:  # ogsd went away (a restart): watch again when it is back
            self.stop()
            self._retry_at = time.monotonic() + WATCH_RETRY_S
        move = False
        for data in decisions:
            selected = data.get("selected")
            if data.get("trigger") != "resume" or data.get("source") != "probes" \
                    or not selected or selected == outcome.attempt.host:
                continue
            why = data.get("reason") or "-"
            if self._settings.follow and outcome.switch_to is None:
                say(f"after resume ogsd selects {selected} ({why}): moving the session "
                    "there (--follow)")
                outcome.switch_to = data
                move = True
            elif not self._settings.follow and str(data.get("decided_at")) not in \
                    self._recommended:
                self._recommended.add(str(data.get("decided_at")))
                say(f"after resume ogsd recommends {selected} ({why}); keeping the session "
                    f"on {outcome.attempt.label} (--follow would move it)")
        return move


class Supervisor:
    """Runs openconnect through the failover order, and again when a session ends."""

    def __init__(self, settings: Settings, options: UserOptions,
                 secret: bytes | bytearray) -> None:
        self.settings = settings
        self.options = options
        self.secret = secret
        self._closing = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._hook = HookFifo()
        self._session = Session(self._wake_r, self._hook, Follow(settings), say)
        self._previous: dict[int, Any] = {}

    # --- lifecycle ---------------------------------------------------------------

    def run(self, plan: Plan) -> int:
        self._install_signals()
        try:
            return self._loop(plan)
        except Interrupted as exc:
            return 128 + exc.signum
        finally:
            self._closing = True
            self._restore_signals()
            self._session.close()
            self._hook.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (*PASS_SIGNALS, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore_signals(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(-1)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # With openconnect running, the session reads the wakeup fd and passes the signal
        # on. Without, a stop signal ends us wherever we wait (a pre-check, ogsd).
        if not self._session.busy and not self._closing and signum in STOP_SIGNALS:
            raise Interrupted(signum)

    # --- the failover order, and reconnects -----------------------------------------

    def _loop(self, plan: Plan) -> int:
        say(plan.summary)
        first = True
        delay = RECONNECT_BACKOFF_S[0]
        while True:
            outcome, code = self._through_order(plan, first=first)
            first = False
            if code is not None:
                return code
            if outcome is None:  # a reconnect round where no server came up
                say(f"retrying in {delay:g} s")
            elif outcome.switch_to is not None and outcome.stopped_by is None:
                # The resume decision itself: asking again now would keep the old
                # selection (a reconnection within the suspend time of our logout).
                plan = Plan(outcome.switch_to, tuple(plan_attempts(
                    [str(h) for h in outcome.switch_to.get("order") or []], plan.gateways,
                    portal=self.settings.portal)), plan.gateways, "resume")
                delay = RECONNECT_BACKOFF_S[0]
                continue
            elif outcome.stopped_by is not None or outcome.code == 0 or self.settings.once:
                return outcome.code  # stopped by the user, or by whoever signalled openconnect
            else:
                assert outcome.established_at is not None
                if time.monotonic() - outcome.established_at >= STABLE_SESSION_S:
                    delay = RECONNECT_BACKOFF_S[0]
                say(f"the session with {outcome.attempt.label} ended (openconnect exit "
                    f"{outcome.code}); reconnecting in {delay:g} s to the server ogsd's "
                    "connect-time rules give now")
            self._pause(delay)
            delay = min(delay * 2, RECONNECT_BACKOFF_S[1])
            plan = self._refresh(plan)

    def _through_order(self, plan: Plan, *, first: bool) -> tuple[Outcome | None, int | None]:
        """Try the attempts in order until a session comes up and ends (the outcome) or a
        failure says stop (the exit code). Neither: every server failed on a reconnect."""
        total = len(plan.attempts)
        last_code = EXIT_ERROR
        for n, attempt in enumerate(plan.attempts, 1):
            group = f", group '{attempt.user_group}'" if attempt.user_group else ""
            say(f"trying {attempt.label} ({n}/{total}, {attempt.role}{group})")
            if self.options.direct:
                why = precheck(attempt.host, attempt.port)
                if why is not None:
                    say(f"left {attempt.label}: {why}")
                    continue
            outcome = self._run(attempt)
            report_portal(self.settings, outcome)  # a portal login, whatever came after
            last_code = outcome.code
            if outcome.established_at is not None:
                return outcome, None
            if outcome.stopped_by is not None or outcome.code == 0:
                # Stopped by the user, or done without a tunnel (--authenticate, --version).
                return None, outcome.code
            if outcome.authenticated:
                say(f"not trying other servers: {attempt.label} accepted the login but the "
                    f"tunnel could not be set up here (openconnect exit {outcome.code})")
                return None, outcome.code
            verdict = classify(outcome.lines)
            if verdict.failover:
                say(f"left {attempt.label}: {verdict.reason}")
                continue
            say(f"not trying other servers: {STOP_TEXT[verdict.verdict]} at {attempt.label}: "
                f"{verdict.reason}; openconnect exit {outcome.code}")
            return None, outcome.code
        say(f"none of the {total} servers could establish the session")
        return None, (last_code if first else None)

    def _refresh(self, plan: Plan) -> Plan:
        """The connect-time rules' answer now; the last plan if ogsd cannot answer."""
        try:
            fresh = fetch_plan(self.settings.socket_path, read_only_ok=False,
                               protocol=self.settings.protocol, portal=self.settings.portal)
        except CtlError as exc:
            say(f"{exc.message}; keeping the previous order")
            return plan
        say(fresh.summary)
        return fresh

    def _pause(self, seconds: float) -> None:
        """Sleep; a stop signal ends it (Interrupted, from the handler)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            drain_wakeups(self._wake_r)
            wait_readable(self._wake_r, left)

    # --- one openconnect run ----------------------------------------------------------

    def _run(self, attempt: Attempt) -> Outcome:
        argv = command(self.settings.openconnect, self.settings.script, attempt, self.options)
        say(f"$ {shlex.join(argv)}")
        env = dict(os.environ)
        env.update(OGSD_CONNECT_FIFO=str(self._hook.path), OGSD_GATEWAY=attempt.host,
                   OGSD_SOCKET=self.settings.socket_path, OGSCTL=self.settings.ogsctl,
                   # classify() reads openconnect's English text (it ships translations).
                   LANGUAGE="en")
        if self.options.script:
            env["VPNC_SCRIPT"] = self.options.script
        try:
            outcome = self._session.run(
                attempt, argv, env, secret=self.secret if self.options.replay_stdin else None)
        except OSError as exc:
            raise CtlError(EXIT_ERROR, f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        if outcome.established_at is not None and not outcome.tunnel_down:
            self._notify_down(outcome.device)
        return outcome

    def _notify_down(self, device: str | None) -> None:
        """openconnect ended without its disconnect hook (killed): tell ogsd ourselves."""
        try:
            conn = Connection(self.settings.socket_path, self.settings.timeout)
            try:
                conn.request("notify.disconnected", {"device": device} if device else {})
            finally:
                conn.close()
        except CtlError as exc:
            say(f"could not tell ogsd the tunnel is down: {exc.message}")
