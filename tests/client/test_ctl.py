"""`ogsctl` as users run it: a subprocess against a real server on a Unix socket."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.from_thread
import pytest

from ogsd.client import ctl
from ogsd.client.ctl import format_nm_apply
from ogsd.core.models import Reason, Source
from ogsd.daemon.api import ApiServer
from ogsd.wire.api import decision_json
from tests.daemon.test_api import NOBODY, T0, CannedHandler, canned_decision, run_as


@dataclass
class Daemon:
    path: Path
    handler: CannedHandler
    portal: anyio.from_thread.BlockingPortal


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """An ApiServer with the canned handler, on uvloop in a background thread."""
    handler = CannedHandler()
    path = tmp_path / "ogsd.sock"
    with anyio.from_thread.start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
        server = ApiServer(handler, path=path)
        future, _ = portal.start_task(server.serve)
        yield Daemon(path, handler, portal)
        future.cancel()


def ogsctl(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "--socket", str(path), *args],
                          capture_output=True, text=True, timeout=20, check=False)


def test_status_is_a_few_aligned_lines(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "status")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "selected:        vpn-tokyo.example.com",
        "reason:          probes: Selected 'vpn-tokyo.example.com' (23.4 ms network RTT) "
        "from 3 gateways",
        "source:          probes",
        "location:        corp.example.com via 10.0.0.53, 10.0.0.54",
        "decided at:      2026-11-26T07:30:00.000000+00:00",
        "connected:       no",
        "recommendation:  stay on vpn-tokyo.example.com",
    ]


def test_status_while_connected_names_uplink_source_and_a_waiting_resume() -> None:
    status = {"selected": "vpn-tokyo.example.com", "reason": "kept", "reason_code": "kept",
              "source": "kept", "decided_at": None,
              "location": {"domain": "home.example", "servers": ["198.18.0.53"]},
              "location_source": "recorded when the VPN came up",
              "uplink": {"device": "wlan0", "gateway": "192.168.1.1",
                         "found_by": "route to the VPN gateway"},
              "connected": "vpn-tokyo.example.com", "connected_device": "tun0",
              "resume_pending": {"tests": 2, "give_up_in_s": 297.5,
                                 "last_test": "no default route"}}
    assert ctl.format_status(status) == [
        "selected:        vpn-tokyo.example.com",
        "reason:          kept: kept",
        "source:          kept",
        "location:        home.example via 198.18.0.53",
        "location from:   recorded when the VPN came up",
        "uplink:          wlan0 via 192.168.1.1 (route to the VPN gateway)",
        "decided at:      never",
        "connected:       vpn-tokyo.example.com on tun0",
        "recommendation:  none",
        "resume:          waiting for the network (2 tests, gives up in 297.5 s): "
        "no default route",
    ]


def test_best_and_order_are_scriptable(daemon: Daemon) -> None:
    best = ogsctl(daemon.path, "best")
    assert (best.returncode, best.stdout) == (0, "vpn-tokyo.example.com\n")
    order = ogsctl(daemon.path, "order")
    assert order.returncode == 0
    assert order.stdout.split("\n") == [
        "vpn-tokyo.example.com", "vpn-tokyo-backup.example.com", "vpn-osaka.example.com",
        "vpn-sydney.example.com", ""]


def test_best_without_a_selection_fails(daemon: Daemon) -> None:
    daemon.handler.decision = None
    done = ogsctl(daemon.path, "best")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "ogsctl: no gateway selected: no decision yet\n"
    assert ogsctl(daemon.path, "order").returncode == 1


def test_results_is_the_anyconnect_table(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "results")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == "*** OGS Selection Results ***"
    assert lines[1].split() == ["Server", "Address", "RTT", "(ms)"]
    assert lines[2].split() == ["vpn-tokyo.example.com", "23"]
    assert lines[3].split() == ["vpn-osaka.example.com", "30"]
    assert lines[4].split(maxsplit=1) == ["vpn-sydney.example.com", "unreachable: refused"]
    assert lines[5] == "Selected 'vpn-tokyo.example.com' as the optimal server."
    assert lines[6].startswith("Reason: Selected 'vpn-tokyo.example.com'")
    assert lines[1].index("RTT") == lines[2].index("23")  # the column lines up


def test_results_from_cache_say_so(daemon: Daemon) -> None:
    decision = canned_decision()
    daemon.handler.decision = type(decision)(
        location=decision.location, source=Source.CACHE, reason=Reason.CACHE,
        reason_text="cached order for corp.example.com (expires 2026-12-10)",
        selected=decision.selected, order=decision.order, metric=decision.metric,
        decided_at=decision.decided_at, results=decision.results)
    lines = ogsctl(daemon.path, "results").stdout.splitlines()
    assert lines[:2] == ["Results obtained from OGS cache. No ping tests were performed.",
                         "*** OGS Selection Results ***"]


def test_json_prints_the_raw_result(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "results", "--json")  # the option works after the command
    assert done.returncode == 0
    assert json.loads(done.stdout) == decision_json(canned_decision())


def test_evaluate(daemon: Daemon) -> None:
    started = ogsctl(daemon.path, "evaluate")
    assert (started.returncode, started.stdout) == (0, "evaluation started\n")
    waited = ogsctl(daemon.path, "evaluate", "--wait")
    assert waited.returncode == 0
    assert "Selected 'vpn-tokyo.example.com' as the optimal server." in waited.stdout
    assert ("evaluate", {"wait": True, "connect": False}) in daemon.handler.calls
    assert ogsctl(daemon.path, "evaluate", "--wait", "--full").returncode == 0
    assert ("evaluate", {"wait": True, "connect": False, "full": True}) in daemon.handler.calls


def test_cache_list_and_clear(daemon: Daemon) -> None:
    listed = ogsctl(daemon.path, "cache", "list")
    assert listed.returncode == 0
    assert listed.stdout == (
        "corp.example.com [10.0.0.53,10.0.0.54]  expires 2026-12-10T07:30:00.000000+00:00  order: "
        "vpn-tokyo.example.com > vpn-tokyo-backup.example.com > vpn-osaka.example.com > "
        "vpn-sydney.example.com\n")
    cleared = ogsctl(daemon.path, "cache", "clear")
    assert (cleared.returncode, cleared.stdout) == (
        0, "Cleared the OGS cache (1 entries); the next connection re-runs OGS.\n")


def test_notify_and_reload(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "notify", "connected", "vpn-osaka.example.com")
    assert (done.returncode, done.stdout) == (0, "connected to vpn-osaka.example.com\n")
    for event in ("disconnected", "sleep", "resume"):
        assert ogsctl(daemon.path, "notify", event).returncode == 0
    assert ogsctl(daemon.path, "reload").stdout == "reloaded 1 profile, 3 gateways\n"
    assert ogsctl(daemon.path, "notify", "connected", "--device", "tun0",
                  "vpn-osaka.example.com").returncode == 0
    assert ogsctl(daemon.path, "notify", "disconnected", "--device", "tun0").returncode == 0
    assert daemon.handler.calls == [
        ("notify_connected", {"host": "vpn-osaka.example.com"}), ("notify_disconnected", {}),
        ("notify_sleep", {}), ("notify_resume", {}), ("reload", {}),
        ("notify_connected", {"host": "vpn-osaka.example.com", "device": "tun0"}),
        ("notify_disconnected", {"device": "tun0"})]


def test_daemon_error_exits_1_with_its_message(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "notify", "connected", "vpn-nowhere.example.com")
    assert done.returncode == 1
    assert done.stderr == (
        "ogsctl: ogsd: notify.connected: unknown gateway 'vpn-nowhere.example.com'\n")


@pytest.mark.parametrize("args", [
    ["frobnicate"], [], ["notify", "connected"], ["cache", "purge"], ["--timeout", "-1", "best"],
    ["--timeout", "soon", "best"],
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = ogsctl(tmp_path / "ogsd.sock", *args)
    assert done.returncode == 2
    assert "usage: ogsctl" in done.stderr


def test_not_running_exits_3_naming_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "ogsd.sock"
    done = ogsctl(path, "status")
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr == f"ogsctl: ogsd is not running (no socket at {path})\n"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(os.fspath(path))  # a crashed daemon's leftover
        done = ogsctl(path, "best")
    assert done.returncode == 3
    assert done.stderr == f"ogsctl: ogsd is not running (nothing listens on {path})\n"


def test_silent_daemon_times_out_with_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "ogsd.sock"
    with socket.socket(socket.AF_UNIX) as mute:
        mute.bind(os.fspath(path))
        mute.listen()  # accepts (in the kernel) but never answers
        done = ogsctl(path, "--timeout", "0.3", "status")
    assert done.returncode == 3
    assert "ogsd did not answer within 0.3 s" in done.stderr


@pytest.mark.root  # setresuid
def test_unprivileged_user_reads_but_cannot_write(shared_dir: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    path = shared_dir / "ogsd.sock"
    handler = CannedHandler()
    with anyio.from_thread.start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
        server = ApiServer(handler, path=path, socket_group="nogroup")
        future, _ = portal.start_task(server.serve)
        capfd.readouterr()
        read = run_as(NOBODY, NOBODY, lambda: _run_flushed("--socket", str(path), "best"))
        assert (read, capfd.readouterr().out) == (0, "vpn-tokyo.example.com\n")
        write = run_as(NOBODY, NOBODY,
                       lambda: _run_flushed("--socket", str(path), "cache", "clear"))
        assert write == 4
        assert capfd.readouterr().err == (
            "ogsctl: ogsd: forbidden: 'cache.clear' needs admin rights; uid 65534 is not an "
            "admin (root, the daemon's user, admin_uids or admin_group)\n")
        future.cancel()
    assert [name for name, _ in handler.calls] == ["selection"]


@pytest.mark.root  # setresuid
def test_socket_mode_refusal_exits_4(shared_dir: Path, capfd: pytest.CaptureFixture[str]
                                     ) -> None:
    path = shared_dir / "ogsd.sock"
    with anyio.from_thread.start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
        future, _ = portal.start_task(ApiServer(CannedHandler(), path=path).serve)
        capfd.readouterr()
        code = run_as(NOBODY, NOBODY, lambda: _run_flushed("--socket", str(path), "status"))
        future.cancel()
    assert code == 4
    assert capfd.readouterr().err == (
        f"ogsctl: permission denied on {path} (are you in ogsd's socket group?)\n")


def _run_flushed(*args: str) -> int:
    """ctl.run in a forked child, which leaves by os._exit: flush what it printed."""
    code = ctl.run(list(args))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def test_watch_prints_each_decision_until_ctrl_c(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ogsd.client.ctl", "--socket", str(daemon.path), "watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        daemon.portal.call(_subscribed, daemon.handler)
        later = canned_decision(T0.replace(hour=8), selected="vpn-osaka.example.com")
        daemon.portal.call(daemon.handler.feed.publish, decision_json(later))
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "no event line within 10 s"
        line = proc.stdout.readline()
        assert line == ("2026-11-26T08:30:00.000000+00:00  vpn-osaka.example.com  probes/probes: "
                        "Selected 'vpn-osaka.example.com' (23.4 ms network RTT) from 3 "
                        "gateways\n")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()


async def _subscribed(handler: CannedHandler) -> None:
    with anyio.fail_after(10):
        await handler.subscribed.wait()


def test_ogsd_socket_variable_is_used(tmp_path: Path) -> None:
    env = {**os.environ, "OGSD_SOCKET": str(tmp_path / "env.sock")}
    done = subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "status"], env=env,
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 3
    assert str(tmp_path / "env.sock") in done.stderr


def test_results_table_is_fastest_first_even_when_the_order_keeps_the_current() -> None:
    # threshold-not-met: the failover order starts with the current, slower gateway.
    result = {"selected": "b", "order": ["b", "a", "c", "d"], "source": "probes",
              "results": [{"host": h, "rtt_ms": r, "error": e} for h, r, e in (
                  ("d", None, "refused"), ("c", None, "cancelled: could not beat a (9.0 ms)"),
                  ("b", 12.0, None), ("a", 9.0, None))]}
    rows = [line.split()[0] for line in ctl.format_results(result)[2:6]]
    assert rows == ["a", "b", "c", "d"]


NM_UUID = "6f2b0d5e-2f7a-4a4e-9b8e-222222222222"


# --- NetworkManager ----------------------------------------------------------------


def test_ogsctl_nm_apply_and_notify_by_uuid(daemon: Daemon) -> None:
    done = ogsctl(daemon.path, "nm-apply")
    assert (done.returncode, done.stdout) == (0, (
        "No NetworkManager connection to point: name one, or list them in "
        "[networkmanager] connections.\n"))
    ogsctl(daemon.path, "nm-apply", "Work VPN")
    ogsctl(daemon.path, "notify", "connected", "--nm-uuid", NM_UUID, "--device", "vpn0")
    assert daemon.handler.calls[-3:] == [
        ("nm_apply", {"connection": None}), ("nm_apply", {"connection": "Work VPN"}),
        ("notify_connected", {"host": None, "device": "vpn0", "nm_uuid": NM_UUID})]
    neither = ogsctl(daemon.path, "notify", "connected")
    assert neither.returncode == 2
    assert neither.stderr.endswith("ogsctl: error: notify connected: give HOST or --nm-uuid "
                                   "UUID\n")


def test_nm_apply_lines() -> None:
    assert format_nm_apply({"connections": [
        {"name": "Work VPN", "gateway": "vpn-osa.example.com", "lasthost": "Osaka",
         "changed": True},
        {"name": "Lab", "gateway": "vpn.example.com", "lasthost": None, "changed": False,
         "note": "active: left as it is until it disconnects"}]}) == [
        "Work VPN: pointed at vpn-osa.example.com (Osaka)",
        "Lab: points at vpn.example.com: active: left as it is until it disconnects"]
