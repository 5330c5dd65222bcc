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
from pathlib import Path
from types import TracebackType
from typing import Any

from ogsd.lab import spec as lab_spec
from ogsd.lab.control import ControlError, request
from ogsd.lab.spec import LabSpec
from ogsd.lab.tun import open_tun

DEFAULT_NAME = "ogsdlab"
RUN_DIR = Path("/run/ogsd-lab")
NETNS_DIR = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
# "<name>-c" names both a namespace and a TUN device, and interface names stop at 15 bytes.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,12}$")
# The default 500 drops SYNs when 1,000 connections open at once (DESIGN.md §5).
TXQUEUELEN = 4096
# Python start-up plus a certificate: well under a second; ten covers a loaded machine.
READY_TIMEOUT_S = 10.0
# A process that ignores SIGTERM this long gets SIGKILL.
STOP_TIMEOUT_S = 3.0


def missing_extra() -> str | None:
    """What to install when the lab's own dependencies are missing (a plain
    `pip install ogsd`), else None. The gateways' process imports them, not this one."""
    if importlib.util.find_spec("cryptography") is None:
        return ("the lab needs the 'lab' extra (cryptography is not installed): "
                "pip install 'ogsd[lab]'")
    return None


class LabError(RuntimeError):
    """The lab could not be brought up, changed or inspected; the message says why."""


def _ip(*args: str, batch: list[str] | None = None) -> None:
    """Run `ip` (with a batch on stdin); LabError with its message on failure."""
    argv = ["ip", *args, *(["-batch", "-"] if batch is not None else [])]
    stdin = "".join(line + "\n" for line in batch) if batch is not None else None
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


def _is_ours(pid: int, state_dir: Path) -> bool:
    """True if `pid` is a lab process of this lab (pids get reused after a crash)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ogsd.lab." in cmdline and str(state_dir).encode() in cmdline


def _stop(pid: int) -> None:
    """SIGTERM, wait for the exit on a pidfd, SIGKILL if it lingers."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        exited, _, _ = select.select([pidfd], [], [], STOP_TIMEOUT_S)
        if not exited:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], STOP_TIMEOUT_S)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child (Lab.up in this process)


class Lab:
    """A running lab. Make one with `Lab.up(spec, name)` or find one with `Lab.attach(name)`."""

    def __init__(self, name: str, spec: LabSpec) -> None:
        self.name = name
        self.spec = spec
        self.client_ns = f"{name}-c"
        self.server_ns = f"{name}-s"
        self.state_dir = RUN_DIR / name
        self.resolv_conf = NETNS_ETC / self.client_ns / "resolv.conf"
        self.cert_path = self.state_dir / "cert.pem"  # the gateways' self-signed certificate
        self._children: list[subprocess.Popen[bytes]] = []

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
        """True if anything of lab `name` is left (state, namespaces or resolv.conf)."""
        lab = cls(cls.check_name(name), LabSpec())
        paths = [lab.state_dir, NETNS_DIR / lab.client_ns, NETNS_DIR / lab.server_ns]
        return any(p.exists() for p in [*paths, lab.resolv_conf.parent])

    @classmethod
    def up(cls, spec: LabSpec, name: str = DEFAULT_NAME) -> Lab:
        """Create namespaces, TUNs, relay and servers for `spec`; the running lab."""
        spec = lab_spec.validate(spec)
        if missing := missing_extra():
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
        self.state_dir.mkdir(parents=True, mode=0o755)
        self._write_spec(self.spec)
        _ip("netns", "add", self.client_ns)
        _ip("netns", "add", self.server_ns)
        fds = [open_tun(self.client_ns), open_tun(self.server_ns)]
        try:
            _ip(
                batch=[
                    f"link set {ns} txqueuelen {TXQUEUELEN} netns {ns}"
                    for ns in (self.client_ns, self.server_ns)
                ]
            )
            client = self.spec.client
            _ip(
                "-n",
                self.client_ns,
                batch=[
                    "link set lo up",
                    f"link set {self.client_ns} up",
                    f"addr add {client}/32 dev {self.client_ns}",
                    f"route add default dev {self.client_ns} src {client}",
                ],
            )
            addresses = [f"addr add {a}/32 dev lo" for a in sorted(self.spec.addresses())]
            _ip(
                "-n",
                self.server_ns,
                batch=[
                    "link set lo up",
                    f"link set {self.server_ns} up",
                    *addresses,
                    f"route add default dev {self.server_ns}",
                ],
            )
            self._write_resolv_conf(self.spec)
            relay = self._spawn(
                "relay", ["--client-fd", str(fds[0]), "--server-fd", str(fds[1])], fds
            )
        finally:
            for fd in fds:
                os.close(fd)  # the relay holds them now; the TUNs die with it
        servers = self._spawn("servers", [], [], netns=self.server_ns)
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
        """Apply `spec` live: delays, modes, gateways, DNS domain/servers/mode."""
        spec = lab_spec.validate(spec)
        if spec.client != self.spec.client:
            raise LabError("the client address cannot change live: take the lab down and up")
        old, new = self.spec.addresses(), spec.addresses()
        if new - old:
            _ip("-n", self.server_ns, batch=[f"addr add {a}/32 dev lo" for a in sorted(new - old)])
        self._write_spec(spec)
        try:
            request(str(self.state_dir / "servers.sock"), "reload")
            request(str(self.state_dir / "relay.sock"), "reload")
        except ControlError as exc:
            raise LabError(f"lab {self.name!r}: {exc}") from None
        self._write_resolv_conf(spec)
        if old - new:
            _ip("-n", self.server_ns, batch=[f"addr del {a}/32 dev lo" for a in sorted(old - new)])
        self.spec = spec

    def down(self) -> None:
        """Remove every process, namespace and file of this lab; fine to call twice."""
        Lab.teardown(self.name)
        for proc in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT_S)
        self._children.clear()

    @classmethod
    def teardown(cls, name: str) -> None:
        """Remove what lab `name` left, whether it is up, half up or crashed."""
        lab = cls(cls.check_name(name), LabSpec())
        pids: set[int] = set()
        for what in ("relay", "servers"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int((lab.state_dir / f"{what}.pid").read_text()))
        if (NETNS_DIR / lab.server_ns).exists():
            found = subprocess.run(
                ["ip", "netns", "pids", lab.server_ns], capture_output=True, text=True, check=False
            )
            pids |= {int(p) for p in found.stdout.split() if p.isdigit()}
        for pid in sorted(pids):
            if _is_ours(pid, lab.state_dir):
                _stop(pid)
        for ns in (lab.client_ns, lab.server_ns):
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

    def status(self) -> dict[str, Any]:
        """What is running, the relay's counters, and the spec."""
        processes = {}
        try:
            pids = self.pids()
        except (OSError, ValueError, KeyError):
            pids = {}
        for what, pid in pids.items():
            processes[what] = {"pid": pid, "alive": _is_ours(pid, self.state_dir)}
        try:
            relay: dict[str, Any] = request(str(self.state_dir / "relay.sock"), "stats")
            relay.pop("ok", None)
        except ControlError as exc:
            relay = {"error": str(exc)}
        return {
            "name": self.name,
            "namespaces": {
                ns: (NETNS_DIR / ns).exists() for ns in (self.client_ns, self.server_ns)
            },
            "processes": processes,
            "relay": relay,
            "resolv_conf": str(self.resolv_conf),
            "spec": json.loads(self.spec.to_json()),
        }

    # -- files ---------------------------------------------------------------------------

    def _write_spec(self, spec: LabSpec) -> None:
        path = self.state_dir / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(spec.to_json())
        tmp.replace(path)  # atomic: the processes never read half a spec

    def _write_resolv_conf(self, spec: LabSpec) -> None:
        self.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"search {spec.domain}", *(f"nameserver {s}" for s in spec.dns.servers)]
        # Rewritten in place, not renamed: `ip netns exec` bind-mounts this inode over
        # /etc/resolv.conf, so a daemon already running in the namespace sees the move.
        with self.resolv_conf.open("w") as out:
            out.write("# written by ogsd.lab; removed by `python -m ogsd.lab down`\n")
            out.write("\n".join(lines) + "\n")
