"""Bring a lab up, change it live, inspect it, take it down: namespaces, TUNs, processes."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ogsd.lab import procs, topology
from ogsd.lab import spec as lab_spec
from ogsd.lab.control import ControlError, request
from ogsd.lab.errors import LabError
from ogsd.lab.labgp import GlobalProtectGateways
from ogsd.lab.spec import LabSpec
from ogsd.lab.topology import Names
from ogsd.lab.tun import open_tun
from ogsd.lab.vpnclient import OPENCONNECT_PIDS, VpnClient

# LabError: importable from here, as before.
__all__ = ["DEFAULT_NAME", "Lab", "LabError", "missing_extra"]

DEFAULT_NAME = "ogsdlab"
RUN_DIR = Path("/run/ogsd-lab")
NETNS_DIR = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
# "<name>-c" names both a namespace and a TUN device, and interface names stop at 15 bytes.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,12}$")
# Python start-up plus a certificate: well under a second; ten covers a loaded machine.
READY_TIMEOUT_S = 10.0
# A set that stops (~1.5 s each, gracefully) or starts ocserv instances waits for them.
RELOAD_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = procs.STOP_TIMEOUT_S


def missing_extra() -> str | None:
    """What to install when the lab's own dependencies are missing (a plain
    `pip install ogsd`), else None. The gateways' process imports them, not this one."""
    if importlib.util.find_spec("cryptography") is None:
        return ("the lab needs the 'lab' extra (cryptography is not installed): "
                "pip install 'ogsd[lab]'")
    return None


def missing_gp(spec: LabSpec) -> str | None:
    """What to install when `spec` has GlobalProtect gateways and Flask is missing."""
    if spec.gp_gateways() and importlib.util.find_spec("flask") is None:
        return ("GlobalProtect gateways (gp: true) run openconnect's fake-gp-server, which "
                "needs Flask: pip install 'ogsd[lab]'")
    return None


def _ip(*args: str, batch: list[str] | None = None) -> None:
    """Run `ip` (with a batch on stdin); LabError with its message on failure."""
    argv = ["ip", *args, *(["-batch", "-"] if batch is not None else [])]
    stdin = "".join(line + "\n" for line in batch) if batch is not None else None
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


def _sysctl(netns: str, settings: Sequence[str]) -> None:
    argv = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *settings]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()}")


class Lab(GlobalProtectGateways):
    """A running lab. Make one with `Lab.up(spec, name)` or find one with `Lab.attach(name)`."""

    uplink = topology.UPLINK  # the client's uplink device ("eth0")

    def __init__(self, name: str, spec: LabSpec) -> None:
        self.name = name
        self.spec = spec
        self.names = Names.of(name)
        self.client_ns = self.names.client
        self.router_ns = self.names.router
        self.server_ns = self.names.server
        self.state_dir = RUN_DIR / name
        self.resolv_conf = NETNS_ETC / self.client_ns / "resolv.conf"
        self.hosts_file = NETNS_ETC / self.server_ns / "hosts"
        self.cert_path = self.state_dir / "cert.pem"  # the gateways' self-signed certificate
        self._children: list[subprocess.Popen[Any]] = []
        self._vpn_clients: list[VpnClient] = []

    # -- lifecycle -----------------------------------------------------------------------

    @staticmethod
    def check_name(name: str) -> str:
        """The name, or LabError saying what a lab name may be."""
        if not NAME_RE.match(name):
            raise LabError(
                f"lab name {name!r}: use 1-13 lower-case letters, digits or '-', "
                "starting with a letter"
            )
        return name

    @classmethod
    def exists(cls, name: str) -> bool:
        """True if anything of lab `name` is left (state, namespaces or /etc/netns files)."""
        lab = cls(cls.check_name(name), LabSpec())
        paths = [NETNS_DIR / ns for ns in lab.names.all()]
        paths += [NETNS_ETC / ns for ns in lab.names.all()]
        return any(p.exists() for p in [lab.state_dir, *paths])

    @classmethod
    def up(cls, spec: LabSpec, name: str = DEFAULT_NAME) -> Lab:
        """Create namespaces, uplink, TUNs, relay and servers for `spec`; the running lab."""
        spec = lab_spec.validate(spec)
        if missing := missing_extra() or missing_gp(spec):
            raise LabError(missing)
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces and TUN devices)")
        if cls.exists(name):
            raise LabError(
                f"lab {name!r} already exists (or was left by a crash): "
                f"run `python -m ogsd.lab down --name {name}` first"
            )
        lab = cls(name, spec)
        try:
            lab._build()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def attach(cls, name: str = DEFAULT_NAME) -> Lab:
        """The lab `name` that is up (started by another process, e.g. the CLI)."""
        lab = cls(cls.check_name(name), LabSpec())
        try:
            lab.spec = lab_spec.load(lab.state_dir / "spec.json")
        except lab_spec.SpecError:
            raise LabError(f"lab {name!r} is not up") from None
        return lab

    def _build(self) -> None:
        n, spec = self.names, self.spec
        self.state_dir.mkdir(parents=True, mode=0o755)
        self._write_spec(spec)
        for ns in n.all():
            _ip("netns", "add", ns)
        _sysctl(n.router, topology.ROUTER_SYSCTLS)
        _sysctl(n.client, topology.QUIET_IPV6)
        fds = [open_tun(n.router), open_tun(n.server)]
        try:
            _ip(
                batch=[
                    *(
                        f"link set {ns} txqueuelen {topology.TXQUEUELEN} netns {ns}"
                        for ns in (n.router, n.server)
                    ),
                    f"link add {topology.UPLINK} netns {n.client} type veth "
                    f"peer name {topology.ROUTER_LINK} netns {n.router}",
                ]
            )
            _sysctl(n.router, topology.ROUTER_LINK_SYSCTLS)
            _ip(
                "-n",
                n.router,
                batch=[
                    *topology.tun_base(n.router),
                    *topology.router_uplink(spec, mac=None),
                    *topology.proxies(topology.proxied(spec), n, "add"),
                ],
            )
            _ip(
                "-n",
                n.server,
                batch=[
                    *topology.tun_base(n.server),
                    *topology.server_addresses(spec.addresses(), "add"),
                ],
            )
            _ip("-n", n.client, batch=[*topology.client_base(), *topology.client_up(spec)])
            self._write_resolv_conf(spec)
            self._write_hosts(spec)  # before the servers start: `ip netns exec` mounts it
            relay = self._spawn(
                "relay", ["--client-fd", str(fds[0]), "--server-fd", str(fds[1])], fds
            )
        finally:
            for fd in fds:
                os.close(fd)  # the relay holds them now; the TUNs die with it
        servers = self._spawn("servers", [], [], netns=n.server)
        # `owner` lets a test session clean up labs whose creator died (see orphans()).
        state = {
            "name": self.name,
            "owner": os.getpid(),
            "pids": {"relay": relay, "servers": servers},
        }
        (self.state_dir / "state.json").write_text(json.dumps(state) + "\n")

    def _spawn(self, what: str, args: list[str], fds: list[int], netns: str | None = None) -> int:
        """Start `python -m ogsd.lab.<what>` detached; its pid once it says it is ready."""
        read_end, write_end = os.pipe()
        prefix = ["ip", "netns", "exec", netns] if netns else []
        argv = [
            *prefix,
            sys.executable,
            "-m",
            f"ogsd.lab.{what}",
            *args,
            "--spec",
            str(self.state_dir / "spec.json"),
            "--control",
            str(self.state_dir / f"{what}.sock"),
            "--ready-fd",
            str(write_end),
        ]
        log = self.state_dir / f"{what}.log"
        try:
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    pass_fds=(write_end, *fds),
                    start_new_session=True,
                )
            self._children.append(proc)
            (self.state_dir / f"{what}.pid").write_text(f"{proc.pid}\n")
        finally:
            os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT_S)
            said = os.read(read_end, 64) if ready else b""
        finally:
            os.close(read_end)
        if said != b"ready\n":
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise LabError(
                f"the {what} process did not start: " + (" | ".join(tail) or "no output")
            )
        return proc.pid

    def set(self, spec: LabSpec) -> None:
        """Apply `spec` live: delays, modes, gateways, DNS, and the uplink (as a roam)."""
        self._apply(lab_spec.validate(spec), roam=False)

    def roam(self, spec: LabSpec | None = None) -> None:
        """Move the client like a Wi-Fi roam, to `spec` (default: the current one).

        In the client namespace: eth0 goes down and loses its addresses, the router gets
        its new addresses and MAC, resolv.conf is rewritten, then eth0 comes up with the
        new addresses and default routes. Everything else of `spec` applies as in `set`.
        """
        self._apply(lab_spec.validate(spec or self.spec), roam=True)

    def _apply(self, spec: LabSpec, *, roam: bool) -> None:
        if missing := missing_gp(spec):
            raise LabError(missing)
        n, old = self.names, self.spec
        moving = roam or (spec.client, spec.uplink) != (old.client, old.uplink)
        added, removed = spec.addresses() - old.addresses(), old.addresses() - spec.addresses()
        if added:
            _ip("-n", n.server, batch=topology.server_addresses(added, "add"))
        self._write_hosts(spec)  # ocserv resolves its listen-host when it starts
        self._write_spec(spec)
        if moving:
            _ip("-n", n.client, batch=topology.client_down())
        try:
            request(str(self.state_dir / "servers.sock"), "reload", timeout=RELOAD_TIMEOUT_S)
            request(str(self.state_dir / "relay.sock"), "reload")
        except ControlError as exc:
            raise LabError(f"lab {self.name!r}: {exc}") from None
        self._write_resolv_conf(spec)
        was, now = topology.proxied(old), topology.proxied(spec)
        router = topology.proxies(was if moving else was - now, n, "del")
        if moving:
            router += topology.router_uplink(spec, mac=topology.random_mac())
        router += topology.proxies(now if moving else now - was, n, "add")
        if router:
            _ip("-n", n.router, batch=router)
        if moving:
            _ip("-n", n.client, batch=topology.client_up(spec))
        if removed:
            _ip("-n", n.server, batch=topology.server_addresses(removed, "del"))
        self.spec = spec

    def down(self) -> None:
        """Remove every process, namespace and file of this lab; fine to call twice."""
        Lab.teardown(self.name)
        for proc in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT_S)
        self._children.clear()
        for client in self._vpn_clients:
            client.close()
        self._vpn_clients.clear()

    @classmethod
    def teardown(cls, name: str) -> None:
        """Remove what lab `name` left, whether it is up, half up or crashed.

        Every process in the lab's namespaces is stopped, the client's first with SIGTERM
        (openconnect logs out while its gateway still runs), then the server namespace's
        (servers, ocserv, also those a crash left) with SIGKILL, then the relay; then the
        namespaces and files go.
        """
        lab = cls(cls.check_name(name), LabSpec())
        for ns in lab.names.all():
            if (NETNS_DIR / ns).exists():
                # Servers need no goodbye, and ocserv's own SIGTERM shutdown takes 1 s.
                first = signal.SIGKILL if ns == lab.server_ns else signal.SIGTERM
                procs.stop_all(procs.in_netns(ns), first=first)
        pids: set[int] = set()
        for what in ("relay", "servers"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int((lab.state_dir / f"{what}.pid").read_text()))
        procs.stop_all(p for p in pids if procs.is_ours(p, lab.state_dir))
        started: list[int] = []
        with contextlib.suppress(OSError):
            text = (lab.state_dir / OPENCONNECT_PIDS).read_text()
            started = [int(p) for p in text.split() if p.isdigit()]
        procs.remove_vpnc_state(lab.resolv_marker, started)
        for ns in lab.names.all():
            if (NETNS_DIR / ns).exists():
                _ip("netns", "del", ns)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        shutil.rmtree(lab.state_dir, ignore_errors=True)

    @staticmethod
    def orphans(prefix: str) -> list[str]:
        """Names starting with `prefix` of labs whose creating process has exited."""
        found = []
        for state in sorted(RUN_DIR.glob(f"{prefix}*/state.json")):
            try:
                os.kill(int(json.loads(state.read_text())["owner"]), 0)
            except ProcessLookupError:
                found.append(state.parent.name)
            except (OSError, ValueError, KeyError):
                continue
        return found

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- using it ------------------------------------------------------------------------

    def exec(
        self,
        argv: list[str],
        *,
        timeout: float = 60.0,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the client namespace (it sees the lab's resolv.conf); its output."""
        return subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start `argv` in the client namespace and return at once (a daemon, openconnect).

        Keyword arguments go to subprocess.Popen (stdin defaults to /dev/null). `ip netns
        exec` execs the command, so the pid is the program's own and signals reach it.
        The lab's teardown stops whatever is still running in the namespace.
        """
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", self.client_ns, *argv], **popen)
        self._children.append(proc)
        return proc

    def measure(self, plan: list[dict[str, Any]], timeout: float = 120.0) -> list[dict[str, Any]]:
        """Run `ogsd.lab.measure` steps in the client namespace; one result per step."""
        done = self.exec(
            [sys.executable, "-m", "ogsd.lab.measure"], input=json.dumps(plan), timeout=timeout
        )
        if done.returncode != 0:
            raise LabError(f"measure failed: {done.stderr.strip()[-500:]}")
        results: list[dict[str, Any]] = json.loads(done.stdout)
        return results

    def pids(self) -> dict[str, int]:
        """The relay's and the servers' pids."""
        state = json.loads((self.state_dir / "state.json").read_text())
        return {k: int(v) for k, v in state["pids"].items()}

    def traffic(self) -> dict[str, tuple[int, int, int, int]]:
        """Per lab address, what crossed the relay since the lab came up: (packets from the
        client, their bytes, packets to the client, their bytes), IP headers included and
        dropped packets counted. A difference of two readings is what happened between."""
        reply = request(str(self.state_dir / "relay.sock"), "traffic")
        return {address: (c[0], c[1], c[2], c[3]) for address, c in reply["traffic"].items()}

    def status(self) -> dict[str, Any]:
        """What is running (ocserv instances included), the relay's counters, and the spec."""
        processes = {}
        try:
            pids = self.pids()
        except (OSError, ValueError, KeyError):
            pids = {}
        for what, pid in pids.items():
            processes[what] = {"pid": pid, "alive": procs.is_ours(pid, self.state_dir)}
        relay: dict[str, Any]
        try:
            relay = request(str(self.state_dir / "relay.sock"), "stats")
            relay.pop("ok", None)
        except ControlError as exc:
            relay = {"error": str(exc)}
        try:
            servers = request(str(self.state_dir / "servers.sock"), "status")
            vpns, gps = servers["vpns"], servers["gps"]
        except ControlError as exc:
            vpns = gps = {"error": str(exc)}
        try:
            servercert: str | None = self.vpn_servercert
        except LabError:
            servercert = None
        return {
            "name": self.name,
            "namespaces": {ns: (NETNS_DIR / ns).exists() for ns in self.names.all()},
            "processes": processes,
            "relay": relay,
            "vpns": vpns,
            "gps": gps,
            "resolv_conf": str(self.resolv_conf),
            "uplink": {
                "device": self.uplink,
                "router": self.spec.router,
                "router6": self.spec.router6,
            },
            "vpn": {
                "user": self.vpn_user,
                "password": self.vpn_password,
                "servercert": servercert,
            },
            "spec": json.loads(self.spec.to_json()),
        }

    # -- files ---------------------------------------------------------------------------

    def _write_spec(self, spec: LabSpec) -> None:
        path = self.state_dir / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec.to_json())
        tmp.replace(path)  # atomic: the processes never read half a spec

    @staticmethod
    def _write_in_place(path: Path, text: str) -> None:
        # Rewritten in place, not renamed: `ip netns exec` bind-mounts this inode over the
        # /etc file, so a process already running in the namespace sees the change. Not
        # rewritten when it already says that: a watcher may read it between the truncation
        # and the write, and would see two changes where there was none.
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        with path.open("w") as out:
            out.write(text)

    @property
    def resolv_marker(self) -> str:
        """In the lab's resolv.conf, so vpnc-script's copies of it name the lab too."""
        return f"for lab {self.name};"

    def _write_resolv_conf(self, spec: LabSpec) -> None:
        lines = [f"search {spec.domain}", *(f"nameserver {s}" for s in spec.dns.servers)]
        self._write_in_place(
            self.resolv_conf,
            f"# written by ogsd.lab {self.resolv_marker} removed by `python -m ogsd.lab down`\n"
            + "\n".join(lines)
            + "\n",
        )

    def _write_hosts(self, spec: LabSpec) -> None:
        self._write_in_place(self.hosts_file, topology.hosts_file(spec))
