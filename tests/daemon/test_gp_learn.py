"""A GlobalProtect portal without a saved configuration: the daemon waits and says so,
learns the gateways `ogsctl connect --protocol gp` reports from openconnect's list, keeps
them over a restart, and refuses what is not its portal's. `ogsd run` as a process, its
socket, real SQLite, real TLS gateways on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ogsd.client.conn import Connection, CtlError
from ogsd.client.openconnect import portal_gateways
from ogsd.config.gpportal import with_learned
from ogsd.config.model import Config, DaemonConfig, GlobalProtectConfig
from ogsd.core.models import DaemonState, Gateway, PortalGateway
from ogsd.core.settings import Settings
from tests.daemon_helpers import START_WAIT, DaemonProcess, NotifySocket, short_dir, write_resolv
from tests.tlsserver import LoopbackServer

NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"

PORTAL = "portal.example.com"
# What openconnect 9.01 prints after the portal login (auth-globalprotect.c).
LISTED = """POST https://portal.example.com/global-protect/getconfig.esp
3 gateway servers available:
  Tokyo (127.0.0.2:{tokyo})
  Osaka (127.0.0.3:{osaka})
  Lab (127.0.0.4:{lab})
Please select GlobalProtect gateway.
"""


@pytest.fixture
def gateways() -> Iterator[tuple[LoopbackServer, LoopbackServer, LoopbackServer]]:
    with (LoopbackServer(host="127.0.0.2", delay=0.15) as tokyo,
          LoopbackServer(host="127.0.0.3") as osaka, LoopbackServer(host="127.0.0.4") as lab):
        yield tokyo, osaka, lab


@pytest.fixture
def directory() -> Iterator[Path]:
    directory = short_dir("ogsd-gp-")
    resolv = directory / "resolv.conf"
    write_resolv(resolv, "home.example", ["198.18.0.53"])
    (directory / "ogsd.toml").write_text(f"""profiles = []
[dns]
resolv_conf = "{resolv}"
[ogs]
metric = "exchange"
round_deadline_s = 3
probe_timeout_s = 2
[daemon]
continuous = false
[globalprotect]
portal = "{PORTAL}"
""")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def daemon(directory: Path, run: int = 1) -> Iterator[Connection]:
    """`ogsd run` on `directory`'s files until READY; a connection to its socket."""
    with NotifySocket(directory / f"notify{run}") as notify:
        proc = DaemonProcess(config=directory / "ogsd.toml", state=directory / "state",
                             socket_path=directory / "ogsd.sock", log=directory / "log",
                             env={"DBUS_SYSTEM_BUS_ADDRESS": NO_BUS,
                                  "NOTIFY_SOCKET": str(notify.path)})
        conn: Connection | None = None
        try:
            notify.expect("READY=1", START_WAIT)
            conn = Connection(str(directory / "ogsd.sock"), 30.0)
            yield conn
        finally:
            if conn is not None:
                conn.close()
            proc.stop()


def test_the_gateways_openconnect_lists_are_learnt_and_kept(
        directory: Path, gateways: tuple[LoopbackServer, ...]) -> None:
    tokyo, osaka, lab = gateways
    listed = portal_gateways(LISTED.format(tokyo=tokyo.port, osaka=osaka.port,
                                           lab=lab.port).splitlines())
    with daemon(directory) as conn:
        status = conn.request("status")
        assert status["waiting"].startswith(
            f"no gateways yet for GlobalProtect portal {PORTAL}: connect once with "
            "`ogsctl connect --protocol gp`")
        assert conn.request("gateways") == {"portal": PORTAL, "gateways": []}
        other = conn.request("notify.portal", {"portal": "other.example.com",
                                               "gateways": listed})
        assert other == {"learnt": False,
                         "message": f"not learnt: ogsd.toml names portal {PORTAL}"}
        learnt = conn.request("notify.portal", {"portal": PORTAL, "gateways": listed})
        assert learnt == {"learnt": True, "message": f"learnt 3 gateways of {PORTAL}"}
        decision = conn.request("evaluate", {"wait": True})
        # No priorities in 9.01's list: one tier, the fastest (Osaka or Lab) wins.
        assert decision["selected"] in ("127.0.0.3", "127.0.0.4")
        assert set(decision["order"]) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
        known = conn.request("gateways")["gateways"]
        assert [(g["host"], g["name"], g["protocol"], g["portal"]) for g in known] == [
            ("127.0.0.2", "Tokyo", "gp", PORTAL), ("127.0.0.3", "Osaka", "gp", PORTAL),
            ("127.0.0.4", "Lab", "gp", PORTAL)]
        again = conn.request("notify.portal", {"portal": PORTAL, "gateways": listed})
        assert again["learnt"] is False  # the same list: nothing to do
    # Restarted (as a resume hook may): the learnt list is there at once.
    with daemon(directory, 2) as conn:
        assert [g["host"] for g in conn.request("gateways")["gateways"]] == [
            "127.0.0.2", "127.0.0.3", "127.0.0.4"]
        assert conn.request("status").get("waiting") is None


@pytest.mark.parametrize(("params", "problem"), [
    ({"portal": PORTAL, "gateways": []}, "'gateways' must list 1 to 1000 gateways"),
    ({"portal": PORTAL, "gateways": [{"label": "x"}]}, "address"),
    ({"portal": PORTAL, "gateways": [{"address": "a b"}]}, "must be an address"),
    ({"portal": "", "gateways": [{"address": "a"}]}, "must be a host name"),
])
def test_a_malformed_report_is_refused_with_the_field_named(
        directory: Path, params: dict[str, object], problem: str) -> None:
    with daemon(directory) as conn:
        with pytest.raises(CtlError) as caught:
            conn.request("notify.portal", params)
        assert problem in caught.value.message
        assert conn.request("gateways")["gateways"] == []


def test_a_saved_configuration_wins(tmp_path: Path) -> None:
    """(ogsd.config.gpportal.with_learned) learnt gateways only stand in for a file."""
    state = DaemonState(learned_portal=PORTAL, learned_gateways=(
        PortalGateway("gw-1.example.com:4443", "Tokyo"), PortalGateway("gw-2", "Lab", 0)))
    bare = Config((), Settings(), DaemonConfig(), None, (), (),
                  globalprotect=GlobalProtectConfig(PORTAL))
    assert with_learned(bare, state).gateways == (
        Gateway("gw-1.example.com", "Tokyo", port=4443, protocol="gp", portal=PORTAL),
        Gateway("gw-2", "Lab", protocol="gp", manual_only=True, portal=PORTAL))
    saved = Config((Gateway("gw-9"),), Settings(), DaemonConfig(), None, (), (),
                   globalprotect=GlobalProtectConfig(PORTAL, tmp_path / "portal.xml"))
    assert with_learned(saved, state) is saved
    elsewhere = Config((), Settings(), DaemonConfig(), None, (), (),
                       globalprotect=GlobalProtectConfig("other.example.com"))
    assert with_learned(elsewhere, state) is elsewhere
