"""Run every benchmark and write bench/RESULTS.md (`sudo make bench`).

Each benchmark runs in its own process (`python -m bench.<name> --json FILE`), one after
another, its output shown as it comes and kept for the results. A benchmark that fails
is named in the results; the others still run. The machine is shared: with
`--wait-load`, the run starts once the 1-minute load average has dropped below it (or
after 30 minutes, saying so); the load is recorded either way.

    sudo .venv/bin/python -m bench                         # everything, ~25 min
    sudo .venv/bin/python -m bench --only decision,api_load --out /tmp/results.md
    sudo .venv/bin/python -m bench --quick --out /tmp/r.md  # every benchmark's quick mode
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine
from bench.report import render

# In the order they run: the long, CPU-heavy ones last, so a quick look comes first.
BENCHES = ("decision", "api_load", "accuracy", "netcost", "choice", "scale", "footprint",
           "round_time", "startup")
WAIT_LOAD_MAX_S = 1800.0
WAIT_POLL_S = 30.0


def wait_for_quiet(limit: float) -> str:
    """Wait until the 1-minute load is below `limit` (30 min at most); what happened."""
    t0 = time.monotonic()
    while (load := os.getloadavg()[0]) >= limit:
        if time.monotonic() - t0 >= WAIT_LOAD_MAX_S:
            return f"started at load {load:.2f} after waiting {WAIT_LOAD_MAX_S / 60:g} min"
        print(f"bench: load {load:.2f} >= {limit:g}, waiting", file=sys.stderr, flush=True)
        time.sleep(WAIT_POLL_S)
    waited = time.monotonic() - t0
    return f"waited {waited / 60:.0f} min for load < {limit:g}" if waited > 1 else ""


def run_one(name: str, quick: bool, json_path: Path) -> tuple[int, str]:
    """Run `bench.<name>`; its exit status and everything it printed."""
    argv = [sys.executable, "-m", f"bench.{name}", "--json", str(json_path)]
    if quick:
        argv.append("--quick")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


def round_time_rows(path: Path) -> dict[str, Any]:
    """bench.round_time's JSON in the common shape (its rows are information only)."""
    doc = json.loads(path.read_text())
    rows = []
    for r in doc["rows"]:
        ratio = f"; ogsd/AnyConnect {r['ratio']:.2f}" if "ratio" in r else ""
        rows.append({
            "id": f"round_time.{r['scenario']}.{r['method']}.{r['metric']}",
            "title": f"round to a decision, {r['scenario']} {r['title']}: {r['method']} "
                     f"({r['metric']})",
            "unit": "ms", "median": r["median_ms"], "low": r["median_ms"],
            "high": r["p90_ms"], "n": r["runs"], "spread": "median-p90", "target": "",
            "met": None, "note": f"right picks {r['correct']}/{r['runs']}{ratio}"})
    return {"bench": "round_time", "machine": machine(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick mode")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--wait-load", type=float, help="start once the load is below this")
    args = parser.parse_args(argv)
    names = BENCHES if not args.only else tuple(args.only.split(","))
    if unknown := sorted(set(names) - set(BENCHES)):
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from "
                     f"{', '.join(BENCHES)}")
    if os.geteuid() != 0:
        print("bench needs root: the benchmarks run on the network lab", file=sys.stderr)
        return 2
    load_note = wait_for_quiet(args.wait_load) if args.wait_load else ""
    start = machine()
    t0 = time.monotonic()
    docs: list[dict[str, Any]] = []
    outputs: dict[str, str] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="obench") as tmp:
        for name in names:
            path = Path(tmp) / f"{name}.json"
            code, text = run_one(name, args.quick, path)
            outputs[name] = text
            if code != 0 or not path.exists():
                tail = " | ".join(text.strip().splitlines()[-3:])
                failures[name] = f"exit {code}: {tail}"
                continue
            docs.append(round_time_rows(path) if name == "round_time"
                        else json.loads(path.read_text()))
    elapsed = time.monotonic() - t0
    header = {**start, "load_start": start["load"], "load_end": machine()["load"],
              "load_note": load_note, "elapsed": f"{elapsed / 60:.0f} min"}
    args.out.write_text(render(docs, header=header, outputs=outputs, failures=failures))
    print(f"bench: wrote {args.out} ({elapsed / 60:.1f} min)"
          + (f"; failed: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
