"""ogsd.toml and the AnyConnect profiles, merged into one validated Config.

Profiles give the gateways and the defaults of the OGS settings; ogsd.toml overrides them
and may list more gateways (first, ahead of the profiles'). Every error is a ConfigError
whose message names the file, the line where known, the table and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ogsd.config.address import HTTPS_PORT, Address, split_address
from ogsd.config.profile import (
    PROTOCOLS,
    MergedProfiles,
    ProfileError,
    load_profiles,
    merge_profiles,
)
from ogsd.config.proxy import parse_proxy_url
from ogsd.config.userns import OVERFLOW_ID
from ogsd.core.models import Gateway, Metric
from ogsd.core.settings import (
    IMPROVEMENT_FLOOR_MS_DEFAULT,
    IMPROVEMENT_PERCENT_DEFAULT,
    IMPROVEMENT_PERCENT_RANGE,
    PROBE_COUNT_DEFAULT,
    SUSPEND_TIME_HOURS_DEFAULT,
    SUSPEND_TIME_HOURS_RANGE,
    Choice,
    Settings,
    resolve_enabled,
)

# Where AnyConnect (and its successor, Secure Client) keep profiles. Missing is normal.
DEFAULT_PROFILE_DIRS = (
    Path("/opt/cisco/anyconnect/profile"),
    Path("/opt/cisco/secureclient/vpn/profile"),
)

PROXY_MODES = ("none", "static", "auto", "pac")
# Upper bounds that no sane setting reaches; they keep timedelta from overflowing.
MAX_CACHE_LIFETIME_DAYS = 3650.0
MAX_PERIOD_MINUTES = 7 * 24 * 60.0  # beyond a week, "continuous" means nothing
MAX_IDLE_TIMEOUT_S = 86400.0
MAX_RESUME_WAIT_S = 3600.0  # an hour after resume, the rules' "after resume" is over
MAX_CLIENTS_RANGE = (1, 1024)
MAX_TEXTFILE_INTERVAL_S = 3600.0  # node_exporter reads it at each scrape; older is stale
# A request is a small JSON line; 1 KiB..16 MiB bounds typos, not real use.
REQUEST_MAX_BYTES_RANGE = (1024, 16 * 1024 * 1024)
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no user"
# A portal is usually logged into within a minute or two; re-checking every minute finds
# the open network soon after, while 30-minute periods would leave the user on the
# previous gateway for half an hour. Each retry costs one round (~1 KB per gateway).
PORTAL_RETRY_S_DEFAULT = 60.0
PORTAL_RETRY_S_RANGE = (1.0, 3600.0)
PAC_SCHEMES = ("http", "https", "file")

_TABLES: dict[str, tuple[str, ...]] = {
    "": ("profiles", "ogs", "gateway", "daemon", "dns", "metrics", "networkmanager"),
    "ogs": ("enabled", "improvement_percent", "improvement_floor_ms", "suspend_time_hours",
            "cache_lifetime_days", "probe_count", "round_deadline_s", "probe_timeout_s",
            "metric", "proxy", "proxy_url", "pac_url"),
    "gateway": ("host", "name", "user_group", "backups", "load_balancing",
                "primary_protocol", "port"),
    "daemon": ("continuous", "period_minutes", "period_jitter", "debounce_s", "admin_group",
               "admin_uids", "socket_group", "max_clients", "max_clients_per_uid",
               "admin_reserved_clients", "request_max_bytes", "idle_timeout_s",
               "resume_network_wait_s", "portal_retry_s"),
    "dns": ("resolv_conf",),
    "metrics": ("listen", "textfile", "textfile_interval_s"),
    "networkmanager": ("connections", "update_gateway"),
}
_HEADER = re.compile(r"\s*(\[\[?)\s*([\w.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"\s*([\w-]+)\s*[=.]")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = " (at end of document)"


class ConfigError(ValueError):
    """An unusable configuration; str() is the full message for the user."""


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon runs: re-evaluation schedule and socket API limits."""

    continuous: bool = True
    period: timedelta = timedelta(minutes=30)
    period_jitter: float = 0.2
    debounce: timedelta = timedelta(seconds=2)
    admin_group: str | None = None
    admin_uids: tuple[int, ...] = ()
    socket_group: str | None = None
    max_clients: int = 32
    # One user's readers (a `watch` never times out) cannot take every slot, and the
    # sleep hook (root) always finds one: 8 is several terminals' worth of ogsctl watch.
    max_clients_per_uid: int = 8
    admin_reserved_clients: int = 2  # the sleep hook and an admin's ogsctl at once
    request_max_bytes: int = 65536
    idle_timeout: timedelta = timedelta(seconds=300)
    # How long a resume waits for the network-environment test to pass (ogsd.daemon.resume).
    resume_network_wait: timedelta = timedelta(seconds=300)
    # After a round dropped for a captive portal: evaluate again this much later.
    portal_retry: timedelta = timedelta(seconds=PORTAL_RETRY_S_DEFAULT)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus exposition (ogsd.daemon.metrics); off unless `listen` or `textfile` is set."""

    listen: tuple[str, int] | None = None  # (IP literal, port); port 0: any free port
    textfile: Path | None = None  # for node_exporter's textfile collector (*.prom)
    textfile_interval: timedelta = timedelta(seconds=60)

    @property
    def enabled(self) -> bool:
        return self.listen is not None or self.textfile is not None


@dataclass(frozen=True)
class NetworkManagerConfig:
    """NetworkManager-openconnect connections whose servers are gateways (ogsd.nm.connections)."""

    connections: tuple[str, ...] = ()  # connection names (NM's connection.id)
    all_connections: bool = False  # every openconnect connection
    update_gateway: bool = True  # keep them pointed at the optimal server

    @property
    def enabled(self) -> bool:
        return self.all_connections or bool(self.connections)

    def wants(self, name: str) -> bool:
        """Whether the connection called `name` is one of ours."""
        return self.all_connections or name in self.connections


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs from its configuration files."""

    gateways: tuple[Gateway, ...]
    settings: Settings
    daemon: DaemonConfig
    resolv_conf: Path | None  # None: automatic (ogsd.sensing.dnsenv looks past resolved's stub)
    sources: tuple[Path, ...]  # files read: ogsd.toml first, then each profile
    warnings: tuple[str, ...]
    metrics: MetricsConfig = MetricsConfig()
    networkmanager: NetworkManagerConfig = NetworkManagerConfig()


# What a running daemon cannot change on reload: the socket exists, with its group; the
# metrics port and textfile writer are set up at start.
RESTART_KEYS = frozenset({"[daemon] socket_group", "[metrics] listen", "[metrics] textfile",
                          "[metrics] textfile_interval_s"})
# Field names that differ from their ogsd.toml key.
_KEYS = {"period": "period_minutes", "debounce": "debounce_s", "idle_timeout": "idle_timeout_s",
         "suspend_time": "suspend_time_hours", "cache_lifetime": "cache_lifetime_days",
         "round_deadline": "round_deadline_s", "probe_timeout": "probe_timeout_s",
         "proxy_mode": "proxy", "resume_network_wait": "resume_network_wait_s",
         "portal_retry": "portal_retry_s", "textfile_interval": "textfile_interval_s",
         "all_connections": "connections"}


def changed_keys(old: Config, new: Config) -> list[str]:
    """The settings whose effective value differs, named as in ogsd.toml (a profile's
    value shows as the ogsd.toml key it stands for; gateways as "gateways")."""
    changed = ["gateways"] if old.gateways != new.gateways else []
    for table, before, after in (("ogs", old.settings, new.settings),
                                 ("daemon", old.daemon, new.daemon),
                                 ("metrics", old.metrics, new.metrics),
                                 ("networkmanager", old.networkmanager, new.networkmanager)):
        changed += [f"[{table}] {_KEYS.get(f.name, f.name)}" for f in dataclasses.fields(before)
                    if f.compare and getattr(before, f.name) != getattr(after, f.name)]
    if old.resolv_conf != new.resolv_conf:
        changed.append("[dns] resolv_conf")
    return list(dict.fromkeys(changed))  # two fields may stand for one key


def _show(value: Any) -> str:
    """A value as it would be written in TOML, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + " }"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_lines(text: str) -> dict[tuple[str, int, str], int]:
    """Best-effort line of each (table, array index, key); "" key = the table header."""
    lines: dict[tuple[str, int, str], int] = {}
    counts: dict[str, int] = {}
    table, index = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            table, index = header[2].strip(), 0
            if header[1] == "[[":
                index = counts[table] = counts.get(table, 0) + 1
            lines.setdefault((table, index, ""), number)
        elif key := _KEY.match(line):
            lines.setdefault((table, index, key[1]), number)
    return lines


class _Table:
    """One TOML table being validated: typed getters whose errors say where."""

    def __init__(self, source: _Source, name: str, data: dict[str, Any], index: int = 0):
        self.source, self.name, self.data, self.index = source, name, data, index
        valid = _TABLES[name]
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else \
                    f"; valid keys: {', '.join(valid)}"
                raise self.error(key, None, f"unknown key{self._in()}{hint}")

    def _in(self) -> str:
        return f" in [{self.name}]" if self.name else " at the top level"

    def label(self) -> str:
        if self.index:
            return f"[[{self.name}]] #{self.index}: "
        return f"[{self.name}] " if self.name else ""

    def where(self, key: str) -> str:
        """`file line N` of a key, for messages that are not errors."""
        line = self.source.lines.get((self.name, self.index, key))
        return f"{self.source.path} line {line}" if line else str(self.source.path)

    def error(self, key: str, value: Any, problem: str) -> ConfigError:
        lines = self.source.lines
        # The key's own line; else, for a table, its header; else this table's header.
        line = (lines.get((self.name, self.index, key))
                or (None if self.name else lines.get((key, 0, ""), lines.get((key, 1, ""))))
                or lines.get((self.name, self.index, "")))
        shown = key if value is None else f"{key} = {_show(value)}"
        return self.source.error(line, f"{self.label()}{shown}: {problem}")

    def get(self, key: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.data.get(key, default)
        if key in self.data and ((isinstance(value, bool) and bool not in _tuple(kind))
                                 or not isinstance(value, kind)):
            raise self.error(key, value, f"must be {what}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, default, bool, "true or false"))

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value: int = self.get(key, default, int, f"an integer between {lo} and {hi}")
        if not lo <= value <= hi:
            raise self.error(key, value, f"must be between {lo} and {hi}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float, *,
               lo_open: bool = False) -> float:
        bound = f"greater than {lo:g}" if lo_open else f"between {lo:g} and {hi:g}"
        value = float(self.get(key, default, (int, float), f"a number {bound}"))
        below = value <= lo if lo_open else value < lo
        if not math.isfinite(value) or below or value > hi:
            at_most = f" and at most {hi:g}" if lo_open else ""
            raise self.error(key, self.data.get(key), f"must be {bound}{at_most}")
        return value

    def string(self, key: str, default: str | None) -> str | None:
        value: str | None = self.get(key, default, str, "a string")
        if key in self.data and not (value or "").strip():
            raise self.error(key, value, "must not be empty")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        options = " or ".join(f'"{c}"' for c in choices)
        value = str(self.get(key, default, str, options))
        if value not in choices:
            raise self.error(key, value, f"must be {options}")
        return value

    def items(self, key: str, kind: type, what: str) -> list[Any]:
        value = self.get(key, [], list, f"a list of {what}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, kind):
                raise self.error(key, value, f"must be a list of {what}")
        return list(value)

    def integer_list(self, key: str, lo: int, hi: int) -> list[int]:
        values: list[int] = self.items(key, int, "integers")
        if not all(lo <= v <= hi for v in values):
            raise self.error(key, values, f"entries must be between {lo} and {hi}")
        return values

    def address(self, key: str, text: str) -> Address:
        try:
            return split_address(text)
        except ValueError as e:
            raise self.error(key, text, str(e)) from None

    def addresses(self, key: str) -> tuple[str, ...]:
        """A list of failover addresses, one spelling each, duplicates dropped."""
        texts = self.items(key, str, "host names")
        return tuple(dict.fromkeys(self.address(key, text).text for text in texts))


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class _Source:
    """The ogsd.toml being read (or none), for error messages."""

    def __init__(self, path: Path | None, text: str = "") -> None:
        self.path = path
        self.lines = _key_lines(text)

    def error(self, line: int | None, message: str) -> ConfigError:
        at = f"line {line}: " if line else ""
        return ConfigError(f"{self.path}: {at}{message}" if self.path else message)


def _read_toml(path: Path) -> tuple[_Source, dict[str, Any]]:
    source = _Source(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise source.error(None, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise source.error(None, f"not UTF-8 text (byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise source.error(None, "cannot read: arrays or tables nested too deeply") from None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        if position := _TOML_POSITION.search(message):
            message = message[: position.start()]
            raise ConfigError(f"{path}: line {position[1]}, column {position[2]}: "
                              f"TOML syntax error: {message}") from None
        if message.endswith(_TOML_AT_END):  # e.g. an unterminated string: the last line
            last = max(1, len(text.splitlines()))
            raise ConfigError(f"{path}: line {last}, at the end of the file: TOML syntax "
                              f"error: {message.removesuffix(_TOML_AT_END)}") from None
        raise source.error(None, f"TOML syntax error: {message}") from None
    return _Source(path, text), data


def _subtable(root: _Table, name: str) -> _Table:
    value = root.data.get(name, {})
    if not isinstance(value, dict):
        raise root.error(name, value, f"must be a table: write [{name}] on its own line")
    return _Table(root.source, name, value)


def _gateways(root: _Table) -> list[Gateway]:
    entries = root.data.get("gateway", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise root.error("gateway", None, "must be an array of tables: write [[gateway]] "
                         "before each gateway's keys")
    gateways = []
    for index, entry in enumerate(entries, 1):
        table = _Table(root.source, "gateway", entry, index)
        if "host" not in entry:
            raise table.error("host", None, "is required")
        address = table.address("host", table.get("host", "", str, "a host name or IP address"))
        port = table.integer("port", address.port or HTTPS_PORT, 1, 65535)
        if address.port is not None and port != address.port:
            raise table.error("port", port, f"the host says port {address.port}")
        protocol = table.string("primary_protocol", None)
        if protocol is not None and protocol.lower() not in PROTOCOLS:
            raise table.error("primary_protocol", protocol, 'must be "SSL" or "IPsec"')
        gateways.append(Gateway(
            host=address.host,
            name=table.string("name", "") or "",
            # As in a profile: an explicit group wins over the address's group path.
            user_group=table.string("user_group", None) or address.group,
            backups=table.addresses("backups"),
            load_balancing=table.addresses("load_balancing"),
            primary_protocol=PROTOCOLS[protocol.lower()] if protocol else None,
            port=port,
        ))
    return gateways


def _profile_paths(root: _Table, base: Path, given: Sequence[Path]) -> list[Path]:
    if given:
        paths = [Path(p).expanduser() for p in given]
    elif "profiles" in root.data:
        paths = [base / Path(p).expanduser()
                 for p in root.items("profiles", str, "paths (files or directories)")]
    else:
        paths = list(DEFAULT_PROFILE_DIRS)
    found = []
    for path in paths:
        if path.exists():
            found.append(path)
        elif path not in DEFAULT_PROFILE_DIRS:
            where = f"profiles: {path}" if not given else f"profile {path}"
            raise root.source.error(None if given else root.source.lines.get(("", 0, "profiles")),
                                    f"{where}: no such file or directory")
    return found


def _settings(ogs: _Table, merged: MergedProfiles, warnings: list[str]) -> Settings:
    improvement, suspend = merged.improvement_percent, merged.suspend_time_hours
    user = None
    if "enabled" in ogs.data:
        user = Choice(ogs.boolean("enabled", True), ogs.where("enabled"))
    enabled = resolve_enabled(merged.automatic_selection, merged.automatic_selection_controllable,
                              user)
    if enabled.ignored:
        warnings.append(enabled.ignored)
    return Settings(
        enabled=enabled.value,
        enabled_why=enabled.why,
        improvement_percent=ogs.integer(
            "improvement_percent", improvement or IMPROVEMENT_PERCENT_DEFAULT,
            *IMPROVEMENT_PERCENT_RANGE),
        improvement_floor_ms=ogs.number("improvement_floor_ms", IMPROVEMENT_FLOOR_MS_DEFAULT,
                                        0.0, 1000.0),
        suspend_time=timedelta(hours=ogs.integer(
            "suspend_time_hours", suspend or SUSPEND_TIME_HOURS_DEFAULT,
            *SUSPEND_TIME_HOURS_RANGE)),
        cache_lifetime=timedelta(days=ogs.number("cache_lifetime_days", 14.0, 0.0,
                                                 MAX_CACHE_LIFETIME_DAYS, lo_open=True)),
        probe_count=ogs.integer("probe_count", PROBE_COUNT_DEFAULT, 1, 10),
        round_deadline=timedelta(seconds=ogs.number("round_deadline_s", 7.0, 0.5, 60.0)),
        probe_timeout=timedelta(seconds=ogs.number("probe_timeout_s", 5.0, 0.1, 60.0)),
        metric=Metric(ogs.choice("metric", Metric.NETWORK.value, [m.value for m in Metric])),
        proxy_mode=_proxy_mode(ogs),
        proxy_url=_proxy_url(ogs),
        pac_url=_pac_url(ogs),
    )


def _admin_uids(table: _Table) -> tuple[int, ...]:
    uids = table.integer_list("admin_uids", 0, MAX_UID)
    if OVERFLOW_ID in uids:
        raise table.error("admin_uids", uids, f"{OVERFLOW_ID} is the overflow uid (\"nobody\"): "
                          "every user a user namespace (PrivateUsers=yes) does not map "
                          "appears as it, so it would make everyone an admin")
    if table.string("admin_group", None) == str(OVERFLOW_ID):
        raise table.error("admin_group", str(OVERFLOW_ID), "is the overflow gid "
                          "(\"nogroup\"): it would make everyone an admin")
    return tuple(uids)
def _proxy_mode(ogs: _Table) -> str:
    """`proxy`; a proxy_url alone means "static", a pac_url alone "pac"."""
    implied = "static" if "proxy_url" in ogs.data else "pac" if "pac_url" in ogs.data else "none"
    mode = ogs.choice("proxy", implied, PROXY_MODES)
    if "proxy_url" in ogs.data and mode != "static":
        raise ogs.error("proxy", mode, 'must be "static" when proxy_url is set')
    return mode


def _proxy_url(ogs: _Table) -> str | None:
    url = ogs.string("proxy_url", None)
    if url is not None:
        try:
            parse_proxy_url(url)
        except ValueError as e:
            raise ogs.error("proxy_url", url, str(e)) from None
    return url


def _pac_url(ogs: _Table) -> str | None:
    url = ogs.string("pac_url", None)
    if url is not None and urlsplit(url.strip()).scheme.lower() not in PAC_SCHEMES:
        raise ogs.error("pac_url", url, "must be an http://, https:// or file:// URL")
    return url


def _daemon(table: _Table) -> DaemonConfig:
    max_clients = table.integer("max_clients", 32, *MAX_CLIENTS_RANGE)
    return DaemonConfig(
        continuous=table.boolean("continuous", True),
        period=timedelta(minutes=table.number("period_minutes", 30.0, 1.0,
                                              MAX_PERIOD_MINUTES)),
        period_jitter=table.number("period_jitter", 0.2, 0.0, 0.5),
        debounce=timedelta(seconds=table.number("debounce_s", 2.0, 0.0, 60.0)),
        admin_group=table.string("admin_group", None),
        admin_uids=_admin_uids(table),
        socket_group=table.string("socket_group", None),
        max_clients=max_clients,
        max_clients_per_uid=table.integer("max_clients_per_uid", 8, *MAX_CLIENTS_RANGE),
        # Unset, the default applies as far as max_clients allows (the API server caps it),
        # so lowering max_clients alone is no error and changes nothing else.
        admin_reserved_clients=table.integer("admin_reserved_clients", 2, 0, max_clients - 1)
        if "admin_reserved_clients" in table.data else DaemonConfig.admin_reserved_clients,
        request_max_bytes=table.integer("request_max_bytes", 65536, *REQUEST_MAX_BYTES_RANGE),
        idle_timeout=timedelta(seconds=table.number("idle_timeout_s", 300.0, 0.0,
                                                    MAX_IDLE_TIMEOUT_S, lo_open=True)),
        resume_network_wait=timedelta(seconds=table.number(
            "resume_network_wait_s", 300.0, 1.0, MAX_RESUME_WAIT_S)),
        portal_retry=timedelta(seconds=table.number(
            "portal_retry_s", PORTAL_RETRY_S_DEFAULT, *PORTAL_RETRY_S_RANGE)),
    )


def _metrics(table: _Table, base: Path, warnings: list[str]) -> MetricsConfig:
    listen = None
    if (text := table.string("listen", None)) is not None:
        try:
            listen = parse_listen(text)
        except ValueError as e:
            raise table.error("listen", text, str(e)) from None
        if not ipaddress.ip_address(listen[0]).is_loopback:
            warnings.append(f"{table.source.path}: [metrics] listen = {text!r} is not a "
                            "loopback address: anyone who reaches it sees gateways and probes")
    textfile = None
    if (name := table.string("textfile", None)) is not None:
        if not name.endswith(".prom"):
            raise table.error("textfile", name, "must end in .prom (node_exporter's textfile "
                                                "collector reads only *.prom files)")
        textfile = base / Path(name).expanduser()
    return MetricsConfig(listen=listen, textfile=textfile, textfile_interval=timedelta(
        seconds=table.number("textfile_interval_s", 60.0, 1.0, MAX_TEXTFILE_INTERVAL_S)))


def _networkmanager(table: _Table) -> NetworkManagerConfig:
    value = table.data.get("connections", [])
    everything = value == "all"
    if not everything:
        names = table.items("connections", str, 'connection names, or "all"')
        if any(not name.strip() for name in names):
            raise table.error("connections", value, "names must not be empty")
    return NetworkManagerConfig(
        connections=() if everything else tuple(names), all_connections=everything,
        update_gateway=table.boolean("update_gateway", True))


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9478`, `[::1]:9478` or `localhost:9478` -> (IP literal, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be ADDRESS:PORT with a port between 0 and 65535, "
                         'e.g. "127.0.0.1:9478"')
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"  # one socket, no resolver at start-up
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (or localhost): the port is "
                         "opened before any name could be resolved") from None
    return host, int(port)


def load_config(config_path: Path | None, profile_paths: Sequence[Path] = ()) -> Config:
    """Load ogsd.toml (None: none) and the profiles into one validated Config.

    `profile_paths`, when given, replace the file's `profiles` list (relative to the
    working directory); without either, AnyConnect's default profile directories are read.
    """
    source, data = _read_toml(config_path) if config_path else (_Source(None), {})
    base = config_path.parent if config_path else Path()
    root = _Table(source, "", data)
    ogs, daemon_table, dns, metrics, nm = (
        _subtable(root, n) for n in ("ogs", "daemon", "dns", "metrics", "networkmanager"))
    listed = _gateways(root)
    warnings: list[str] = []
    searched = _profile_paths(root, base, profile_paths)
    try:
        profiles = load_profiles(searched)
    except ProfileError as e:
        raise ConfigError(str(e)) from None
    warnings.extend(f"profile directory {p} has no *.xml files" for p in searched
                    if p.is_dir() and not any(q.path.parent == p for q in profiles))
    merged = merge_profiles(profiles)
    warnings.extend(merged.warnings)
    gateways: dict[str, Gateway] = {}
    for gateway in listed:
        if gateway.host in gateways:
            warnings.append(f"{config_path}: [[gateway]] {gateway.host} listed twice; "
                            "keeping the first")
        gateways.setdefault(gateway.host, gateway)
    for gateway, origin in zip(merged.gateways, merged.gateway_sources, strict=True):
        if gateway.host in gateways:
            warnings.append(f"{origin}: gateway {gateway.host} is also a [[gateway]] in "
                            f"{config_path}; keeping that one")
        gateways.setdefault(gateway.host, gateway)
    settings = _settings(ogs, merged, warnings)
    daemon = _daemon(daemon_table)
    if settings.probe_timeout > settings.round_deadline:
        warnings.append(f"{config_path}: [ogs] probe_timeout_s is longer than "
                        "round_deadline_s: probes still running at the deadline are dropped")
    resolv_conf = dns.string("resolv_conf", None)
    resolv_path = base / Path(resolv_conf).expanduser() if resolv_conf else None
    if resolv_path is not None and not resolv_path.is_file():
        warnings.append(f"{config_path}: [dns] resolv_conf {resolv_path} is not a file (yet)")
    metrics_config = _metrics(metrics, base, warnings)
    nm_config = _networkmanager(nm)
    if not gateways and not nm_config.enabled:
        where = ", ".join(str(p) for p in searched) or "none found"
        raise source.error(None, "no gateways: list [[gateway]] entries or profiles "
                           f"(profiles read: {where})")
    return Config(
        gateways=tuple(gateways.values()),
        settings=settings,
        daemon=daemon,
        resolv_conf=resolv_path,
        sources=(*([config_path] if config_path else []), *(p.path for p in profiles)),
        warnings=tuple(warnings),
        metrics=metrics_config,
        networkmanager=nm_config,
    )

