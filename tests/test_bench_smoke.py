"""Keep bench/round_time.py from rotting: its methods on loopback, its quick mode on the lab."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bench.round_time import ANYCONNECT, FALLBACK, OGSD, Run, Target, measure, percentile
from ogsd.core.models import Metric
from tests.tlsserver import LoopbackServer, blackholed_port

ROOT = Path(__file__).resolve().parents[1]
X, N = Metric.EXCHANGE, Metric.NETWORK
# The slow gateway answers each request this late; AnyConnect's method pays it 3 times over.
SLOW_S = 0.1


def run_measure(targets: list[Target], *, deadline: float, runs: int = 2) -> list[Run]:
    plan = [(ANYCONNECT, (X, N)), (OGSD, (X,))]
    call = functools.partial(measure, targets, plan, runs=runs, deadline=deadline,
                             probe_timeout=deadline)
    return anyio.run(call)


def test_percentile_is_a_measured_value() -> None:
    assert percentile([float(v) for v in range(15, 0, -1)], 90) == 14.0
    assert percentile([5.0, 1.0], 90) == 5.0
    assert percentile([3.0], 50) == 3.0


def test_methods_pick_the_fast_gateway_and_ogsd_does_not_wait_for_the_slow_one() -> None:
    with (LoopbackServer(host="127.0.0.2") as fast,
          LoopbackServer(host="127.0.0.3", delay=SLOW_S) as slow):
        runs = run_measure([Target("fast", fast.host, fast.port),
                            Target("slow", slow.host, slow.port)], deadline=5.0)
    by = {m: [r for r in runs if r.method == m] for m in (ANYCONNECT, OGSD)}
    assert [len(v) for v in by.values()] == [2, 2]
    assert all(r.picks == {"exchange": "fast", "network": r.picks["network"]}
               for r in by[ANYCONNECT])
    assert all(r.picks == {"exchange": "fast"} for r in by[OGSD])
    # Sequential probes wait out the slow answer three times; ogsd stops once it can't win.
    assert all(r.elapsed_ms >= 3 * SLOW_S * 1000 for r in by[ANYCONNECT])
    assert all(r.elapsed_ms < SLOW_S * 1000 for r in by[OGSD])


def test_a_blackholed_gateway_makes_anyconnect_fall_back_at_the_deadline() -> None:
    deadline = 0.4
    with LoopbackServer(host="127.0.0.2") as fast, blackholed_port() as dead:
        runs = run_measure([Target("fast", fast.host, fast.port),
                            Target("dead", "127.0.0.1", dead)], deadline=deadline, runs=1)
    (baseline,) = [r for r in runs if r.method == ANYCONNECT]
    (ours,) = [r for r in runs if r.method == OGSD]
    assert baseline.picks == {"exchange": FALLBACK, "network": FALLBACK}
    assert baseline.elapsed_ms >= deadline * 1000
    assert ours.picks == {"exchange": "fast"}
    assert ours.elapsed_ms < deadline * 1000


@pytest.mark.root
@pytest.mark.lab
def test_quick_run_on_the_lab(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.round_time", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "nproc" in done.stdout
    assert "date:" in done.stdout
    report = json.loads(out.read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {ANYCONNECT, OGSD}
    for row in rows.values():
        assert row["scenario"] == "a"
        assert (row["runs"], row["correct"]) == (2, 2)  # 20 ms vs 45 ms: no room for doubt
    # Three sequential exchanges with the 150 ms gateway vs one round to the 20 ms one.
    assert rows[OGSD]["median_ms"] < rows[ANYCONNECT]["median_ms"] / 3
    assert rows[OGSD]["ratio"] == rows[OGSD]["median_ms"] / rows[ANYCONNECT]["median_ms"]


def test_without_root_or_with_bad_arguments_it_says_why() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.round_time", "--scenarios", "az"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "unknown scenario(s) z" in done.stderr
    assert "Traceback" not in done.stderr
