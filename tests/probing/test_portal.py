"""Captive portals and authenticating proxies: the round is dropped, not ranked or cached.

`ogsd evaluate` end to end against real servers on loopback: each gateway is a TLS server
on its own 127.x address, and the port-80 check meets a plain HTTP server on that
address's port 80 (root: a privileged port). Addresses are random per test, so tests
of other worktrees running at the same time never share a port 80.
"""

from __future__ import annotations

import json
import secrets
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ogsd.cli import main
from ogsd.daemon.daemon import Options
from tests.daemon_helpers import FakeClock, running_daemon, short_dir
from tests.tlsserver import LoopbackServer

pytestmark = pytest.mark.root

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PORTAL = "http://portal.hotel.example/login?continue=1"
# portal_retry_s = 1 plus a round on loopback, with room for a loaded CI machine.
RETRY_WAIT_S = 5.0


class Env:
    """Two gateways on fresh 127.x addresses, a resolv.conf and a state directory."""

    def __init__(self, tmp: Path) -> None:
        prefix = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.hosts = (f"{prefix}.2", f"{prefix}.3")
        self.resolv = tmp / "resolv.conf"
        self.config = tmp / "ogsd.toml"
        self.state = tmp / "state"
        self.at("office.example", "198.18.0.53")

    def at(self, domain: str, server: str) -> None:
        self.resolv.write_text(f"search {domain}\nnameserver {server}\n")

    def write(self, ports: tuple[int, int]) -> None:
        gateways = "".join(f'[[gateway]]\nhost = "{h}"\nport = {p}\n'
                           for h, p in zip(self.hosts, ports, strict=True))
        self.config.write_text(f'[dns]\nresolv_conf = "{self.resolv}"\n[ogs]\n'
                               f'metric = "exchange"\nround_deadline_s = 3\n{gateways}')

    def run(self, capsys: pytest.CaptureFixture[str], now: datetime = T0) -> dict[str, Any]:
        code = main(["-q", "evaluate", "--config", str(self.config), "--state-dir",
                     str(self.state), "--json"], clock=lambda: now)
        out: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert code == 0, out
        return out


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _portal(host: str, **kwargs: Any) -> LoopbackServer:
    return LoopbackServer(host=host, port=80, tls=False, **kwargs)


def test_a_portal_round_is_neither_ranked_nor_cached(env: Env,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    near, far = env.hosts
    with (LoopbackServer(host=near) as a, LoopbackServer(host=far, delay=0.1) as b):
        env.write((a.port, b.port))
        first = env.run(capsys)  # port 80 closed: an ordinary round
        assert (first["source"], first["selected"]) == ("probes", near)

        env.at("hotel.example", "198.18.7.53")  # a new location, behind a portal
        with _portal(far, status=302, location=PORTAL) as portal:
            kept = env.run(capsys)
            assert portal.requests == 1
        assert (kept["source"], kept["reason_code"]) == ("kept", "portal")
        assert kept["selected"] == near  # the previous selection stands
        assert f"the port-80 check for '{far}' was answered by a captive portal" in \
            kept["reason"]
        assert "neither ranked nor cached" in kept["reason"]

        # Nothing was cached for the hotel: once the portal is gone, the next run probes.
        after = env.run(capsys)
        assert (after["source"], after["selected"]) == ("probes", near)
        assert env.run(capsys)["source"] == "cache"


def test_an_authenticating_proxy_drops_the_round_too(env: Env,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    near, far = env.hosts
    with (LoopbackServer(host=near) as a, LoopbackServer(host=far) as b,
          _portal(near, status=407)):
        env.write((a.port, b.port))
        out = env.run(capsys)
    assert (out["source"], out["reason_code"], out["selected"]) == ("kept", "portal", near)
    assert "authenticating proxy (407" in out["reason"]


def test_the_check_runs_for_gateways_without_a_valid_entry(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    near, far = env.hosts
    with (LoopbackServer(host=near) as a, LoopbackServer(host=far, delay=0.1) as b):
        env.write((a.port, b.port))
        assert env.run(capsys)["source"] == "probes"
        later = T0 + timedelta(days=15)  # the entry has expired: it is no entry
        with _portal(near, status=302, location=PORTAL) as portal:
            out = env.run(capsys, now=later)
            assert portal.requests == 1
    assert (out["source"], out["reason_code"]) == ("kept", "portal")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The daemon runs on uvloop."""
    return "asyncio", {"use_uvloop": True}


@pytest.mark.anyio
async def test_the_daemon_retries_soon_after_a_portal(env: Env) -> None:
    # Continuous mode with the usual 30-minute period: only the portal retry can bring
    # the second round within seconds (no network event happens here).
    near, far = env.hosts
    directory = short_dir("ogsd-portal-")
    try:
        with (LoopbackServer(host=near) as a, LoopbackServer(host=far) as b):
            env.write((a.port, b.port))
            env.config.write_text(env.config.read_text().replace(
                "[[gateway]]", "[daemon]\nperiod_minutes = 30\nportal_retry_s = 1\n"
                "[[gateway]]", 1))
            options = Options(env.config, (), directory / "state", directory / "ogsd.sock",
                              watch_network=False, watch_sleep=False)
            portal = _portal(near, status=302, location=PORTAL)
            with portal:
                async with running_daemon(options, env.config, FakeClock()) as (_, seen):
                    first = await seen.next()
                    assert (first["source"], first["reason_code"]) == ("kept", "portal")
                    assert "evaluating again in 1 s" in first["reason"]
                    portal.close()  # the user logged in: the portal is gone
                    second = await seen.next(within=RETRY_WAIT_S)
                    assert (second["source"], second["reason_code"]) == ("probes", "probes")
                    assert second["selected"] in env.hosts
    finally:
        shutil.rmtree(directory, ignore_errors=True)
