"""The lab's selftest: bring up a lab, measure it against its spec, print a table."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogsd.lab.lab import Lab
from ogsd.lab.spec import DnsMode, GatewayMode, GatewaySpec, LabSpec

# The accuracy bound on the median connect time (zero jitter).
RTT_TOLERANCE_MS = 1.5
RTTS_MS = (5, 20, 80, 150, 300)
SAMPLES = 5  # median of 5 (issue 3)
JITTER_RTT_MS, JITTER_MS, JITTER_SAMPLES = 40.0, 10.0, 20
STALL_RTT_MS, STALL_MS = 10.0, 150.0
# TLS 1.3 needs one round trip plus the server's crypto (~2 ms here) on top of the stall.
STALL_SLACK_MS = 15.0
REFUSE_LIMIT_MS = 5.0  # "refused at once"
BLACKHOLE_TIMEOUT_S = 1.0
DNS_TIMEOUT_S = 1.0
# Idle means no packets: the relay blocks in select() with no timeout. A few ms per second
# would already mean a polling loop; 0.5 % of a core is the "~0" we accept.
IDLE_CPU_LIMIT_MS = 5.0
IDLE_WINDOW_S = 1.0
CONCURRENT = 1000
CONCURRENT_LIMIT_S = 30.0
LIVE_RTT_MS = 60.0  # what `set` changes the 20 ms gateway to
DNS = "198.18.0.53"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table."""

    check: str
    expected: str
    measured: str
    ok: bool


def _gw(i: int, **fields: Any) -> GatewaySpec:
    return GatewaySpec(host=f"st-{i}.lab.example", address=f"198.19.{i}.1", **fields)


def selftest_spec() -> LabSpec:
    """Gateways 1-5 at RTTS_MS, 6 jittery, 7 stalled, 8 blackholed, 9 refusing."""
    gateways = [_gw(i, rtt_ms=float(rtt)) for i, rtt in enumerate(RTTS_MS, start=1)]
    gateways += [
        _gw(6, rtt_ms=JITTER_RTT_MS, jitter_ms=JITTER_MS),
        _gw(7, rtt_ms=STALL_RTT_MS, stall_ms=STALL_MS),
        _gw(8, rtt_ms=10.0, mode=GatewayMode.BLACKHOLE),
        _gw(9, mode=GatewayMode.REFUSE),
    ]
    return LabSpec(gateways=tuple(gateways), seed=3)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cpu_ns(pid: int) -> int:
    """CPU time the process has used, in ns (schedstat is ns-exact, stat only 10 ms ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _rtt_rows(results: list[dict[str, Any]], rtts: tuple[float, ...], label: str) -> list[Row]:
    rows = []
    for rtt, result in zip(rtts, results, strict=True):
        times = result.get("times_ms", [])
        median = _median(times)
        ok = len(times) == SAMPLES and abs(median - rtt) <= RTT_TOLERANCE_MS
        spread = f" (min {min(times):.2f} max {max(times):.2f})" if times else ""
        rows.append(
            Row(f"{label} {rtt:g} ms", f"{rtt:g} ±{RTT_TOLERANCE_MS}", f"{median:.2f}{spread}", ok)
        )
    return rows


def run(name: str) -> list[Row]:
    """Measure a fresh lab named `name` (taken down at the end, whatever happens)."""
    spec = selftest_spec()
    rows: list[Row] = []
    with Lab.up(spec, name) as lab:
        connect = [
            {"op": "connect", "address": f"198.19.{i}.1", "count": SAMPLES} for i in range(1, 6)
        ]
        plan: list[dict[str, Any]] = [
            *connect,
            {"op": "connect", "address": "198.19.6.1", "count": JITTER_SAMPLES},
            {"op": "tls", "address": "198.19.7.1", "count": 3},
            {"op": "connect", "address": "198.19.8.1", "count": 1, "timeout": BLACKHOLE_TIMEOUT_S},
            {"op": "connect", "address": "198.19.9.1", "count": 3},
            {"op": "dns", "server": DNS, "name": "st-1.lab.example"},
            {"op": "dns", "server": DNS, "name": "198.19.2.1", "rdtype": "PTR"},
            {"op": "dns", "server": DNS, "name": "198.19.1.1", "timeout": DNS_TIMEOUT_S},
        ]
        res = lab.measure(plan)
        rows += _rtt_rows(res[:5], tuple(float(r) for r in RTTS_MS), "connect RTT")

        jit = res[5].get("times_ms", [])
        lo, hi = JITTER_RTT_MS - JITTER_MS, JITTER_RTT_MS + JITTER_MS
        inside = [t for t in jit if lo - RTT_TOLERANCE_MS <= t <= hi + RTT_TOLERANCE_MS]
        # All but one inside the bounds (one sample may meet a busy core), and really varying.
        ok = len(jit) == JITTER_SAMPLES and len(inside) >= len(jit) - 1
        ok = ok and max(jit) - min(jit) >= JITTER_MS / 2
        measured = (
            f"{min(jit, default=0):.1f}..{max(jit, default=0):.1f}, {len(inside)}/{len(jit)} in"
        )
        rows.append(
            Row(f"jitter {JITTER_RTT_MS:g}±{JITTER_MS:g} ms", f"{lo:g}..{hi:g}", measured, ok)
        )

        stall = res[6]
        conn, hand = _median(stall.get("connect_ms", [])), _median(stall.get("handshake_ms", []))
        rows.append(
            Row(
                f"stall {STALL_MS:g} ms: connect",
                f"{STALL_RTT_MS:g} ±{RTT_TOLERANCE_MS}",
                f"{conn:.2f}",
                abs(conn - STALL_RTT_MS) <= RTT_TOLERANCE_MS,
            )
        )
        want = STALL_MS + STALL_RTT_MS
        rows.append(
            Row(
                f"stall {STALL_MS:g} ms: TLS handshake",
                f"{want:g}..{want + STALL_SLACK_MS:g}",
                f"{hand:.2f}",
                want <= hand <= want + STALL_SLACK_MS,
            )
        )
        errs = res[7].get("errors", [])
        rows.append(
            Row(
                "blackhole",
                "timeout",
                "; ".join(errs) or "connected",
                bool(errs) and "timeout" in errs[0],
            )
        )
        errs = res[8].get("errors", [])
        refused = [float(e.split()[-2]) for e in errs if "refused" in e]
        rows.append(
            Row(
                "refuse (3 tries)",
                f"refused < {REFUSE_LIMIT_MS:g}",
                f"refused, max {max(refused):.2f}" if refused else "; ".join(errs) or "connected",
                len(refused) == 3 and max(refused) < REFUSE_LIMIT_MS,
            )
        )
        a, ptr, literal = res[9], res[10], res[11]
        rows.append(
            Row(
                "DNS A",
                "198.19.1.1",
                ",".join(a.get("answers", [])) or str(a),
                a.get("answers") == ["198.19.1.1"],
            )
        )
        rows.append(
            Row(
                "DNS PTR",
                "st-2.lab.example.",
                ",".join(ptr.get("answers", [])) or str(ptr),
                ptr.get("answers") == ["st-2.lab.example."],
            )
        )
        rows.append(
            Row(
                "DNS A 198.19.1.1 (normal)",
                "NXDOMAIN",
                str(literal.get("rcode", "timeout")),
                literal.get("rcode") == "NXDOMAIN",
            )
        )

        # Live changes: the DNS mode and one gateway's distance, without a restart.
        pids = lab.pids()
        lab.set(
            spec.with_dns(mode=DnsMode.DROP_A_FOR_IP_LITERALS).with_gateway(
                "st-2.lab.example", rtt_ms=LIVE_RTT_MS
            )
        )
        res = lab.measure(
            [
                {"op": "dns", "server": DNS, "name": "198.19.1.1", "timeout": DNS_TIMEOUT_S},
                {"op": "dns", "server": DNS, "name": "198.19.1.1", "rdtype": "PTR"},
                {"op": "connect", "address": "198.19.2.1", "count": SAMPLES},
            ]
        )
        dropped = res[0].get("timeout") is True
        rows.append(
            Row(
                "DNS A 198.19.1.1 (drop mode)",
                "no answer",
                "no answer" if dropped else str(res[0]),
                dropped,
            )
        )
        rows.append(
            Row(
                "DNS PTR (drop mode)",
                "st-1.lab.example.",
                ",".join(res[1].get("answers", [])) or str(res[1]),
                res[1].get("answers") == ["st-1.lab.example."],
            )
        )
        rows += _rtt_rows([res[2]], (LIVE_RTT_MS,), "set: 20 -> connect RTT")
        kept = lab.pids() == pids
        rows.append(Row("set: processes kept", "same pids", "same" if kept else "restarted", kept))

        relay_pid = pids["relay"]
        before = _cpu_ns(relay_pid)
        time.sleep(IDLE_WINDOW_S)  # the measurement window itself: nothing to wait for
        idle_ms = (_cpu_ns(relay_pid) - before) / 1e6
        rows.append(
            Row(
                f"relay CPU idle {IDLE_WINDOW_S:g} s",
                f"< {IDLE_CPU_LIMIT_MS:g} ms",
                f"{idle_ms:.3f} ms",
                idle_ms < IDLE_CPU_LIMIT_MS,
            )
        )

        before = _cpu_ns(relay_pid)
        [conc] = lab.measure(
            [
                {
                    "op": "concurrent",
                    "address": "198.19.1.1",
                    "port": 80,
                    "count": CONCURRENT,
                    "timeout": CONCURRENT_LIMIT_S,
                }
            ]
        )
        busy_ms = (_cpu_ns(relay_pid) - before) / 1e6
        alive = lab.status()["processes"]["relay"]["alive"]
        ok = conc.get("held") == CONCURRENT and conc.get("ok") == CONCURRENT and alive
        measured = (
            f"{conc.get('ok')}/{CONCURRENT} ok in {conc.get('elapsed_ms', 0):.0f} ms, "
            f"relay CPU {busy_ms:.0f} ms, relay {'up' if alive else 'DEAD'}"
        )
        if conc.get("errors"):
            measured += f" {conc['errors']}"
        rows.append(Row(f"{CONCURRENT} concurrent connections", "all ok, relay up", measured, ok))
    return rows


def format_table(rows: list[Row]) -> str:
    """Rows as an aligned text table with a verdict column."""
    header = ("check", "expected (ms)", "measured", "")
    lines = [header, *((r.check, r.expected, r.measured, "ok" if r.ok else "FAIL") for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:3], widths, strict=True)) + "  " + line[3]
        for line in lines
    )
