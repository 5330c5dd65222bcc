"""`ogsctl diag`: one tar.gz a support person can read (what AnyConnect's DART is for).

Standard library only, like the rest of ogsctl. What only the daemon knows (recent
decisions with every probe figure, the cache, its state, the effective configuration,
its recent log lines) comes over the socket (`diag` method, assembled by
`daemon_report` below, in the daemon); the rest (routes, addresses, resolv.conf,
journald) is read here with the caller's rights. Whatever cannot be read goes into
MANIFEST.txt with the reason. Everything is redacted (ogsd.client.redact) before it is written.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ogsd import __version__
from ogsd.core.redact import redact_json, redact_text
from ogsd.wire.diag import DECISIONS, read_tail

Json = dict[str, Any]

# journald lines of the unit: the daemon's own buffer has 2,000 events since start;
# the journal also covers the runs before it (a crash, a restart on resume).
JOURNAL_LINES = 5000
COMMAND_TIMEOUT_S = 10.0
# Files that name the DNS location (ogsd.sensing.location reads the same ones).
DNS_FILES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
VPNC_BACKUPS = "/run/vpnc/resolv.conf-backup.*"
COMMANDS: tuple[tuple[str, Sequence[str]], ...] = (
    ("network/ip-addr.json", ("ip", "-j", "addr")),
    ("network/ip-link.json", ("ip", "-j", "-d", "link")),
    ("network/ip-route.json", ("ip", "-j", "route", "show", "table", "all")),
    ("network/ip-route6.json", ("ip", "-j", "-6", "route", "show", "table", "all")),
    ("network/ip-rule.json", ("ip", "-j", "rule")),
    ("network/resolvectl.txt", ("resolvectl", "status", "--no-pager")),
    ("networkmanager/connections.txt",
     ("nmcli", "-t", "-f", "NAME,UUID,TYPE,DEVICE,STATE,ACTIVE", "connection", "show")),
)


@dataclasses.dataclass
class Bundle:
    """Files for the archive, with what they are and what was left out, and why."""

    root: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    included: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    left_out: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, path: str, data: str | bytes, what: str) -> None:
        self.files[path] = data.encode() if isinstance(data, str) else data
        self.included.append((path, what))

    def skip(self, what: str, why: str) -> None:
        self.left_out.append((what, why))


# --- the caller's side --------------------------------------------------------------


def run(command: Sequence[str]) -> tuple[str | None, str | None]:
    """(stdout, None), or (None, why not): a command that is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None, f"{command[0]} is not installed"
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False,
                              timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {COMMAND_TIMEOUT_S:g} s"
    except OSError as exc:
        return None, exc.strerror or str(exc)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return None, why
    return done.stdout, None


def collect(report: Json | None, daemon_error: str | None, *,
            now: datetime | None = None) -> Bundle:
    """Everything for the bundle; `report` is the daemon's `diag` answer (None: unreachable)."""
    now = now or datetime.now(UTC)
    host = socket.gethostname().split(".")[0] or "host"
    bundle = Bundle(f"ogsd-diag-{host}-{now:%Y%m%dT%H%M%SZ}")
    bundle.add("system/version.txt", _system(now), "versions, platform, who made the bundle")
    if report is None:
        bundle.skip("everything the daemon knows (decisions, cache, state, configuration, "
                    "its log)", f"ogsd did not answer: {daemon_error}")
    else:
        _daemon_files(bundle, report)
    _dns_files(bundle)
    for path, command in COMMANDS:
        out, why = run(command)
        if out is None:
            bundle.skip(f"{path} ({' '.join(command)})", str(why))
        else:
            bundle.add(path, redact_text(out), " ".join(command))
    _journal(bundle, None if report is None else report.get("log"))
    bundle.add("README.txt", readme(report), "how to read this bundle")
    bundle.add("MANIFEST.txt", manifest(bundle), "what is here and what was left out")
    return bundle


def _system(now: datetime) -> str:
    release, _ = read_tail("/etc/os-release", 8192)
    lines = [f"bundle made: {now.isoformat()} by uid {os.getuid()} (euid {os.geteuid()})",
             f"ogsctl: {__version__}", f"python: {sys.version.split()[0]}",
             f"platform: {platform.platform()}", f"kernel: {' '.join(platform.uname())}",
             "", "/etc/os-release:", release or "(unreadable)"]
    return "\n".join(lines) + "\n"


def _daemon_files(bundle: Bundle, report: Json) -> None:
    bundle.add("daemon/diag.json", json.dumps(report, indent=2) + "\n",
               "all the daemon sent (redacted), the source of the files below")
    decisions = report.get("decisions") or []
    if report.get("store_error"):
        bundle.skip("the stored decisions and the cache", "the daemon could not read its "
                    f"database: {report['store_error']}; decisions.txt has the one published")
        published = report.get("published") or {}
        decisions = [published] if published.get("decided_at") else []
    bundle.add("daemon/decisions.txt", decisions_text(decisions),
               f"the last {DECISIONS} decisions, every probe figure and timestamp")
    bundle.add("daemon/status.json", json.dumps(report.get("status"), indent=2) + "\n",
               "ogsctl status --json, with the tunnel and uplink")
    bundle.add("daemon/state.json", json.dumps(report.get("state"), indent=2) + "\n",
               "what survives restarts: connected gateway and tunnel, sleep, uplink")
    bundle.add("daemon/cache.json", json.dumps(report.get("cache"), indent=2) + "\n",
               "the location cache (OGS results per DNS location)")
    bundle.add("daemon/config.json", json.dumps(report.get("config"), indent=2) + "\n",
               "the effective configuration: ogsd.toml, profiles and defaults merged")
    for index, item in enumerate(report.get("config_files") or [], 1):
        name = f"daemon/config-files/{index}-{Path(str(item.get('path'))).name}"
        if item.get("text") is None:
            bundle.skip(f"{item.get('path')}", f"the daemon could not read it: {item.get('error')}")
        else:
            bundle.add(name, str(item["text"]), f"{item.get('path')} as the daemon read it")
    events = report.get("log_events") or []
    bundle.add("logs/daemon-recent.jsonl", "".join(json.dumps(e) + "\n" for e in events),
               f"the daemon's last {len(events)} log events, kept in its memory")
    if report.get("networkmanager") is not None:
        bundle.add("networkmanager/ogsd.json",
                   json.dumps(report["networkmanager"], indent=2) + "\n",
                   "the NetworkManager connections ogsd reads and points")


def _dns_files(bundle: Bundle) -> None:
    for path in (*DNS_FILES, *sorted(glob.glob(VPNC_BACKUPS))):
        text, why = read_tail(path)
        name = "network/" + path.strip("/").replace("/", "_")
        if text is None:
            bundle.skip(path, str(why))
        else:
            bundle.add(name, redact_text(text), path)


def _journal(bundle: Bundle, destination: Json | None) -> None:
    """journald's lines of the unit, when the daemon runs under systemd (or is down)."""
    if destination is not None and not destination.get("journal"):
        where = destination.get("file")
        if where:
            text, why = read_tail(str(where))
            if text is None:
                bundle.skip(f"the daemon's log file {where}", str(why))
            else:
                bundle.add("logs/daemon.log", redact_text(text),
                           f"the daemon's stderr, a file ({where}), its last MiB")
        else:
            bundle.skip("journald and log files", "the daemon logs to neither (a terminal "
                        "or a pipe); logs/daemon-recent.jsonl has its latest events")
        return
    unit = (destination or {}).get("unit") or "ogsd.service"
    command = ("journalctl", "-u", unit, "-o", "json", "-n", str(JOURNAL_LINES), "--no-pager")
    out, why = run(command)
    if out is None:
        bundle.skip(f"journald lines of {unit}", str(why))
    elif not out.strip():
        bundle.skip(f"journald lines of {unit}", "none readable: the journal is readable by "
                    "root and the groups adm and systemd-journal only")
    else:
        lines = (json.dumps(redact_json(json.loads(line))) for line in out.splitlines()
                 if line.startswith("{"))
        bundle.add("logs/journal.jsonl", "".join(line + "\n" for line in lines),
                   " ".join(command))


# --- text files ----------------------------------------------------------------------


def _epoch(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    at = datetime.fromtimestamp(value, UTC).isoformat(timespec="microseconds")
    return f"{at} ({value:.6f})"


def _ms(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.3f} ms"


def decisions_text(decisions: Iterable[Json]) -> str:
    """Each decision, newest first, with every probe's start time and figures."""
    out = []
    for d in decisions:
        location = d.get("location") or {}
        out += [f"== {d.get('decided_at')}  source={d.get('source')}  "
                f"reason={d.get('reason_code')}  selected={d.get('selected')}",
                f"   location: {location.get('domain') or '(no domain)'} via "
                f"{', '.join(location.get('servers') or []) or '-'}",
                f"   why: {d.get('reason')}",
                f"   failover order: {' > '.join(d.get('order') or []) or '-'}"]
        for r in d.get("results") or []:
            out.append(f"   {r.get('host')} at {r.get('address') or '?'}: figure "
                       f"{_ms(r.get('rtt_ms'))} ({d.get('metric')})"
                       + (f"; {r['error']}" if r.get("error") else ""))
            columns = itertools.zip_longest(
                r.get("started_at") or [], r.get("network_rtt_ms") or [],
                r.get("tcp_info_rtt_ms") or [], r.get("exchange_ms") or [],
                r.get("probe_errors") or [])
            for i, (started, net, info, exchange, error) in enumerate(columns, 1):
                out.append(f"     probe {i}: SYN at {_epoch(started)}  network {_ms(net)}  "
                           f"tcp_info {_ms(info)}  exchange {_ms(exchange)}"
                           + (f"  error: {error}" if error else ""))
            proxy = r.get("proxy_check")
            if isinstance(proxy, dict):
                out.append(f"     proxy check (port 80): status {proxy.get('status')}, "
                           f"{_ms(proxy.get('elapsed_ms'))}"
                           + (f", {proxy['error']}" if proxy.get("error") else ""))
        out.append("")
    return "\n".join(out) + "\n" if out else "No decision stored.\n"


def capture_filter(report: Json | None) -> tuple[str, str]:
    """(device, tcpdump filter) for the probes of the latest decision's gateways: their
    addresses (else their names), on 443, 80 and any other configured port."""
    decisions = (report or {}).get("decisions") or []
    results = [r for d in decisions[:1] for r in d.get("results") or []]
    hosts = sorted({str(r["address"]) for r in results if r.get("address")}) or sorted(
        {str(r["host"]) for r in results if r.get("host")})
    gateways = ((report or {}).get("config") or {}).get("gateways") or []
    ports = sorted({443, 80, *(int(g["port"]) for g in gateways
                               if isinstance(g, dict) and isinstance(g.get("port"), int))})
    uplink = ((report or {}).get("status") or {}).get("uplink") or {}
    host_part = " or ".join(f"host {h}" for h in hosts) or "host GATEWAY-ADDRESS"
    port_part = " or ".join(f"port {p}" for p in ports)
    return str(uplink.get("device") or "any"), f"tcp and ({port_part}) and ({host_part})"


def readme(report: Json | None) -> str:
    device, bpf = capture_filter(report)
    return README.format(device=device, bpf=bpf, decisions=DECISIONS)


README = """\
ogsd diagnostics bundle
=======================

Made by `ogsctl diag`. MANIFEST.txt lists every file and everything that could not be
collected (and why). Values that look secret (passwords, cookies, tokens, keys, the
password in user:password@ URLs) were replaced by <redacted> before anything was written.

Where to start
  daemon/decisions.txt   the last {decisions} decisions: why each was made, each gateway's
                         figure and every probe: the time its SYN was sent (UTC and epoch
                         seconds), network RTT (TCP handshake), the kernel's tcp_info RTT,
                         exchange time (SYN to our FIN/ACK: AnyConnect's figure), errors
  daemon/status.json     the selection now, the VPN connection and tunnel device, the
                         physical uplink, where the location (DNS) was read from
  daemon/config.json     the effective configuration (ogsd.toml + profiles + defaults)
  logs/                  the daemon's log: its recent events (always), and journald or
                         its log file when it has one (the MANIFEST says which)
  network/               addresses, links (tunnels show as type tun), routes, rules,
                         resolv.conf and what vpnc-script saved of it

Checking a decision against a packet capture (the seed's step 4)
  ogsd logs every probe's start time, so a capture is only needed to confirm the figures.
  1. Capture the probes on the physical uplink while forcing a round:
       sudo tcpdump -ni {device} -w ogsd-probes.pcap '{bpf}'
       ogsctl evaluate --wait          (in another terminal; then stop tcpdump)
     The addresses are those of the latest decision; a gateway without a cache entry
     first gets one plain HTTP request on port 80 (the proxy check), then 3 probes, each
     on its own TCP connection to 443, all started within a millisecond.
  2. List each probe's SYN with its time and source port:
       tshark -r ogsd-probes.pcap -Y 'tcp.flags.syn==1 && tcp.flags.ack==0' \\
              -T fields -e frame.time_epoch -e ip.dst -e tcp.srcport
     Each SYN's time matches a "SYN at" time in daemon/decisions.txt (within the
     clock's resolution).
  3. For each connection (tcp.stream), network RTT = SYN to SYN/ACK, and exchange time =
     SYN to the FIN/ACK we send (tshark: -Y 'tcp.stream==N' -T fields -e
     frame.time_relative -e tcp.flags.str). These are the network and exchange columns.
     A gateway whose TLS handshake stalls shows a short network RTT and a long exchange:
     ogsd ranks by network RTT unless [ogs] metric = "exchange".
  4. A probe marked "cut short" was stopped once it could no longer win (you see our
     RST or FIN before the server's answer): its network RTT is still real.
"""


def manifest(bundle: Bundle) -> str:
    lines = [f"{bundle.root}", "", "Included:"]
    lines += [f"  {path:<40} {what}" for path, what in bundle.included]
    lines += ["  MANIFEST.txt", "", "Left out:"]
    lines += [f"  {what}: {why}" for what, why in bundle.left_out] or ["  nothing"]
    return "\n".join(lines) + "\n"


def write(bundle: Bundle, output: str) -> str:
    """Write the tar.gz (mode 0600: it describes this machine's network); its path."""
    def members(tar: tarfile.TarFile) -> None:
        for path, data in bundle.files.items():
            info = tarfile.TarInfo(f"{bundle.root}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))

    if output == "-":
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w:gz") as tar:
            members(tar)
        return "standard output"
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        members(tar)
    return output


def main(output: str | None, ask: Callable[[], Json]) -> int:
    """`ogsctl diag [-o FILE]`: `ask` gets the daemon's report or raises with the reason."""
    report, error = None, None
    try:
        report = ask()
    except Exception as exc:  # the bundle is most wanted when the daemon is in trouble
        error = getattr(exc, "message", None) or str(exc)
    bundle = collect(report, error)
    try:
        where = write(bundle, output or f"{bundle.root}.tar.gz")
    except OSError as exc:
        print(f"ogsctl: cannot write {output or bundle.root + '.tar.gz'}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {where}: {len(bundle.files)} files, {len(bundle.left_out)} items left "
          "out (see MANIFEST.txt)", file=sys.stderr)
    return 0
