"""`ogsd run` in a lab's client namespace, as the benchmarks drive it.

The daemon gets its own directory (config, state, socket, log) and a NOTIFY_SOCKET of
ours, so start-up is timed to the `READY=1` it sends. Its socket is a path on the shared
file system, so clients in the root namespace reach it. `Client` speaks the socket API
synchronously (one JSON line each way); `Watch` is a `watch` stream of decisions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.common import BenchError
from ogsd.lab import Lab

Json = dict[str, Any]
# Python start-up, imports and the store: well under a second here; this bound is for a
# loaded machine and is never an expected duration.
READY_TIMEOUT_S = 20.0
# A round has a 7 s deadline; a decision comes well within this.
DECISION_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def gateway_config(hosts: Sequence[str], extra: str = "") -> str:
    """An ogsd.toml naming `hosts`, plus `extra` TOML (sections of its own)."""
    return extra + "".join(f'\n[[gateway]]\nhost = "{h}"\n' for h in hosts)


class LabDaemon:
    """One `ogsd run` in `lab`'s client namespace."""

    def __init__(self, lab: Lab, config: str, *, env: Mapping[str, str] | None = None,
                 watchdog_s: float | None = None, command: Sequence[str] = ()) -> None:
        self.lab = lab
        self.command = list(command) or [sys.executable, "-m", "ogsd"]
        # Under /tmp: sun_path holds 107 bytes, pytest's and mkdtemp's defaults may not.
        self.dir = Path(tempfile.mkdtemp(prefix="obd", dir="/tmp"))
        self.config = self.dir / "ogsd.toml"
        self.config.write_text(config)
        self.state = self.dir / "state"
        self.socket = self.dir / "ogsd.sock"
        self.log_path = self.dir / "ogsd.log"
        self.notify_path = self.dir / "notify"
        self.env = dict(env or {})
        self.watchdog_s = watchdog_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        self.notifications: list[tuple[float, str]] = []  # (perf_counter, datagram)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("the daemon is not running")
        return self.proc.pid

    def start(self) -> float:
        """Start the daemon; seconds from the spawn to its READY=1."""
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(self.notify_path)}
        if self.watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(self.watchdog_s * 1e6))
        argv = [*self.command, "run", "--config", str(self.config),
                "--state-dir", str(self.state), "--socket", str(self.socket)]
        with self.log_path.open("ab") as log:
            t0 = time.perf_counter()
            self.proc = self.lab.popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_notification("READY=1", READY_TIMEOUT_S)
        return self.notifications[-1][0] - t0

    def wait_notification(self, wanted: str, timeout: float) -> str:
        """The next datagram on our NOTIFY_SOCKET holding `wanted` (a line of it)."""
        assert self.notify is not None
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                data = self.notify.recv(65536).decode()
            except TimeoutError:
                break
            self.notifications.append((time.perf_counter(), data))
            if wanted in data.splitlines():
                return data
        raise BenchError(f"ogsd sent no {wanted} within {timeout:g} s; log: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_lines(self) -> int:
        """How many lines the log has now (for `records(since=...)`)."""
        return len(self.log_path.read_text(errors="replace").splitlines())

    def records(self, since: int = 0) -> list[Json]:
        """The daemon's JSON log records, from line `since` on."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines()[since:]:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "event" in record:
                    out.append(record)
        return out

    def events(self, name: str) -> list[Json]:
        """The daemon's JSON log records whose event is `name`."""
        return [r for r in self.records() if r["event"] == name]

    def client(self) -> Client:
        return Client(self.socket)

    def wait_decided(self, timeout: float = DECISION_TIMEOUT_S) -> None:
        """Return once the daemon has published a decision (it decides right after
        READY=1)."""
        client = self.client()
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if client.call("status").get("decided_at"):
                    return
                time.sleep(0.05)  # a benchmark's set-up, not a measured wait
        finally:
            client.close()
        raise BenchError(f"no decision in {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LabDaemon:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Client:
    """One connection to the daemon's socket; requests answered in order."""

    def __init__(self, path: Path, timeout: float = DECISION_TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""
        self.next_id = 0

    def send(self, method: str, params: Json | None = None) -> int:
        self.next_id += 1
        line = json.dumps({"id": self.next_id, "method": method, "params": params or {}})
        self.sock.sendall(line.encode() + b"\n")
        return self.next_id

    def receive(self) -> Json:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise BenchError("ogsd closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: Json = json.loads(line)
        return message

    def call(self, method: str, params: Json | None = None) -> Json:
        """The result of one request (BenchError for an error reply)."""
        sent = self.send(method, params)
        reply = self.receive()
        if reply.get("id") != sent or "result" not in reply:
            raise BenchError(f"{method}: {reply}")
        result: Json = reply["result"]
        return result

    def close(self) -> None:
        self.sock.close()


class Watch:
    """A `watch` stream: decisions as the daemon publishes them, with when they came."""

    def __init__(self, path: Path) -> None:
        self.client = Client(path)
        self.client.call("watch")

    def next(self, timeout: float = DECISION_TIMEOUT_S) -> tuple[float, float, Json]:
        """(perf_counter and wall clock at arrival, decision) of the next decision."""
        self.client.sock.settimeout(timeout)
        while True:
            message = self.client.receive()
            if message.get("event") == "decision":
                return time.perf_counter(), time.time(), message["data"]

    def close(self) -> None:
        self.client.close()
