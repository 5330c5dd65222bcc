"""Cost to the network: packets and bytes one round sends per gateway, ogsd and AnyConnect.

Counted by the lab's relay, which sees every packet between the client and each gateway
address (IP packets, headers included, both directions; retransmissions and packets the
relay drops count too). Gateways at 20 / 45 / 80 / 150 ms, probed by address (no DNS);
each method runs its rounds in turn on the same lab:

- AnyConnect's method: 3 sequential probes per gateway, every one to the end;
- ogsd at a cached location: 3 concurrent probes per gateway, those that cannot win are
  dropped (closed at once; a probe dropped before its TLS handshake costs a connect);
- ogsd at a new location: the same plus one plain HTTP request to port 80 per gateway
  (AnyConnect sends that request too before probing a gateway it has no cache entry for;
  its method above leaves it out, so compare it with the cached row).

    sudo .venv/bin/python -m bench.netcost             # 10 rounds per method, ~1 min
    sudo .venv/bin/python -m bench.netcost --quick     # 1 round each
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.common import Row, lab_name, parser, run
from bench.round_time import ANYCONNECT, OGSD
from bench.rounds import RoundProcess
from ogsd.lab import Lab, LabSpec

RUNS, QUICK_RUNS = 10, 1
RTTS = (20, 45, 80, 150)
PLAN = ((ANYCONNECT, False, "AnyConnect's method"), (OGSD, False, "ogsd, cached location"),
        (OGSD, True, "ogsd, new location (port-80 check)"))


def measure(runs: int) -> list[Row]:
    spec = LabSpec.simple(RTTS)
    targets = [g.address for g in spec.gateways]
    # (label) -> per run: per gateway (packets out, bytes out, packets in, bytes in)
    counts: dict[str, list[list[tuple[int, int, int, int]]]] = {p[2]: [] for p in PLAN}
    with Lab.up(spec, lab_name()) as lab, RoundProcess(lab) as rounds:
        rounds.run(OGSD, targets)  # warm the process up (imports, TLS context)
        for i in range(runs):
            for method, check, label in PLAN[i % len(PLAN):] + PLAN[:i % len(PLAN)]:
                before = lab.traffic()
                answer = rounds.run(method, targets, check=check)
                time.sleep(0.5)  # the last FIN/ACKs and RSTs cross the relay
                after = lab.traffic()
                counts[label].append([_delta(before.get(t), after.get(t)) for t in targets])
                if answer["pick"] != targets[0]:
                    print(f"  note: {label} picked {answer['pick']}", flush=True)
    rows: list[Row] = []
    baseline = None
    for _, _, label in PLAN:
        per_run_packets = [sum(g[0] + g[2] for g in run) / len(targets) for run in counts[label]]
        per_run_bytes = [sum(g[1] + g[3] for g in run) / len(targets) for run in counts[label]]
        sent = [sum(g[0] for g in run) / len(targets) for run in counts[label]]
        breakdown = ", ".join(
            f"{rtt} ms: {statistics.median(run[i][0] for run in counts[label]):g} out/"
            f"{statistics.median(run[i][2] for run in counts[label]):g} back"
            for i, rtt in enumerate(RTTS))
        print(f"{label}: per gateway {statistics.median(per_run_packets):.1f} packets, "
              f"{statistics.median(per_run_bytes):.0f} bytes (both ways); {breakdown}")
        ratio = ""
        if baseline is None:
            baseline = (statistics.median(per_run_packets), statistics.median(per_run_bytes))
        else:
            ratio = (f"; x{statistics.median(per_run_packets) / baseline[0]:.2f} packets, "
                     f"x{statistics.median(per_run_bytes) / baseline[1]:.2f} bytes of "
                     "AnyConnect's")
        key = label.split(",")[0].split("'")[0].lower().replace(" ", "_")
        suffix = "_new" if "new" in label else ""
        rows.append(Row.of(f"netcost.{key}{suffix}.packets", f"{label}: packets per gateway "
                           "per round, both ways", "packets", per_run_packets,
                           note=f"sent {statistics.median(sent):.1f}; per gateway (median "
                           f"packets out/back): {breakdown}{ratio}"))
        rows.append(Row.of(f"netcost.{key}{suffix}.bytes", f"{label}: bytes per gateway per "
                           "round, both ways", "bytes", per_run_bytes))
    return rows


def _delta(before: tuple[int, int, int, int] | None,
           after: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    b, a = before or (0, 0, 0, 0), after or (0, 0, 0, 0)
    return a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3]


def main(argv: list[str] | None = None) -> int:
    args = parser("netcost", __doc__).parse_args(argv)
    return run("netcost", "packets and bytes per gateway per round", args.json,
               lambda: measure(QUICK_RUNS if args.quick else RUNS))


if __name__ == "__main__":
    sys.exit(main())
