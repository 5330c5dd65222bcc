"""Start-up of each entry point: what a user waits for before anything happens.

Measured on the lab of `make demo` (4 gateways at 20/45/80/150 ms, the nearest stalling its
TLS handshake by 150 ms), with the console scripts of this build, and, with `--before
VENV`, of another build installed in VENV (e.g. the commit before the layers issue), in
the same run, the builds taking turns run by run, so the figures compare:

- `ogsd --help`: spawn to exit;
- `ogsctl status` end to end against a running `ogsd run` (of the same build);
- `ogsd evaluate` in the lab's client namespace, process wall (`ip netns exec` included;
  its own floor is printed): at a cached location (no probe), and with `--no-cache` (a
  full round: the 150 ms stall is in it);
- `ogsd run`: spawn to READY=1 (a NOTIFY_SOCKET of ours);
- idle RSS after the start-up round (5 s after the decision).

    sudo .venv/bin/python -m bench.startup --before /path/to/old-venv   # ~1 min
    sudo .venv/bin/python -m bench.startup --venv /tmp/v --before /tmp/old  # plain installs

An editable install (`make`'s .venv) pays ~10 ms per start for its import hook; a user's
`pip install .` or the package does not: for figures users see, measure plain installs
(`python -m venv V && V/bin/pip install .`).
    sudo .venv/bin/python -m bench.startup --quick                      # 2 runs each
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, Row, lab_name, parser, run
from bench.footprint import settle
from bench.labdaemon import LabDaemon, gateway_config
from ogsd.lab import Lab
from ogsd.lab.demo import GATEWAYS
from ogsd.lab.spec import LabSpec, validate

RUNS = 15
QUICK_RUNS = 2
COMMAND_TIMEOUT_S = 30.0
# The targets of the layers issue (#14).
HELP_TARGET_MS = 120.0
STATUS_TARGET_MS = 60.0
EVALUATE_TARGET_MS = 350.0
READY_TARGET_MS = 350.0
RSS_TARGET_MB = 58.0


@dataclass(frozen=True, slots=True)
class Build:
    """One installed ogsd: its venv's bin directory."""

    label: str
    bin: Path

    def script(self, name: str) -> str:
        # The console scripts, never `python -m ogsd`: -m puts the working directory first
        # on sys.path, so a checkout there would run instead of the build measured.
        return str(self.bin / name)


def run_once(argv: Sequence[str]) -> float:
    """ms from spawn to exit of `argv`."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          check=False)
    elapsed = (time.perf_counter() - t0) * 1000
    if done.returncode not in (0, 1):
        raise BenchError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return elapsed


def alternating(argvs: Mapping[str, Sequence[str]], runs: int) -> dict[str, list[float]]:
    """ms per run of each build's `argv`, the builds taking turns run by run (after one
    unmeasured warm-up each), so a change in the machine's load falls on both alike."""
    out: dict[str, list[float]] = {label: [] for label in argvs}
    for i in range(runs + 1):
        for label, argv in argvs.items():
            elapsed = run_once(argv)
            if i:
                out[label].append(elapsed)
    return out


def _row(id: str, title: str, unit: str, now: list[float], *, before: list[float] | None,
         target: float) -> Row:
    median = statistics.median(now)
    note = "" if median <= target else f"{median - target:.0f} {unit} over"
    if before:
        old = statistics.median(before)
        note = (f"before: {old:.1f} {unit} (x{old / median:.1f}); " + note).rstrip("; ")
    return Row.of(id, title, unit, now, target=f"<= {target:g} {unit}", met=median <= target,
                  note=note)


def measure_builds(builds: Sequence[Build], lab: Lab, config: str,
                   runs: int) -> dict[str, dict[str, list[float]]]:
    """Every figure of each build (its own daemon and state directory), taking turns."""
    fig: dict[str, dict[str, list[float]]] = {b.label: {} for b in builds}

    def store(key: str, values: Mapping[str, list[float]]) -> None:
        for label, samples in values.items():
            fig[label][key] = samples

    store("help", alternating({b.label: [b.script("ogsd"), "--help"] for b in builds}, runs))
    with contextlib.ExitStack() as stack:
        daemons = {b.label: stack.enter_context(
            LabDaemon(lab, config, command=[b.script("ogsd")])) for b in builds}
        readies: dict[str, list[float]] = {label: [] for label in daemons}
        for _ in range(runs):
            for label, daemon in daemons.items():
                readies[label].append(daemon.start() * 1000)
                daemon.wait_decided()
                daemon.stop()
        store("ready", readies)
        for label, daemon in daemons.items():
            daemon.start()
            fig[label]["rss"] = [settle(daemon)["VmRSS"]]
        store("status", alternating({b.label: [b.script("ogsctl"), "--socket",
                                               str(daemons[b.label].socket), "status"]
                                     for b in builds}, runs))
    with tempfile.TemporaryDirectory(prefix="obs", dir="/tmp") as tmp:
        cfg = Path(tmp) / "ogsd.toml"
        cfg.write_text(config)
        evaluate = {b.label: ["ip", "netns", "exec", lab.client_ns, b.script("ogsd"), "-q",
                              "evaluate", "--config", str(cfg), "--state-dir",
                              str(Path(tmp) / f"state-{b.label}")] for b in builds}
        # The warm-up run caches the location.
        store("evaluate_cached", alternating(evaluate, runs))
        store("evaluate_round", alternating(
            {label: [*argv, "--no-cache"] for label, argv in evaluate.items()}, runs))
    return fig


def measure(runs: int, venv: Path, before: Path | None) -> list[Row]:
    os.environ.pop("PYTHONPATH", None)  # each build runs its own installed ogsd
    spec = validate(LabSpec(domain="corp.lab.example", gateways=GATEWAYS))
    config = gateway_config([g.host for g in GATEWAYS], "[ogs]\nround_deadline_s = 7\n")
    builds = [Build("now", venv / "bin")]
    if before is not None:
        builds.append(Build("before", before / "bin"))
    with Lab.up(spec, lab_name()) as lab:
        floor = alternating({"floor": ["ip", "netns", "exec", lab.client_ns, "true"]}, runs)
        print(f"`ip netns exec` alone: {statistics.median(floor['floor']):.1f} ms (median)")
        figures = measure_builds(builds, lab, config, runs)
    for label, values_by_key in figures.items():
        for key, values in values_by_key.items():
            print(f"{label} {key}: {' '.join(f'{v:.1f}' for v in values)}")
    now, old = figures["now"], figures.get("before")

    def pick(key: str) -> list[float] | None:
        return None if old is None else old[key]

    specs = [
        ("help", "`ogsd --help` (spawn to exit)", "ms", HELP_TARGET_MS),
        ("status", "`ogsctl status` end to end", "ms", STATUS_TARGET_MS),
        ("evaluate_cached", "`ogsd evaluate` at a cached location (process wall)", "ms",
         EVALUATE_TARGET_MS),
        ("evaluate_round", "`ogsd evaluate --no-cache` on the demo lab (a round)", "ms",
         EVALUATE_TARGET_MS),
        ("ready", "`ogsd run` spawn to READY=1", "ms", READY_TARGET_MS),
        ("rss", "idle RSS after the start-up round", "MB", RSS_TARGET_MB),
    ]
    return [_row(f"startup.{key}", title, unit, now[key], before=pick(key), target=target)
            for key, title, unit, target in specs]


def main(argv: list[str] | None = None) -> int:
    p = parser("startup", __doc__)
    p.add_argument("--runs", type=int, default=RUNS, help=f"runs per figure (default {RUNS})")
    p.add_argument("--venv", type=Path, default=Path(sys.executable).parent.parent,
                   help="the venv of the build measured (default: this one)")
    p.add_argument("--before", type=Path, help="a venv with another ogsd build, compared")
    args = p.parse_args(argv)
    runs = QUICK_RUNS if args.quick else args.runs
    return run("startup", "each entry point's start-up, this build and --before",
               args.json, lambda: measure(runs, args.venv, args.before))


if __name__ == "__main__":
    sys.exit(main())
