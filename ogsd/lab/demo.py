"""`python -m ogsd.lab demo`: ogsd choosing among four gateways at real distances.

For a newcomer without VPN gateways of their own: brings a lab up (gateways at 20, 45,
80 and 150 ms; the nearest one stalls its TLS handshake like the seed's ASA), runs
`ogsd run` in the lab's client namespace, prints what `ogsctl` says, moves the machine
to another location (new DNS domain and server) and shows the daemon re-probing by
itself (Tokyo is now the nearest), then cleans everything up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from ogsd.lab.lab import Lab
from ogsd.lab.spec import DnsSpec, GatewaySpec, LabSpec, validate

DEMO_NAME = "ogsddemo"
# Long enough for a round at 150 ms plus start-up, short enough not to bore anyone.
WAIT_S = 20.0

GATEWAYS = (
    # The nearest gateway stalls its TLS handshake 150 ms (the seed's delayed-ACK case):
    # AnyConnect's exchange time ranks it behind Frankfurt; ogsd's network RTT does not.
    GatewaySpec(host="vpn-london.lab.example", address="198.19.1.1", rtt_ms=20, stall_ms=150),
    GatewaySpec(host="vpn-frankfurt.lab.example", address="198.19.2.1", rtt_ms=45),
    GatewaySpec(host="vpn-virginia.lab.example", address="198.19.3.1", rtt_ms=80),
    GatewaySpec(host="vpn-tokyo.lab.example", address="198.19.4.1", rtt_ms=150),
)


def _config(directory: Path) -> Path:
    lines = ['[ogs]\nround_deadline_s = 7\n', '[daemon]\ndebounce_s = 0.5\n']
    lines += [f'[[gateway]]\nhost = "{g.host}"\n' for g in GATEWAYS]
    path = directory / "ogsd.toml"
    path.write_text("\n".join(lines))
    return path


def _ctl(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ogsd.client.ctl", "--socket", str(socket), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def _wait_for(socket: Path, domain: str) -> dict[str, object] | None:
    """Poll `ogsctl status` until a decision for `domain` is there (a demo, not a test)."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        proc = _ctl(socket, "status", "--json")
        if proc.returncode == 0:
            status = json.loads(proc.stdout)
            location = status.get("location") or {}
            if status.get("selected") and location.get("domain") == domain:
                return dict(status)
        time.sleep(0.25)
    return None


def _show(socket: Path, title: str) -> None:
    print(f"\n=== {title} ===\n$ ogsctl status")
    print(_ctl(socket, "status").stdout, end="")
    print("$ ogsctl results")
    print(_ctl(socket, "results").stdout, end="", flush=True)


def main() -> int:
    spec = validate(LabSpec(domain="corp.lab.example", gateways=GATEWAYS))
    with Lab.up(spec, DEMO_NAME) as lab:
        work = lab.state_dir / "demo"
        work.mkdir(exist_ok=True)
        socket = work / "ogsd.sock"
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "ogsd", "run",
             "--config", str(_config(work)), "--state-dir", str(work / "state"),
             "--socket", str(socket)],
            stdin=subprocess.DEVNULL)
        try:
            if _wait_for(socket, spec.domain) is None:
                print("ogsd made no decision in time; see its log above", file=sys.stderr)
                return 1
            _show(socket, f"at {spec.domain}: first decision (probes)")
            # A hotel in Asia: new DNS domain and server, and Tokyo is now the nearest.
            far = {"vpn-london": 160.0, "vpn-frankfurt": 170.0, "vpn-virginia": 140.0,
                   "vpn-tokyo": 15.0}
            moved = validate(LabSpec(
                domain="hotel.lab.example", dns=DnsSpec(servers=("198.18.7.53",)),
                gateways=tuple(replace(g, rtt_ms=far[g.host.split(".")[0]], stall_ms=0)
                               for g in GATEWAYS)))
            print("\n... moving to a hotel network in Asia (new DNS domain and server) ...",
                  flush=True)
            lab.set(moved)
            if _wait_for(socket, moved.domain) is None:
                print("ogsd did not notice the move in time", file=sys.stderr)
                return 1
            _show(socket, f"at {moved.domain}: re-evaluated by itself")
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
