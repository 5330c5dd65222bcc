"""Real NetworkManager (Debian's, with NetworkManager-openconnect) in a test's network
namespace, as found to work on this kind of machine (no systemd as PID 1, no udev):

- a *holder* process in the namespace with a private mount namespace: tmpfs on /run
  (NetworkManager's runtime files, the system bus socket, /run/ogsd), /etc/NetworkManager
  and /var/lib/NetworkManager bind-mounted from the test's directory (the only way to give
  NetworkManager and nm-dispatcher their configuration and dispatcher scripts), /sys
  read-only (else NetworkManager waits for udev and leaves the link unmanaged);
- a private `dbus-daemon` of type system whose policy lets every user own and call
  anything (the plugin's openconnect runs as user nm-openconnect);
- `NetworkManager --no-daemon` (keyfile plugin, dns=none, no polkit, no connectivity
  checks, no automatic default connections) and `nm-dispatcher --persist` on that bus;
- every other process (nmcli, ogsd, openconnect --authenticate) joins the holder's mount
  and network namespaces with nsenter.

/run/ogsd inside is the test directory's `run-ogsd`, so ogsctl's default socket there
(the dispatcher script's) is reachable from the test as well, and so is the bus
(`bus_address`).
"""

from __future__ import annotations

import base64
import os
import select
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.dbus_fixtures import stop_process

NM_START_TIMEOUT_S = 30.0  # NetworkManager's start-up on a loaded 2-core machine: ~1 s
COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CONTRIB = Path(__file__).resolve().parents[1] / "contrib"

NM_CONF = """[main]
plugins=keyfile
dns=none
rc-manager=unmanaged
auth-polkit=false
no-auto-default=*

[connectivity]
enabled=false

[logging]
level=INFO
"""

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <listen>unix:path={outside}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""

# Runs in the namespace's private mount namespace, then waits to be killed.
HOLDER = """set -e
mount -t tmpfs -o mode=0755 ogsd-test-run /run
mkdir -p /run/dbus /run/ogsd
mount --bind "$1/run-ogsd" /run/ogsd
mount --bind "$1/etc" /etc/NetworkManager
mount --bind "$1/var" /var/lib/NetworkManager
mount -o remount,ro /sys
echo ready
exec sleep infinity
"""

# Tells the test that the dispatcher ran for an event (after ogsd's script), through a
# FIFO the test keeps open; bounded, so a test gone away never holds the dispatcher.
SIGNAL_SCRIPT = """#!/bin/sh
timeout 5 sh -c 'echo "$1" > "$2"' signal "$2 ${CONNECTION_UUID:-}" "{events}"
"""


@dataclass(frozen=True, slots=True)
class Profile:
    """An AnyConnect profile's HostEntry, as a server pushes it."""

    name: str  # HostName
    address: str  # HostAddress


def xmlconfig(entries: Sequence[Profile]) -> str:
    """What NetworkManager-openconnect stores as the `xmlconfig` secret: base64 XML."""
    hosts = "".join(f"<HostEntry><HostName>{e.name}</HostName><HostAddress>{e.address}"
                    "</HostAddress></HostEntry>" for e in entries)
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<AnyConnectProfile xmlns='
           f'"http://schemas.xmlsoap.org/encoding/"><ServerList>{hosts}</ServerList>'
           "</AnyConnectProfile>\n")
    return base64.b64encode(xml.encode()).decode()


def gp_xmlconfig(entries: Sequence[Profile]) -> str:
    """What NetworkManager-openconnect stores as `xmlconfig` after a GlobalProtect portal
    login: openconnect's parse_portal_xml (9.01) writes the portal's entry
    (`portal/global-protect`), then one per gateway (`host[:port]/ssl-vpn`), so."""
    hosts = "".join(f"      <HostEntry><HostName>{e.name}</HostName><HostAddress>{e.address}"
                    "</HostAddress></HostEntry>\n" for e in entries)
    xml = f"<GPPortal>\n  <ServerList>\n{hosts}  </ServerList>\n</GPPortal>\n"
    return base64.b64encode(xml.encode()).decode()


def keyfile(name: str, uuid: str, *, gateway: str, entries: Sequence[Profile],
            lasthost: str | None, protocol: str = "anyconnect") -> str:
    """An openconnect connection as nm-connection-editor and the auth dialog leave it
    after a first login (cookie, gateway and gwcert are never saved); for protocol "gp",
    `entries` are the GlobalProtect server list's, portal included."""
    config = gp_xmlconfig(entries) if protocol == "gp" else xmlconfig(entries)
    secrets = f"xmlconfig={config}\n" if entries else ""
    secrets += f"lasthost={lasthost}\n" if lasthost else ""
    return (f"[connection]\nid={name}\nuuid={uuid}\ntype=vpn\nautoconnect=false\n\n"
            "[vpn]\nservice-type=org.freedesktop.NetworkManager.openconnect\n"
            f"gateway={gateway}\nprotocol={protocol}\nauthtype=password\n"
            "cookie-flags=2\ngateway-flags=2\ngwcert-flags=2\nxmlconfig-flags=0\n"
            f"lasthost-flags=0\n\n[vpn-secrets]\n{secrets}\n"
            "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=disabled\n")


def dialog_choice(gateway: str, lasthost: str | None, entries: Sequence[Profile]) -> str:
    """The server NetworkManager-openconnect's auth dialog connects to (1.2.8's get_config,
    parse_xmlconfig, populate_vpnhost_combo; entries without UserGroup), as the URL it
    hands openconnect (a GlobalProtect `/ssl-vpn` one is a gateway login). The GTK dialog
    cannot run here, so this stands in for it: it lists the gateway, then each xmlconfig
    entry, dropping the head of the list whenever an entry has the head's address and
    group, and pre-selects the last host whose HostName is `lasthost`, else the first."""
    name, _, group = gateway.partition("/")
    listed = [(name, gateway, group)]  # HostName, HostAddress, UserGroup
    for entry in entries:
        listed.append((entry.name, entry.address, ""))
        if entry.address.lower() == listed[0][1].lower() and listed[0][2] == "":
            listed.pop(0)
    chosen = [address for name, address, _ in listed if name == lasthost]
    return chosen[-1] if chosen else listed[0][1]


class NetworkManagerNs:
    """NetworkManager, its dispatcher and a system bus in namespace `netns` (root)."""

    def __init__(self, netns: str, directory: Path, *, path_dirs: Sequence[str] = ()) -> None:
        self.netns = netns
        self.dir = directory
        self.events = directory / "dispatcher-events"
        self.ogsd_run = directory / "run-ogsd"  # /run/ogsd inside
        self.bus = directory / "bus"  # the system bus, also reachable from outside
        self._path = ":".join([*path_dirs, os.environ.get("PATH", "/usr/bin:/bin")])
        self._procs: list[subprocess.Popen[bytes]] = []
        self.holder: subprocess.Popen[bytes] | None = None
        self.seen: list[str] = []  # dispatcher events not waited for yet
        self._buffer = b""
        self._events_fd = self._events_keep = -1

    # --- set-up --------------------------------------------------------------------

    def start(self, connections: Mapping[str, str] = {}) -> None:
        """Write the configuration and `connections` (file name -> keyfile), start
        everything, return once NetworkManager has finished starting."""
        for sub in ("etc/system-connections", "etc/conf.d", "etc/dispatcher.d", "var",
                    "run-ogsd"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.ogsd_run.chmod(0o755)
        (self.dir / "etc" / "NetworkManager.conf").write_text(NM_CONF)
        (self.dir / "bus.conf").write_text(BUS_CONF.replace("{outside}", str(self.bus)))
        for name, text in connections.items():
            path = self.keyfile(name)
            path.write_text(text)
            path.chmod(0o600)  # NetworkManager ignores keyfiles others may read
        scripts = self.dir / "etc" / "dispatcher.d"
        shutil.copy(CONTRIB / "nm-dispatcher-ogsd", scripts / "90-ogsd")
        (scripts / "99-test").write_text(SIGNAL_SCRIPT.replace("{events}", str(self.events)))
        for script in scripts.iterdir():
            script.chmod(0o755)  # root's, not writable by others: nm-dispatcher insists
        os.mkfifo(self.events)
        # Both ends held: reads never block the writers, and never see end-of-file.
        self._events_fd = os.open(self.events, os.O_RDONLY | os.O_NONBLOCK)
        self._events_keep = os.open(self.events, os.O_WRONLY)

        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
             "private", "sh", "-c", HOLDER, "holder", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._expect_line(self.holder, b"ready", "the namespace holder")
        bus = self.spawn(["dbus-daemon", f"--config-file={self.dir / 'bus.conf'}", "--nofork",
                          "--print-address=1"], log="dbus.log", stdout=subprocess.PIPE)
        self._expect_line(bus, b"unix:", "dbus-daemon")
        env = {"PATH": self._path}
        self.spawn(["/usr/lib/NetworkManager/nm-dispatcher", "--persist", "--debug"],
                   log="dispatcher.log", env=env)
        self.spawn(["NetworkManager", "--no-daemon", "--debug",
                    "--config=/etc/NetworkManager/NetworkManager.conf",
                    f"--state-file={self.dir / 'var' / 'NetworkManager.state'}",
                    "--pid-file=/run/NetworkManager.pid"], log="NetworkManager.log", env=env)
        self.run(["nm-online", "--wait-for-startup", "--quiet",
                  f"--timeout={NM_START_TIMEOUT_S:.0f}"], timeout=NM_START_TIMEOUT_S + 5)

    @property
    def bus_address(self) -> str:
        """The private system bus, for D-Bus clients in the test's own namespaces."""
        return f"unix:path={self.bus}"

    def keyfile(self, name: str) -> Path:
        """The file of connection `name` (as given to `start`); NetworkManager rewrites it
        when a connection is changed and saved."""
        return self.dir / "etc" / "system-connections" / f"{name}.nmconnection"

    def _expect_line(self, proc: subprocess.Popen[bytes], start: bytes, what: str) -> None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], COMMAND_TIMEOUT_S)
        line = proc.stdout.readline() if ready else b""
        if not line.startswith(start):
            error = b""
            if proc.poll() is not None and proc.stderr is not None:
                error = proc.stderr.read()
            raise RuntimeError(f"{what} did not start: {line!r} {error.decode(errors='replace')}")

    # --- processes inside ----------------------------------------------------------

    def enter(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the holder's network and mount namespaces."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv]

    def spawn(self, argv: Sequence[str], *, log: str, env: Mapping[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """A long-running process inside; its output goes to `log` in the directory."""
        with (self.dir / log).open("ab") as out:
            proc = subprocess.Popen(self.enter(argv), stdin=subprocess.DEVNULL,
                                    stdout=stdout or out, stderr=out,
                                    env={**os.environ, **(env or {})})
        self._procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float = COMMAND_TIMEOUT_S, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """A command inside; CalledProcessError (with its output) if it fails."""
        done = subprocess.run(self.enter(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}")
        return done

    def nmcli(self, *args: str, check: bool = True) -> str:
        return self.run(["nmcli", *args], check=check).stdout

    def setting(self, name: str, field: str) -> str:
        """One field of a connection, secrets shown (`vpn.data`, `vpn.secrets`...)."""
        return self.nmcli("--show-secrets", "-g", field, "connection", "show", name).strip()

    def vpn_items(self, name: str, field: str) -> dict[str, str]:
        """`vpn.data` or `vpn.secrets` as a dict (nmcli prints `k = v, k = v`)."""
        text = self.setting(name, field)
        items = {}
        for part in text.split(", "):
            key, sep, value = part.partition(" = ")
            if sep:
                items[key.strip()] = value.strip().replace("\\,", ",")
        return items

    # --- dispatcher events ---------------------------------------------------------

    def wait_event(self, action: str, uuid: str, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Wait until the dispatcher has run (ogsd's script done) for `action` of `uuid`."""
        want = f"{action} {uuid}"
        end = time.monotonic() + timeout
        while want not in self.seen:
            left = end - time.monotonic()
            ready, _, _ = select.select([self._events_fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"no dispatcher {action} for {uuid} within {timeout} s; "
                                   f"seen {self.seen}\n{self.logs()}")
            self._buffer += os.read(self._events_fd, 4096)
            *lines, rest = self._buffer.split(b"\n")
            self._buffer = rest
            self.seen += [line.decode() for line in lines]
        self.seen.remove(want)

    # --- tear-down -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything, NetworkManager first (it takes its VPN down with it)."""
        for proc in reversed(self._procs):
            stop_process(proc, STOP_TIMEOUT_S)
        if self.holder is not None:
            stop_process(self.holder, STOP_TIMEOUT_S)
            if self.holder.stderr is not None:
                self.holder.stderr.close()
        for fd in (self._events_fd, self._events_keep):
            if fd >= 0:
                os.close(fd)
        self._events_fd = self._events_keep = -1

    def logs(self) -> str:
        """The tails of NetworkManager's and the dispatcher's logs, for a failure message."""
        out = []
        for name in ("NetworkManager.log", "dispatcher.log"):
            path = self.dir / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-40:]))
        return "\n".join(out)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def ogsd_argv(config: Path, state: Path) -> list[str]:
    """`ogsd run` inside, on the system socket path (/run/ogsd/ogsd.sock there)."""
    return [sys.executable, "-m", "ogsd", "run", "--config", str(config), "--state-dir",
            str(state), "--socket", "/run/ogsd/ogsd.sock"]
