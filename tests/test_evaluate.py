"""`ogsd evaluate` end to end against real TLS servers on loopback.

Each gateway gets its own 127.0.0.x address (gateways are identified by host). Loopback
has no path delay, so ranking here uses the exchange metric with server-side delays;
ranking by network RTT over real distances is tested with the lab (tests/lab/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ogsd.cli import main
from tests.tlsserver import LoopbackServer, blackholed_port, refused_port

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@dataclass
class Env:
    tmp: Path
    config: Path
    resolv: Path
    state: Path

    def run(self, *extra: str, now: datetime = T0,
            capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, dict[str, Any]]:
        code = main(["-q", "evaluate", "--config", str(self.config), "--state-dir",
                     str(self.state), "--json", *extra], clock=lambda: now)
        assert capsys is not None
        out = capsys.readouterr().out
        return code, json.loads(out)


def write_config(tmp: Path, gateways: list[tuple[str, int]], *, extra: str = "") -> Env:
    resolv = tmp / "resolv.conf"
    resolv.write_text("search home.example\nnameserver 198.18.0.53\nnameserver 198.18.0.54\n")
    lines = [f'[dns]\nresolv_conf = "{resolv}"\n',
             '[ogs]\nmetric = "exchange"\nround_deadline_s = 2\nprobe_timeout_s = 1.5\n' + extra]
    lines += [f'[[gateway]]\nhost = "{h}"\nport = {p}\n' for h, p in gateways]
    config = tmp / "ogsd.toml"
    config.write_text("\n".join(lines))
    return Env(tmp, config, resolv, tmp / "state")


@pytest.fixture
def servers() -> Iterator[list[LoopbackServer]]:
    """Three healthy gateways answering after 0, 150 and 300 ms (room for CI noise)."""
    with ExitStack() as stack:
        yield [stack.enter_context(LoopbackServer(host=f"127.0.0.{i + 2}", delay=d))
               for i, d in enumerate((0.0, 0.15, 0.3))]


def gw(server: LoopbackServer) -> tuple[str, int]:
    return (server.host, server.port)


def test_probes_rank_and_cache(tmp_path: Path, servers: list[LoopbackServer],
                               capsys: pytest.CaptureFixture[str]) -> None:
    env = write_config(tmp_path, [gw(s) for s in reversed(servers)])
    code, out = env.run(capsys=capsys)
    assert code == 0
    assert out["source"] == "probes"
    assert out["selected"] == "127.0.0.2"
    order = out["order"]
    assert isinstance(order, list)
    assert sorted(order) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert out["metric"] == "exchange"
    location = out["location"]
    assert isinstance(location, dict)
    assert location["keys"] == ["home.example|198.18.0.53", "home.example|198.18.0.54"]
    results = out["results"]
    assert isinstance(results, list)
    by_host = {r["host"]: r for r in results}
    fast = by_host["127.0.0.2"]
    # The figure is the minimum of the probes (the winner's last ones may be cancelled
    # once they can no longer lower it).
    assert len(fast["exchange_ms"]) == 3
    assert fast["rtt_ms"] == min(x for x in fast["exchange_ms"] if x is not None)
    assert fast["error"] is None
    assert servers[0].connections == 3
    # The slowest gateway cannot win once the fastest answered: cancelled early, and
    # its ranking still reflects what it showed.
    assert servers[2].requests < 3

    # Same location again: served from the cache, no connection made.
    before = [s.connections for s in servers]
    code, again = env.run(now=T0 + timedelta(days=13), capsys=capsys)
    assert (code, again["source"], again["selected"]) == (0, "cache", "127.0.0.2")
    assert [s.connections for s in servers] == before
    assert again["order"] == out["order"]


def test_expiry_and_location_change_probe_again(
        tmp_path: Path, servers: list[LoopbackServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    env = write_config(tmp_path, [gw(s) for s in servers])
    assert env.run(capsys=capsys)[1]["source"] == "probes"
    assert servers[0].connections == 3
    # 14 days after it was first cached, the entry is gone.
    assert env.run(now=T0 + timedelta(days=14), capsys=capsys)[1]["source"] == "probes"
    assert servers[0].connections == 6
    # One shared domain|server pair means the same location ...
    env.resolv.write_text("search home.example\nnameserver 198.18.0.54\n")
    assert env.run(now=T0 + timedelta(days=15), capsys=capsys)[1]["source"] == "cache"
    # ... and none means a new one.
    env.resolv.write_text("search hotel.example\nnameserver 198.18.7.53\n")
    code, moved = env.run(now=T0 + timedelta(days=15), capsys=capsys)
    assert (code, moved["source"]) == (0, "probes")
    assert servers[0].connections == 9


def test_dead_gateways_next_to_healthy_ones(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with (LoopbackServer(host="127.0.0.2", delay=0.05) as healthy,
          LoopbackServer(host="127.0.0.3", handshake_stall=5.0) as stalled,
          LoopbackServer(host="127.0.0.4", silent=True) as silent,
          refused_port() as refused, blackholed_port()):
        env = write_config(tmp_path, [
            ("127.0.0.1", refused), gw(stalled), gw(silent), gw(healthy),
        ])
        code, out = env.run(capsys=capsys)
        assert (code, out["selected"], out["source"]) == (0, "127.0.0.2", "probes")
        results = out["results"]
        assert isinstance(results, list)
        errors = {r["host"]: r["error"] for r in results}
        assert errors["127.0.0.2"] is None
        assert all(errors[h] for h in ("127.0.0.1", "127.0.0.3", "127.0.0.4"))
        assert out["order"][0] == "127.0.0.2"


def test_blackholed_gateway_does_not_hold_the_decision(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(host="127.0.0.2", delay=0.05) as healthy, blackholed_port() as black:
        env = write_config(tmp_path, [("127.0.0.1", black), gw(healthy)])
        code, out = env.run(capsys=capsys)
        assert (code, out["selected"], out["source"]) == (0, "127.0.0.2", "probes")


def test_nothing_answers_falls_back_or_fails(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(host="127.0.0.2") as good, refused_port() as refused:
        env = write_config(tmp_path, [gw(good), ("127.0.0.1", refused)])
        assert env.run(capsys=capsys)[1]["selected"] == "127.0.0.2"
    # Now nothing answers: the previous gateway is used (the 7-second fallback).
    env.resolv.write_text("search elsewhere.example\nnameserver 198.18.3.3\n")
    code, out = env.run(capsys=capsys)
    assert (code, out["source"], out["selected"]) == (0, "fallback", "127.0.0.2")
    assert "previous gateway" in str(out["reason"])
    # A fresh state directory has no previous gateway: nothing can be selected.
    fresh = Env(env.tmp, env.config, env.resolv, tmp_path / "fresh")
    code, out = fresh.run(capsys=capsys)
    assert (code, out["selected"], out["source"]) == (1, None, "fallback")


def test_cache_clear_forces_probes(tmp_path: Path, servers: list[LoopbackServer],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    env = write_config(tmp_path, [gw(s) for s in servers])
    env.run(capsys=capsys)
    assert main(["cache", "list", "--state-dir", str(env.state), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["order"][0] for e in listed] == ["127.0.0.2"]
    assert main(["cache", "clear", "--state-dir", str(env.state)]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out
    assert env.run(capsys=capsys)[1]["source"] == "probes"
    _code, out = env.run("--no-cache", capsys=capsys)
    assert out["source"] == "probes"


def test_corrupt_database_is_recovered(tmp_path: Path, servers: list[LoopbackServer],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    env = write_config(tmp_path, [gw(s) for s in servers])
    env.state.mkdir()
    (env.state / "ogsd.db").write_bytes(b"this is not a database" * 200)
    code, out = env.run(capsys=capsys)
    assert (code, out["source"]) == (0, "probes")
    assert len(list(env.state.glob("ogsd.db.corrupt-*"))) == 1
    assert env.run(capsys=capsys)[1]["source"] == "cache"


def test_human_output_has_anyconnect_table(tmp_path: Path, servers: list[LoopbackServer],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    env = write_config(tmp_path, [gw(s) for s in servers])
    code = main(["-q", "evaluate", "--config", str(env.config), "--state-dir", str(env.state)],
                clock=lambda: T0)
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == "*** OGS Selection Results ***"
    assert lines[1].split() == ["Server", "Address", "RTT", "(ms)"]
    assert lines[2].split()[0] == "127.0.0.2"
    assert "Selected '127.0.0.2' as the optimal server." in lines


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[ogs]\nimprovement_percent = 5\n", "improvement_percent"),
        ("[ogs\n", "line 1"),
        ("[ogs]\nmetrik = 'network'\n", "did you mean 'metric'"),
    ],
)
def test_bad_config_exits_2_without_traceback(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    proc = subprocess.run([sys.executable, "-m", "ogsd", "evaluate", "--config", str(config),
                           "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(config) in proc.stderr


def test_profile_option_gives_the_gateways(tmp_path: Path) -> None:
    # The sample profile's gateways do not resolve here: the only DNS server named is
    # 127.0.0.1, where nothing listens. Nothing is selectable (exit 1), yet every gateway
    # is reported, and no query leaves the machine.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search corp.example\nnameserver 127.0.0.1\n")
    config = tmp_path / "dns-only.toml"
    config.write_text(f'[dns]\nresolv_conf = "{resolv}"\n[ogs]\nround_deadline_s = 2\n')
    profile = Path(__file__).parent.parent / "config" / "profiles" / "example-corp.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "ogsd", "-q", "evaluate", "--config", str(config),
         "--profile", str(profile), "--state-dir", str(tmp_path / "s"), "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["source"], out["selected"]) == ("fallback", None)
    assert len(out["results"]) == 4
    assert all(r["error"] for r in out["results"])


@pytest.mark.parametrize("odd", [
    "nameserver 192.168.1.1#53",  # dnsmasq's server syntax, pasted into resolv.conf
    "nameserver dns.example",
    "search " + "a" * 70 + ".example",  # a label dnspython refuses
    "search ..",
    "options ndots:abc",
])
def test_odd_resolv_conf_lines_are_skipped_not_a_traceback(
        tmp_path: Path, servers: list[LoopbackServer], odd: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = write_config(tmp_path, [gw(servers[0])])
    env.resolv.write_text(f"{odd}\nsearch home.example\nnameserver 198.18.0.53\n")
    code, out = env.run(capsys=capsys)
    assert (code, out["selected"]) == (0, servers[0].host)
    assert out["location"]["keys"] == ["home.example|198.18.0.53"]


def test_says_why_ogs_is_off_and_which_setting_lost(tmp_path: Path,
                                                    servers: list[LoopbackServer]) -> None:
    """Issue 8: the admin's locked EnableAutomaticServerSelection=false wins over the user's
    ogsd.toml, and both the result and the warning say so."""
    profile = tmp_path / "corp.xml"
    profile.write_text("<AnyConnectProfile>\n<ClientInitialization>\n"
                       '<EnableAutomaticServerSelection UserControllable="false">false'
                       "</EnableAutomaticServerSelection>\n</ClientInitialization>\n"
                       f"<ServerList><HostEntry><HostAddress>{servers[1].host}</HostAddress>"
                       "</HostEntry></ServerList></AnyConnectProfile>\n")
    env = write_config(tmp_path, [gw(s) for s in servers], extra="enabled = true\n")
    env.config.write_text(f'profiles = ["{profile}"]\n' + env.config.read_text())
    proc = subprocess.run([sys.executable, "-m", "ogsd", "evaluate", "--config",
                           str(env.config), "--state-dir", str(env.state)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    why = (f"EnableAutomaticServerSelection is false ({profile} line 3) and users may not "
           "change it (UserControllable is not true)")
    assert f"Source: skipped (OGS is off: {why})" in proc.stdout.splitlines()
    assert "[ogs] enabled = true is ignored: EnableAutomaticServerSelection is false" \
        in proc.stderr
    assert all(s.connections == 0 for s in servers)  # nothing was probed
