"""The socket API: `ogsctl status` end to end, and `status` under 50 concurrent clients.

`ogsd run` in the lab's client namespace (4 gateways, a real decision to report), its
socket reached from the root namespace (a path on the shared file system).

- `ogsctl status` end to end: the installed console script run as a user runs it,
  Python start-up included, timed from spawn to exit, one after another.
- throughput: 50 connections spread over several load-generator processes, each a
  closed loop (send `status`, wait for the reply, send the next), for a fixed time after
  a warm-up; requests per second over all of them and the latency percentiles of every
  request. The two cores are shared out: the daemon (all its threads) on core 0, the
  load generators on core 1, so neither side borrows the other's CPU (other work on the
  machine still lands on either). The bench config raises `max_clients` to 64 (the
  default 32 would refuse 18 of the 50).

Targets (issue 9): `ogsctl status` median <= 150 ms; >= 5,000 requests/s with p99 <= 10 ms.

    sudo .venv/bin/python -m bench.api_load             # 30 ogsctl runs, 10 s of load
    sudo .venv/bin/python -m bench.api_load --quick     # 3 runs, 1 s, 10 clients
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Row, lab_name, parser, percentile, run
from bench.labdaemon import LabDaemon, gateway_config
from ogsd.lab import Lab, LabSpec

CTL_RUNS, QUICK_CTL_RUNS = 30, 3
CLIENTS, QUICK_CLIENTS = 50, 10
PROCESSES = 4
LOAD_S, QUICK_LOAD_S = 10.0, 1.0
WARMUP_S = 1.0
CTL_TARGET_MS = 150.0
RPS_TARGET, P99_TARGET_MS = 5000.0, 10.0
SERVER_CPU, CLIENT_CPU = 0, 1
CONFIG_EXTRA = "[daemon]\nmax_clients = 64\n"
REQUEST = b'{"id":1,"method":"status"}\n'


def ctl_runs(daemon: LabDaemon, runs: int) -> list[float]:
    """ms per `ogsctl status`, spawn to exit."""
    ogsctl = Path(sys.executable).with_name("ogsctl")
    argv = [str(ogsctl), "--socket", str(daemon.socket), "status"]
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        out.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"ogsctl status failed: {done.stderr.strip()}")
    return out


def generate(path: str, clients: int, warmup: float, duration: float) -> dict[str, Any]:
    """One load-generator process: `clients` closed-loop connections; latencies (ms)."""
    sel = selectors.DefaultSelector()
    sent: dict[socket.socket, float] = {}
    buffers: dict[socket.socket, bytes] = {}
    for _ in range(clients):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, data=sock)
        buffers[sock] = b""
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + duration
    latencies: list[float] = []
    for sock in buffers:
        sent[sock] = time.perf_counter()
        sock.send(REQUEST)
    while (now := time.perf_counter()) < end:
        for key, _ in sel.select(end - now):
            sock = key.data
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError("ogsd closed a connection")
            buffers[sock] += data
            while b"\n" in buffers[sock]:
                line, buffers[sock] = buffers[sock].split(b"\n", 1)
                arrived = time.perf_counter()
                if b'"result"' not in line:
                    raise RuntimeError(f"error reply: {line[:200]!r}")
                if arrived >= measure_from:
                    latencies.append((arrived - sent[sock]) * 1000)
                sent[sock] = time.perf_counter()
                sock.send(REQUEST)
    for sock in buffers:
        sock.close()
    return {"latencies": latencies, "duration": duration}


def load(daemon: LabDaemon, clients: int, duration: float) -> dict[str, Any]:
    """`clients` connections over PROCESSES processes on CLIENT_CPU; merged results."""
    per = [clients // PROCESSES + (i < clients % PROCESSES) for i in range(PROCESSES)]
    procs = []
    for count in per:
        if count:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.api_load", "--inner", str(daemon.socket),
                 str(count), str(WARMUP_S), str(duration)], stdout=subprocess.PIPE, text=True))
    for proc in procs:
        os.sched_setaffinity(proc.pid, {CLIENT_CPU})
    latencies: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=duration + WARMUP_S + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a load generator failed (exit {proc.returncode})")
        latencies += json.loads(out)["latencies"]
    return {"rps": len(latencies) / duration, "latencies": latencies, "processes": len(procs)}


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` on `cpu`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def measure(quick: bool) -> list[Row]:
    spec = LabSpec.simple([20, 45, 80, 150])
    config = gateway_config([g.host for g in spec.gateways], CONFIG_EXTRA)
    with Lab.up(spec, lab_name()) as lab, LabDaemon(lab, config) as daemon:
        daemon.start()
        daemon.wait_decided()
        ctl = ctl_runs(daemon, QUICK_CTL_RUNS if quick else CTL_RUNS)
        print(f"ogsctl status: {' '.join(f'{v:.0f}' for v in ctl)} ms")
        pin(daemon.pid, SERVER_CPU)
        clients = QUICK_CLIENTS if quick else CLIENTS
        result = load(daemon, clients, QUICK_LOAD_S if quick else LOAD_S)
    lat = result["latencies"]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    print(f"{clients} clients over {result['processes']} processes: {result['rps']:.0f} "
          f"requests/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(lat):.2f} ms")
    ctl_median = statistics.median(ctl)
    shared = (f"daemon pinned to core {SERVER_CPU}, {result['processes']} load generators "
              f"to core {CLIENT_CPU}")
    return [
        Row.of("api.ogsctl_status", "`ogsctl status` end to end (Python start included)", "ms",
               ctl, target=f"<= {CTL_TARGET_MS:g} ms", met=ctl_median <= CTL_TARGET_MS,
               note="" if ctl_median <= CTL_TARGET_MS else
               f"{ctl_median - CTL_TARGET_MS:.0f} ms over"),
        Row.of("api.throughput", f"`status` requests/s, {clients} concurrent clients", "req/s",
               [result["rps"]], target=f">= {RPS_TARGET:g} req/s",
               met=None if clients != CLIENTS else result["rps"] >= RPS_TARGET,
               note=f"{len(lat)} requests; {shared}"
               + ("" if result["rps"] >= RPS_TARGET else
                  f"; {RPS_TARGET - result['rps']:.0f} req/s short")),
        Row.of("api.latency", f"`status` latency under {clients} concurrent clients, p99",
               "ms", [p99], target=f"<= {P99_TARGET_MS:g} ms",
               met=None if clients != CLIENTS else p99 <= P99_TARGET_MS,
               note=f"p50 {p50:.2f} ms, p90 {percentile(lat, 90):.2f} ms, max {max(lat):.2f} ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = parser("api_load", __doc__)
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner:
        path, clients, warmup, duration = args.args
        print(json.dumps(generate(path, int(clients), float(warmup), float(duration))))
        return 0
    return run("api_load", "ogsctl status end to end; status throughput", args.json,
               lambda: measure(args.quick))


if __name__ == "__main__":
    sys.exit(main())
