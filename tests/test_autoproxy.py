"""Automatic proxy configuration skips OGS, as in AnyConnect: PAC/WPAD from ogsd.toml, the
environment, or NetworkManager's per-connection proxy settings (a real NetworkManager).

NetworkManager runs as found to work on this kind of machine (issue 10's notes): in a
namespace with a private mount namespace (tmpfs on /run, its configuration bind-mounted,
/sys read-only so it does not wait for udev), on a private system bus that the test
reaches from outside, managing a veth whose connection carries the proxy setting.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ogsd.autoproxy import AutoProxy, from_environment, proxy_setting
from ogsd.cli import main
from ogsd.core.triggers import PROXY_SKIP_TEXT
from tests.daemon_helpers import short_dir
from tests.dbus_fixtures import stop_process

START_TIMEOUT_S = 30.0  # NetworkManager starts in ~1 s here; bounded for a loaded machine
STOP_TIMEOUT_S = 10.0
PAC = "http://wpad.office.example/wpad.dat"

NM_CONF = """[main]
plugins=keyfile
dns=none
rc-manager=unmanaged
auth-polkit=false
no-auto-default=*

[connectivity]
enabled=false
"""
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <listen>unix:path={outside}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_type="method_call"/><allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/><allow receive_type="method_return"/>
    <allow receive_type="error"/><allow receive_type="signal"/>
  </policy>
</busconfig>
"""
HOLDER = """set -e
mount -t tmpfs -o mode=0755 ogsd-test-run /run
mkdir -p /run/dbus
mount --bind "$1/etc" /etc/NetworkManager
mount --bind "$1/var" /var/lib/NetworkManager
mount -o remount,ro /sys
echo ready
exec sleep infinity
"""


@pytest.mark.parametrize(("proxy", "found"), [
    ({"method": 1, "pac-url": PAC}, f"NetworkManager connection 'office': proxy method auto "
                                    f"({PAC})"),
    ({"method": 1}, "NetworkManager connection 'office': proxy method auto (WPAD)"),
    ({"method": 1, "pac-script": "function FindProxyForURL(u, h) { return 'DIRECT'; }"},
     "NetworkManager connection 'office': proxy method auto (a PAC script)"),
    ({"method": 1, "browser-only": True, "pac-url": PAC}, None),
    ({"method": 0}, None),
    ({}, None),
])
def test_proxy_setting(proxy: dict[str, Any], found: str | None) -> None:
    assert proxy_setting("office", {"connection": {"id": "office"}, "proxy": proxy}) == found


def test_environment() -> None:
    assert from_environment({"auto_proxy": PAC}) == f"auto_proxy={PAC} in the environment"
    assert from_environment({"AUTO_PROXY": " "}) is None
    assert from_environment({"https_proxy": "http://p:1"}) is None  # static: OGS runs


def _evaluate(tmp: Path, toml: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    resolv = tmp / "resolv.conf"
    resolv.write_text("search office.example\nnameserver 198.18.0.53\n")
    config = tmp / "ogsd.toml"
    config.write_text(f'[dns]\nresolv_conf = "{resolv}"\n{toml}\n'
                      '[[gateway]]\nhost = "198.18.92.9"\n')
    main(["-q", "evaluate", "--config", str(config), "--state-dir", str(tmp / "state"),
          "--json"])
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.parametrize("toml", ['[ogs]\npac_url = "http://wpad.example/wpad.dat"',
                                  '[ogs]\nproxy = "auto"'])
def test_configured_pac_skips_ogs(tmp_path: Path, toml: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = _evaluate(tmp_path, toml, capsys)
    assert (out["source"], out["reason_code"], out["reason"]) == (
        "skipped", "skipped-proxy", PROXY_SKIP_TEXT)


def test_auto_proxy_in_the_environment_skips_ogs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("auto_proxy", PAC)
    out = _evaluate(tmp_path, "", capsys)
    assert (out["source"], out["reason_code"]) == ("skipped", "skipped-proxy")
    assert out["reason"] == f"{PROXY_SKIP_TEXT} Found: auto_proxy={PAC} in the environment."


class NetworkManager:
    """NetworkManager on a private system bus in namespace `netns`, managing `device`."""

    def __init__(self, netns: str, directory: Path) -> None:
        self.netns, self.dir = netns, directory
        self.bus = directory / "bus"
        self.procs: list[subprocess.Popen[bytes]] = []
        for sub in ("etc/system-connections", "etc/conf.d", "var"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "etc" / "NetworkManager.conf").write_text(NM_CONF)
        (directory / "bus.conf").write_text(BUS_CONF.replace("{outside}", str(self.bus)))
        self.holder = self._start(["ip", "netns", "exec", netns, "unshare", "--mount",
                                   "--propagation", "private", "sh", "-c", HOLDER, "holder",
                                   str(directory)], b"ready")
        self._start(self.enter("dbus-daemon", f"--config-file={directory / 'bus.conf'}",
                               "--nofork", "--print-address=1"), b"unix:")
        self._start(self.enter("NetworkManager", "--no-daemon",
                               "--config=/etc/NetworkManager/NetworkManager.conf",
                               f"--state-file={directory / 'var' / 'state'}",
                               "--pid-file=/run/NetworkManager.pid"), None)
        self.run("nm-online", "--wait-for-startup", "--quiet", f"--timeout={START_TIMEOUT_S:.0f}")

    @property
    def address(self) -> str:
        return f"unix:path={self.bus}"

    def enter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv]

    def run(self, *argv: str) -> str:
        done = subprocess.run(self.enter(*argv), capture_output=True, text=True,
                              timeout=START_TIMEOUT_S + 5, check=False)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}{self.log()}"
        return done.stdout

    def log(self) -> str:
        path = self.dir / "NetworkManager.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def _start(self, argv: list[str], ready: bytes | None) -> subprocess.Popen[bytes]:
        with (self.dir / "NetworkManager.log").open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log,
                                    stdout=subprocess.PIPE if ready else log)
        self.procs.append(proc)
        if ready is not None:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
            line = proc.stdout.readline() if readable else b""
            assert line.startswith(ready), f"{argv[-6:]} did not start: {line!r} {self.log()}"
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, STOP_TIMEOUT_S)


@pytest.fixture
def nm(netns: str) -> Iterator[NetworkManager]:
    subprocess.run(["ip", "-n", netns, "link", "add", "nm0", "type", "veth", "peer", "name",
                    "nm1"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "nm1", "up"], check=True)
    directory = short_dir("ogsd-nm-")
    manager = NetworkManager(netns, directory)
    try:
        yield manager
    finally:
        manager.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _detect(address: str) -> str | None:
    async def go() -> str | None:
        probe = AutoProxy({}, address)
        try:
            return await probe.detect()
        finally:
            await probe.aclose()
    return anyio.run(go)


@pytest.mark.root
def test_networkmanager_proxy_settings(nm: NetworkManager, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _detect(nm.address) is None  # NetworkManager runs, no connection is active
    nm.run("nmcli", "connection", "add", "type", "ethernet", "ifname", "nm0", "con-name",
           "office", "ipv4.method", "manual", "ipv4.addresses", "198.18.92.2/24",
           "ipv4.gateway", "198.18.92.1", "ipv6.method", "disabled",
           "proxy.method", "auto", "proxy.pac-url", PAC)
    nm.run("nmcli", "connection", "up", "office")
    found = f"NetworkManager connection 'office': proxy method auto ({PAC})"
    assert _detect(nm.address) == found

    # ogsd evaluate asks the system bus it is given, as the daemon does.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nm.address)
    out = _evaluate(tmp_path, "", capsys)
    assert (out["source"], out["reason_code"]) == ("skipped", "skipped-proxy")
    assert out["reason"] == f"{PROXY_SKIP_TEXT} Found: {found}."

    nm.run("nmcli", "connection", "modify", "office", "proxy.browser-only", "yes")
    nm.run("nmcli", "connection", "up", "office")
    assert _detect(nm.address) is None  # for browsers only: OGS runs
    nm.run("nmcli", "connection", "modify", "office", "proxy.browser-only", "no",
           "proxy.method", "none", "proxy.pac-url", "")
    nm.run("nmcli", "connection", "up", "office")
    assert _detect(nm.address) is None
