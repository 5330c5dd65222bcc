"""Scale and accuracy of one probe round: N gateways at one RTT, one nearer, in the lab.

Prints per run: wall time of the round, peak RSS and CPU of the probing process, whether
the deadline hit, the pick (right if it is the nearer gateway), and the ranking figure's
median error against the lab's RTTs. Needs root (the lab).

    sudo .venv/bin/python -m bench.probe_scale --gateways 1000 --runs 3
    sudo .venv/bin/python -m bench.probe_scale --gateways 100 --rtt 50 --best 30 --busy
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import structlog

from ogsd.core.models import Gateway, Metric
from ogsd.core.selection import rank
from ogsd.lab import GatewaySpec, Lab, LabSpec
from ogsd.lab.spec import validate
from ogsd.probing.round import probe_round

NEAR = "198.18.100.1"  # outside the client subnet and the VPN range


def address_of(i: int) -> str:
    """The i-th far gateway: 198.19.0.1 ... (250 per /24, room for 5,000 and more)."""
    return f"198.19.{i // 250}.{i % 250 + 1}"


@contextlib.contextmanager
def busy_cores(busy: bool = True) -> Iterator[None]:
    """Two processes spinning on the CPU while the block runs (nothing when not `busy`)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(2 if busy else 0)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def inner(request: dict[str, Any]) -> dict[str, Any]:
    """One round in this (the client) namespace; what it cost and what it measured."""

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if request.get("nofile"):  # a file-descriptor limit as a service might have
        resource.setrlimit(resource.RLIMIT_NOFILE, (request["nofile"], request["nofile"]))
    gateways = [Gateway(host=a) for a in request["addresses"]]
    cpu0, t0 = time.process_time(), time.perf_counter()
    metric = Metric(request.get("metric", "network"))
    settle = bool(request.get("settle", True))
    out = anyio.run(lambda: probe_round(gateways, metric=metric, settle_early=settle),
                    backend="asyncio", backend_options={"use_uvloop": True})
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ranked = rank(out.results, metric)
    return {
        "wall_s": wall, "cpu_s": cpu, "deadline_hit": out.deadline_hit,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pick": ranked.hosts[0] if ranked.usable else None,
        "errors": Counter(s.error.split(" (")[0] for r in out.results for s in r.samples
                          if s.error and not s.cancelled).most_common(3),
        "figures": {r.host: [s.network_rtt_ms for s in r.samples
                             if s.network_rtt_ms is not None] for r in out.results},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000, help="far gateways (1000)")
    parser.add_argument("--rtt", type=float, default=50.0, help="their RTT, ms (50)")
    parser.add_argument("--best", type=float, default=30.0, help="the near one's RTT (30)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="keep both cores busy meanwhile")
    parser.add_argument("--metric", choices=[m.value for m in Metric], default="network")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(json.load(sys.stdin))))
        return

    far = [GatewaySpec(host=f"g{i}.lab.example", address=address_of(i), rtt_ms=args.rtt)
           for i in range(args.gateways)]
    near = GatewaySpec(host="near.lab.example", address=NEAR, rtt_ms=args.best)
    spec = validate(LabSpec(gateways=(*far, near)))  # the nearest last: no order bias
    lab = Lab.up(spec, "obench" + secrets.token_hex(3))
    try:
        request = json.dumps({"addresses": [g.address for g in (*far, near)],
                              "metric": args.metric})
        print(f"{args.gateways} gateways at {args.rtt:g} ms + 1 at {args.best:g} ms"
              f"{', both cores busy' if args.busy else ''}, ranked by {args.metric}")
        for run in range(args.runs):
            with busy_cores(args.busy):
                done = lab.exec([sys.executable, "-m", "bench.probe_scale", "--inner"],
                                input=request, timeout=120)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            r = json.loads(done.stdout)
            figures = r["figures"]
            far_values = [v for h, vs in figures.items() if h != NEAR for v in vs]
            far_error = statistics.median(far_values) - args.rtt if far_values else None
            near_error = (statistics.median(figures[NEAR]) - args.best
                          if figures.get(NEAR) else None)
            print(f"run {run + 1}: wall {r['wall_s']:.2f} s, cpu {r['cpu_s']:.2f} s, "
                  f"rss {r['rss_mb']:.0f} MB, deadline {'hit' if r['deadline_hit'] else 'no'}, "
                  f"pick {'right' if r['pick'] == NEAR else r['pick']}, median error near "
                  f"{_ms(near_error)} far {_ms(far_error)} ({len(far_values)} connects)"
                  + (f"; errors {r['errors']}" if r["errors"] else ""))
    finally:
        with contextlib.suppress(Exception):
            lab.down()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f} ms"


if __name__ == "__main__":
    main()
