"""ogsd.toml as read: the TOML parsed, each key's line found, and tables whose typed
getters raise a ConfigError that names the file, the line, the table and the key.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ogsd.config.address import Address, split_address
from ogsd.config.model import ConfigError

_TABLES: dict[str, tuple[str, ...]] = {
    "": ("profiles", "ogs", "gateway", "daemon", "dns", "metrics", "networkmanager",
         "globalprotect"),
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
    "globalprotect": ("portal", "portal_config", "region"),
}
_HEADER = re.compile(r"\s*(\[\[?)\s*([\w.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"\s*([\w-]+)\s*[=.]")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_AT_END = " (at end of document)"


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


class Table:
    """One TOML table being validated: typed getters whose errors say where."""

    def __init__(self, source: Source, name: str, data: dict[str, Any], index: int = 0):
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


class Source:
    """The ogsd.toml being read (or none), for error messages."""

    def __init__(self, path: Path | None, text: str = "") -> None:
        self.path = path
        self.lines = _key_lines(text)

    def error(self, line: int | None, message: str) -> ConfigError:
        at = f"line {line}: " if line else ""
        return ConfigError(f"{self.path}: {at}{message}" if self.path else message)


def read_toml(path: Path) -> tuple[Source, dict[str, Any]]:
    source = Source(path)
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
    return Source(path, text), data


def subtable(root: Table, name: str) -> Table:
    value = root.data.get(name, {})
    if not isinstance(value, dict):
        raise root.error(name, value, f"must be a table: write [{name}] on its own line")
    return Table(root.source, name, value)
