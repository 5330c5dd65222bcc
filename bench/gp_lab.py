"""GlobalProtect selection in the lab: a portal listing gateways at 20/60/120 ms over two
priority tiers and a manual-only one at 40 ms; `ogsd evaluate` on its saved configuration,
N times each in three situations. Prints the choice, the round's time and the figures.

    sudo python -m bench.gp_lab [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ogsd.lab import GatewayMode, GatewaySpec, Lab, LabSpec
from ogsd.lab.spec import PortalEntry, validate

PORTAL = "portal.lab.example"
GATEWAYS = {  # label -> (host, address, rtt_ms, priority-rule), in the portal's order
    "Nagoya": ("gw-3.lab.example", "198.19.3.1", 120.0, (("Any", 1),)),
    "Sapporo": ("gw-4.lab.example", "198.19.4.1", 40.0, (("Any", 0),)),
    "Tokyo": ("gw-1.lab.example", "198.19.1.1", 20.0, (("Any", 2),)),
    "Osaka": ("gw-2.lab.example", "198.19.2.1", 60.0, (("Any", 1),)),
}
OGSD = str(Path(sys.executable).with_name("ogsd"))


def spec(refused: tuple[str, ...] = ()) -> LabSpec:
    entries = tuple(PortalEntry(h, label, rule) for label, (h, _, _, rule) in GATEWAYS.items())
    portal = GatewaySpec(PORTAL, "198.19.9.1", rtt_ms=10, gp=True, portal=entries)
    gateways = tuple(GatewaySpec(h, a, rtt_ms=rtt, gp=True,
                                 mode=GatewayMode.REFUSE if h in refused else GatewayMode.NORMAL)
                     for h, a, rtt, _ in sorted(GATEWAYS.values()))
    return validate(LabSpec(gateways=(portal, *gateways)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    work = Path(tempfile.mkdtemp(prefix="ogsd-gpbench-"))
    work.chmod(0o755)
    lab = Lab.up(spec(), "gpbench")
    try:
        saved = work / "portal.xml"
        saved.write_text(lab.gp_portal_config(PORTAL))
        config = work / "ogsd.toml"
        config.write_text(f'[ogs]\nmetric = "network"\n[globalprotect]\nportal = "{PORTAL}"\n'
                          f'portal_config = "{saved}"\n')
        for case, (title, refused) in enumerate((("all up", ()),
                               ("tier 1 down (refused)", ("gw-2.lab.example", "gw-3.lab.example")),
                               ("all but manual-only down", ("gw-1.lab.example", "gw-2.lab.example",
                                                             "gw-3.lab.example")))):
            lab.set(spec(refused))
            picks: list[str] = []
            times: list[float] = []
            figures: dict[str, list[float | None]] = {}
            cut: dict[str, int] = {}
            for n in range(runs):
                state = work / f"state-{case}-{n}"  # no last gateway: a fresh install
                began = time.monotonic()
                done = lab.exec([OGSD, "-q", "evaluate", "--config", str(config),
                                 "--state-dir", str(state), "--no-cache", "--json"])
                times.append(time.monotonic() - began)
                d = json.loads(done.stdout)
                picks.append(str(d["selected"]))
                for r in d["results"]:
                    figures.setdefault(r["host"], []).append(r["rtt_ms"])
                    if r["rtt_ms"] is None and str(r.get("error") or "").startswith("cancelled"):
                        cut[r["host"]] = cut.get(r["host"], 0) + 1
            chosen = {p: picks.count(p) for p in set(picks)}
            print(f"## {title}: chosen {chosen}; `ogsd evaluate` wall median "
                  f"{statistics.median(times) * 1000:.0f} ms")
            for host, values in sorted(figures.items()):
                got = [v for v in values if v is not None]
                median = f"median {statistics.median(got):.1f} ms" if got else "no figure"
                print(f"  {host:22} {median} ({len(got)}/{len(values)} with a figure, "
                      f"{cut.get(host, 0)} cut short: could not win)")
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
