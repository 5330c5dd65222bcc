"""Accuracy under load: the ranking figure next to the lab's RTT, idle, busy and crowded.

The ranking figure is the network RTT ogsd reads from the kernel (TCP_INFO) as each
connect completes. Three cases, each run several times (one round per run, in the lab's
client namespace on uvloop, as the daemon probes):

- gateways at 300 / 100 / 50 / 20 / 5 ms (the nearest listed last), the machine idle;
- the same with both cores busy (two processes spinning for the whole round);
- 100 gateways at 50 ms and one at 30 ms (listed last) in one round.

Per run the error is the worst gateway's |median of its figures - lab RTT| (the 100 far
gateways count as one, their figures pooled); the row is the median over runs. Target
(issue 9): median error <= 1 ms, and the nearest picked in every run. The 5-300 ms rounds
wait for every probe (`settle_early=False`) so that every gateway has figures; the
crowded one stops as ogsd does.

    sudo .venv/bin/python -m bench.accuracy            # 10 runs per case, ~1 min
    sudo .venv/bin/python -m bench.accuracy --quick    # 1 run idle, a crowd of 10
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from bench.common import Row, lab_name, parser, run
from bench.probe_scale import NEAR, busy_cores
from ogsd.lab import GatewaySpec, Lab, LabSpec
from ogsd.lab.spec import validate

RUNS = 10
QUICK_RUNS = 1
QUICK_CROWD = 10
SWEEP_MS = (300, 100, 50, 20, 5)
CROWD, CROWD_RTT, CROWD_BEST = 100, 50.0, 30.0
MEDIAN_ERROR_MS = 1.0


def _round(lab: Lab, addresses: Sequence[str], settle: bool) -> dict[str, Any]:
    done = lab.exec([sys.executable, "-m", "bench.probe_scale", "--inner"],
                    input=json.dumps({"addresses": list(addresses), "settle": settle}),
                    timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench.accuracy: the round failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def sweep(runs: int, busy: bool) -> Row:
    """The 5-300 ms gateways, `runs` rounds."""
    spec = LabSpec.simple(SWEEP_MS)
    rtts = {g.address: g.rtt_ms for g in spec.gateways}
    errors: list[float] = []
    per_gateway: dict[float, list[float]] = {rtt: [] for rtt in SWEEP_MS}
    picks = 0
    with Lab.up(spec, lab_name()) as lab, busy_cores(busy):
        for _ in range(runs):
            out = _round(lab, list(rtts), settle=False)
            worst = 0.0
            for address, rtt in rtts.items():
                figures = out["figures"].get(address) or []
                error = statistics.median(figures) - rtt if figures else float("inf")
                per_gateway[rtt].append(error)
                worst = max(worst, abs(error))
            errors.append(worst)
            picks += out["pick"] == spec.gateways[-1].address
    label = "both cores busy" if busy else "idle"
    print(f"5-300 ms, {label}: worst-gateway error per run {_list(errors)}; right picks "
          f"{picks}/{runs}")
    detail = ", ".join(f"{rtt:g} ms {statistics.median(e):+.3f}" for rtt, e in
                       per_gateway.items())
    return _row(f"accuracy.sweep.{'busy' if busy else 'idle'}",
                f"ranking figure vs lab RTT, 5-300 ms, {label}", errors, picks=picks, runs=runs,
                detail=f"median error per gateway: {detail}")


def crowd(runs: int, size: int = CROWD) -> Row:
    far = [GatewaySpec(host=f"far-{i}.lab.example", address=f"198.19.{i}.1", rtt_ms=CROWD_RTT)
           for i in range(1, size + 1)]
    near = GatewaySpec(host="near.lab.example", address=NEAR, rtt_ms=CROWD_BEST)
    spec = validate(LabSpec(gateways=(*far, near)))
    addresses = [g.address for g in spec.gateways]
    errors: list[float] = []
    near_errors: list[float] = []
    far_errors: list[float] = []
    picks = 0
    with Lab.up(spec, lab_name()) as lab:
        for _ in range(runs):
            out = _round(lab, addresses, settle=True)
            figures = out["figures"]
            near_error = (statistics.median(figures[NEAR]) - CROWD_BEST
                          if figures.get(NEAR) else float("inf"))
            pooled = [v for a, vs in figures.items() if a != NEAR for v in vs]
            far_error = statistics.median(pooled) - CROWD_RTT if pooled else float("inf")
            near_errors.append(near_error)
            far_errors.append(far_error)
            errors.append(max(abs(near_error), abs(far_error)))
            picks += out["pick"] == NEAR
    print(f"{size} x {CROWD_RTT:g} ms + 1 x {CROWD_BEST:g} ms: worst error per run "
          f"{_list(errors)}; right picks {picks}/{runs}")
    detail = (f"median error near {statistics.median(near_errors):+.3f} ms, far "
              f"{statistics.median(far_errors):+.3f} ms")
    return _row("accuracy.crowd", f"ranking figure vs lab RTT, {size} gateways at "
                f"{CROWD_RTT:g} ms + 1 at {CROWD_BEST:g} ms in one round", errors, picks=picks,
                runs=runs, detail=detail)


def _row(id_: str, title: str, errors: list[float], *, picks: int, runs: int,
         detail: str) -> Row:
    median = statistics.median(errors)
    met = median <= MEDIAN_ERROR_MS and picks == runs
    why = []
    if median > MEDIAN_ERROR_MS:
        why.append(f"{median - MEDIAN_ERROR_MS:.3f} ms over")
    if picks < runs:
        why.append(f"wrong pick in {runs - picks} of {runs} runs")
    return Row.of(id_, title, "ms", errors,
                  target=f"<= {MEDIAN_ERROR_MS:g} ms, right pick every run", met=met,
                  note="; ".join([*why, f"right picks {picks}/{runs}", detail]))


def _list(values: Sequence[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    args = parser("accuracy", __doc__).parse_args(argv)
    runs = QUICK_RUNS if args.quick else RUNS

    def measure() -> list[Row]:
        rows = [sweep(runs, busy=False)]
        if not args.quick:
            rows.append(sweep(runs, busy=True))
        return [*rows, crowd(runs, QUICK_CROWD if args.quick else CROWD)]

    return run("accuracy", "ranking figure vs the lab's RTT, idle, busy, 100 gateways",
               args.json, measure)


if __name__ == "__main__":
    sys.exit(main())
