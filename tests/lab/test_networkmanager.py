"""NetworkManager-openconnect for real: Debian's NetworkManager 1.42 with its openconnect
plugin in the lab's client namespace (tests/nm_helpers.py), the lab's ocserv gateways,
ogsd and its dispatcher script.

The one stand-in is NetworkManager-openconnect's GTK auth dialog, which cannot run here:
`dialog_choice` picks the server the dialog would pre-select from the connection, and
`openconnect --authenticate` logs in there, as the dialog does; NetworkManager then gets
the cookie, gateway and certificate as the dialog would hand them over.
"""

from __future__ import annotations

import configparser
import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ogsd.client.conn import Connection
from ogsd.lab import GatewaySpec, Lab, LabSpec
from ogsd.lab.spec import TunnelMode, validate
from tests.daemon_helpers import START_WAIT, NotifySocket, short_dir
from tests.lab_fixtures import LabFactory
from tests.nm_helpers import (
    NetworkManagerNs,
    Profile,
    dialog_choice,
    keyfile,
    new_uuid,
    ogsd_argv,
)

pytestmark = [pytest.mark.root, pytest.mark.lab]

NAME = "Work VPN"
TOKYO, OSAKA, NAGOYA = (f"gw-{i}.lab.example" for i in (1, 2, 3))
PROFILES = [Profile("Tokyo", TOKYO), Profile("Osaka", OSAKA), Profile("Nagoya", NAGOYA)]
TRANSCRIPT = Path("/tmp/ogsd-nm-transcript.txt")
# Every wait here is for an event; this bounds each on a loaded CI machine.
WAIT_S = 30.0


def spec(rtts: tuple[int, int, int]) -> LabSpec:
    return validate(LabSpec(gateways=tuple(
        GatewaySpec(p.address, f"198.19.{i}.1", rtt_ms=rtt, vpn=True, tunnel=TunnelMode.SPLIT)
        for i, (p, rtt) in enumerate(zip(PROFILES, rtts, strict=True), 1))))


class Session:
    """NetworkManager and ogsd in the lab's client namespace; what was done, as a transcript."""

    def __init__(self, lab: Lab, directory: Path, entries: list[Profile] = PROFILES) -> None:
        self.lab = lab
        self.dir = directory
        self.entries = entries  # the connection's xmlconfig ([]: never logged in)
        self.uuid = new_uuid()
        self.nm = NetworkManagerNs(lab.client_ns, directory,
                                   path_dirs=[str(Path(sys.executable).parent)])
        self.socket = self.nm.ogsd_run / "ogsd.sock"
        self.lines: list[str] = []

    def ogsctl(self, *args: str) -> str:
        """ogsctl as a user runs it, inside (the dispatcher's view)."""
        argv = [sys.executable, "-m", "ogsd.client.ctl", *args]
        out = self.nm.run(argv).stdout
        self.note(f"$ ogsctl {' '.join(args)}", out)
        return out

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = Connection(str(self.socket), WAIT_S)
        try:
            return conn.request(method, params)
        finally:
            conn.close()

    def nmcli(self, *args: str) -> str:
        out = self.nm.nmcli(*args)
        self.note(f"$ nmcli {' '.join(shlex.quote(a) for a in args)}", out)
        return out

    def note(self, command: str, output: str = "") -> None:
        self.lines += [command, *output.rstrip("\n").splitlines()]

    def pointed(self) -> tuple[str, str | None]:
        """(vpn.data gateway, lasthost) as NetworkManager saved them. Read from its keyfile:
        a GetSecrets (nmcli --show-secrets) that overlaps ogsd's may answer with no
        secrets at all (see ogsd.nm.connections.SECRETS_TRIES)."""
        saved = configparser.ConfigParser(interpolation=None)
        saved.read(self.nm.keyfile("work"))
        return saved["vpn"]["gateway"], saved.get("vpn-secrets", "lasthost", fallback=None)

    def wait_pointed(self, monitor: subprocess.Popen[bytes], want: tuple[str, str | None]
                     ) -> None:
        """Wait until the connection is saved pointed at `want`, re-reading it at each
        change `nmcli connection monitor` reports (NetworkManager may report more than
        ogsd's one: a line alone does not say ours is saved)."""
        assert monitor.stdout is not None
        seen: list[str] = []
        end = time.monotonic() + WAIT_S
        while self.pointed() != want:
            ready, _, _ = select.select([monitor.stdout], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError(f"not pointed at {want} within {WAIT_S} s: "
                                     f"{self.pointed()}; NetworkManager said {seen}")
            # The descriptor, not readline: Python's buffer would hide a second line from select.
            seen.append(os.read(monitor.stdout.fileno(), 4096).decode().strip())

    def connect(self) -> str:
        """What a user's "connect" does: the auth dialog's server, a login there, then
        NetworkManager up with the dialog's secrets. The server logged in to."""
        gateway, lasthost = self.pointed()
        target = dialog_choice(gateway, lasthost, self.entries)
        self.note(f"# the auth dialog starts from gateway={gateway}, lasthost={lasthost}: "
                  f"it connects to {target}")
        auth = self.nm.run(["openconnect", "--authenticate", "--user", self.lab.vpn_user,
                            "--passwd-on-stdin", "--non-inter", "--servercert",
                            self.lab.vpn_servercert, target],
                           input=self.lab.vpn_password + "\n").stdout
        values = dict(line.split("=", 1) for line in auth.splitlines() if "=" in line)
        secrets = {k: v.strip("'") for k, v in values.items()}
        passwd = self.dir / "secrets"
        passwd.write_text(f"vpn.secrets.cookie:{secrets['COOKIE']}\n"
                          f"vpn.secrets.gateway:{secrets['CONNECT_URL']}\n"
                          f"vpn.secrets.gwcert:{secrets['FINGERPRINT']}\n")
        passwd.chmod(0o600)
        self.nmcli("connection", "up", NAME, "ifname", self.lab.uplink, "passwd-file",
                   str(passwd))
        return target


@pytest.fixture
def session(make_lab: LabFactory) -> Iterator[Session]:
    yield from new_session(make_lab, PROFILES, "Tokyo")


@pytest.fixture
def bare_session(make_lab: LabFactory) -> Iterator[Session]:
    """The connection as a user creates it, before the first login: Tokyo typed in."""
    yield from new_session(make_lab, [], None)


def new_session(make_lab: LabFactory, entries: list[Profile], lasthost: str | None
                ) -> Iterator[Session]:
    for tool in ("NetworkManager", "nmcli", "openconnect"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (network-manager, "
                        "network-manager-openconnect, openconnect)")
    lab = make_lab(spec((80, 20, 50)))  # Osaka is the nearest
    directory = short_dir("ogsd-nm-")
    directory.chmod(0o755)
    s = Session(lab, directory, entries)
    try:
        s.nm.start({"work": keyfile(NAME, s.uuid, gateway=TOKYO, entries=entries,
                                    lasthost=lasthost)})
        yield s
    finally:
        s.nm.stop()
        TRANSCRIPT.write_text("\n".join(s.lines) + "\n")
        shutil.rmtree(directory, ignore_errors=True)


def start_ogsd(s: Session, gateways: list[str] = []) -> subprocess.Popen[bytes]:  # noqa: B006
    """ogsd following the connection; `gateways`: its own configured ones."""
    config = s.dir / "ogsd.toml"
    config.write_text("".join(f'[[gateway]]\nhost = "{g}"\n' for g in gateways)
                      + '[ogs]\nround_deadline_s = 5\n[daemon]\ncontinuous = false\n'
                      f'[networkmanager]\nconnections = ["{NAME}"]\n')
    with NotifySocket(s.dir / "notify") as notify:
        proc = s.nm.spawn(ogsd_argv(config, s.dir / "state"), log="ogsd.log",
                          env={"NOTIFY_SOCKET": str(notify.path)})
        notify.expect("READY=1", START_WAIT)
        notify.expect_status()  # the start-up decision is published
    return proc


def test_connection_follows_ogsd_and_a_connect_lands_on_its_choice(session: Session) -> None:
    s = session
    s.note(f"# lab: {TOKYO} 80 ms, {OSAKA} 20 ms, {NAGOYA} 50 ms (RTT)")
    s.nmcli("-f", "vpn.data,vpn.secrets", "--show-secrets", "connection", "show", NAME)
    # A profile change is an event NetworkManager reports: watch for ogsd's update.
    monitor = s.nm.spawn(["nmcli", "connection", "monitor", s.uuid], log="monitor.log",
                         stdout=subprocess.PIPE)
    start_ogsd(s)

    # ogsd took the servers of the connection's xmlconfig as its gateways, and chose.
    gateways = [g["host"] for g in s.request("gateways")["gateways"]]
    assert gateways == [TOKYO, OSAKA, NAGOYA]
    s.ogsctl("results")
    assert s.request("status")["selected"] == OSAKA

    # ...and pointed the connection at its choice.
    s.wait_pointed(monitor, (OSAKA, "Osaka"))
    s.nmcli("-g", "vpn.data", "connection", "show", NAME)

    # A connect lands there: ocserv on Osaka has the session, the others none.
    assert s.connect() == OSAKA
    sessions = {p.address: s.lab.vpn_sessions(p.address) for p in PROFILES}
    s.note("# ocserv sessions: " + ", ".join(f"{h}: {[x['Username'] for x in v]}"
                                               for h, v in sessions.items()))
    assert [x["Username"] for x in sessions[OSAKA]] == [s.lab.vpn_user]
    assert sessions[TOKYO] == sessions[NAGOYA] == []

    # The dispatcher's vpn-up reached ogsd: connected to Osaka on NetworkManager's device.
    s.nm.wait_event("vpn-up", s.uuid)
    status = s.request("status")
    assert (status["connected"], status["connected_device"]) == (OSAKA, "vpn0")
    s.ogsctl("status")

    # Nagoya becomes the nearest: a decision says so, but the active connection is left.
    s.lab.set(spec((80, 60, 15)))
    decided = s.request("evaluate", {"wait": True})
    assert decided["selected"] == NAGOYA
    applied = s.request("nm.apply")["connections"]
    assert applied[0]["note"] == "active: left as it is until it disconnects"
    assert s.pointed() == (OSAKA, "Osaka")

    s.nmcli("connection", "down", NAME)
    s.nm.wait_event("vpn-down", s.uuid)
    assert s.request("status")["connected"] is None
    s.ogsctl("status")

    # Disconnected: `ogsctl nm-apply` points it at the new choice at once.
    out = s.ogsctl("nm-apply", NAME)
    assert out == f"{NAME}: pointed at {NAGOYA} (Nagoya)\n"
    assert s.pointed() == (NAGOYA, "Nagoya")
    assert s.connect() == NAGOYA
    assert [x["Username"] for x in s.lab.vpn_sessions(NAGOYA)] == [s.lab.vpn_user]
    s.nm.wait_event("vpn-up", s.uuid)
    assert s.request("status")["connected"] == NAGOYA

    # A support bundle made there shows NetworkManager as ogsd sees it, secrets redacted.
    bundle = s.dir / "diag.tar.gz"
    s.ogsctl("diag", "-o", str(bundle))
    with tarfile.open(bundle) as tar:
        names = sorted(n.partition("/")[2] for n in tar.getnames())
        nm_view = json.load(tar.extractfile(  # type: ignore[arg-type]
            next(n for n in tar.getnames() if n.endswith("networkmanager/ogsd.json"))))
        manifest, decisions = (tar.extractfile(  # type: ignore[union-attr]
            next(n for n in tar.getnames() if n.endswith(name))).read().decode()
            for name in ("MANIFEST.txt", "daemon/decisions.txt"))
    s.note(f"$ tar tzf {bundle.name}", "\n".join(names))
    s.note("$ tar xzf diag.tar.gz --to-stdout '*/MANIFEST.txt'", manifest)
    s.note("$ tar xzf diag.tar.gz --to-stdout '*/daemon/decisions.txt' | head -12",
           "\n".join(decisions.splitlines()[:12]))
    assert {"daemon/decisions.txt", "networkmanager/connections.txt",
            "networkmanager/ogsd.json", "MANIFEST.txt", "README.txt"} <= set(names)
    (seen,) = nm_view["connections"]
    assert (seen["name"], seen["lasthost"]) == (NAME, "Nagoya")
    assert [name for name, _ in seen["servers"]] == ["Tokyo", "Osaka", "Nagoya"]


def logged(s: Session, event: str) -> list[dict[str, Any]]:
    """ogsd's log events (JSON lines) called `event`, so far."""
    lines = (s.dir / "ogsd.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == event]


def logged_once(s: Session, event: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one log event called `event`, once ogsd has written it: NetworkManager saves
    an update (what wait_pointed sees) before it answers the ogsd that then logs it."""
    end = time.monotonic() + timeout
    while not (found := logged(s, event)) and time.monotonic() < end:
        time.sleep(0.05)
    (only,) = found
    return only


def test_a_connection_never_logged_in_is_pointed_at_the_nearest_of_ours(
        bare_session: Session) -> None:
    """No xmlconfig yet: the connection's only server is its gateway, Tokyo, one of the
    gateways ogsd is configured with; ogsd moves it to the nearest of those."""
    s = bare_session
    s.note(f"# lab: {TOKYO} 80 ms, {OSAKA} 20 ms, {NAGOYA} 50 ms (RTT); no xmlconfig yet")
    monitor = s.nm.spawn(["nmcli", "connection", "monitor", s.uuid], log="monitor.log",
                         stdout=subprocess.PIPE)
    start_ogsd(s, [TOKYO, OSAKA, NAGOYA])
    assert s.request("status")["selected"] == OSAKA
    s.wait_pointed(monitor, (OSAKA, None))
    pointed = logged_once(s, "NetworkManager connection pointed at the optimal server")
    assert (pointed["was"], pointed["gateway"]) == (TOKYO, OSAKA)
    s.nmcli("-g", "vpn.data", "connection", "show", NAME)

    # A connect lands there.
    assert s.connect() == OSAKA
    assert [x["Username"] for x in s.lab.vpn_sessions(OSAKA)] == [s.lab.vpn_user]
    assert s.lab.vpn_sessions(TOKYO) == s.lab.vpn_sessions(NAGOYA) == []
    s.nm.wait_event("vpn-up", s.uuid)

    # Active, it is left as it is, and ogsd says why once, however often it is asked.
    s.lab.set(spec((80, 60, 15)))
    assert s.request("evaluate", {"wait": True})["selected"] == NAGOYA
    for _ in range(2):
        (applied,) = s.request("nm.apply")["connections"]
        assert applied["note"] == "active: left as it is until it disconnects"
    left = logged(s, "NetworkManager connection left as it is")
    assert [(e["connection"], e["reason"]) for e in left] == [
        (NAME, "active: left as it is until it disconnects")]
    assert s.pointed() == (OSAKA, None)
