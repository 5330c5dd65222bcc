"""`python -m ogsd.lab up|set|roam|status|down|selftest`: the network lab by hand."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ogsd.lab import demo, selftest
from ogsd.lab import spec as lab_spec
from ogsd.lab.lab import DEFAULT_NAME, Lab, LabError, missing_extra

SELFTEST_NAME = "ogsdlab-st"


def _print_status(status: dict[str, Any]) -> None:
    spec, name, link = status["spec"], status["name"], status["uplink"]
    up = spec["uplink"]
    procs = ", ".join(
        f"{what} pid {p['pid']} {'alive' if p['alive'] else 'DEAD'}"
        for what, p in status["processes"].items()
    )
    relay = status["relay"]
    counters = relay.get("error") or ", ".join(f"{k} {v}" for k, v in relay.items())
    addresses = [f"{spec['client']}/{up['prefix']} via {link['router']}"] if up["ipv4"] else []
    if up["ipv6"]:
        addresses.append(f"{up['address6']}/{up['prefix6']} via {link['router6']}")
    print(
        f"lab {name}: client ns {name}-c ({link['device']}: {', '.join(addresses)}), "
        f"router ns {name}-r, server ns {name}-s"
    )
    print(f"  processes: {procs}")
    print(f"  relay: {counters}")
    print(
        f"  location: search {spec['domain']}, nameserver {', '.join(spec['dns']['servers'])} "
        f"(dns mode {spec['dns']['mode']}) in {status['resolv_conf']}"
    )
    vpns = status["vpns"]
    if vpns:
        vpn = status["vpn"]
        print(
            f"  vpn: user {vpn['user']}, password {vpn['password']}, "
            f"--servercert {vpn['servercert']}, domain {spec['vpn_domain']}"
        )
        if "error" in vpns:
            print(f"  ocserv: {vpns['error']}")
        for host, v in vpns.items() if "error" not in vpns else ():
            print(f"  ocserv {host}: pid {v['pid']} {'alive' if v['alive'] else 'DEAD'}")
    rows = [("host", "address", "rtt_ms", "jitter", "loss", "mode", "stall_ms", "http", "vpn")]
    rows += [
        (
            g["host"],
            g["address"] + (f" {g['address6']}" if g["address6"] else ""),
            f"{g['rtt_ms']:g}",
            f"{g['jitter_ms']:g}",
            f"{g['loss']:g}",
            g["mode"],
            f"{g['stall_ms']:g}",
            "yes" if g["http"] else "no",
            f"{g['tunnel']} {g['vpn_network']}" if g["vpn"] else "no",
        )
        for g in spec["gateways"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one lab command."""
    parser = argparse.ArgumentParser(prog="python -m ogsd.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "up": "bring a lab up from a spec file",
        "set": "apply a spec file to a running lab",
        "roam": "apply a spec file as a Wi-Fi roam (the client's uplink goes down and up)",
    }
    for command, text in helps.items():
        p = sub.add_parser(command, help=text)
        p.add_argument("--spec", required=True, help="spec JSON file (see docs/lab.md)")
        p.add_argument("--name", default=DEFAULT_NAME)
    p = sub.add_parser("status", help="what is running and how it is configured")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("down", help="remove everything of a lab (idempotent)")
    p.add_argument("--name", default=DEFAULT_NAME)
    sub.add_parser("demo", help="ogsd run among four lab gateways, then a move")
    p = sub.add_parser("selftest", help="measure a fresh lab against its spec")
    p.add_argument("--name", default=SELFTEST_NAME)
    args = parser.parse_args(argv)
    needs_extra = ("up", "set", "roam", "demo", "selftest")
    if args.command in needs_extra and (missing := missing_extra()):
        print(f"ogsd.lab: {missing}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("ogsd.lab: needs root (network namespaces, TUN devices); try sudo", file=sys.stderr)
        return 2
    if args.command == "demo":
        return demo.main()
    try:
        Lab.check_name(args.name)
        if args.command == "up":
            lab = Lab.up(lab_spec.load(args.spec), args.name)
            print(
                f"lab {lab.name} is up; run commands in it with: ip netns exec {lab.client_ns} ..."
            )
        elif args.command == "set":
            Lab.attach(args.name).set(lab_spec.load(args.spec))
            print(f"lab {args.name}: spec applied")
        elif args.command == "roam":
            Lab.attach(args.name).roam(lab_spec.load(args.spec))
            print(f"lab {args.name}: roamed")
        elif args.command == "status":
            status = Lab.attach(args.name).status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
        elif args.command == "down":
            Lab.teardown(args.name)
            print(f"lab {args.name} is down")
        else:
            start = time.monotonic()
            rows = selftest.run(args.name)
            print(selftest.format_table(rows))
            failed = [r.check for r in rows if not r.ok]
            print(
                f"selftest: {len(rows) - len(failed)}/{len(rows)} ok in "
                f"{time.monotonic() - start:.1f} s"
                + (f"; FAILED: {', '.join(failed)}" if failed else "")
            )
            return 1 if failed else 0
    except (LabError, lab_spec.SpecError) as exc:
        print(f"ogsd.lab: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
