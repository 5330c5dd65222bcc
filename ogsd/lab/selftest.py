"""The lab's selftest: bring up a lab, measure it against its spec, print a table."""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogsd.lab.lab import Lab
from ogsd.lab.ocserv import OCSERV
from ogsd.lab.spec import DnsMode, GatewayMode, GatewaySpec, LabSpec
from ogsd.lab.vpnclient import OPENCONNECT, VpnError

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
VPN_RTT_MS = 20.0
# openconnect's password login is ~10 round trips (TCP, TLS 1.2, three auth POSTs,
# CONNECT, DTLS, MTU probe) plus its start and vpnc-script's ~100 ms: ~300 ms here, up to
# ~800 ms seen on a loaded machine. This bound says "a login, not a timeout"; the table
# shows the figure.
VPN_CONNECT_LIMIT_MS = 12 * VPN_RTT_MS + 2000
# Through the tunnel a packet also crosses openconnect and ocserv in user space (each a
# wake-up of a normal-priority process): ~0.5 ms more than the relay alone on a quiet
# machine, medians up to +6 ms seen when other labs share its two cores. The row shows
# the far gateway (150 ms direct) is reached at the tunnel gateway's distance.
TUNNEL_TOLERANCE_MS = 10.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table."""

    check: str
    expected: str
    measured: str
    ok: bool


def _gw(i: int, **fields: Any) -> GatewaySpec:
    return GatewaySpec(host=f"st-{i}.lab.example", address=f"198.19.{i}.1", **fields)


def _v6(i: int) -> str:
    return f"2001:2:0:{i}::1"


def selftest_spec() -> LabSpec:
    """Gateways 1-5 at RTTS_MS (dual-stack), 6 jittery, 7 stalled, 8 blackholed, 9 refusing,
    10 a full-tunnel VPN gateway."""
    gateways = [
        _gw(i, rtt_ms=float(rtt), address6=_v6(i)) for i, rtt in enumerate(RTTS_MS, start=1)
    ]
    gateways += [
        _gw(6, rtt_ms=JITTER_RTT_MS, jitter_ms=JITTER_MS),
        _gw(7, rtt_ms=STALL_RTT_MS, stall_ms=STALL_MS),
        _gw(8, rtt_ms=10.0, mode=GatewayMode.BLACKHOLE),
        _gw(9, mode=GatewayMode.REFUSE),
        _gw(10, rtt_ms=VPN_RTT_MS, vpn=True),
    ]
    return LabSpec(gateways=tuple(gateways), seed=3)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cpu_ns(pid: int) -> int:
    """CPU time the process has used, in ns (schedstat is ns-exact, stat only 10 ms ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _rtt_rows(
    results: list[dict[str, Any]],
    rtts: tuple[float, ...],
    label: str,
    tolerance: float = RTT_TOLERANCE_MS,
) -> list[Row]:
    """Judged on the kernel's handshake RTT (TCP_INFO): what the relay did, SYN to SYN/ACK.

    connect()'s own time (shown beside it) adds the wake-up of the measuring process: on
    this shared 2-core machine under load, ~6 % of samples 1.5-40 ms late while the
    kernel's figures of the same connects stayed within 0.5 ms.
    """
    rows = []
    for rtt, result in zip(rtts, results, strict=True):
        kernel, app = result.get("kernel_ms", []), result.get("times_ms", [])
        median = _median(kernel)
        ok = len(kernel) == SAMPLES and abs(median - rtt) <= tolerance
        spread = f" (max {max(kernel):.2f}; connect() {_median(app):.2f})" if kernel else ""
        check, expected = f"{label} {rtt:g} ms", f"{rtt:g} ±{tolerance:g}"
        rows.append(Row(check, expected, f"{median:.2f}{spread}", ok))
    return rows


def _answer_row(check: str, result: dict[str, Any], want: str) -> Row:
    answers = result.get("answers", [])
    return Row(check, want, ",".join(answers) or str(result), answers == [want])


def _first_rows(lab: Lab) -> list[Row]:
    """RTTs over both families, jitter, stall, blackhole, refuse, DNS."""
    rtts = tuple(float(r) for r in RTTS_MS)
    connect = [{"op": "connect", "address": f"198.19.{i}.1", "count": SAMPLES} for i in range(1, 6)]
    connect6 = [{"op": "connect", "address": _v6(i), "count": SAMPLES} for i in range(1, 6)]
    plan: list[dict[str, Any]] = [
        *connect,
        *connect6,
        {"op": "connect", "address": "198.19.6.1", "count": JITTER_SAMPLES},
        {"op": "tls", "address": "198.19.7.1", "count": 3},
        {"op": "connect", "address": "198.19.8.1", "count": 1, "timeout": BLACKHOLE_TIMEOUT_S},
        {"op": "connect", "address": "198.19.9.1", "count": 3},
        {"op": "dns", "server": DNS, "name": "st-1.lab.example"},
        {"op": "dns", "server": DNS, "name": "198.19.2.1", "rdtype": "PTR"},
        {"op": "dns", "server": DNS, "name": "198.19.1.1", "timeout": DNS_TIMEOUT_S},
        {"op": "dns", "server": DNS, "name": "st-1.lab.example", "rdtype": "AAAA"},
        {"op": "dns", "server": DNS, "name": _v6(2), "rdtype": "PTR"},
    ]
    res = lab.measure(plan)
    rows = _rtt_rows(res[:5], rtts, "connect RTT")
    rows += _rtt_rows(res[5:10], rtts, "connect RTT IPv6")
    jit, stall, blackhole, refuse, a, ptr, literal, aaaa, ptr6 = res[10:]

    times = jit.get("kernel_ms", [])
    lo, hi = JITTER_RTT_MS - JITTER_MS, JITTER_RTT_MS + JITTER_MS
    inside = [t for t in times if lo - RTT_TOLERANCE_MS <= t <= hi + RTT_TOLERANCE_MS]
    # All but one inside the bounds (one sample may meet a busy core), and really varying.
    ok = len(times) == JITTER_SAMPLES and len(inside) >= len(times) - 1
    ok = ok and max(times) - min(times) >= JITTER_MS / 2
    measured = (
        f"{min(times, default=0):.1f}..{max(times, default=0):.1f}, {len(inside)}/{len(times)} in"
    )
    rows.append(Row(f"jitter {JITTER_RTT_MS:g}±{JITTER_MS:g} ms", f"{lo:g}..{hi:g}", measured, ok))

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
    errs = blackhole.get("errors", [])
    ok = bool(errs) and "timeout" in errs[0]
    rows.append(Row("blackhole", "timeout", "; ".join(errs) or "connected", ok))
    errs = refuse.get("errors", [])
    refused = [float(e.split()[-2]) for e in errs if "refused" in e]
    rows.append(
        Row(
            "refuse (3 tries)",
            f"refused < {REFUSE_LIMIT_MS:g}",
            f"refused, max {max(refused):.2f}" if refused else "; ".join(errs) or "connected",
            len(refused) == 3 and max(refused) < REFUSE_LIMIT_MS,
        )
    )
    rows.append(_answer_row("DNS A", a, "198.19.1.1"))
    rows.append(_answer_row("DNS PTR", ptr, "st-2.lab.example."))
    rows.append(
        Row(
            "DNS A 198.19.1.1 (normal)",
            "NXDOMAIN",
            str(literal.get("rcode", "timeout")),
            literal.get("rcode") == "NXDOMAIN",
        )
    )
    rows.append(_answer_row("DNS AAAA", aaaa, _v6(1)))
    rows.append(_answer_row("DNS PTR IPv6", ptr6, "st-2.lab.example."))
    return rows


def _live_rows(lab: Lab, spec: LabSpec) -> list[Row]:
    """The DNS mode and one gateway's distance, changed without a restart."""
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
    rows = [
        Row(
            "DNS A 198.19.1.1 (drop mode)",
            "no answer",
            "no answer" if dropped else str(res[0]),
            dropped,
        ),
        _answer_row("DNS PTR (drop mode)", res[1], "st-1.lab.example."),
        *_rtt_rows([res[2]], (LIVE_RTT_MS,), "set: 20 -> connect RTT"),
    ]
    kept = lab.pids() == pids
    rows.append(Row("set: processes kept", "same pids", "same" if kept else "restarted", kept))
    return rows


def _vpn_rows(lab: Lab) -> list[Row]:
    """openconnect to the VPN gateway; a far gateway measured through its tunnel."""
    missing = [p for p in (OCSERV, OPENCONNECT) if shutil.which(p) is None]
    if missing:
        note = f"not installed: {', '.join(missing)}"
        return [Row("VPN: openconnect connects", "installed", note, False)]
    vpn = lab.openconnect("198.19.10.1")
    try:
        event = vpn.wait_connected()
    except VpnError as exc:
        vpn.close()
        return [Row("VPN: openconnect connects", "connected", str(exc)[:120], False)]
    took = (event.at - vpn.started) * 1000
    rows = [
        Row(
            f"VPN: openconnect connect, {VPN_RTT_MS:g} ms gateway",
            f"< {VPN_CONNECT_LIMIT_MS:g}",
            f"{took:.0f} ms",
            took < VPN_CONNECT_LIMIT_MS,
        )
    ]
    # st-4 is 150 ms away directly; through the full tunnel it is as near as st-10.
    [through] = lab.measure([{"op": "connect", "address": "198.19.4.1", "count": SAMPLES}])
    rows += _rtt_rows(
        [through], (VPN_RTT_MS,), "VPN: st-4 through the tunnel", TUNNEL_TOLERANCE_MS
    )
    status = vpn.disconnect()
    restored = "tun" not in lab.exec(["ip", "route"]).stdout
    rows.append(
        Row(
            "VPN: SIGINT logs out",
            "exit 0, routes restored",
            f"exit {status}, routes {'restored' if restored else 'NOT restored'}",
            status == 0 and restored,
        )
    )
    return rows


def _relay_rows(lab: Lab) -> list[Row]:
    """Idle CPU and 1,000 concurrent connections."""
    relay_pid = lab.pids()["relay"]
    before = _cpu_ns(relay_pid)
    time.sleep(IDLE_WINDOW_S)  # the measurement window itself: nothing to wait for
    idle_ms = (_cpu_ns(relay_pid) - before) / 1e6
    rows = [
        Row(
            f"relay CPU idle {IDLE_WINDOW_S:g} s",
            f"< {IDLE_CPU_LIMIT_MS:g} ms",
            f"{idle_ms:.3f} ms",
            idle_ms < IDLE_CPU_LIMIT_MS,
        )
    ]
    before = _cpu_ns(relay_pid)
    step = {
        "op": "concurrent",
        "address": "198.19.1.1",
        "port": 80,
        "count": CONCURRENT,
        "timeout": CONCURRENT_LIMIT_S,
    }
    [conc] = lab.measure([step])
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


def run(name: str) -> list[Row]:
    """Measure a fresh lab named `name` (taken down at the end, whatever happens)."""
    spec = selftest_spec()
    with Lab.up(spec, name) as lab:
        rows = _first_rows(lab)
        rows += _live_rows(lab, lab.spec)
        rows += _vpn_rows(lab)
        rows += _relay_rows(lab)
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
