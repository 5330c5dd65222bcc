"""`ogsd run` while a real full-tunnel VPN is up (issue 7): openconnect, the stock
vpnc-script behind ogsd's hook, and ocserv in the lab.

The uplink's default route has metric 0 here (ifupdown's layout), so vpnc-script replaces
it with the tunnel's: the hardest case, where only ogsd's hook keeps a physical next hop
for bound probes. Checked: the location stays the physical network's, a full round
measures every gateway at its own distance (through the tunnel they would all be the
tunnel gateway's), a resume re-measures the physical paths, a roam is a new location, and
the VPN's end is seen with another tunnel device still up.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ogsd.lab import GatewaySpec, Lab, LabSpec
from ogsd.lab.spec import validate
from ogsd.lab.tun import open_tun
from tests.daemon_helpers import api_client, faketime_env, short_dir, watching
from tests.lab.ogsd_helpers import start_lab_daemon
from tests.lab_fixtures import LabFactory

pytestmark = [pytest.mark.root, pytest.mark.lab]

HOOK = Path(__file__).parents[2] / "ogsd" / "hooks" / "vpnc-script-ogsd"
OGSCTL = str(Path(sys.executable).with_name("ogsctl"))
RTTS = {"gw-1.lab.example": 20.0, "gw-2.lab.example": 45.0, "gw-3.lab.example": 80.0,
        "gw-4.lab.example": 150.0}
VPN = "gw-1.lab.example"
PHYSICAL_KEYS = ["corp.lab.example|198.18.0.53"]
# Kernel handshake RTTs read within ~0.5 ms of the lab's here; a loaded shared machine
# adds a few ms at worst. Through the tunnel every gateway would read ~20 ms.
MARGIN_MS = 5.0
# A full round is bounded by the 7 s deadline; a resume adds the network test.
ROUND_WAIT = 30.0


def spec(*, uplink_metric: int = 0) -> LabSpec:
    """Metric 0: ifupdown's layout (vpnc-script replaces the default route); 100:
    NetworkManager's (the tunnel's metric-0 default goes beside it)."""
    gateways = tuple(GatewaySpec(host, f"198.19.{i}.1", rtt_ms=rtt, vpn=host == VPN)
                     for i, (host, rtt) in enumerate(RTTS.items(), start=1))
    return validate(LabSpec(gateways=gateways)).with_uplink(metric=uplink_metric)


CONFIG = "[ogs]\nmetric = \"network\"\n[daemon]\ncontinuous = false\ndebounce_s = 0.3\n" + \
    "".join(f'[[gateway]]\nhost = "{host}"\n' for host in RTTS)


@dataclass
class Daemon:
    lab: Lab
    socket: Path

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        async with api_client(self.socket) as client:
            return await client.result(method, params, within=ROUND_WAIT)


@contextmanager
def daemon_in(lab: Lab, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """`ogsd run` in the lab's client namespace (its socket is a file: reachable here)."""
    directory = short_dir("ogsd-vpnd-")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        socket, status = start_lab_daemon(stack, lab, directory, CONFIG, env)
        assert status == f"selected {VPN} (probes)"
        yield Daemon(lab, socket)


@pytest.fixture
def hook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ogsd's hook needs to find this ogsctl (openconnect passes its environment)."""
    monkeypatch.setenv("OGSCTL", OGSCTL)


def assert_physical(results: list[dict[str, Any]]) -> None:
    for row in results:
        assert row["rtt_ms"] is not None, row
        assert abs(row["rtt_ms"] - RTTS[row["host"]]) < MARGIN_MS, row


@contextmanager
def another_tunnel(lab: Lab) -> Iterator[str]:
    """Tailscale or WireGuard: a tunnel device that is up and stays up."""
    name = f"tun{secrets.token_hex(3)}"
    fd = open_tun(name)
    try:
        subprocess.run(["ip", "link", "set", name, "netns", lab.client_ns], check=True)
        subprocess.run(["ip", "-n", lab.client_ns, "link", "set", name, "up"], check=True)
        yield name
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_full_tunnel_keeps_the_physical_location_and_measures_physical_paths(
        make_vpn_lab: LabFactory, hook_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_vpn_lab(spec())
    with daemon_in(lab) as daemon:
        monkeypatch.setenv("OGSD_SOCKET", str(daemon.socket))
        async with watching(daemon.socket) as decisions:
            vpn = lab.openconnect(VPN, script=str(HOOK))
            tun = vpn.wait_connected().env["TUNDEV"]
            # vpnc-script's routes and resolv.conf: one change, decided from the cache.
            after = await decisions.next(within=ROUND_WAIT)
        assert (after["trigger"], after["source"]) == ("location", "cache")
        assert after["location"]["keys"] == PHYSICAL_KEYS
        assert "#@VPNC_GENERATED@" in lab.resolv_conf.read_text()  # the VPN's DNS now
        # The metric-0 physical default is gone; the hook kept it at 65000.
        routes = lab.exec(["ip", "-4", "route", "show", "default"], check=True).stdout
        assert f"default dev {tun}" in routes, routes
        assert "metric 65000" in routes, routes

        status = await daemon.call("status")
        assert (status["connected"], status["connected_device"]) == (VPN, tun)
        assert status["location"]["keys"] == PHYSICAL_KEYS
        assert "saved by vpnc-script" in status["location_source"]
        assert status["uplink"]["device"] == lab.uplink

        full = await daemon.call("evaluate", {"wait": True, "full": True})
        assert full["location"]["keys"] == PHYSICAL_KEYS
        assert_physical(full["results"])
        entries = (await daemon.call("cache.list"))["entries"]
        assert [e["location"]["keys"] for e in entries] == [PHYSICAL_KEYS]

        # The VPN client dies (no disconnect script) while another tunnel stays up.
        with another_tunnel(lab):
            async with watching(daemon.socket) as decisions:
                vpn.kill()
                await decisions.next(within=ROUND_WAIT)
            status = await daemon.call("status")
            assert (status["connected"], status["connected_device"]) == (None, None)
            assert status["location"]["keys"] == PHYSICAL_KEYS


@pytest.mark.anyio
async def test_resume_with_the_vpn_up_measures_the_physical_paths(
        make_vpn_lab: LabFactory, hook_env: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """5 h asleep with the tunnel up; meanwhile gw-1 moved far away: the resume round
    (the threshold rule's, every probe to the end) measures the physical paths."""
    lab = make_vpn_lab(spec())
    timestamp = tmp_path / "faketime"
    timestamp.write_text("+0\n")
    with daemon_in(lab, faketime_env(timestamp)) as daemon:
        monkeypatch.setenv("OGSD_SOCKET", str(daemon.socket))
        vpn = lab.openconnect(VPN, script=str(HOOK))
        vpn.wait_connected()
        await daemon.call("notify.sleep")
        timestamp.write_text("+5h\n")
        moved = dict(RTTS, **{VPN: 200.0})
        lab.set(lab.spec.with_gateway(VPN, rtt_ms=moved[VPN]))
        async with watching(daemon.socket) as decisions:
            await daemon.call("notify.resume")
            decision = await decisions.next(within=ROUND_WAIT,
                                            skip=lambda d: d["trigger"] != "resume")
        assert decision["source"] == "probes"
        rows = {row["host"]: row for row in decision["results"]}
        for host, rtt in moved.items():
            assert rows[host]["rtt_ms"] is not None, rows[host]
            assert abs(rows[host]["rtt_ms"] - rtt) < MARGIN_MS, rows[host]
        assert decision["selected"] == "gw-2.lab.example"  # 200 -> 45 ms: past 20 %
        assert decision["location"]["keys"] == PHYSICAL_KEYS
        assert vpn.disconnect() == 0


@pytest.mark.anyio
async def test_a_roam_while_connected_is_a_new_location(
        make_vpn_lab: LabFactory, hook_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_vpn_lab(spec(uplink_metric=100))  # a Wi-Fi laptop: NetworkManager's metric
    with daemon_in(lab) as daemon:
        monkeypatch.setenv("OGSD_SOCKET", str(daemon.socket))
        vpn = lab.openconnect(VPN, script=str(HOOK))
        vpn.wait_connected()
        # A hotel's Wi-Fi: another subnet, router, domain and DNS server; its DHCP writes
        # resolv.conf over the VPN's.
        hotel = dataclasses.replace(
            lab.spec.with_dns(servers=("198.18.0.54",)), domain="hotel.lab.example")
        hotel = hotel.with_uplink(client="198.18.1.2")
        async with watching(daemon.socket) as decisions:
            lab.roam(hotel)
            decision = await decisions.next(
                within=ROUND_WAIT, skip=lambda d: d["location"]["keys"] == PHYSICAL_KEYS)
        assert decision["location"]["keys"] == ["hotel.lab.example|198.18.0.54"]
        status = await daemon.call("status")
        assert status["connected"] == VPN
        assert status["uplink"]["gateway"] == "198.18.1.1"
        vpn.kill()
