"""Choice quality: does the round pick the nearest gateway? ogsd next to AnyConnect's method.

Randomised lab scenarios (seeded, so a run can be repeated): 2-5 reachable gateways, the
nearest at 10-120 ms, the runner-up 5-50 % further (the gap), the rest further still;
in half the scenarios every gateway's RTT jitters by up to 1-10 % of it (the relay
varies each one-way delay, so a sample lands within +-jitter of the RTT), in half each
gateway loses 0-10 % of its packets per direction; sometimes one reachable gateway
stalls its TLS handshake 100-300 ms after the ClientHello (the seed's delayed-ACK case,
often on the nearest), and a blackholed or a refusing gateway is mixed in. The gateways
are probed by address in a random order, by both methods on the same lab, one after
the other (which goes first alternates).

"Right" is the gateway with the lowest true network RTT (the lab's `rtt_ms`) among those
that answer: a stalled handshake or lost packets do not make a path longer. There are
no ties (gaps are 5 % or more). Near-equal under jitter: when the runner-up's RTT range
overlaps the nearest's (the gap is smaller than their jitter), the two cannot be told
apart by three samples each; such picks are counted apart ("near-equal") and never as
right. Targets (issue 9) are for ogsd with a gap of 10 % or more: right in 100 % of the
scenarios without jitter, in 95 % with jitter. AnyConnect's method ranks by exchange
time and, when a blackholed gateway holds its round to the 7 s deadline, keeps the
previous gateway: no pick of its own ("fallback"), which is not right.

    sudo .venv/bin/python -m bench.choice                  # 120 scenarios, ~6 min
    sudo .venv/bin/python -m bench.choice --scenarios 400 --seed 7
    sudo .venv/bin/python -m bench.choice --quick          # 2 scenarios, none blackholed
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import Row, lab_name, parser, run
from bench.round_time import ANYCONNECT, OGSD
from bench.rounds import RoundProcess
from ogsd.lab import GatewayMode, GatewaySpec, Lab, LabSpec

SCENARIOS = 120
QUICK_SCENARIOS = 2
SEED = 9
SLOTS = 8  # gateway addresses the lab keeps; a scenario uses some of them
GAP_TARGETED = 0.10  # issue 9's targets hold from this gap up
RIGHT_NO_JITTER, RIGHT_JITTER = 1.00, 0.95


@dataclass(frozen=True, slots=True)
class Scenario:
    index: int
    spec: LabSpec
    probed: tuple[str, ...]  # addresses, in the order they are listed to both methods
    best: str  # the lowest true RTT among the gateways that answer
    gap: float  # runner-up's RTT over the best's, minus one
    jitter: float  # jitter as a fraction of RTT (0: none)
    lossy: bool
    stalled: bool  # one reachable gateway stalls its TLS handshake
    best_stalled: bool
    unreachable: tuple[str, ...]  # "blackhole", "refuse"

    def rtt(self, address: str) -> float:
        return next(g.rtt_ms for g in self.spec.gateways if g.address == address)

    def jitter_ms(self, address: str) -> float:
        return next(g.jitter_ms for g in self.spec.gateways if g.address == address)

    @property
    def category(self) -> str:
        if self.gap < GAP_TARGETED:
            return "gap 5-10 %"
        return "gap >= 10 %, jitter" if self.jitter else "gap >= 10 %, no jitter"


def scenarios(count: int, seed: int) -> list[Scenario]:
    """`count` random scenarios; the same seed gives the same ones."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        reachable = rng.randint(2, 5)
        best = rng.uniform(10, 120)
        gap = rng.uniform(0.05, 0.50)
        rtts = [best, best * (1 + gap)]
        rtts += [rtts[1] * rng.uniform(1.05, 3.0) for _ in range(reachable - 2)]
        jitter = rng.uniform(0.01, 0.10) if rng.random() < 0.5 else 0.0
        lossy = rng.random() < 0.5
        stall_at = rng.randrange(reachable) if rng.random() < 0.3 else None
        unreachable = tuple(kind for kind, p in (("blackhole", 0.25), ("refuse", 0.25))
                            if rng.random() < p)
        slots = rng.sample(range(1, SLOTS + 1), reachable + len(unreachable))
        gateways: dict[int, GatewaySpec] = {}
        for i, (slot, rtt) in enumerate(zip(slots, rtts, strict=False)):
            gateways[slot] = GatewaySpec(
                host=f"gw-{slot}.lab.example", address=f"198.19.{slot}.1",
                rtt_ms=round(rtt, 1), jitter_ms=round(jitter * rtt, 2),
                loss=round(rng.uniform(0, 0.10), 3) if lossy else 0.0,
                stall_ms=round(rng.uniform(100, 300)) if i == stall_at else 0.0)
        for slot, kind in zip(slots[reachable:], unreachable, strict=True):
            gateways[slot] = GatewaySpec(host=f"gw-{slot}.lab.example",
                                         address=f"198.19.{slot}.1",
                                         rtt_ms=round(rng.uniform(10, 120), 1),
                                         mode=GatewayMode(kind))
        spec = LabSpec(gateways=tuple(
            gateways.get(s, GatewaySpec(host=f"gw-{s}.lab.example", address=f"198.19.{s}.1"))
            for s in range(1, SLOTS + 1)), seed=seed * 1000 + index)
        probed = [f"198.19.{s}.1" for s in slots]
        rng.shuffle(probed)
        out.append(Scenario(index, spec, tuple(probed), f"198.19.{slots[0]}.1", gap, jitter,
                            lossy, stall_at is not None, stall_at == 0, unreachable))
    return out


# -- the root-namespace side ----------------------------------------------------------


def play(all_scenarios: Sequence[Scenario]) -> list[dict[str, Any]]:
    """Every scenario on one lab (changed live between them), both methods each."""
    outcomes: list[dict[str, Any]] = []
    with Lab.up(all_scenarios[0].spec, lab_name()) as lab, RoundProcess(lab) as rounds:
        for scenario in all_scenarios:
            lab.set(scenario.spec)
            methods = [OGSD, ANYCONNECT] if scenario.index % 2 == 0 else [ANYCONNECT, OGSD]
            for method in methods:
                outcomes.append({"scenario": scenario.index, "method": method,
                                 **rounds.run(method, scenario.probed)})
            _progress(scenario, outcomes[-2:])
    return outcomes


def _progress(scenario: Scenario, last: list[dict[str, Any]]) -> None:
    marks = " ".join(f"{o['method']} {_verdict(scenario, o['pick'])} {o['elapsed_ms']:.0f} ms"
                     for o in sorted(last, key=lambda o: o["method"] != OGSD))
    extras = [k for k, on in (("loss", scenario.lossy), ("stall", scenario.stalled)) if on]
    extras += list(scenario.unreachable)
    print(f"{scenario.index:3d} best {scenario.rtt(scenario.best):5.1f} ms gap "
          f"{scenario.gap * 100:4.1f} % jitter {scenario.jitter * 100:4.1f} % "
          f"{'+'.join(extras) or '-':22s} {marks}", flush=True)


def _verdict(scenario: Scenario, found: str | None) -> str:
    """right / near-equal / wrong / fallback."""
    if found is None:
        return "fallback"
    if found == scenario.best:
        return "right"
    overlap = scenario.jitter_ms(found) + scenario.jitter_ms(scenario.best)
    if scenario.jitter and scenario.rtt(found) - scenario.rtt(scenario.best) <= overlap:
        return "near-equal"
    return "wrong"


def rows(all_scenarios: Sequence[Scenario], outcomes: Sequence[dict[str, Any]]) -> list[Row]:
    by_index = {s.index: s for s in all_scenarios}
    out: list[Row] = []
    keys = {"gap >= 10 %, no jitter": "gap10.nojitter", "gap >= 10 %, jitter": "gap10.jitter",
            "gap 5-10 %": "gap5"}
    targets = {"gap >= 10 %, no jitter": RIGHT_NO_JITTER, "gap >= 10 %, jitter": RIGHT_JITTER}
    for method in (OGSD, ANYCONNECT):
        for category, key in keys.items():
            mine = [o for o in outcomes
                    if o["method"] == method and by_index[o["scenario"]].category == category]
            verdicts = Counter(_verdict(by_index[o["scenario"]], o["pick"]) for o in mine)
            share = targets.get(category) if method == OGSD else None
            wrong = [f"#{o['scenario']} ({_why(by_index[o['scenario']], o)})" for o in mine
                     if _verdict(by_index[o["scenario"]], o["pick"]) != "right"]
            note = ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()) if k != "right")
            if wrong:
                more = " ..." if len(wrong) > 8 else ""
                note += "; not right: " + ", ".join(wrong[:8]) + more
            out.append(Row.proportion(
                f"choice.{method}.{key}", f"{method}: right pick, {category}",
                verdicts["right"], len(mine),
                target="" if share is None else f">= {share * 100:g} %",
                met=None if share is None or not mine else verdicts["right"] >= share * len(mine),
                note=note))
    times = {m: [o["elapsed_ms"] for o in outcomes if o["method"] == m] for m in (OGSD, ANYCONNECT)}
    if times[OGSD] and times[ANYCONNECT]:
        ratio = statistics.median(times[OGSD]) / statistics.median(times[ANYCONNECT])
        out.append(Row.of("choice.ogsd.time", "ogsd: round time over the same scenarios", "ms",
                          times[OGSD], note=f"AnyConnect's method: median "
                          f"{statistics.median(times[ANYCONNECT]):.0f} ms; ogsd/AC {ratio:.2f}"))
    return out


def _why(scenario: Scenario, outcome: dict[str, Any]) -> str:
    found = outcome["pick"]
    parts = [f"picked {'nothing' if found is None else f'{scenario.rtt(found):g} ms'} "
             f"for {scenario.rtt(scenario.best):g} ms"]
    if scenario.lossy:
        parts.append("lossy")
    if scenario.best_stalled:
        parts.append("best stalled")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = parser("choice", __doc__)
    p.add_argument("--scenarios", type=int, default=SCENARIOS)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    if args.scenarios < 1:
        p.error(f"--scenarios must be at least 1, not {args.scenarios}")
    drawn = scenarios(args.scenarios, args.seed)
    if args.quick:  # a blackholed gateway holds AnyConnect's round for 7 s: not for CI
        drawn = [s for s in scenarios(20, args.seed) if "blackhole" not in s.unreachable]
        drawn = drawn[:QUICK_SCENARIOS]
    outcomes: list[dict[str, Any]] = []

    def measure() -> list[Row]:
        print(f"{len(drawn)} scenarios, seed {args.seed}")
        outcomes.extend(play(drawn))
        return rows(drawn, outcomes)

    return run("choice", "right picks over randomised lab scenarios, ogsd and AnyConnect's "
               "method", args.json, measure, lambda: {
                   "scenarios": [dataclasses.asdict(s) | {"category": s.category}
                                 for s in drawn], "outcomes": outcomes})


if __name__ == "__main__":
    sys.exit(main())
