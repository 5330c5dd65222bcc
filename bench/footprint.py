"""Footprint of an idle daemon: memory, CPU, wake-ups, and start-up to READY=1.

`ogsd run` in the lab's client namespace (4 gateways at 20-150 ms) with a NOTIFY_SOCKET
of ours and WATCHDOG_USEC=30 s (the shipped unit's WatchdogSec, so it pings every 15 s),
on a private system bus with a stand-in logind (`bench.logind`: as on a laptop; without
logind the sleep watcher falls back to polling clock gaps every 2 s, shown apart).

- start to READY=1: from the spawn (`ip netns exec` included) to the datagram.
- idle RSS: VmRSS 5 s after the start-up decision, after a first start (a new location:
  a probe round) and after a restart at a cached location (no round).
- idle CPU and wake-ups over the idle window (5 minutes): utime+stime from
  /proc/PID/stat, and each thread's voluntary context switches from
  /proc/PID/task/*/status (a thread that sleeps and wakes switches once per wake-up).
  Targets: CPU ~0 (<= 0.1 % of a core), and no thread wakes more often than the
  watchdog pings (at most one wake-up per ping interval).

    sudo .venv/bin/python -m bench.footprint                 # 5 min idle window, ~6 min
    sudo .venv/bin/python -m bench.footprint --idle-s 60     # a shorter window
    sudo .venv/bin/python -m bench.footprint --quick         # 2 s window, 1 start
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Row, lab_name, parser, run
from bench.labdaemon import LabDaemon, gateway_config
from bench.logind import private_logind
from ogsd.lab import Lab, LabSpec

IDLE_S = 300.0
QUICK_IDLE_S = 2.0
STARTS = 10
QUICK_STARTS = 1
SETTLE_S = 5.0  # after the start-up decision: its writes and any late task are done
QUICK_SETTLE_S = 0.5
WATCHDOG_S = 30.0  # systemd/ogsd.service WatchdogSec
READY_TARGET_S = 1.0
RSS_TARGET_MB = 60.0
CPU_TARGET = 0.001  # of one core: "about zero"
CLOCK_MODE_S = 30.0  # the no-logind fallback is sampled this long
TICKS = os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, VmHWM in MB, and Threads."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def switches(pid: int) -> dict[str, int]:
    """Voluntary context switches per thread ("tid name")."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue  # a thread that just ended
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        out[f"{tid} {fields['Name'].strip()}"] = int(fields["voluntary_ctxt_switches"])
    return out


def watch_idle(daemon: LabDaemon, window: float) -> dict[str, Any]:
    """CPU, wake-ups per thread and watchdog pings over `window` seconds of idling."""
    assert daemon.notify is not None
    cpu0, sw0, t0 = cpu_s(daemon.pid), switches(daemon.pid), time.monotonic()
    pings = 0
    end = t0 + window
    while (left := end - time.monotonic()) > 0:
        daemon.notify.settimeout(left)
        try:
            pings += "WATCHDOG=1" in daemon.notify.recv(65536).decode().splitlines()
        except TimeoutError:
            break
    elapsed = time.monotonic() - t0
    sw1 = switches(daemon.pid)
    per_thread = {t: sw1[t] - sw0.get(t, 0) for t in sw1}
    return {"cpu_s": cpu_s(daemon.pid) - cpu0, "elapsed_s": elapsed, "pings": pings,
            "wakeups": per_thread}


def settle(daemon: LabDaemon, pause: float = SETTLE_S) -> dict[str, float]:
    daemon.wait_decided()
    time.sleep(pause)  # let the start-up decision's writes and tasks finish
    return memory(daemon.pid)


def measure(idle_s: float, starts: int, quick: bool) -> list[Row]:
    rows: list[Row] = []
    spec = LabSpec.simple([20, 45, 80, 150])
    config = gateway_config([g.host for g in spec.gateways])
    with Lab.up(spec, lab_name()) as lab, private_logind() as bus:
        env = {"DBUS_SYSTEM_BUS_ADDRESS": bus}
        with LabDaemon(lab, config, env=env) as daemon:
            readies = []
            for _ in range(starts):
                readies.append(daemon.start())
                daemon.wait_decided()
                daemon.stop()
        print(f"start to READY=1: {' '.join(f'{r * 1000:.0f}' for r in readies)} ms")
        median = statistics.median(readies)
        rows.append(Row.of("footprint.ready", "start to READY=1 (spawn to datagram)", "ms",
                           [r * 1000 for r in readies], target=f"<= {READY_TARGET_S * 1000:g} ms",
                           met=median <= READY_TARGET_S,
                           note="" if median <= READY_TARGET_S else
                           f"{(median - READY_TARGET_S) * 1000:.0f} ms over"))
        with LabDaemon(lab, config, env=env, watchdog_s=WATCHDOG_S) as daemon:
            daemon.start()
            fresh = settle(daemon, QUICK_SETTLE_S if quick else SETTLE_S)
            print(f"idle after its start-up round: {_mb(fresh)}")
            idle = watch_idle(daemon, idle_s)
            daemon.stop()
            daemon.start()
            cached = settle(daemon, QUICK_SETTLE_S if quick else SETTLE_S)
            print(f"idle after a restart at a cached location: {_mb(cached)}")
        rss = fresh["VmRSS"]
        rows.append(Row.of("footprint.rss", "idle RSS after the start-up round (new location)",
                           "MB", [rss], target=f"<= {RSS_TARGET_MB:g} MB",
                           met=rss <= RSS_TARGET_MB, note=_mb(fresh)
                           + ("" if rss <= RSS_TARGET_MB else
                              f"; {rss - RSS_TARGET_MB:.1f} MB over")))
        rows.append(Row.of("footprint.rss_cached", "idle RSS after a restart at a cached "
                           "location (no round)", "MB", [cached["VmRSS"]], note=_mb(cached)))
        rows += idle_rows(idle, "with logind")
        if not quick:
            with LabDaemon(lab, config, watchdog_s=WATCHDOG_S) as daemon:  # no bus
                daemon.start()
                settle(daemon)
                clock = watch_idle(daemon, CLOCK_MODE_S)
            wakes = sum(clock["wakeups"].values()) / clock["elapsed_s"] * 60
            print(f"without logind (clock-gap polling): {wakes:.1f} wake-ups/min "
                  f"{clock['wakeups']}")
            rows.append(Row.of(
                "footprint.wakeups_no_logind", "wake-ups without logind (no system bus), "
                "all threads", "/min", [wakes],
                note="the sleep watcher's fallback polls CLOCK_BOOTTIME - CLOCK_MONOTONIC "
                     "every 2 s (ogsd.sensing.sleepwatch.POLL_INTERVAL): by design, only where "
                     "logind is missing"))
    return rows


def idle_rows(idle: dict[str, Any], label: str) -> list[Row]:
    elapsed, pings = idle["elapsed_s"], idle["pings"]
    share = idle["cpu_s"] / elapsed
    total = sum(idle["wakeups"].values())
    busiest = max(idle["wakeups"].items(), key=lambda kv: kv[1])
    allowed = elapsed / (WATCHDOG_S / 2) + 1  # one per ping interval, and the one under way
    print(f"idle {elapsed:.0f} s {label}: cpu {idle['cpu_s']:.2f} s, {pings} watchdog pings, "
          f"wake-ups {idle['wakeups']}")
    return [
        Row.of("footprint.cpu", f"idle CPU over {elapsed / 60:.3g} min ({label})", "% of a core",
               [share * 100], target=f"<= {CPU_TARGET * 100:g} %", met=share <= CPU_TARGET,
               note=f"{idle['cpu_s']:.2f} s of CPU in {elapsed:.0f} s"),
        Row.of("footprint.wakeups", f"idle wake-ups over {elapsed / 60:.3g} min, busiest "
               f"thread ({label})", "wake-ups", [busiest[1]],
               target=f"<= 1 per watchdog ping interval ({WATCHDOG_S / 2:g} s): "
                      f"{allowed:.0f}",
               met=busiest[1] <= allowed,
               note=f"{pings} watchdog pings; all threads {total}: "
                    + ", ".join(f"{t} {n}" for t, n in idle["wakeups"].items())),
    ]


def _mb(m: dict[str, float]) -> str:
    return (f"VmRSS {m['VmRSS']:.1f} MB (anon {m['RssAnon']:.1f}, file {m['RssFile']:.1f}), "
            f"peak {m['VmHWM']:.1f} MB, {m['Threads']:.0f} threads")


def main(argv: list[str] | None = None) -> int:
    p = parser("footprint", __doc__)
    p.add_argument("--idle-s", type=float, default=IDLE_S, help="idle window (300)")
    args = p.parse_args(argv)
    os.environ.pop("NOTIFY_SOCKET", None)  # ours goes to the daemon, not systemd's
    return run("footprint", "idle daemon: RSS, CPU, wake-ups, start-up", args.json,
               lambda: measure(QUICK_IDLE_S if args.quick else args.idle_s,
                               QUICK_STARTS if args.quick else STARTS, args.quick))


if __name__ == "__main__":
    sys.exit(main())
