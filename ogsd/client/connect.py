"""`ogsctl connect`: openconnect to ogsd's choice, through the failover order.

Asks ogsd for a decision under AnyConnect's connect-time rules, then runs openconnect
(`ogsd.client.supervise`) against each server of the failover order until one establishes the
session. Stdlib only, like the rest of ogsctl.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from ogsd.client.conn import (
    DEFAULT_TIMEOUT_S,
    EXIT_ERROR,
    EXIT_USAGE,
    CtlError,
)
from ogsd.client.openconnect import (
    OptionError,
    UserOptions,
    command,
    scan_options,
    script_value,
)
from ogsd.client.plan import Plan, fetch_plan, say

HOOK = Path(__file__).resolve().parents[1] / "hooks" / "vpnc-script-ogsd"
# openconnect reads a line of at most 1024 bytes per prompt; this is dozens of them.
STDIN_MAX = 16384
def find_openconnect(given: str | None) -> str:
    """--openconnect, else openconnect on $PATH or in /usr/sbin (sudo's PATH may lack it)."""
    if given:
        return given
    return shutil.which("openconnect") or shutil.which(
        "openconnect", path="/usr/sbin:/usr/bin:/usr/local/sbin") or "openconnect"


def find_ogsctl() -> str:
    """This ogsctl, for the hook to call: the script run, else the one beside Python."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "ogsctl" and argv0.is_file():
        return str(argv0.resolve())
    beside = Path(sys.executable).with_name("ogsctl")
    if beside.is_file():
        return str(beside)
    return shutil.which("ogsctl") or "ogsctl"


def hook_script() -> str:
    """The --script value naming the hook shipped in this package."""
    return script_value(str(HOOK), os.access(HOOK, os.X_OK))


def connect_protocol(given: str | None, options: UserOptions, portal: str | None) -> str | None:
    """The VPN protocol asked for (--protocol, or openconnect's own --protocol among the
    arguments); OptionError for what contradicts it."""
    if given and options.protocol and given != options.protocol:
        raise OptionError(f"--protocol {given} and openconnect's --protocol "
                          f"{options.protocol} disagree")
    protocol = given or options.protocol
    if portal is not None and protocol != "gp":
        raise OptionError(f"unexpected argument {portal!r}: the server is ogsd's choice "
                          "(a GlobalProtect portal goes with --protocol gp)")
    if protocol == "gp" and options.authgroup is not None:
        raise OptionError("--authgroup cannot be used with --protocol gp: the gateway is "
                          "ogsd's choice (ogsctl connect passes it as --authgroup)")
    return protocol


def command_lines(plan: Plan, openconnect: str, options: UserOptions) -> list[list[str]]:
    script = hook_script()
    return [command(openconnect, script, a, options) for a in plan.attempts]


def dry_run(plan: Plan, openconnect: str, options: UserOptions, *, as_json: bool) -> int:
    """Print the order and the exact command lines; nothing is run."""
    argvs = command_lines(plan, openconnect, options)
    stdin = "replayed" if options.replay_stdin else "inherited"
    if as_json:
        d = plan.decision
        doc = {
            "rules": plan.rules, "note": plan.note, "selected": d.get("selected"),
            "source": d.get("source"), "reason": d.get("reason"),
            "reason_code": d.get("reason_code"), "order": d.get("order"),
            "openconnect": openconnect, "hook": str(HOOK), "stdin": stdin,
            "user_script": options.script, "tcp_precheck": options.direct,
            "attempts": [{"host": a.host, "port": a.port, "primary": a.primary,
                          "user_group": a.user_group, "role": a.role, "portal": a.portal,
                          "authgroup": a.authgroup, "argv": argv}
                         for a, argv in zip(plan.attempts, argvs, strict=True)],
        }
        print(json.dumps(doc, indent=2))
        return 0
    if plan.note:
        say(f"note: {plan.note}")
    rules = "connect-time rules" if plan.rules == "connect" else "current selection"
    lines = [f"{plan.summary} [{rules}]",
             f"Failover order ({len(plan.attempts)} servers; each is tried when the one "
             "before cannot establish the session):"]
    for n, (attempt, argv) in enumerate(zip(plan.attempts, argvs, strict=True), 1):
        group = f", group '{attempt.user_group}'" if attempt.user_group else ""
        if attempt.portal is not None:
            group = f", gateway '{attempt.authgroup}' of portal {attempt.portal}"
        lines += [f"  {n}. {attempt.label}  ({attempt.role}{group})",
                  f"     {shlex.join(argv)}"]
    if options.replay_stdin:
        lines.append("stdin: read once by ogsctl and handed to each attempt through a pipe")
    if options.script:
        lines.append(f"your --script {options.script} runs after ogsd's hook (VPNC_SCRIPT)")
    print("\n".join(lines))
    return 0


def read_secret() -> bytearray:
    """stdin for --passwd-on-stdin: one line from a terminal (not echoed), else all of it."""
    if sys.stdin is None:
        raise CtlError(EXIT_USAGE, "--passwd-on-stdin: no stdin")
    if sys.stdin.isatty():
        line = getpass.getpass("Password: ")
        return bytearray(line.encode() + b"\n")
    data = bytearray(sys.stdin.buffer.read(STDIN_MAX + 1))
    if len(data) > STDIN_MAX:
        data[:] = bytes(len(data))
        raise CtlError(EXIT_USAGE, f"--passwd-on-stdin: more than {STDIN_MAX} bytes on stdin")
    return data


def run(args: argparse.Namespace, socket_path: str) -> int:
    """`ogsctl connect`; the exit status (openconnect's, once it ran)."""
    raw = list(args.openconnect_args or [])
    portal = None
    if raw and raw[0] != "--" and not raw[0].startswith("-"):
        portal = raw.pop(0)  # ogsctl connect --protocol gp PORTAL [-- ARGS]
    if raw[:1] == ["--"]:
        raw = raw[1:]
    try:
        options = scan_options(raw)
        protocol = connect_protocol(args.protocol, options, portal)
    except OptionError as exc:
        say(f"connect: {exc}")
        return EXIT_USAGE
    if args.json and not args.dry_run:
        say("connect: --json goes with --dry-run (a live connect prints openconnect's output)")
        return EXIT_USAGE
    if args.follow and args.once:
        say("connect: --follow reconnects, --once does not: choose one")
        return EXIT_USAGE
    openconnect = find_openconnect(args.openconnect)
    if not args.dry_run and os.geteuid() != 0:
        say("openconnect needs root for its tun device: sudo ogsctl connect ... "
            "(ogsctl connect --dry-run works without)")
        return EXIT_ERROR
    try:
        plan = fetch_plan(socket_path, read_only_ok=args.dry_run, protocol=protocol,
                          portal=portal)
    except CtlError as exc:
        say(exc.message)
        return exc.code
    if args.dry_run:
        return dry_run(plan, openconnect, options, as_json=args.json)
    if shutil.which(openconnect) is None:
        say(f"openconnect not found ({openconnect}): install it (apt install openconnect) "
            "or give --openconnect PATH")
        return EXIT_ERROR
    from ogsd.client.supervise import Settings, Supervisor  # noqa: PLC0415 (only a live connect)

    secret = bytearray()
    try:
        if options.replay_stdin:
            secret = read_secret()
        settings = Settings(openconnect=openconnect, script=hook_script(),
                            socket_path=socket_path, ogsctl=find_ogsctl(), once=args.once,
                            follow=args.follow, timeout=args.timeout or DEFAULT_TIMEOUT_S,
                            protocol=protocol, portal=portal)
        return Supervisor(settings, options, secret).run(plan)
    except CtlError as exc:
        say(exc.message)
        return exc.code
    finally:
        secret[:] = bytes(len(secret))  # best effort: the copies Python made are not ours
