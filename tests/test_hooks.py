"""ogsd's openconnect --script hook (ogsd/hooks/vpnc-script-ogsd, also contrib/).

Its contract with ogsctl and vpnc-script is tested with recorders in their place (what
it calls, with what, that it always hands over and keeps vpnc-script's exit status);
its routes with the real vpnc-script and real routes in a network namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import ogsd

HOOK = Path(ogsd.__file__).parent / "hooks" / "vpnc-script-ogsd"
CONTRIB = Path(__file__).parent.parent / "contrib" / "vpnc-script-ogsd"
VPNC_SCRIPT = Path("/usr/share/vpnc-scripts/vpnc-script")


def recorder(path: Path, log: Path, *, exit_code: int = 0) -> Path:
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\nexit {exit_code}\n')
    path.chmod(0o755)
    return path


def run_hook(env: dict[str, str], *args: str, netns: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, str(HOOK), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("reason", "ogsctl_call"),
    [
        ("connect", "ogsctl notify connected gw-1.lab.example --device tun7"),
        ("reconnect", "ogsctl notify connected gw-1.lab.example --device tun7"),
        ("disconnect", "ogsctl notify disconnected --device tun7"),
        ("pre-init", None),
        ("attempt-reconnect", None),
    ],
)
@pytest.mark.parametrize("ogsctl_fails", [False, True])
def test_hook_notifies_then_hands_over(tmp_path: Path, reason: str, ogsctl_call: str | None,
                                       ogsctl_fails: bool) -> None:
    log = tmp_path / "calls"
    ogsctl = recorder(tmp_path / "ogsctl", log, exit_code=3 if ogsctl_fails else 0)
    vpnc = recorder(tmp_path / "vpnc-script", log)
    env = {"reason": reason, "VPNGATEWAY": "198.19.1.1", "TUNDEV": "tun7",
           "OGSD_GATEWAY": "gw-1.lab.example", "OGSCTL": str(ogsctl), "VPNC_SCRIPT": str(vpnc),
           "OGSD_UPLINK_METRIC": "off"}
    proc = run_hook(env, "extra-arg")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    # Connected: before vpnc-script changes routes and DNS; disconnected: after it put
    # them back.
    before, after = (([ogsctl_call], []) if reason != "disconnect" else ([], [ogsctl_call])
                     ) if ogsctl_call else ([], [])
    assert calls == [*before, "vpnc-script extra-arg", *after]


def test_hook_used_directly_names_the_address_and_keeps_vpnc_scripts_status(
        tmp_path: Path) -> None:
    log = tmp_path / "calls"
    env = {"reason": "connect", "VPNGATEWAY": "198.19.1.1", "TUNDEV": "",
           "OGSCTL": str(recorder(tmp_path / "ogsctl", log)),
           "VPNC_SCRIPT": str(recorder(tmp_path / "vpnc-script", log, exit_code=2)),
           "OGSD_UPLINK_METRIC": "off"}
    proc = run_hook(env)
    assert proc.returncode == 2
    assert log.read_text().splitlines() == ["ogsctl notify connected 198.19.1.1", "vpnc-script "]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "hook"
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    yield path, fd
    os.close(fd)


def test_hook_reports_each_step_to_ogsctl_connect(tmp_path: Path,
                                                  fifo: tuple[Path, int]) -> None:
    path, fd = fifo
    log = tmp_path / "calls"
    base = {"VPNGATEWAY": "198.19.1.1", "OGSD_CONNECT_FIFO": str(path),
            "OGSCTL": str(recorder(tmp_path / "ogsctl", log)), "OGSD_UPLINK_METRIC": "off"}
    vpnc = recorder(tmp_path / "vpnc-script", log)
    failing = recorder(tmp_path / "failing-script", log, exit_code=5)
    run_hook({**base, "reason": "pre-init", "TUNDEV": "", "VPNC_SCRIPT": str(vpnc)})
    run_hook({**base, "reason": "connect", "TUNDEV": "tun7", "VPNC_SCRIPT": str(failing)})
    assert os.read(fd, 4096).decode().splitlines() == [
        "pre-init start - 198.19.1.1", "pre-init 0 - 198.19.1.1",
        "connect start tun7 198.19.1.1", "connect 5 tun7 198.19.1.1"]


def test_hook_never_blocks_on_a_fifo_nobody_reads(tmp_path: Path) -> None:
    # ogsctl connect was killed: its FIFO is left, with no reader. An open for writing
    # would block forever; the hook's read-write open does not.
    path = tmp_path / "hook"
    os.mkfifo(path, 0o600)
    env = {"reason": "pre-init", "OGSD_CONNECT_FIFO": str(path), "VPNC_SCRIPT": "/bin/true",
           "OGSCTL": "/bin/false"}
    assert run_hook(env).returncode == 0


def test_contrib_hook_is_the_packaged_one() -> None:
    assert CONTRIB.resolve() == HOOK.resolve()
    assert os.access(HOOK, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_hook_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", "--shell=sh", str(HOOK)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout


# --- routes (root): the physical default route kept for ogsd's bound probes -----------------


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def uplink(netns: str) -> str:
    """A namespace with an Ethernet-like uplink (veth, carrier) and a tun device tunT."""
    for command in ("link set lo up", "link add va type veth peer name vb",
                    "link set va up", "link set vb up",
                    "addr add 198.18.5.2/24 dev va",
                    "addr add 2001:2:0:5::2/64 dev va nodad",
                    "tuntap add dev tunT mode tun", "link set tunT up"):
        ip(netns, *command.split())
    return netns


def defaults(netns: str, family: str) -> list[str]:
    # A tun device nobody holds open has no carrier: "linkdown" is not what is tested.
    return [line.replace(" linkdown", "").strip()
            for line in ip(netns, family, "route", "show", "default").splitlines()]


def table(netns: str) -> list[str]:
    """The IPv4 main table, as after a disconnect it must be again."""
    return [line.replace(" linkdown", "").strip()
            for line in ip(netns, "-4", "route", "show").splitlines()]


def hook_env(tmp_path: Path, reason: str, vpnc_script: Path) -> dict[str, str]:
    return {"reason": reason, "TUNDEV": "tunT", "VPNGATEWAY": "198.19.1.1",
            # The real vpnc-script keeps the default route it replaces in a file named
            # after openconnect's pid: unique here, so parallel runs do not share it.
            "VPNPID": str(900000 + secrets.randbelow(99999)),
            "INTERNAL_IP4_ADDRESS": "198.18.200.9", "INTERNAL_IP4_MTU": "1400",
            "OGSCTL": "/bin/true", "VPNC_SCRIPT": str(vpnc_script)}


@pytest.mark.root
@pytest.mark.skipif(not VPNC_SCRIPT.exists(), reason="vpnc-scripts not installed")
def test_full_tunnel_keeps_the_physical_default_at_a_high_metric(uplink: str,
                                                                  tmp_path: Path) -> None:
    ip(uplink, "route", "add", "default", "via", "198.18.5.1", "dev", "va")  # metric 0
    before = table(uplink)
    env = hook_env(tmp_path, "connect", VPNC_SCRIPT)
    assert run_hook(env, netns=uplink).returncode == 0
    assert defaults(uplink, "-4") == [
        "default dev tunT scope link",  # vpnc-script's full tunnel replaced the metric-0 one
        "default via 198.18.5.1 dev va proto 211 metric 65000"]
    # A socket bound to the uplink (ogsd's probes) has a next hop there again.
    bound = ip(uplink, "route", "get", "198.19.2.1", "oif", "va")
    assert bound.startswith("198.19.2.1 via 198.18.5.1 dev va"), bound
    assert ip(uplink, "route", "get", "198.19.2.1").startswith("198.19.2.1 dev tunT")

    # openconnect retries a lost session: vpnc-script adds a host route to the gateway
    # through every non-tunnel route, ours too.
    env["reason"] = "attempt-reconnect"
    assert run_hook(env, netns=uplink).returncode == 0
    assert "198.19.1.1 via 198.18.5.1 dev va metric 65000" in table(uplink)

    env["reason"] = "disconnect"
    assert run_hook(env, netns=uplink).returncode == 0
    assert table(uplink) == before


@pytest.mark.root
@pytest.mark.skipif(not VPNC_SCRIPT.exists(), reason="vpnc-scripts not installed")
def test_an_uplink_default_beside_the_tunnels_is_left_alone(uplink: str,
                                                            tmp_path: Path) -> None:
    # NetworkManager's metric 100: vpnc-script's metric-0 default goes beside it.
    ip(uplink, "route", "add", "default", "via", "198.18.5.1", "dev", "va", "metric", "100")
    env = hook_env(tmp_path, "connect", VPNC_SCRIPT)
    assert run_hook(env, netns=uplink).returncode == 0
    assert defaults(uplink, "-4") == ["default dev tunT scope link",
                                      "default via 198.18.5.1 dev va metric 100"]
    env["reason"] = "disconnect"
    assert run_hook(env, netns=uplink).returncode == 0
    assert defaults(uplink, "-4") == ["default via 198.18.5.1 dev va metric 100"]


@pytest.mark.root
def test_ipv6_default_replaced_by_a_script_is_kept_too(uplink: str, tmp_path: Path) -> None:
    # Debian's vpnc-script adds its IPv6 default at metric 1 beside the uplink's; a script
    # that replaces it (same metric, 1024) takes the uplink's away, as IPv4 full tunnels do.
    ip(uplink, "-6", "route", "add", "default", "via", "2001:2:0:5::1", "dev", "va")
    script = tmp_path / "replace-v6-default"
    script.write_text('#!/bin/sh\n[ "$reason" = connect ] && '
                      'ip -6 route replace default dev "$TUNDEV"\nexit 0\n')
    script.chmod(0o755)
    env = hook_env(tmp_path, "connect", script)
    assert run_hook(env, netns=uplink).returncode == 0
    routes = defaults(uplink, "-6")
    assert routes[0].startswith("default dev tunT metric 1024"), routes
    assert routes[1].startswith("default via 2001:2:0:5::1 dev va proto 211 metric 65000"), routes
    env["reason"] = "disconnect"
    assert run_hook(env, netns=uplink).returncode == 0
    assert not any("proto 211" in r for r in defaults(uplink, "-6"))


@pytest.mark.root
@pytest.mark.skipif(not VPNC_SCRIPT.exists(), reason="vpnc-scripts not installed")
def test_uplink_metric_off_leaves_routes_to_vpnc_script(uplink: str, tmp_path: Path) -> None:
    ip(uplink, "route", "add", "default", "via", "198.18.5.1", "dev", "va")
    env = {**hook_env(tmp_path, "connect", VPNC_SCRIPT), "OGSD_UPLINK_METRIC": "off"}
    assert run_hook(env, netns=uplink).returncode == 0
    assert defaults(uplink, "-4") == ["default dev tunT scope link"]
    env["reason"] = "disconnect"
    assert run_hook(env, netns=uplink).returncode == 0
    assert defaults(uplink, "-4") == ["default via 198.18.5.1 dev va"]
