"""How long a probe round takes to reach a decision: ogsd's method vs AnyConnect's.

AnyConnect's method: every gateway concurrently, its 3 probes one after another (each on
its own connection), and the round waits for every probe of every gateway or the 7 s
deadline, after which the previous gateway is used. ogsd's method: `probe_round` with its
defaults, 3 concurrent probes per gateway, decided as soon as the winner cannot change.
Both use the same probe (`ogsd.probing.round.probe_round`; one gateway, one probe is one probe).

Runs on the network lab (root): one lab per scenario, the rounds run in its client
namespace (this module re-executed there with `--inner`, reading a JSON request on stdin).

    sudo .venv/bin/python -m bench.round_time            # all scenarios, 15 runs each
    sudo .venv/bin/python -m bench.round_time --quick    # scenario a, 2 runs (smoke test)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from ogsd.core.models import Gateway, GatewayResult, Metric, ProbeSample
from ogsd.core.selection import rank
from ogsd.daemon import logs
from ogsd.lab import GatewayMode, GatewaySpec, Lab, LabError, LabSpec
from ogsd.probing.round import probe_round

ROOT = Path(__file__).resolve().parents[1]
RUNS_DEFAULT = 15
QUICK_RUNS = 2
# Seed: 3 probes per headend, results due within 7 s (else the previous gateway is used).
PROBE_COUNT = 3
DEADLINE_S = 7.0
# ogsd's Settings.probe_timeout default; the deadline bounds the baseline anyway.
PROBE_TIMEOUT_S = 5.0
# Repeatable loss and jitter draws in the relay (timing still varies run to run).
LAB_SEED = 2544
# Each run of a method that waits for the deadline costs 7 s and says the same thing:
# cap those so a default run stays under 3 minutes (the cap is shown as correct/N).
DEADLINE_RUNS_MAX = 5
# "obench" + 6 hex: unique per run, and "<name>-c" still fits an interface name.
LAB_PREFIX = "obench"
ANYCONNECT, OGSD = "anyconnect", "ogsd"
FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class Target:
    """A gateway to probe: its address (no DNS in the timing) and the name to report."""

    label: str
    host: str
    port: int = 443


@dataclass(frozen=True, slots=True)
class Run:
    """One round of one method: decision time, and the pick under each metric asked for."""

    method: str
    elapsed_ms: float
    picks: dict[str, str]  # metric -> gateway label, or FALLBACK (nothing decided in time)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A lab network, the gateway that should win, and what to run on it."""

    key: str
    title: str
    spec: LabSpec
    expected: str
    plan: tuple[tuple[str, tuple[Metric, ...]], ...]  # (method, metrics)


# -- the two methods ---------------------------------------------------------------------


async def anyconnect_round(
    gateways: Sequence[Gateway],
    *,
    probe_count: int = PROBE_COUNT,
    deadline: float = DEADLINE_S,
    probe_timeout: float = PROBE_TIMEOUT_S,
) -> tuple[tuple[GatewayResult, ...], bool]:
    """AnyConnect's round: probes sequential per gateway, wait for all; (results, deadline hit)."""
    samples: dict[str, list[ProbeSample]] = {g.host: [] for g in gateways}
    finished: set[str] = set()
    end = time.perf_counter() + deadline

    async def one_gateway(gateway: Gateway) -> None:
        for _ in range(probe_count):
            remaining = end - time.perf_counter()
            if remaining <= 0:
                return
            # The metric only steers early settlement, which is off here.
            outcome = await probe_round(
                [gateway], metric=Metric.EXCHANGE, probe_count=1, deadline=remaining,
                probe_timeout=min(probe_timeout, remaining), settle_early=False)
            samples[gateway.host].extend(outcome.results[0].samples)
            if outcome.deadline_hit:
                return
        if time.perf_counter() < end:
            finished.add(gateway.host)

    with anyio.move_on_after(deadline):
        async with anyio.create_task_group() as tg:
            for gateway in gateways:
                tg.start_soon(one_gateway, gateway)
    results = tuple(GatewayResult(g.host, g.host, tuple(samples[g.host])) for g in gateways)
    return results, len(finished) < len(gateways)


def pick(results: Sequence[GatewayResult], metric: Metric) -> str | None:
    """The fastest gateway's host under `metric`, None when none has a figure."""
    usable = rank(results, metric).usable
    return usable[0][0] if usable else None


async def measure(
    targets: Sequence[Target],
    plan: Sequence[tuple[str, Sequence[Metric]]],
    *,
    runs: int,
    deadline: float = DEADLINE_S,
    probe_timeout: float = PROBE_TIMEOUT_S,
    deadline_runs_max: int = DEADLINE_RUNS_MAX,
) -> list[Run]:
    """Run every (method, metrics) of `plan` `runs` times, interleaved, never overlapping."""
    gateways = [Gateway(host=t.host, name=t.label, port=t.port) for t in targets]
    labels = {t.host: t.label for t in targets}
    # Warm the shared probe path (imports, TLS context, first connections) untimed.
    await probe_round(gateways, metric=Metric.NETWORK, deadline=deadline,
                      probe_timeout=probe_timeout)
    out: list[Run] = []
    deadline_runs: Counter[str] = Counter()
    for i in range(runs):
        # Rotate the order so neither method always runs first after a pause.
        for method, metrics in [*plan[i % len(plan):], *plan[:i % len(plan)]]:
            key = f"{method}/{','.join(metrics)}"
            if deadline_runs[key] >= deadline_runs_max:
                continue
            t0 = time.perf_counter()
            if method == ANYCONNECT:
                results, deadline_hit = await anyconnect_round(
                    gateways, deadline=deadline, probe_timeout=probe_timeout)
                elapsed = time.perf_counter() - t0
                found = {m: None if deadline_hit else pick(results, m) for m in metrics}
            else:
                found = {}
                (metric,) = metrics  # ogsd's settlement depends on the metric: one per round
                outcome = await probe_round(
                    gateways, metric=metric, deadline=deadline, probe_timeout=probe_timeout)
                elapsed = time.perf_counter() - t0
                deadline_hit = outcome.deadline_hit
                found[metric] = pick(outcome.results, metric)
            if deadline_hit:
                deadline_runs[key] += 1
            picks = {str(m): FALLBACK if h is None else labels[h] for m, h in found.items()}
            out.append(Run(method, elapsed * 1000, picks))
    return out


def inner(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The client-namespace side: run `measure` on uvloop as the daemon does; runs as JSON."""
    logs.configure(level=logging.WARNING)  # probe logs would swamp the figures
    targets = [Target(**t) for t in request["targets"]]
    plan = [(m, tuple(Metric(x) for x in ms)) for m, ms in request["plan"]]
    call = functools.partial(measure, targets, plan, runs=request["runs"],
                             deadline=request["deadline"],
                             deadline_runs_max=request["deadline_runs_max"])
    runs = anyio.run(call, backend="asyncio", backend_options={"use_uvloop": True})
    return [dataclasses.asdict(r) for r in runs]


# -- scenarios and the report ------------------------------------------------------------


def scenarios() -> list[Scenario]:
    """The four lab networks; gw-1 (the shortest network path) should win every one."""
    default = ((ANYCONNECT, (Metric.EXCHANGE,)), (OGSD, (Metric.NETWORK,)))
    four = LabSpec.simple([20, 45, 80, 150])
    blackholed = GatewaySpec("gw-5.lab.example", "198.19.5.1", mode=GatewayMode.BLACKHOLE)
    lossy = LabSpec.simple([20, 45]).with_gateway("gw-1.lab.example", loss=0.1)
    stalled = LabSpec.simple([20, 60]).with_gateway("gw-1.lab.example", stall_ms=150)
    both = (Metric.EXCHANGE, Metric.NETWORK)
    gw1 = "gw-1.lab.example"
    return [
        Scenario("a", "gateways 20/45/80/150 ms", four, gw1, default),
        Scenario("b", "a + one blackholed gateway",
                 dataclasses.replace(four, gateways=(*four.gateways, blackholed)), gw1, default),
        Scenario("c", "20 ms with 10 % loss vs 45 ms", lossy, gw1, default),
        Scenario("d", "20 ms + 150 ms TLS stall vs 60 ms", stalled, gw1,
                 ((ANYCONNECT, both), (OGSD, (Metric.EXCHANGE,)), (OGSD, (Metric.NETWORK,)))),
    ]


def run_scenario(scenario: Scenario, runs: int, deadline_runs_max: int) -> list[Run]:
    """Bring the scenario's lab up, run the rounds in its client namespace, take it down."""
    spec = dataclasses.replace(scenario.spec, seed=LAB_SEED)
    request = {
        "targets": [{"label": g.host, "host": g.address} for g in spec.gateways],
        "plan": [[m, [str(x) for x in ms]] for m, ms in scenario.plan],
        "runs": runs,
        "deadline": DEADLINE_S,
        "deadline_runs_max": deadline_runs_max,
    }
    # Worst case: every round of every plan entry waits for the deadline.
    timeout = 60 + runs * len(scenario.plan) * (DEADLINE_S + 1)
    with Lab.up(spec, LAB_PREFIX + secrets.token_hex(3)) as lab:
        argv = ["ip", "netns", "exec", lab.client_ns,
                sys.executable, "-m", "bench.round_time", "--inner"]
        done = subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise LabError(f"scenario {scenario.key}: the rounds failed: {tail or 'no output'}")
    return [Run(**r) for r in json.loads(done.stdout)]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def short(label: str) -> str:
    """gw-1.lab.example -> gw-1."""
    return label.split(".", 1)[0]


def rows(scenario: Scenario, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per (method, metric): median, p90, correct picks, ratio to AnyConnect."""
    out: list[dict[str, Any]] = []
    for method, metrics in scenario.plan:
        mine = [r for r in runs if r.method == method and set(r.picks) == {str(m) for m in metrics}]
        times = [r.elapsed_ms for r in mine]
        for metric in metrics:
            picks = Counter(r.picks[metric] for r in mine)
            out.append({
                "scenario": scenario.key, "title": scenario.title, "method": method,
                "metric": str(metric), "runs": len(mine),
                "median_ms": statistics.median(times), "p90_ms": percentile(times, 90),
                "correct": picks[scenario.expected],
                "picks": {short(k): v for k, v in picks.most_common()},
            })
    baselines = {r["metric"]: r["median_ms"] for r in out if r["method"] == ANYCONNECT}
    fallback = next(iter(baselines.values()))  # AnyConnect's own metric row
    for row in out:
        if row["method"] == OGSD:
            row["ratio"] = row["median_ms"] / baselines.get(row["metric"], fallback)
    return out


def header() -> list[str]:
    """Machine and date, so figures are never read without their context."""
    u = platform.uname()
    return [
        "ogsd bench.round_time: probe round time to a decision, ogsd vs AnyConnect's method",
        f"machine: {u.system} {u.node} {u.release} {u.machine}; nproc {os.cpu_count()}; "
        f"python {platform.python_version()}",
        f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"{PROBE_COUNT} probes per gateway, {DEADLINE_S:g} s deadline; right pick: gw-1 "
        "(shortest network path) in every scenario",
    ]


def table(all_rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report as aligned text."""
    lines = [("scenario", "method", "metric", "median ms", "p90 ms", "correct", "ogsd/AC",
              "picks")]
    previous = None
    for row in all_rows:
        name = f"{row['scenario']} {row['title']}" if row["scenario"] != previous else ""
        previous = row["scenario"]
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
        picks = " ".join(f"{k}x{v}" for k, v in row["picks"].items())
        lines.append((name, row["method"], row["metric"], f"{row['median_ms']:.1f}",
                      f"{row['p90_ms']:.1f}", f"{row['correct']}/{row['runs']}", ratio, picks))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    numeric = {3, 4, 5, 6}
    return ["  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in lines]


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the table; exit 2 on bad use, 1 if the lab fails."""
    parser = argparse.ArgumentParser(prog="python -m bench.round_time", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=RUNS_DEFAULT, help="rounds per method")
    parser.add_argument("--scenarios", default="abcd", help="which scenarios, e.g. 'ac'")
    parser.add_argument("--quick", action="store_true", help="scenario a, 2 runs")
    parser.add_argument("--deadline-runs", type=int, default=DEADLINE_RUNS_MAX,
                        help="stop a method after this many rounds that hit the deadline")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(json.load(sys.stdin))))
        return 0
    known = {s.key: s for s in scenarios()}
    keys = "a" if args.quick else args.scenarios
    runs = QUICK_RUNS if args.quick else args.runs
    if unknown := sorted(set(keys) - set(known)):
        parser.error(f"unknown scenario(s) {', '.join(unknown)}: choose from {''.join(known)}")
    if runs < 1 or args.deadline_runs < 1:
        parser.error(f"--runs and --deadline-runs must be at least 1 ({runs}, "
                     f"{args.deadline_runs})")
    if os.geteuid() != 0:
        print("bench.round_time needs root: it runs on the network lab (namespaces, TUN)",
              file=sys.stderr)
        return 2
    for line in header():
        print(line, flush=True)
    all_rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        for key in dict.fromkeys(keys):
            all_rows += rows(known[key], run_scenario(known[key], runs, args.deadline_runs))
    except (LabError, subprocess.TimeoutExpired) as exc:
        print(f"bench.round_time: {exc}", file=sys.stderr)
        return 1
    print(f"total {time.monotonic() - t0:.0f} s\n")
    for line in table(all_rows):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"header": header(), "rows": all_rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
