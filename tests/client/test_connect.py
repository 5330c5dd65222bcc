"""`ogsctl connect` against a real socket API with canned answers: the dry run, the
refusals, and what is asked of ogsd. openconnect itself runs in tests/test_connect_lab.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.from_thread
import pytest

from ogsd.client import ctl
from ogsd.client.connect import HOOK
from ogsd.client.openconnect import Attempt
from ogsd.client.plan import FALLBACK_NOTE
from ogsd.client.session import Outcome, wait_readable
from ogsd.client.supervise import WATCH_RETRY_S, Follow, Settings
from ogsd.core.models import Gateway
from ogsd.daemon.api import ApiServer
from ogsd.wire.api import Json, gateway_json
from tests.daemon.test_api import NOBODY, CannedHandler, run_as

WAIT_S = 10.0  # a decision published reaches the watcher at once; bound for a busy machine
# The in-process server logs to this test's stdout too ("api request forbidden").
SERVER_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
GATEWAYS = (Gateway("vpn-tokyo.example.com", user_group="tokyo-staff",
                    backups=("vpn-tokyo-backup.example.com",)),
            Gateway("vpn-osaka.example.com"),
            Gateway("vpn-sydney.example.com", port=8443))


class Handler(CannedHandler):
    """The canned decision (tokyo, its backup, osaka, sydney) and its configuration."""

    async def gateways(self) -> Json:
        self._record("gateways")
        return {"gateways": [gateway_json(g) for g in GATEWAYS]}


@dataclass
class Daemon:
    path: Path
    handler: Handler


@pytest.fixture
def daemon(shared_dir: Path) -> Iterator[Daemon]:
    handler = Handler()
    path = shared_dir / "ogsd.sock"
    with anyio.from_thread.start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
        # Group nogroup: uid 65534 may read (as a user in ogsd's socket group would).
        future, _ = portal.start_task(ApiServer(handler, path=path,
                                                socket_group="nogroup").serve)
        yield Daemon(path, handler)
        future.cancel()


def ogsctl(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "--socket", str(path), *args],
                          capture_output=True, text=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)


def expected_plan(openconnect: str, *user: str) -> list[str]:
    hook = str(HOOK)
    return [
        "ogsd's choice: vpn-tokyo.example.com (probes: Selected 'vpn-tokyo.example.com' "
        "(23.4 ms network RTT) from 3 gateways) [{rules}]",
        "Failover order (4 servers; each is tried when the one before cannot establish the "
        "session):",
        "  1. vpn-tokyo.example.com  (optimal server, group 'tokyo-staff')",
        f"     {openconnect} --script {hook} --usergroup=tokyo-staff {' '.join(user)} "
        "https://vpn-tokyo.example.com",
        "  2. vpn-tokyo-backup.example.com  (backup of vpn-tokyo.example.com, group "
        "'tokyo-staff')",
        f"     {openconnect} --script {hook} --usergroup=tokyo-staff {' '.join(user)} "
        "https://vpn-tokyo-backup.example.com",
        "  3. vpn-osaka.example.com  (next in OGS order)",
        f"     {openconnect} --script {hook} {' '.join(user)} https://vpn-osaka.example.com",
        "  4. vpn-sydney.example.com:8443  (next in OGS order)",
        f"     {openconnect} --script {hook} {' '.join(user)} "
        "https://vpn-sydney.example.com:8443",
    ]


def test_dry_run_prints_the_order_and_the_command_lines(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "connect", "--dry-run", "--openconnect", "/opt/oc",
                  "--", "-u", "alice")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines == [line.format(rules="connect-time rules")
                     for line in expected_plan("/opt/oc", "-u", "alice")]
    assert daemon.handler.calls == [("gateways", {}),
                                    ("evaluate", {"wait": True, "connect": True})]


def test_dry_run_json_is_a_document(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "connect", "--dry-run", "--json", "--openconnect", "/opt/oc",
                  "--", "--passwd-on-stdin", "-u", "alice", "--proxy", "http://proxy:3128")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["rules"], doc["note"], doc["selected"], doc["stdin"], doc["tcp_precheck"]) == (
        "connect", None, "vpn-tokyo.example.com", "replayed", False)
    assert [(a["host"], a["port"], a["primary"], a["user_group"], a["role"])
            for a in doc["attempts"]] == [
        ("vpn-tokyo.example.com", 443, "vpn-tokyo.example.com", "tokyo-staff", "optimal server"),
        ("vpn-tokyo-backup.example.com", 443, "vpn-tokyo.example.com", "tokyo-staff",
         "backup of vpn-tokyo.example.com"),
        ("vpn-osaka.example.com", 443, "vpn-osaka.example.com", None, "next in OGS order"),
        ("vpn-sydney.example.com", 8443, "vpn-sydney.example.com", None, "next in OGS order")]
    assert doc["attempts"][2]["argv"] == [
        "/opt/oc", "--script", str(HOOK), "--passwd-on-stdin", "-u", "alice", "--proxy",
        "http://proxy:3128", "https://vpn-osaka.example.com"]


@pytest.mark.root  # setresuid
def test_dry_run_without_admin_rights_shows_the_current_selection(
        daemon: Daemon, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    code = run_as(NOBODY, NOBODY, lambda: _run_flushed(
        "--socket", str(daemon.path), "connect", "--dry-run", "--openconnect", "/opt/oc",
        "--", "-u", "alice"))
    out, err = capfd.readouterr()
    assert code == 0
    assert err == f"ogsctl: note: {FALLBACK_NOTE}\n"
    ours = [line for line in out.splitlines() if not SERVER_LOG.match(line)]
    assert ours == [line.format(rules="current selection")
                    for line in expected_plan("/opt/oc", "-u", "alice")]
    # evaluate was refused by the server before the handler saw it.
    assert [name for name, _ in daemon.handler.calls] == ["gateways", "selection"]


@pytest.mark.root  # setresuid
def test_live_connect_without_root_says_why_in_one_line(
        daemon: Daemon, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    code = run_as(NOBODY, NOBODY, lambda: _run_flushed(
        "--socket", str(daemon.path), "connect", "--", "-u", "alice"))
    assert code == 1
    assert capfd.readouterr().err == (
        "ogsctl: openconnect needs root for its tun device: sudo ogsctl connect ... "
        "(ogsctl connect --dry-run works without)\n")
    assert daemon.handler.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--", "vpn.example.com"], "ogsctl: connect: unexpected argument 'vpn.example.com': "
                                    "the server is ogsd's choice (ogsctl connect passes it to "
                                    "openconnect)"),
        (["--", "-b"], "ogsctl: connect: --background cannot be used with ogsctl connect: "
                       "ogsctl connect supervises openconnect in the foreground; run ogsctl "
                       "connect itself in the background"),
        (["--json"], "ogsctl: connect: --json goes with --dry-run (a live connect prints "
                     "openconnect's output)"),
        (["--once", "--follow"], "ogsctl: connect: --follow reconnects, --once does not: "
                                 "choose one"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(daemon: Daemon, args: list[str],
                                               message: str) -> None:
    done = ogsctl(daemon.path, "connect", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")
    assert daemon.handler.calls == []


def test_no_daemon_is_exit_3(tmp_path: Path) -> None:
    done = ogsctl(tmp_path / "none.sock", "connect", "--dry-run")
    assert done.returncode == 3
    assert done.stderr == f"ogsctl: ogsd is not running (no socket at {tmp_path}/none.sock)\n"


def test_no_gateway_selected_is_exit_1(daemon: Daemon) -> None:
    daemon.handler.decision = None
    done = ogsctl(daemon.path, "connect", "--dry-run")
    assert (done.returncode, done.stderr) == (
        1, "ogsctl: ogsd has no gateway to connect to: no decision yet\n")


@pytest.mark.root  # a live connect needs root before anything else
def test_missing_openconnect_is_named(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "connect", "--openconnect", "/nonexistent/openconnect")
    assert (done.returncode, done.stderr) == (
        1, "ogsctl: openconnect not found (/nonexistent/openconnect): install it (apt install "
           "openconnect) or give --openconnect PATH\n")


def _run_flushed(*args: str) -> int:
    """ctl.run in a forked child, which leaves by os._exit: flush what it printed."""
    code = ctl.run(list(args))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def test_connect_imports_only_the_standard_library() -> None:
    # ogsctl starts fast: nothing of the daemon's dependencies.
    code = ("import sys, ogsd.client.ctl, ogsd.client.connect, ogsd.client.supervise\n"
            "import ogsd.client.session, ogsd.client.openconnect\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'anyio', 'structlog', "
            "'sqlalchemy', 'dns', 'pyroute2', 'dbus_fast', 'uvloop', 'defusedxml'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout == "[]\n"


RESUME = {"trigger": "resume", "source": "probes", "selected": "vpn-osaka.example.com",
          "reason": "resume after 5.0 h: 40 % better", "decided_at": "2026-11-26T12:00:00Z",
          "order": ["vpn-osaka.example.com", "vpn-tokyo.example.com"]}


def test_follow_hears_resume_decisions_and_watches_again_after_ogsd_restarts(
        shared_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = shared_dir / "ogsd.sock"
    outcome = Outcome(Attempt("vpn-tokyo.example.com", 443, "vpn-tokyo.example.com", None,
                              "optimal server"))
    recommend = Follow(Settings("oc", "hook", str(path), "ogsctl"))
    move = Follow(Settings("oc", "hook", str(path), "ogsctl", follow=True))

    def heard(follow: Follow) -> bool:
        fd = follow.fileno()
        assert fd is not None
        assert wait_readable(fd, WAIT_S)
        return follow.readable(outcome)

    for run in (1, 2):  # ogsd, then ogsd again after a restart
        handler = Handler()
        with anyio.from_thread.start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
            future, _ = portal.start_task(ApiServer(handler, path=path).serve)
            if run == 1:
                recommend.start(outcome)
            else:  # the watch ended with the old daemon; due again after WATCH_RETRY_S
                deadline = recommend.deadline()
                assert deadline is not None
                assert deadline - time.monotonic() <= WATCH_RETRY_S
                recommend.tick(deadline)
            move.start(outcome)
            end = time.monotonic() + WAIT_S
            while portal.call(getattr, handler.feed, "subscribers") < 2:  # both watching
                assert time.monotonic() < end, "two watches not subscribed"
                time.sleep(0.01)
            capfd.readouterr()
            portal.call(handler.feed.publish, {**RESUME, "trigger": "periodic"})  # not one
            assert (heard(recommend), heard(move)) == (False, False)
            assert capfd.readouterr().err == ""
            portal.call(handler.feed.publish, {**RESUME, "decided_at": f"run {run}"})
            assert heard(recommend) is False
            assert heard(move) is True
            assert outcome.switch_to == {**RESUME, "decided_at": f"run {run}"}
            outcome.switch_to = None
            move.stop()
            assert capfd.readouterr().err.splitlines() == [
                "ogsctl: after resume ogsd recommends vpn-osaka.example.com (resume after "
                "5.0 h: 40 % better); keeping the session on vpn-tokyo.example.com (--follow "
                "would move it)",
                "ogsctl: after resume ogsd selects vpn-osaka.example.com (resume after 5.0 h: "
                "40 % better): moving the session there (--follow)"]
            future.cancel()
        assert heard(recommend) is False  # the stream ended: closed, to be opened again
        assert recommend.fileno() is None
    recommend.stop()
