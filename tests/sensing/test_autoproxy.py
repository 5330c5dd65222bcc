"""Automatic proxy configuration skips OGS, as in AnyConnect: PAC/WPAD from ogsd.toml, the
environment, or NetworkManager's per-connection proxy settings (a real NetworkManager).

NetworkManager runs as found to work on this kind of machine (tests/nm_helpers.py), managing
a veth whose connection carries the proxy setting.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ogsd.cli import main
from ogsd.core.triggers import PROXY_SKIP_TEXT
from ogsd.sensing.autoproxy import AutoProxy, from_environment, proxy_setting
from tests.daemon_helpers import short_dir
from tests.nm_helpers import NetworkManagerNs

PAC = "http://wpad.office.example/wpad.dat"

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


@pytest.fixture
def nm(netns: str) -> Iterator[NetworkManagerNs]:
    """NetworkManager in `netns`, with a veth `nm0` to manage."""
    subprocess.run(["ip", "-n", netns, "link", "add", "nm0", "type", "veth", "peer", "name",
                    "nm1"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "nm1", "up"], check=True)
    directory = short_dir("ogsd-nm-")
    manager = NetworkManagerNs(netns, directory)
    try:
        manager.start()
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
def test_networkmanager_proxy_settings(nm: NetworkManagerNs, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _detect(nm.bus_address) is None  # NetworkManager runs, no connection is active
    nm.nmcli("connection", "add", "type", "ethernet", "ifname", "nm0", "con-name",
           "office", "ipv4.method", "manual", "ipv4.addresses", "198.18.92.2/24",
           "ipv4.gateway", "198.18.92.1", "ipv6.method", "disabled",
           "proxy.method", "auto", "proxy.pac-url", PAC)
    nm.nmcli("connection", "up", "office")
    found = f"NetworkManager connection 'office': proxy method auto ({PAC})"
    assert _detect(nm.bus_address) == found

    # ogsd evaluate asks the system bus it is given, as the daemon does.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", nm.bus_address)
    out = _evaluate(tmp_path, "", capsys)
    assert (out["source"], out["reason_code"]) == ("skipped", "skipped-proxy")
    assert out["reason"] == f"{PROXY_SKIP_TEXT} Found: {found}."

    nm.nmcli("connection", "modify", "office", "proxy.browser-only", "yes")
    nm.nmcli("connection", "up", "office")
    assert _detect(nm.bus_address) is None  # for browsers only: OGS runs
    nm.nmcli("connection", "modify", "office", "proxy.browser-only", "no",
           "proxy.method", "none", "proxy.pac-url", "")
    nm.nmcli("connection", "up", "office")
    assert _detect(nm.bus_address) is None
