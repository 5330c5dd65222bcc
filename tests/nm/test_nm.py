"""NetworkManager-openconnect's data as ogsd reads and writes it, and the dispatcher script's
contract (nmcli and ogsctl replaced by recorders). Real NetworkManager: tests/lab/."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ogsd.config.load import load_config
from ogsd.config.profile import ProfileError
from ogsd.core.models import Gateway
from ogsd.nm.connections import Connection
from ogsd.nm.servers import choose, entries_from_xmlconfig, entry_address, gateway_of
from ogsd.nm.sync import merged
from tests.nm_helpers import Profile, dialog_choice, xmlconfig
from tests.test_units import POLKIT_EVAL

SCRIPT = Path(__file__).parents[2] / "contrib" / "nm-dispatcher-ogsd"
NM_RULES = Path(__file__).parents[2] / "systemd" / "51-ogsd-networkmanager.rules"
UUID = "6f2b0d5e-2f7a-4a4e-9b8e-222222222222"

XML = """<?xml version="1.0" encoding="UTF-8"?>
<AnyConnectProfile xmlns="http://schemas.xmlsoap.org/encoding/"><ServerList>
<HostEntry><HostName>Tokyo</HostName><HostAddress>vpn-tyo.example.com</HostAddress></HostEntry>
<HostEntry><HostName>Osaka</HostName><HostAddress>vpn-osa.example.com:8443</HostAddress>
  <UserGroup>staff</UserGroup>
  <BackupServerList><HostAddress>vpn-kix.example.com</HostAddress></BackupServerList></HostEntry>
<HostEntry><HostAddress>vpn-unnamed.example.com</HostAddress></HostEntry>
</ServerList></AnyConnectProfile>
"""


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def connection(gateway: str, lasthost: str | None, xml: str | None = XML) -> Connection:
    entries = entries_from_xmlconfig(encoded(xml), "test") if xml else ()
    return Connection("/p", UUID, "Work VPN", gateway, lasthost, entries)


def test_xmlconfig_entries_are_those_the_auth_dialog_lists() -> None:
    entries = entries_from_xmlconfig(encoded(XML), "NetworkManager 'Work VPN' xmlconfig")
    # An entry without HostName is not listed by the dialog, so it is not ours either.
    assert [(e.name, e.address) for e in entries] == [
        ("Tokyo", "vpn-tyo.example.com"), ("Osaka", "vpn-osa.example.com:8443/staff")]
    osaka = entries[1].gateway
    assert (osaka.host, osaka.port, osaka.user_group, osaka.backups) == (
        "vpn-osa.example.com", 8443, "staff", ("vpn-kix.example.com",))


@pytest.mark.parametrize(("data", "problem"), [
    ("not base64 at all!", "test: not base64: Incorrect padding"),
    (encoded("<AnyConnectProfile><ServerList>"), "test: line 1, column 31: XML syntax error"),
    (encoded("<!DOCTYPE x [<!ENTITY a 'b'>]><x/>"), "test: line 1: <!ENTITY a>: refused"),
])
def test_unreadable_xmlconfig_is_a_profile_error_naming_it(data: str, problem: str) -> None:
    with pytest.raises(ProfileError) as caught:
        entries_from_xmlconfig(data, "test")
    assert str(caught.value).startswith(problem)


def test_gateway_text_forms() -> None:
    assert gateway_of("https://vpn.example.com/staff/") == Gateway(
        "vpn.example.com", user_group="staff")
    assert gateway_of("vpn.example.com:8443") == Gateway("vpn.example.com", port=8443)
    assert gateway_of("not a host") is None
    assert entry_address(Gateway("2001:db8::1", port=8443)) == "[2001:db8::1]:8443"
    assert entry_address(Gateway("vpn.example.com", user_group="g")) == "vpn.example.com/g"


def test_choice_follows_the_failover_order_among_its_own_servers() -> None:
    conn = connection("vpn-tyo.example.com", "Tokyo")
    order = ["vpn-other.example.net", "vpn-kix.example.com", "vpn-osa.example.com",
             "vpn-tyo.example.com"]
    chosen = choose(conn.entries, order)
    assert chosen is not None
    assert chosen.name == "Osaka"  # a backup is no entry of the dialog's list
    assert choose(conn.entries, ["vpn-other.example.net"]) is None
    # Before the first login there is no profile: its gateway is its only server, and
    # there is nothing to choose.
    bare = connection("vpn.example.com", None, xml=None)
    assert bare.gateways == (Gateway("vpn.example.com"),)
    assert choose(bare.entries, ["vpn.example.com"]) is None


def test_pointed_at_is_what_the_dialog_would_preselect() -> None:
    assert connection("vpn-tyo.example.com", "Osaka").pointed_at() == "vpn-osa.example.com"
    assert connection("vpn-tyo.example.com", "Gone").pointed_at() == "vpn-tyo.example.com"
    assert connection("vpn.example.com", None, xml=None).pointed_at() == "vpn.example.com"


@pytest.mark.parametrize("start", [("tyo.example.com", "Tokyo"), ("osa.example.com", None),
                                   ("other.example.net", "Nowhere"), ("x/grp", "Tokyo")])
@pytest.mark.parametrize("target", [0, 1, 2])
def test_pointing_makes_the_dialog_preselect_the_target(start: tuple[str, str | None],
                                                        target: int) -> None:
    """Whatever the connection said before, gateway = address and lasthost = HostName of
    an entry make the auth dialog (1.2.8's logic, tests/nm_helpers.py) choose it."""
    profiles = [Profile("Tokyo", "tyo.example.com"), Profile("Osaka", "osa.example.com"),
                Profile("Nagoya", "ngo.example.com")]
    entries = entries_from_xmlconfig(xmlconfig(profiles), "test")
    assert dialog_choice(*start, profiles) in {p.address for p in profiles} | {start[0]}
    chosen = entries[target]
    assert dialog_choice(chosen.address, chosen.name, profiles) == profiles[target].address


def test_merged_keeps_configured_gateways_first_and_once(tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[[gateway]]\nhost = "a.example.com"\n')
    config = load_config(path)
    out = merged(config, (Gateway("b.example.com"), Gateway("a.example.com", name="dup"),
                          Gateway("b.example.com")))
    assert [g.host for g in out.gateways] == ["a.example.com", "b.example.com"]
    assert out.gateways[0].name == ""
    assert merged(config, ()) is config


def test_networkmanager_settings(tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[networkmanager]\nconnections = "all"\n')  # no gateway needed
    nm = load_config(path).networkmanager
    assert (nm.enabled, nm.wants("anything"), nm.update_gateway) == (True, True, True)
    path.write_text('[networkmanager]\nconnections = ["Work VPN"]\nupdate_gateway = false\n')
    nm = load_config(path).networkmanager
    assert (nm.wants("Work VPN"), nm.wants("Home"), nm.update_gateway) == (True, False, False)
    path.write_text('[networkmanager]\nconnections = "some"\n')
    with pytest.raises(ValueError, match=r'line 2: \[networkmanager\] connections = "some": '
                                         r'must be a list of connection names, or "all"'):
        load_config(path)


# --- the dispatcher script ----------------------------------------------------------


def recorder(path: Path, log: Path, *, output: str = "", exit_code: int = 0) -> Path:
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\nprintf "{output}"\n'
                    f"exit {exit_code}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("action", "service", "calls"), [
    ("vpn-up", "org.freedesktop.NetworkManager.openconnect",
     [f"nmcli -g vpn.service-type connection show uuid {UUID}",
      f"ogsctl notify connected --nm-uuid {UUID} --device vpn0"]),
    ("vpn-down", "org.freedesktop.NetworkManager.openconnect",
     [f"nmcli -g vpn.service-type connection show uuid {UUID}",
      "ogsctl notify disconnected --device vpn0"]),
    ("vpn-up", "org.freedesktop.NetworkManager.openvpn",
     [f"nmcli -g vpn.service-type connection show uuid {UUID}"]),
    ("up", "org.freedesktop.NetworkManager.openconnect", []),
    ("down", "org.freedesktop.NetworkManager.openconnect", []),
    ("connectivity-change", "", []),
])
@pytest.mark.parametrize("ogsctl_fails", [False, True])
def test_dispatcher_reports_only_openconnect_vpn_events(
        tmp_path: Path, action: str, service: str, calls: list[str], ogsctl_fails: bool) -> None:
    log = tmp_path / "calls"
    log.touch()
    env = {"PATH": os.environ["PATH"], "CONNECTION_UUID": UUID, "CONNECTION_ID": "Work VPN",
           "VPN_IP_IFACE": "vpn0", "VPN_IP4_GATEWAY": "0.0.0.0",
           "NMCLI": str(recorder(tmp_path / "nmcli", log, output=service + "\\n")),
           "OGSCTL": str(recorder(tmp_path / "ogsctl", log, exit_code=3 if ogsctl_fails else 0))}
    done = subprocess.run([str(SCRIPT), "vpn0", action], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == calls
    told = any(c.startswith("ogsctl") for c in calls)
    assert (done.stderr != "") == (told and ogsctl_fails), done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_dispatcher_is_shellcheck_clean() -> None:
    done = subprocess.run(["shellcheck", "--shell=sh", str(SCRIPT)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "")


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_polkit_rule_grants_only_ogsd_only_settings_modify() -> None:
    cases = [
        ["org.freedesktop.NetworkManager.settings.modify.system", "ogsd"],
        ["org.freedesktop.NetworkManager.settings.modify.system", "mallory"],
        ["org.freedesktop.NetworkManager.network-control", "ogsd"],
        ["org.freedesktop.NetworkManager.settings.modify.hostname", "ogsd"],
    ]
    done = subprocess.run(["node", "-e", POLKIT_EVAL, str(NM_RULES), json.dumps(cases)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["yes", None, None, None]

