"""ogsd.nm.connections against a real NetworkManager (tests/nm_helpers.py) in an empty
namespace: what it reads of openconnect connections, and that pointing one keeps its saved
secrets, even while another client asks NetworkManager for them at the same time."""

from __future__ import annotations

import base64
import configparser
import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from ogsd.config.load import load_config
from ogsd.nm.connections import NetworkManager, NmError
from ogsd.nm.servers import ALREADY
from ogsd.nm.sync import NmSync
from tests.daemon_helpers import short_dir
from tests.nm_helpers import NetworkManagerNs, Profile, dialog_choice, keyfile, new_uuid

pytestmark = [pytest.mark.root, pytest.mark.anyio]

PROFILES = [Profile("Tokyo", "vpn-tyo.example.com"), Profile("Osaka", "vpn-osa.example.com"),
            Profile("Nagoya", "vpn-ngo.example.com")]
WORK, BARE, BROKEN, OTHER, GP = (new_uuid() for _ in range(5))
PORTAL = "portal.example.com"
# A GlobalProtect connection after a portal login (openconnect 9.01's server list).
GP_LIST = [Profile("Example Portal", f"{PORTAL}/global-protect"),
           Profile("GP Tokyo", "gp-tyo.example.com/ssl-vpn"),
           Profile("GP Osaka", "gp-osa.example.com:4443/ssl-vpn")]
# Another plugin's VPN: none of ogsd's business (NetworkManager loads it all the same).
VPNC = f"""[connection]
id=Other VPN
uuid={OTHER}
type=vpn

[vpn]
service-type=org.freedesktop.NetworkManager.vpnc
IPSec gateway=vpn.example.org
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def nm(netns: str) -> Iterator[NetworkManagerNs]:
    if shutil.which("NetworkManager") is None:
        pytest.skip("NetworkManager is not installed (network-manager, "
                    "network-manager-openconnect)")
    directory = short_dir("ogsd-nm-")
    manager = NetworkManagerNs(netns, directory)
    broken = keyfile("Broken", BROKEN, gateway="vpn.example.net", entries=(), lasthost=None)
    broken = broken.replace("[vpn-secrets]\n", "[vpn-secrets]\nxmlconfig="
                            + base64.b64encode(b"<AnyConnectProfile><Server").decode() + "\n")
    try:
        manager.start({
            "work": keyfile("Work VPN", WORK, gateway="vpn-tyo.example.com", entries=PROFILES,
                            lasthost="Tokyo"),
            # Before the first login: no profile pushed yet, only the server typed in.
            "bare": keyfile("New VPN", BARE, gateway="https://vpn.example.com/staff",
                            entries=(), lasthost=None),
            "broken": broken,
            "other": VPNC,
            "gp": keyfile("GP VPN", GP, gateway=PORTAL, entries=GP_LIST,
                          lasthost="Example Portal", protocol="gp"),
        })
        yield manager
    finally:
        manager.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_openconnect_connections_as_the_auth_dialog_sees_them(
        nm: NetworkManagerNs) -> None:
    client = NetworkManager(nm.bus_address)
    try:
        found = {c.uuid: c for c in await client.openconnect_connections()}
        assert set(found) == {WORK, BARE, BROKEN, GP}  # the vpnc one is not listed
        work = found[WORK]
        assert (work.name, work.gateway, work.lasthost) == (
            "Work VPN", "vpn-tyo.example.com", "Tokyo")
        assert [(e.name, e.address) for e in work.entries] == [
            (p.name, p.address) for p in PROFILES]
        assert work.secret_keys == {"xmlconfig", "lasthost"}
        bare = found[BARE]
        assert [(g.host, g.user_group) for g in bare.gateways] == [("vpn.example.com", "staff")]
        assert bare.pointed_at() == "vpn.example.com"
        assert found[BROKEN].entries == ()
        assert "NetworkManager 'Broken' xmlconfig: line 1" in str(found[BROKEN].problem)
        assert WORK not in await client.active_uuids()
    finally:
        client.close()


async def test_pointing_keeps_the_profile_while_another_client_reads_it(
        nm: NetworkManagerNs) -> None:
    """Update2 replaces the whole connection: the saved secrets go back with it, each time,
    while another client keeps asking for them (e.g. GNOME's settings panel open)."""
    stop = threading.Event()

    def other_client() -> None:
        while not stop.is_set():
            nm.nmcli("--show-secrets", "-g", "vpn.secrets", "connection", "show", "Work VPN")

    reader = threading.Thread(target=other_client)
    reader.start()
    client = NetworkManager(nm.bus_address)
    refused: list[str] = []
    try:
        for round_ in range(12):
            target = PROFILES[round_ % 3]
            (work,) = [c for c in await client.openconnect_connections() if c.uuid == WORK]
            try:
                await client.point(work, gateway=target.address, lasthost=target.name)
            except NmError as exc:  # allowed: refusing is safe, erasing is not
                refused.append(str(exc))
                continue
            saved = configparser.ConfigParser(interpolation=None)
            saved.read(nm.keyfile("work"))
            assert saved["vpn"]["gateway"] == target.address
            assert saved["vpn-secrets"]["lasthost"] == target.name
            assert saved["vpn-secrets"]["xmlconfig"]  # the profile is still there
            assert saved["vpn"]["cookie-flags"] == "2"  # the rest of the data too
    finally:
        stop.set()
        await anyio.to_thread.run_sync(reader.join)
        client.close()
    assert len(refused) < 12
    assert all("not changed: NetworkManager kept answering" in r for r in refused), refused


async def test_a_short_answer_is_never_written_back(nm: NetworkManagerNs) -> None:
    """NetworkManager answers a GetSecrets that overlaps another client's secret update
    with none at all (seen here): ogsd asks again, then refuses rather than write the
    connection back without what it had."""
    client = NetworkManager(nm.bus_address)
    try:
        (work,) = [c for c in await client.openconnect_connections() if c.uuid == WORK]
        # As if the connection had had one more secret, which the answers now lack.
        seen = dataclasses.replace(work, secret_keys=work.secret_keys | {"form:main:group"})
        with pytest.raises(NmError, match=r"^'Work VPN' not changed: NetworkManager kept "
                                          r"answering without its saved secrets"):
            await client.point(seen, gateway=PROFILES[1].address, lasthost="Osaka")
    finally:
        client.close()
    saved = configparser.ConfigParser(interpolation=None)
    saved.read(nm.keyfile("work"))
    assert (saved["vpn"]["gateway"], saved["vpn-secrets"]["lasthost"]) == (
        PROFILES[0].address, "Tokyo")


async def test_no_networkmanager_is_one_clear_error(tmp_path: Path) -> None:
    client = NetworkManager(f"unix:path={tmp_path}/no-bus")
    with pytest.raises(NmError, match=r"^cannot reach the system bus: "):
        await client.openconnect_connections()


async def test_sync_adds_the_servers_and_maps_a_uuid_to_the_server(
        nm: NetworkManagerNs, tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[[gateway]]\nhost = "vpn-tyo.example.com"\n'
                    '[networkmanager]\nconnections = ["Work VPN", "Gone VPN"]\n')
    sync = NmSync(load_config(path).networkmanager, nm.bus_address)
    try:
        with capture_logs() as logs:
            config = await sync.with_gateways(load_config(path))
            await sync.with_gateways(load_config(path))  # problems are logged once
        # The configured gateway first, once; then the connection's other servers.
        assert [g.host for g in config.gateways] == [p.address for p in PROFILES]
        assert [e["event"] for e in logs] == [
            "no openconnect connection called 'Gone VPN' in NetworkManager"]
        assert await sync.connected_host(WORK) == "vpn-tyo.example.com"
        with pytest.raises(NmError, match="is not an openconnect connection"):
            await sync.connected_host(OTHER)
        report = await sync.report()
        assert [c["name"] for c in report["connections"]] == ["Work VPN"]
    finally:
        sync.close()


def saved(nm: NetworkManagerNs, name: str) -> configparser.ConfigParser:
    """A connection's keyfile as NetworkManager wrote it."""
    keyfile = configparser.ConfigParser(interpolation=None)
    keyfile.read(nm.keyfile(name))
    return keyfile


async def test_a_globalprotect_connection_is_probed_and_pointed_at_a_gateway(
        nm: NetworkManagerNs, tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[networkmanager]\nconnections = ["GP VPN"]\n')
    sync = NmSync(load_config(path).networkmanager, nm.bus_address)
    before = saved(nm, "gp")
    try:
        config = await sync.with_gateways(load_config(path))
        assert [(g.host, g.port, g.name, g.protocol, g.portal) for g in config.gateways] == [
            ("gp-tyo.example.com", 443, "GP Tokyo", "gp", PORTAL),
            ("gp-osa.example.com", 4443, "GP Osaka", "gp", PORTAL)]
        assert await sync.connected_host(GP) == PORTAL  # the dialog would log in there
        with capture_logs() as logs:
            (done,) = await sync.apply({"order": ["elsewhere.example.net",
                                                  "gp-osa.example.com", "gp-tyo.example.com"]})
        assert (done["gateway"], done["lasthost"], done["changed"]) == (PORTAL, "GP Osaka", True)
        assert [e["event"] for e in logs] == [
            "NetworkManager connection pointed at the optimal server"]
        after = saved(nm, "gp")
        # The portal stays the dialog's first host; lasthost makes it pick the gateway.
        assert after["vpn"]["gateway"] == PORTAL
        assert after["vpn"]["protocol"] == "gp"
        assert after["vpn-secrets"]["lasthost"] == "GP Osaka"
        assert after["vpn-secrets"]["xmlconfig"] == before["vpn-secrets"]["xmlconfig"]
        assert dialog_choice(PORTAL, "GP Osaka", GP_LIST) == "gp-osa.example.com:4443/ssl-vpn"
        assert await sync.connected_host(GP) == "gp-osa.example.com"
        (again,) = await sync.apply({"order": ["gp-osa.example.com"]})
        assert (again["changed"], again["note"]) == (False, ALREADY)
    finally:
        sync.close()


async def test_a_connection_not_logged_in_yet_is_moved_to_our_best_gateway(
        nm: NetworkManagerNs, tmp_path: Path) -> None:
    """"New VPN" has no xmlconfig: its gateway, https://vpn.example.com/staff, is one of
    ogsd's configured gateways, so it is moved to the best of those."""
    path = tmp_path / "ogsd.toml"
    path.write_text('[[gateway]]\nhost = "vpn.example.com"\n'
                    '[[gateway]]\nhost = "vpn-b.example.com:8443"\n'
                    '[networkmanager]\nconnections = ["New VPN"]\n')
    sync = NmSync(load_config(path).networkmanager, nm.bus_address)
    try:
        await sync.with_gateways(load_config(path))  # ogsd's gateways, as the daemon's rounds
        (done,) = await sync.apply({"order": ["vpn-b.example.com", "vpn.example.com"]})
        assert (done["gateway"], done["changed"]) == ("vpn-b.example.com:8443/staff", True)
        after = saved(nm, "bare")
        assert after["vpn"]["gateway"] == "vpn-b.example.com:8443/staff"  # the group kept
        assert after.get("vpn-secrets", "lasthost", fallback=None) is None  # none to pre-select
        assert await sync.connected_host(BARE) == "vpn-b.example.com"
        (again,) = await sync.apply({"order": ["vpn-b.example.com", "vpn.example.com"]})
        assert (again["changed"], again["note"]) == (False, ALREADY)
        # Back, when the order says so.
        (back,) = await sync.apply({"order": ["vpn.example.com"]})
        assert back["changed"]
        assert saved(nm, "bare")["vpn"]["gateway"] == "vpn.example.com/staff"
    finally:
        sync.close()


async def test_a_connection_left_as_it_is_says_why_once(
        nm: NetworkManagerNs, tmp_path: Path) -> None:
    path = tmp_path / "ogsd.toml"
    path.write_text('[[gateway]]\nhost = "vpn-other.example.com"\n'
                    '[networkmanager]\nconnections = "all"\n')
    sync = NmSync(load_config(path).networkmanager, nm.bus_address)
    order = {"order": [PROFILES[0].address, "vpn-other.example.com"]}
    try:
        await sync.with_gateways(load_config(path))
        with capture_logs() as logs:
            first = {c["name"]: c for c in await sync.apply(order)}
            await sync.apply(order)  # the same reasons: not said again
        left = [(e["connection"], e["reason"]) for e in logs
                if e["event"] == "NetworkManager connection left as it is"]
        # Work VPN is where it should be: nothing left undone, nothing said.
        assert sorted(left) == [
            ("Broken", "its server list is unknown: NetworkManager 'Broken' xmlconfig: line 1, "
                       "column 19: XML syntax error: unclosed token"),
            ("GP VPN", "none of its servers is in the failover order"),
            ("New VPN", "no server list (xmlconfig) yet, and its gateway vpn.example.com is "
                        "not one of ogsd's configured gateways")]
        assert first["Work VPN"]["note"] == ALREADY
        assert {n: c["changed"] for n, c in first.items()} == dict.fromkeys(first, False)
        assert all(e["log_level"] == "info" for e in logs)
        # A new reason is said once more; a connection pointed says so instead.
        with capture_logs() as logs:
            await sync.apply({"order": ["gp-tyo.example.com"]})
        said = {e["connection"]: e for e in logs if e.get("connection")}
        assert said["Work VPN"]["reason"] == "none of its servers is in the failover order"
        assert said["GP VPN"]["event"] == "NetworkManager connection pointed at the optimal server"
        assert set(said) == {"Work VPN", "GP VPN"}  # the others' reasons stand
    finally:
        sync.close()
