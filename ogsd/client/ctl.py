"""ogsctl: ask ogsd which gateway to use, and tell it what happened (Unix-socket client).

Imports only the standard library, `ogsd.core.report` and `ogsd.config.paths` (the layout
`ogsd run` uses; both stdlib-only), so
`openconnect $(ogsctl best)` costs no more than starting Python.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ogsd.client.conn import (
    DEFAULT_TIMEOUT_S,
    EXIT_ERROR,
    EXIT_OK,
    WAIT_TIMEOUT_S,
    Connection,
    CtlError,
)
from ogsd.config.paths import client_socket
from ogsd.core.report import path_note, row_note, selection_table, with_tier

# --- human output -------------------------------------------------------------


def _text(value: object, missing: str = "-") -> str:
    return missing if value is None or value == "" else str(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_status(result: dict[str, Any]) -> list[str]:
    """A few aligned lines."""
    location = result.get("location")
    where = "-"
    if isinstance(location, dict):
        servers = ", ".join(str(s) for s in location.get("servers") or [])
        where = f"{_text(location.get('domain'), '(no domain)')} via {servers or '-'}"
    reason = _text(result.get("reason_code"))
    if result.get("reason"):
        reason += f": {result['reason']}"
    rows = [
        ("selected", _text(result.get("selected"), "none")),
        ("reason", reason),
        ("source", _text(result.get("source"))),
        ("location", where),
        ("decided at", _text(result.get("decided_at"), "never")),
        ("connected", _connected(result)),
        ("recommendation", _text(result.get("recommendation"), "none")),
    ]
    uplink = result.get("uplink")
    if isinstance(uplink, dict):
        via = f" via {uplink['gateway']}" if uplink.get("gateway") else ""
        rows.insert(4, ("uplink", f"{_text(uplink.get('device'))}{via} "
                                  f"({_text(uplink.get('found_by'))})"))
    if result.get("location_source"):
        rows.insert(4, ("location from", str(result["location_source"])))
    if result.get("waiting"):
        rows.insert(0, ("waiting", str(result["waiting"])))
    pending = result.get("resume_pending")
    if isinstance(pending, dict):
        rows.append(("resume", f"waiting for the network ({_text(pending.get('tests'))} tests, "
                               f"gives up in {_text(pending.get('give_up_in_s'))} s): "
                               f"{_text(pending.get('last_test'))}"))
    width = max(len(label) for label, _ in rows) + 3  # colon and two spaces
    return [f"{label + ':':<{width}}{value}" for label, value in rows]


def _connected(result: dict[str, Any]) -> str:
    host = _text(result.get("connected"), "no")
    device = result.get("connected_device")
    return f"{host} on {device}" if device and result.get("connected") else host


def format_results(result: dict[str, Any]) -> list[str]:
    """The AnyConnect-style table, with errors in the RTT column."""
    rows = []
    order = [str(h) for h in result.get("order") or []]
    listed = [r for r in result.get("results") or [] if isinstance(r, dict)]
    # Fastest first, as `ogsd evaluate` prints it; rows without a figure follow in the
    # failover order (which ranks the cut-short ones), unknown ones last.
    def rank(row: dict[str, Any]) -> tuple[bool, float, int]:
        rtt = _number(row.get("rtt_ms"))
        where = order.index(row["host"]) if row.get("host") in order else len(order)
        return (rtt is None, rtt or 0.0, where)

    listed.sort(key=rank)
    for row in listed:
        error, rtt = row.get("error"), _number(row.get("rtt_ms"))
        family, proxy = (_text(row.get(k), "") or None for k in ("family", "proxy"))
        note = (row_note(None if error is None else str(error)) if rtt is None
                else path_note(family, proxy))
        tier = _text(row.get("tier"), "") or None
        rows.append((_text(row.get("host"), "?"), rtt, with_tier(note, tier)))
    selected = result.get("selected")
    lines = []
    if result.get("source") == "cache":
        lines.append("Results obtained from OGS cache. No ping tests were performed.")
    lines += selection_table(rows, None if selected is None else str(selected))
    if result.get("reason"):
        lines.append(f"Reason: {result['reason']}")
    return lines


def format_cache(result: dict[str, Any]) -> list[str]:
    """One line per cached location."""
    entries = [e for e in result.get("entries") or [] if isinstance(e, dict)]
    if not entries:
        return ["OGS cache is empty."]
    lines = []
    for entry in entries:
        location = entry.get("location")
        if not isinstance(location, dict):
            location = {}
        servers = ",".join(str(s) for s in location.get("servers") or [])
        order = " > ".join(str(h) for h in entry.get("order") or [])
        lines.append(f"{_text(location.get('domain'), '(no domain)')} [{servers}]  "
                     f"expires {_text(entry.get('expires_at'))}  order: {order or '-'}")
    return lines


def format_nm_apply(result: dict[str, Any]) -> list[str]:
    """One line per NetworkManager connection: where it points now, and whether we moved it."""
    rows = [c for c in result.get("connections") or [] if isinstance(c, dict)]
    if not rows:
        return ["No NetworkManager connection to point: name one, or list them in "
                "[networkmanager] connections."]
    lines = []
    for c in rows:
        where = _text(c.get("gateway"))
        if c.get("lasthost"):
            where += f" ({c['lasthost']})"
        what = "pointed at" if c.get("changed") else "points at"
        note = f": {c['note']}" if c.get("note") else ""
        lines.append(f"{_text(c.get('name'))}: {what} {where}{note}")
    return lines


def format_event(data: dict[str, Any]) -> str:
    """One watch line: when, what, why."""
    return (f"{_text(data.get('decided_at'))}  {_text(data.get('selected'), 'none')}  "
            f"{_text(data.get('source'))}/{_text(data.get('reason_code'))}: "
            f"{_text(data.get('reason'), '')}")


# --- commands -----------------------------------------------------------------


def _request_for(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    command = args.command
    if command in ("best", "order"):
        return "selection", {}
    if command == "evaluate":
        evaluate: dict[str, Any] = {"wait": args.wait, "connect": args.connect}
        if args.full:
            evaluate["full"] = True
        return "evaluate", evaluate
    if command == "cache":
        return f"cache.{args.action}", {}
    if command == "nm-apply":
        return "nm.apply", {"name": args.name} if args.name else {}
    if command == "notify":
        params: dict[str, Any] = {}
        if args.event == "connected":
            params.update({"host": args.host} if args.host else {"nm_uuid": args.nm_uuid})
        if getattr(args, "device", None):
            params["device"] = args.device
        return f"notify.{args.event}", params
    return command, {}


def _render(args: argparse.Namespace, result: dict[str, Any]) -> tuple[list[str], int]:
    """Lines for stdout and the exit code."""
    if args.json:
        code = EXIT_ERROR if args.command == "best" and not result.get("selected") else EXIT_OK
        return [json.dumps(result, indent=2)], code
    command = args.command
    if command in ("best", "order"):
        hosts = [str(h) for h in result.get("order") or []]
        selected = result.get("selected")
        if not selected or not hosts:
            raise CtlError(EXIT_ERROR, "no gateway selected: "
                           + _text(result.get("reason"), "no decision yet"))
        return ([str(selected)] if command == "best" else hosts), EXIT_OK
    if command == "status":
        return format_status(result), EXIT_OK
    if command == "results" or (command == "evaluate" and args.wait):
        return format_results(result), EXIT_OK
    if command == "cache" and args.action == "list":
        return format_cache(result), EXIT_OK
    if command == "nm-apply":
        return format_nm_apply(result), EXIT_OK
    if command == "cache":
        cleared = result.get("cleared")
        return [f"Cleared the OGS cache ({_text(cleared, '?')} entries); "
                "the next connection re-runs OGS."], EXIT_OK
    return [_text(result.get("message"), "ok")], EXIT_OK


def _watch(args: argparse.Namespace, conn: Connection) -> int:
    conn.request("watch")
    try:
        for message in conn.events():
            data = message.get("data")
            if message.get("event") != "decision" or not isinstance(data, dict):
                continue  # newer daemons may send other events
            print(json.dumps(data) if args.json else format_event(data), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return EXIT_OK


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    # The options also work after the command (`ogsctl status --json`). There, SUPPRESS
    # keeps an option that was not repeated from overwriting the one given before the
    # command. Each parser gets its own actions: argparse shares them between parents.
    unset = argparse.SUPPRESS
    parser.add_argument("--socket", metavar="PATH", default=unset if after_command else None,
                        help="ogsd's socket (default: $OGSD_SOCKET, /run/ogsd/ogsd.sock, "
                             "else the user-mode socket `ogsd run` makes: "
                             "$XDG_RUNTIME_DIR/ogsd/ogsd.sock and so on)")
    parser.add_argument("--json", action="store_true",
                        default=unset if after_command else False,
                        help="print the daemon's raw JSON result")
    parser.add_argument("--timeout", metavar="S", type=_timeout,
                        default=unset if after_command else None,
                        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT_S:g}, "
                             f"{WAIT_TIMEOUT_S:g} for evaluate --wait)")


def build_parser() -> argparse.ArgumentParser:
    """`ogsctl [--socket PATH] [--json] [--timeout S] COMMAND ...`"""
    parser = argparse.ArgumentParser(
        prog="ogsctl", description="Query and steer ogsd, the VPN gateway selector.")
    _add_common(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=text, description=text)
        _add_common(command, after_command=True)
        return command

    add("status", "the current selection, location and connection")
    add("best", "the optimal gateway's host name only (openconnect $(ogsctl best))")
    add("order", "the failover order, one host per line")
    add("results", "the last round's table (AnyConnect style)")
    evaluate = add("evaluate", "run a probe round now")
    evaluate.add_argument("--wait", action="store_true",
                          help="wait for the round and print its table")
    evaluate.add_argument("--full", action="store_true",
                          help="measure every gateway to the end (no early stop once the "
                               "winner is certain): every figure exact")
    evaluate.add_argument("--connect", action="store_true",
                          help="about to connect: AnyConnect's rules (cache; no new round "
                               "within the suspend time of the last disconnection)")
    cache = add("cache", "the per-location OGS cache")
    cache.add_argument("action", choices=("list", "clear"))
    notify = add("notify", "tell ogsd about the VPN connection or the machine")
    notify_sub = notify.add_subparsers(dest="event", required=True, metavar="EVENT")
    connected = notify_sub.add_parser("connected", help="a VPN connection is up")
    connected.add_argument("host", nargs="?",
                           help="the gateway's host name or the address reached")
    connected.add_argument("--nm-uuid", metavar="UUID",
                           help="instead of HOST: the NetworkManager connection that came up "
                                "(ogsd asks NetworkManager which server it went to)")
    disconnected = notify_sub.add_parser("disconnected", help="the VPN connection went down")
    for event_parser in (connected, disconnected):
        event_parser.add_argument("--device", metavar="DEV",
                                  help="the tunnel device (openconnect's $TUNDEV)")
    for event, text in (("sleep", "the machine is going to sleep"),
                        ("resume", "the machine woke up")):
        notify_sub.add_parser(event, help=text)
    add("reload", "re-read the configuration and profiles")
    connect = add("connect", "run openconnect to ogsd's choice, through the failover order")
    connect.add_argument("--dry-run", action="store_true",
                         help="print the order and the openconnect command lines; run nothing "
                              "(no root or admin rights needed)")
    connect.add_argument("--once", action="store_true",
                         help="no reconnect when an established session ends by itself")
    connect.add_argument("--follow", action="store_true",
                         help="after resume, move the session to the gateway ogsd selects")
    connect.add_argument("--openconnect", metavar="PATH",
                         help="the openconnect to run (default: openconnect on $PATH)")
    connect.add_argument("--protocol", choices=("anyconnect", "gp"),
                         help="the VPN protocol (default: what ogsd's gateways speak); "
                              "gp: log into the GlobalProtect portal (PORTAL, after the "
                              "options; default: the one in ogsd.toml) and choose ogsd's "
                              "gateway there")
    connect.add_argument("openconnect_args", nargs=argparse.REMAINDER,
                         metavar="[PORTAL] -- ARGS",
                         help="passed to openconnect untouched (e.g. -- -u alice)")
    add("watch", "print each decision as it happens, until Ctrl-C")
    nm_apply = add("nm-apply", "point NetworkManager's openconnect connections at the "
                               "optimal server now")
    nm_apply.add_argument("name", nargs="?", help="only this connection (name or UUID; "
                                                  "default: those in [networkmanager])")
    diag = add("diag", "write a support bundle (tar.gz): decisions, cache, configuration, "
                       "network state, logs; secrets redacted")
    diag.add_argument("-o", "--output", metavar="FILE",
                      help="where to write it (default ./ogsd-diag-HOST-TIME.tar.gz; "
                           "- for standard output)")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse, talk to ogsd, print; the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "notify" and args.event == "connected" and not (
            args.host or args.nm_uuid):
        parser.error("notify connected: give HOST or --nm-uuid UUID")
    path = args.socket or str(client_socket())
    if args.command == "connect":
        from ogsd.client import connect  # noqa: PLC0415 (the other commands stay fast)

        return connect.run(args, path)
    timeout = args.timeout or (
        WAIT_TIMEOUT_S if args.command == "evaluate" and args.wait else DEFAULT_TIMEOUT_S)
    if args.command == "diag":
        from ogsd.client import diag  # noqa: PLC0415 (only this command needs it)
        return diag.main(args.output, lambda: _ask(path, timeout, "diag"))
    try:
        conn = Connection(path, timeout)
        try:
            if args.command == "watch":
                return _watch(args, conn)
            method, params = _request_for(args)
            lines, code = _render(args, conn.request(method, params))
        finally:
            conn.close()
    except CtlError as exc:
        print(f"ogsctl: {exc.message}", file=sys.stderr)
        return exc.code
    for line in lines:
        print(line)
    return code


def _ask(path: str, timeout: float, method: str) -> dict[str, Any]:
    """One request on its own connection; CtlError says why it failed."""
    conn = Connection(path, timeout)
    try:
        return conn.request(method)
    finally:
        conn.close()


def main() -> None:
    """Console entry point."""
    try:
        code = run()
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = 130  # the shell's convention for "killed by SIGINT"
    except BrokenPipeError:  # `ogsctl order | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)


if __name__ == "__main__":
    main()
