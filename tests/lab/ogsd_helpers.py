"""Drive `ogsd evaluate` (and small Python snippets) inside a lab's client namespace."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogsd.lab import Lab
from tests.daemon_helpers import START_WAIT, DaemonProcess, NotifySocket

# A system bus nobody listens on: the daemon's D-Bus watchers stay quiet.
NO_BUS = "unix:path=/nonexistent/ogsd-test/bus"
# Python start-up plus one round (7 s deadline at most): far inside this unless wedged.
EVALUATE_TIMEOUT_S = 30.0
# A helper server is a bare Python process: it says "ready" in well under a second.
READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Evaluation:
    """One `ogsd evaluate --json` run: exit status, decision, and its wall time."""

    code: int
    out: dict[str, Any]
    wall_s: float  # the whole subprocess: `ip netns exec`, Python start-up, round, store
    stderr: str

    def result(self, host: str) -> dict[str, Any]:
        """The JSON result of gateway `host` (KeyError naming it if absent)."""
        for item in self.out["results"]:
            if item["host"] == host:
                return dict(item)
        raise KeyError(f"{host} not in results: {[r['host'] for r in self.out['results']]}")

    def figures(self, host: str, key: str = "network_rtt_ms") -> list[float]:
        """The per-probe figures of `host` that were measured (None dropped)."""
        return [float(v) for v in self.result(host)[key] if v is not None]


def write_config(path: Path, hosts: Sequence[str], *, metric: str | None = None) -> Path:
    """An ogsd.toml naming the lab's gateways; DNS comes from the namespace's resolv.conf."""
    lines = []
    if metric is not None:
        lines.append(f'[ogs]\nmetric = "{metric}"\n')
    lines += [f'[[gateway]]\nhost = "{host}"\n' for host in hosts]
    path.write_text("\n".join(lines))
    return path


def evaluate(lab: Lab, config: Path, state: Path, *extra: str) -> Evaluation:
    """Run `ogsd -q evaluate --json` in the client namespace; fail on a non-JSON answer."""
    argv = [sys.executable, "-m", "ogsd", "-q", "evaluate", "--config", str(config), "--json",
            "--state-dir", str(state), *extra]
    t0 = time.perf_counter()
    done = lab.exec(argv, timeout=EVALUATE_TIMEOUT_S)
    wall = time.perf_counter() - t0
    assert "Traceback" not in done.stderr, done.stderr
    try:
        out = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"ogsd evaluate printed no JSON (exit {done.returncode}): "
                             f"{done.stdout[-300:]!r} stderr: {done.stderr[-500:]!r}") from None
    assert isinstance(out, dict), out
    return Evaluation(done.returncode, out, wall, done.stderr)


def run_python(lab: Lab, code: str) -> Any:
    """Run `code` with this interpreter in the client namespace; its stdout as JSON."""
    done = lab.exec([sys.executable, "-c", code], timeout=EVALUATE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-1000:]
    return json.loads(done.stdout)


# A one-answer HTTP server: the lab's own answers only 200, and the proxy check needs 407.
_RESPONDER = """
import socket, sys
address, port, response = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((address, port))
listener.listen(64)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        head = b""
        try:
            while b"\\r\\n\\r\\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            conn.sendall(response)
        except OSError:
            pass
"""

PROXY_AUTH_REQUIRED = (
    "HTTP/1.1 407 Proxy Authentication Required\r\n"
    'Proxy-Authenticate: Basic realm="ogsd lab proxy"\r\n'
    "Content-Length: 0\r\nConnection: close\r\n\r\n"
)


@contextmanager
def http_responder(netns: str, address: str, response: str, port: int = 80) -> Iterator[None]:
    """Answer every HTTP request to address:port in `netns` with `response`, while open."""
    # `ip netns exec` execs the command (no fork), so the pid is the server's own.
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _RESPONDER, address, str(port),
         response],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
        line = proc.stdout.readline() if ready else b""
        if line != b"ready\n":
            proc.kill()
            _, err = proc.communicate(timeout=READY_TIMEOUT_S)
            raise AssertionError(f"HTTP responder on {address}:{port} did not start: {err!r}")
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=READY_TIMEOUT_S)


def start_lab_daemon(stack: ExitStack, lab: Lab, directory: Path, config: str,
                     env: dict[str, str] | None = None, *,
                     wait_decision: bool = True) -> tuple[Path, str]:
    """`ogsd run` with `config` in the lab's client namespace, stopped with `stack`; once
    READY and its first decision published (unless not `wait_decision`: a daemon that
    waits for gateways publishes none): the socket (a file, reachable from here) and
    that decision's STATUS= line ("" when not waited for)."""

    path = directory / "ogsd.toml"
    path.write_text(config)
    notify = stack.enter_context(NotifySocket(directory / "notify"))
    daemon = DaemonProcess(
        config=path, state=directory / "state", socket_path=directory / "ogsd.sock",
        log=directory / "log",
        env={"NOTIFY_SOCKET": str(notify.path), "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS,
             **(env or {})},
        prefix=["ip", "netns", "exec", lab.client_ns])
    stack.callback(daemon.stop)
    notify.expect("READY=1", START_WAIT)
    return daemon.socket_path, notify.expect_status() if wait_decision else ""
