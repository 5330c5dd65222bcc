"""What the benchmarks share: result rows, the machine they ran on, percentiles, options.

Every benchmark script prints its figures and, with `--json FILE`, writes its rows there
for `python -m bench` to put in bench/RESULTS.md. A row is one measured quantity: its
median and spread over the samples, the target it is held to, and whether it was met.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ogsd.lab import LabError

ROOT = Path(__file__).resolve().parents[1]
# "obench" + 6 hex: unique per run, and "<name>-c" still fits an interface name.
LAB_PREFIX = "obench"
# Below this many samples a p10-p90 spread would be the extremes anyway: say min-max.
PERCENTILE_SPREAD_MIN = 10
# The normal quantile of a two-sided 95 % interval (Wilson score interval for proportions).
Z95 = 1.959964


@dataclass(frozen=True, slots=True)
class Row:
    """One measured quantity: median and spread of its samples, its target, met or not."""

    id: str  # stable key, e.g. "decision.cache_hit"
    title: str  # what was measured, as the table says it
    unit: str
    median: float
    low: float
    high: float
    n: int
    spread: str  # what low..high is: "p10-p90", "min-max" or "95 % CI"
    target: str = ""  # "" when the figure is for information only
    met: bool | None = None  # None: no target
    note: str = ""  # by how much and why when missed; what the figure means otherwise

    @classmethod
    def of(cls, id: str, title: str, unit: str, values: Sequence[float], *,
           target: str = "", met: bool | None = None, note: str = "") -> Row:
        """A row from samples: the median, and p10-p90 (or min-max for few samples)."""
        if not values:
            return cls(id, title, unit, math.nan, math.nan, math.nan, 0, "-", target,
                       False if met is not None else None, note or "no sample")
        few = len(values) < PERCENTILE_SPREAD_MIN
        low, high = ((min(values), max(values)) if few
                     else (percentile(values, 10), percentile(values, 90)))
        return cls(id, title, unit, statistics.median(values), low, high, len(values),
                   "min-max" if few else "p10-p90", target, met, note)

    @classmethod
    def proportion(cls, id: str, title: str, hits: int, n: int, *,
                   target: str = "", met: bool | None = None, note: str = "") -> Row:
        """A share in percent, with its 95 % Wilson interval (honest for small n and 100 %)."""
        if n == 0:
            return cls(id, title, "%", math.nan, math.nan, math.nan, 0, "-", target,
                       False if met is not None else None, note or "no scenario")
        low, high = wilson(hits, n)
        return cls(id, title, "%", 100 * hits / n, 100 * low, 100 * high, n, "95 % CI",
                   target, met, note)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def wilson(hits: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion hits/n."""
    p = hits / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def commit() -> str:
    """The checkout's commit, "+dirty" when files differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short=7", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """Where and when: kernel, CPU, cores, Python, date, commit and the load right now."""
    u = platform.uname()
    return {
        "machine": f"{u.system} {u.release} {u.machine}, {cpu_model()}, nproc {os.cpu_count()}",
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "commit": commit(),
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def header_lines(name: str, what: str) -> list[str]:
    m = machine()
    return [f"ogsd bench.{name}: {what}",
            f"machine: {m['machine']}; python {m['python']}",
            f"date: {m['date']}; commit {m['commit']}; load {m['load']}"]


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (the smoke test's mode) and --json."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a minimal run: seconds (smoke test)")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    return p


class BenchError(RuntimeError):
    """The system under measurement did not do what the benchmark needs."""


def run(name: str, what: str, json_path: Path | None, measure: Callable[[], list[Row]],
        extra: Callable[[], dict[str, Any]] | None = None) -> int:
    """A benchmark's main: root, the header, `measure`, the rows printed and written.

    Exit 2 without root, 1 when the measurement could not be made (BenchError, the lab).
    """
    if not needs_root(name):
        return 2
    for line in header_lines(name, what):
        print(line, flush=True)
    started = time.monotonic()
    try:
        rows = measure()
    except (BenchError, LabError) as exc:
        print(f"bench.{name}: {exc}", file=sys.stderr)
        return 1
    finish(name, rows, json_path, started, extra() if extra else None)
    return 0


def needs_root(name: str) -> bool:
    """False (and why, on stderr) unless root: the benchmarks run on the network lab."""
    if os.geteuid() == 0:
        return True
    print(f"bench.{name} needs root: it runs on the network lab (namespaces, TUN)",
          file=sys.stderr)
    return False


def lab_name() -> str:
    return LAB_PREFIX + secrets.token_hex(3)


def table(rows: Sequence[Row]) -> list[str]:
    """Rows as aligned text, for a script's own output."""
    lines = [("row", "median", "spread", "n", "target", "")]
    for r in rows:
        verdict = "" if r.met is None else "met" if r.met else "MISSED"
        lines.append((r.title, f"{fmt(r.median)} {r.unit}",
                      f"{fmt(r.low)}-{fmt(r.high)} ({r.spread})", str(r.n), r.target, verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    out += [f"  {r.title}: {r.note}" for r in rows if r.note]
    return out


def fmt(value: float) -> str:
    """A figure with the precision it deserves: 3 significant digits, at least integers."""
    if math.isnan(value):
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def finish(name: str, rows: Sequence[Row], path: Path | None, started: float,
           extra: dict[str, Any] | None = None) -> None:
    """Print the rows; write them (with the machine) as JSON when asked."""
    print()
    for line in table(rows):
        print(line)
    elapsed = time.monotonic() - started
    print(f"bench.{name}: {elapsed:.0f} s")
    if path is not None:
        doc = {"bench": name, "machine": machine(), "elapsed_s": elapsed,
               "rows": [dataclasses.asdict(r) for r in rows], **(extra or {})}
        path.write_text(json.dumps(doc, indent=2) + "\n")
