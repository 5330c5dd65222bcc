"""`ogsd`: evaluate once, manage the cache, or run the daemon."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ogsd.config.model import Config
    from ogsd.core.triggers import Trigger
    from ogsd.daemon.engine import Engine, Outcome
    from ogsd.sensing.autoproxy import AutoProxy
    from ogsd.store.store import Store

# Each command imports what it uses when it runs (`ogsd --help` and argument errors cost
# no more than argparse): SQLAlchemy, dnspython, pyroute2, structlog and anyio are
# ~0.3 s of imports that `evaluate`, `cache` and `run` need in different parts.

EXIT_OK, EXIT_NONE, EXIT_BAD_INPUT = 0, 1, 2

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ogsd", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="ogsd.toml (default: the mode's path)")
        p.add_argument("--profile", type=Path, action="append", default=[],
                       help="AnyConnect profile XML (repeatable; no ogsd.toml needed)")
        p.add_argument("--state-dir", type=Path, help="where the database lives")

    ev = sub.add_parser("evaluate", help="decide for the current location and print why")
    common(ev)
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ev.add_argument("--no-cache", action="store_true", help="probe even if cached")

    cache = sub.add_parser("cache", help="list or clear the location cache")
    cache.add_argument("action", choices=["list", "clear"])
    cache.add_argument("--state-dir", type=Path)
    cache.add_argument("--json", action="store_true")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    common(run)
    run.add_argument("--socket", type=Path, help="Unix socket path")
    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock = _utcnow) -> int:
    args = build_parser().parse_args(argv)
    import logging

    from ogsd.daemon import logs

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logs.configure(level=level)
    try:
        if args.command == "evaluate":
            return _evaluate(args, clock)
        if args.command == "cache":
            return _cache(args)
        return _run(args)
    except BadInput as exc:
        print(f"ogsd: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


class BadInput(Exception):
    """A problem with what the user gave us: exit status 2, message, no traceback."""


def config_path(arg: Path | None, profiles: Sequence[Path]) -> Path | None:
    """The ogsd.toml to read: the one given, else the mode's default if it exists.

    With only `--profile` given no ogsd.toml is needed.
    """
    from ogsd.config.paths import default_layout

    if arg is not None or profiles:
        return arg
    default = default_layout().config
    return default if default.exists() else None


def load(path: Path | None, profiles: Sequence[Path], *, require_gateways: bool = True) -> Config:
    """Load the configuration, turning every input error into BadInput; log its warnings."""
    import structlog

    from ogsd.config.load import load_config
    from ogsd.config.model import ConfigError

    try:
        config = load_config(config_path(path, profiles), profiles,
                             require_gateways=require_gateways)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    for warning in config.warnings:  # e.g. a setting the profile does not let users change
        structlog.get_logger("ogsd").warning(warning)
    return config


def state_dir(arg: Path | None) -> Path:
    from ogsd.config.paths import default_layout

    return arg if arg is not None else default_layout().state_dir


def open_store(directory: Path) -> Store:
    from ogsd.config.paths import DB_NAME
    from ogsd.store.files import StoreError
    from ogsd.store.store import Store

    try:
        return Store.open(directory / DB_NAME, on_event=_store_event)
    except (StoreError, OSError) as exc:
        raise BadInput(f"state database in {directory}: {exc}") from None


def _learnt_portal(args: argparse.Namespace) -> Config | None:
    """The configuration with the gateways the daemon learnt for its GlobalProtect portal
    (from openconnect's list: ogsd.config.gpportal.with_learned), or None."""
    from contextlib import closing

    from ogsd.config.gpportal import with_learned
    from ogsd.config.load import load_config
    from ogsd.config.model import ConfigError
    from ogsd.config.paths import DB_NAME
    from ogsd.store.files import StoreError

    try:
        config = load_config(config_path(args.config, args.profile), args.profile,
                             require_gateways=False)
    except ConfigError:
        return None
    directory = state_dir(args.state_dir)
    if config.globalprotect is None or not (directory / DB_NAME).exists():
        return None
    try:
        with closing(open_store(directory)) as store:
            learnt = with_learned(config, store.load_state())
    except (BadInput, StoreError):
        return None
    return learnt if learnt.gateways else None


def _store_event(event: str, fields: dict[str, object]) -> None:
    import structlog

    structlog.get_logger("ogsd.store.store").warning(event, **fields)


def _evaluate(args: argparse.Namespace, clock: Clock) -> int:
    import json
    import os
    from contextlib import closing

    import anyio

    from ogsd.core.report import selection_table
    from ogsd.core.triggers import Trigger
    from ogsd.daemon.engine import Engine, table_rows
    from ogsd.sensing.autoproxy import AutoProxy
    from ogsd.sensing.dnsenv import DnsConfigError, resolver_for
    from ogsd.store.files import StoreError
    from ogsd.wire.shapes import decision_to_dict

    try:
        config = load(args.config, args.profile)
    except BadInput:
        learnt = _learnt_portal(args)  # the gateways a daemon learnt stand in for a file's
        if learnt is None:
            raise
        config = learnt
    try:
        resolver = resolver_for(config.resolv_conf)
    except DnsConfigError as exc:
        raise BadInput(str(exc)) from None
    store = open_store(state_dir(args.state_dir))
    autoproxy = AutoProxy(os.environ)
    with closing(store):
        engine = Engine(config, store, clock=clock, resolver=resolver,
                        auto_proxy=autoproxy.detect)
        trigger = Trigger.FORCED if args.no_cache else Trigger.EVALUATE
        outcome = anyio.run(_evaluate_here, engine, trigger, autoproxy,
                            backend_options={"use_uvloop": True})
        decision = outcome.decision
        try:
            for write in outcome.writes:
                write.run()
        except StoreError as exc:  # the decision stands; only its record is missing
            print(f"ogsd: warning: decision not saved: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(decision_to_dict(decision)))
    else:
        gateways = engine.config.gateways
        for line in selection_table(table_rows(decision, gateways), decision.selected):
            print(line)
        print(f"Source: {decision.source.value} ({decision.reason_text})")
        if len(decision.order) > 1:
            print("Failover order: " + ", ".join(decision.order))
    return EXIT_OK if decision.selected is not None else EXIT_NONE


async def _evaluate_here(engine: Engine, trigger: Trigger, autoproxy: AutoProxy) -> Outcome:
    """One evaluation where we are: the physical location and path, VPN up or not."""
    import anyio.to_thread

    from ogsd.sensing.location import Sources
    from ogsd.sensing.netstate import NetState
    from ogsd.sensing.resolved import ResolvedClient

    resolved = ResolvedClient()
    try:
        net = NetState(Sources(engine.config.resolv_conf, resolved=resolved))
        state = await anyio.to_thread.run_sync(engine.store.load_state)
        view = await net.look(state, await net.snapshot())
    finally:
        resolved.close()
    if view.reading is None:
        raise BadInput(view.error or "no DNS configuration")
    try:
        return await engine.decide(trigger, view.reading.location,
                                   path=net.probe_path(state, view))
    finally:
        await autoproxy.aclose()


def _cache(args: argparse.Namespace) -> int:
    import json
    from contextlib import closing

    store = open_store(state_dir(args.state_dir))
    with closing(store):
        if args.action == "clear":
            removed = store.clear_cache()
            store.update_state(cache_cleared_at=_utcnow())
            print(json.dumps({"removed": removed}) if args.json
                  else f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")
            return EXIT_OK
        entries = store.list_entries()
    if args.json:
        print(json.dumps([{
            "domain": e.location.domain, "servers": list(e.location.servers),
            "keys": list(e.location.keys), "order": list(e.order), "metric": e.metric.value,
            "created_at": e.created_at.isoformat(), "expires_at": e.expires_at.isoformat(),
        } for e in entries]))
    else:
        for e in entries:
            print(f"{e.location.domain or '(no domain)'} "
                  f"[{', '.join(e.location.servers)}] -> {', '.join(e.order)} "
                  f"(cached {e.created_at:%Y-%m-%d %H:%M}, expires {e.expires_at:%Y-%m-%d %H:%M})")
        if not entries:
            print("cache is empty")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    import os
    from contextlib import closing

    import anyio

    from ogsd.config.load import load_config
    from ogsd.config.model import ConfigError
    from ogsd.config.paths import LayoutError, default_layout, prepare_socket_dir, user_mode
    from ogsd.daemon.daemon import Daemon, Options, socket_activated
    from ogsd.daemon.socketfile import ApiSetupError

    profiles = tuple(args.profile)
    # Installed but not configured yet: the daemon runs and waits (ogsctl status says
    # for what) instead of failing until systemd gives up on it.
    config = load(args.config, profiles, require_gateways=False)
    path = config_path(args.config, profiles)
    socket_path = args.socket
    if socket_path is None and not socket_activated():
        socket_path = default_layout().socket
        if user_mode() and not os.environ.get("OGSD_SOCKET"):
            try:
                prepare_socket_dir(socket_path.parent)
            except LayoutError as exc:
                print(f"ogsd: {exc}", file=sys.stderr)
                return EXIT_NONE
    options = Options(path, profiles, state_dir(args.state_dir), socket_path)
    store = open_store(options.state_dir)
    with closing(store):
        daemon = Daemon(options, config, store,
                        load_config=lambda: load_config(path, profiles,
                                                        require_gateways=False))
        failures: list[str] = []
        try:
            anyio.run(daemon.run, backend_options={"use_uvloop": True})
        except* (ApiSetupError, ConfigError) as group:  # e.g. another ogsd on the socket
            failures += [str(exc) for exc in group.exceptions]
    for failure in failures:
        print(f"ogsd: {failure}", file=sys.stderr)
    return EXIT_NONE if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
