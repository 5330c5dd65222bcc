"""Keep the benchmarks from rotting: each one's quick mode on the lab (seconds), the round
methods on loopback, and the results file the runner writes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench import report
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


# --- every other benchmark: its quick mode runs and writes rows that say something -------


def run_bench(name: str, tmp_path: Path, *extra: str) -> dict[str, Any]:
    """`python -m bench.<name> --quick --json`: the rows it wrote."""
    out = tmp_path / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--json", str(out),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["bench"] == name
    assert {"machine", "date", "commit", "load"} <= set(doc["machine"])
    return {row["id"]: row for row in doc["rows"]}


@pytest.mark.root
@pytest.mark.lab
def test_choice_quick(tmp_path: Path) -> None:
    rows = run_bench("choice", tmp_path)
    ours = [r for k, r in rows.items() if k.startswith("choice.ogsd.gap")]
    assert sum(r["n"] for r in ours) == 2  # both scenarios judged, in one category or another
    assert all(r["median"] == 100 for r in ours if r["n"])  # 2-5 gateways, gaps >= 5 %
    assert rows["choice.ogsd.time"]["n"] == 2


@pytest.mark.root
@pytest.mark.lab
def test_accuracy_quick(tmp_path: Path) -> None:
    rows = run_bench("accuracy", tmp_path)
    assert set(rows) == {"accuracy.sweep.idle", "accuracy.crowd"}
    for row in rows.values():
        # Whether the 1 ms target holds is the benchmark's verdict (bench/RESULTS.md), not a
        # smoke test's: a quick run on a loaded 2-core machine can read 1.4 ms. A figure
        # off by 10 ms would mean the wrong thing is measured (e.g. the TLS exchange).
        assert 0 <= row["median"] < 10, row
        assert "right picks 1/1" in row["note"]


@pytest.mark.root
@pytest.mark.lab
def test_decision_quick(tmp_path: Path) -> None:
    rows = run_bench("decision", tmp_path)
    assert set(rows) == {"decision.cache_hit", "decision.cache_hit_resolv", "decision.round_20",
                         "decision.round_50", "decision.new_location_port80_blackholed"}
    assert rows["decision.cache_hit"]["median"] < 1000
    # A round takes its exchange (3 RTTs) at least, and the blackholed port-80 check its
    # grace on top: the figures are the round's, not the cache's.
    assert rows["decision.round_20"]["median"] >= 60
    assert rows["decision.round_50"]["median"] >= 150
    assert (rows["decision.new_location_port80_blackholed"]["median"]
            >= rows["decision.round_20"]["median"])
    assert "plain blocking client" in rows["decision.round_20"]["note"]


@pytest.mark.root
@pytest.mark.lab
def test_scale_quick(tmp_path: Path) -> None:
    rows = run_bench("scale", tmp_path)
    assert set(rows) == {"scale.10.wall", "scale.10.rss", "scale.10.cpu"}
    assert rows["scale.10.wall"]["note"].startswith("right pick 1/1, deadline hit 0/1")
    assert 0 < rows["scale.10.rss"]["median"] < 150


@pytest.mark.root
@pytest.mark.lab
def test_footprint_quick(tmp_path: Path) -> None:
    rows = run_bench("footprint", tmp_path)
    assert {"footprint.ready", "footprint.rss", "footprint.rss_cached", "footprint.cpu",
            "footprint.wakeups"} == set(rows)
    assert 0 < rows["footprint.ready"]["median"] < 20_000
    assert 10 < rows["footprint.rss"]["median"] < 500


@pytest.mark.root
@pytest.mark.lab
def test_api_load_quick(tmp_path: Path) -> None:
    rows = run_bench("api_load", tmp_path)
    assert rows["api.ogsctl_status"]["n"] == 3
    assert rows["api.throughput"]["median"] > 0
    assert rows["api.throughput"]["met"] is None  # 10 clients: not the target's 50


@pytest.mark.root
@pytest.mark.lab
def test_probe_scale_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.probe_scale", "--gateways", "10",
                           "--runs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run 1: wall" in done.stdout
    assert "pick right" in done.stdout


@pytest.mark.root
@pytest.mark.lab
def test_the_runner_writes_results_for_what_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "netcost",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = out.read_text()
    assert "| Cost to the network | AnyConnect's method: packets per gateway" in text
    assert "python -m bench.netcost" in text  # its output, kept
    assert "commit" in text
    assert "load average" in text


def test_the_results_name_misses_and_their_causes(monkeypatch: pytest.MonkeyPatch) -> None:
    row = {"id": "x.y", "title": "a thing", "unit": "ms", "median": 30.0, "low": 20.0,
           "high": 40.0, "n": 12, "spread": "p10-p90", "target": "<= 25 ms", "met": False,
           "note": "5 ms over"}
    fine = {**row, "id": "x.z", "title": "another", "median": 1.0, "met": True, "note": "ok"}
    doc = {"bench": "decision", "machine": {"date": "2026-12-01T20:00:00Z", "commit": "abc"},
           "rows": [row, fine]}
    header = {"machine": "m", "python": "3.11", "date": "d", "commit": "abc",
              "load_start": "0.1", "load_end": "0.2", "elapsed": "1 min"}
    monkeypatch.setitem(report.CAUSES, "x.y", "the lab's floor")
    monkeypatch.setitem(report.FINDINGS, "x.z", "what it shows")
    text = report.render([doc], header=header, outputs={"decision": "printed"},
                         failures={"scale": "exit 1: boom"})
    assert "| Decision time | a thing | 30.0 ms | 20.0-40.0 (p10-p90) | 12 | <= 25 ms | " \
           "**missed** | 12-01 20:00Z abc |" in text
    assert "| another | 1.00 ms |" in text
    assert "- **a thing**: 30.0 ms for <= 25 ms. 5 ms over. Cause: the lab's floor" in text
    assert "## Findings without a target\n\n- **another**: what it shows" in text
    assert "`scale`: exit 1: boom" in text
    assert "printed" in text


def test_runner_refuses_an_unknown_benchmark() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "unknown benchmark(s) nope" in done.stderr


@pytest.mark.root
@pytest.mark.lab
def test_startup_quick_compares_with_a_build_before(tmp_path: Path) -> None:
    venv = Path(sys.executable).parent.parent  # this build, standing in for an older one
    rows = run_bench("startup", tmp_path, "--before", str(venv))
    assert set(rows) == {"startup.help", "startup.status", "startup.evaluate_cached",
                         "startup.evaluate_round", "startup.ready", "startup.rss"}
    for row in rows.values():
        assert row["median"] > 0
        assert row["note"].startswith("before: "), row
    assert rows["startup.help"]["n"] == 2
