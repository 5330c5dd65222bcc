"""SQLite store: the OGS location cache, the decision history and the daemon state.

Synchronous on purpose: the daemon calls it from worker threads (anyio.to_thread).
One engine; readers run side by side (WAL), writers take a lock and BEGIN IMMEDIATE so
a write never fails half-way upgrading its lock. Every failure is a StoreError.
The dict functions are the JSON shape shared with the socket API and `--json` output.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from sqlalchemy import Connection, Engine, Row, create_engine, delete, event, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ogsd import store_schema as schema
from ogsd.core.models import (
    CacheEntry,
    DaemonState,
    Decision,
    GatewayResult,
    Location,
    Metric,
    ProbeSample,
    ProxyCheck,
    Reason,
    Source,
)

EventSink = Callable[[str, dict[str, object]], None]
_E = TypeVar("_E", bound=StrEnum)

# Bounded so the file stays small; 500 rounds is weeks of history at a few a day.
DECISION_HISTORY_DEFAULT = 500
# Every connection. WAL: readers never block the writer. busy_timeout: wait for a lock
# another process holds (ogsctl, a second instance) instead of failing at once.
# foreign_keys: SQLite ships it off and cache_keys' cascade needs it. synchronous=NORMAL
# is safe from application crashes in WAL mode; a power cut may lose the last commits,
# which a cache and a history can afford.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)
_BUSY_TIMEOUT_S = 5.0
# Primary result codes meaning the file itself is unusable (sqlite.org/rescode.html).
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
# The first bytes of every SQLite 3 database (sqlite.org/fileformat.html, 1.3).
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BEGIN = "ogsd_begin"  # execution option: the BEGIN statement of a transaction


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class _CorruptError(Exception):
    """The file is damaged or not a database."""


# --- JSON shapes -------------------------------------------------------------------


def _iso(value: datetime, what: str) -> str:
    if value.utcoffset() is None:
        raise ValueError(f"{what}: naive datetime {value.isoformat()}; times must be aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected an ISO 8601 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: not an ISO 8601 time: {value!r}") from None
    if parsed.utcoffset() is None:
        raise ValueError(f"{what}: time without a UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def _field(data: Mapping[str, object], key: str, where: str) -> object:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    if key not in data:
        raise ValueError(f"{where}: missing {key!r}")
    return data[key]


def _str(value: object, what: str, *, optional: bool = False) -> Any:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise ValueError(f"{what}: expected {'text or null' if optional else 'text'}, got {value!r}")


def _num(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number or null, got {value!r}")
    return float(value)


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what}: expected a list, got {value!r}")
    return list(value)


def _strs(value: object, what: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{what}[{i}]") for i, v in enumerate(_list(value, what)))


def _enum(cls: type[_E], value: object, what: str) -> _E:
    try:
        return cls(_str(value, what))
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"{what}: unknown value {value!r} (one of: {allowed})") from None


def location_to_dict(location: Location) -> dict[str, object]:
    """A location as JSON-able data (keys included for readers; derived on the way back)."""
    return {"domain": location.domain, "servers": list(location.servers),
            "keys": list(location.keys)}


def location_from_dict(data: Mapping[str, object], where: str = "location") -> Location:
    """The inverse of location_to_dict; ValueError names what is wrong."""
    return Location(domain=_str(_field(data, "domain", where), f"{where}.domain"),
                    servers=_strs(_field(data, "servers", where), f"{where}.servers"))


def result_to_dict(result: GatewayResult, metric: Metric) -> dict[str, object]:
    """A gateway's figures; `rtt_ms` is its figure for `metric`, per-probe lists align."""
    samples = result.samples
    proxy = result.proxy_check
    return {
        "host": result.host,
        "address": result.address,
        "rtt_ms": result.rtt(metric),
        "network_rtt_ms": [s.network_rtt_ms for s in samples],
        "exchange_ms": [s.exchange_ms for s in samples],
        "error": result.error,
        "tcp_info_rtt_ms": [s.tcp_info_rtt_ms for s in samples],
        "started_at": [s.started_at for s in samples],
        "probe_errors": [s.error for s in samples],
        "proxy_check": None if proxy is None else {
            "status": proxy.status,
            "location": proxy.location,
            "proxy_detected": proxy.proxy_detected,
            "error": proxy.error,
            "elapsed_ms": proxy.elapsed_ms,
        },
    }


def _proxy_from_dict(data: object, where: str) -> ProxyCheck | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object or null, got {data!r}")
    status = _field(data, "status", where)
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise ValueError(f"{where}.status: expected an integer or null, got {status!r}")
    detected = _field(data, "proxy_detected", where)
    if not isinstance(detected, bool):
        raise ValueError(f"{where}.proxy_detected: expected true or false, got {detected!r}")
    return ProxyCheck(
        status=status,
        location=_str(_field(data, "location", where), f"{where}.location", optional=True),
        proxy_detected=detected,
        error=_str(_field(data, "error", where), f"{where}.error", optional=True),
        elapsed_ms=_num(_field(data, "elapsed_ms", where), f"{where}.elapsed_ms"),
    )


def result_from_dict(data: Mapping[str, object], where: str = "result") -> GatewayResult:
    """The inverse of result_to_dict (`rtt_ms` is derived, so ignored)."""
    columns = {name: _list(_field(data, name, where), f"{where}.{name}") for name in
               ("started_at", "network_rtt_ms", "tcp_info_rtt_ms", "exchange_ms", "probe_errors")}
    sizes = {len(values) for values in columns.values()}
    if len(sizes) > 1:
        raise ValueError(f"{where}: per-probe lists differ in length "
                         f"({', '.join(f'{k}={len(v)}' for k, v in columns.items())})")
    samples = []
    for i, started in enumerate(columns["started_at"]):
        at = f"{where}.started_at[{i}]"
        started_at = _num(started, at)
        if started_at is None:
            raise ValueError(f"{at}: expected a number, got null")
        samples.append(ProbeSample(
            started_at=started_at,
            network_rtt_ms=_num(columns["network_rtt_ms"][i], f"{where}.network_rtt_ms[{i}]"),
            tcp_info_rtt_ms=_num(columns["tcp_info_rtt_ms"][i], f"{where}.tcp_info_rtt_ms[{i}]"),
            exchange_ms=_num(columns["exchange_ms"][i], f"{where}.exchange_ms[{i}]"),
            error=_str(columns["probe_errors"][i], f"{where}.probe_errors[{i}]", optional=True),
        ))
    return GatewayResult(
        host=_str(_field(data, "host", where), f"{where}.host"),
        address=_str(_field(data, "address", where), f"{where}.address", optional=True),
        samples=tuple(samples),
        error=_str(_field(data, "error", where), f"{where}.error", optional=True),
        proxy_check=_proxy_from_dict(_field(data, "proxy_check", where), f"{where}.proxy_check"),
    )


def _results_from(value: object, where: str) -> tuple[GatewayResult, ...]:
    items = _list(value, where)
    return tuple(result_from_dict(item, f"{where}[{i}]")  # type: ignore[arg-type]
                 for i, item in enumerate(items))


def decision_to_dict(decision: Decision) -> dict[str, object]:
    """A decision as JSON-able data: `reason` is the text, `reason_code` the Reason."""
    return {
        "location": location_to_dict(decision.location),
        "source": decision.source.value,
        "reason": decision.reason_text,
        "reason_code": decision.reason.value,
        "selected": decision.selected,
        "order": list(decision.order),
        "metric": decision.metric.value,
        "results": [result_to_dict(r, decision.metric) for r in decision.results],
        "decided_at": _iso(decision.decided_at, "decided_at"),
    }


def decision_from_dict(data: Mapping[str, object], where: str = "decision") -> Decision:
    """The inverse of decision_to_dict; ValueError names what is wrong."""
    return Decision(
        location=location_from_dict(_field(data, "location", where),  # type: ignore[arg-type]
                                    f"{where}.location"),
        source=_enum(Source, _field(data, "source", where), f"{where}.source"),
        reason=_enum(Reason, _field(data, "reason_code", where), f"{where}.reason_code"),
        reason_text=_str(_field(data, "reason", where), f"{where}.reason"),
        selected=_str(_field(data, "selected", where), f"{where}.selected", optional=True),
        order=_strs(_field(data, "order", where), f"{where}.order"),
        metric=_enum(Metric, _field(data, "metric", where), f"{where}.metric"),
        decided_at=_time(_field(data, "decided_at", where), f"{where}.decided_at"),
        results=_results_from(_field(data, "results", where), f"{where}.results"),
    )


def entry_to_dict(entry: CacheEntry) -> dict[str, object]:
    """A cache entry as JSON-able data (for `ogsctl cache` and the socket API)."""
    return {
        "id": entry.entry_id,
        "location": location_to_dict(entry.location),
        "metric": entry.metric.value,
        "order": list(entry.order),
        "results": [result_to_dict(r, entry.metric) for r in entry.results],
        "created_at": _iso(entry.created_at, "created_at"),
        "expires_at": _iso(entry.expires_at, "expires_at"),
    }


_STATE_TYPES = get_type_hints(DaemonState)


def state_to_dict(state: DaemonState) -> dict[str, object]:
    """The daemon state as JSON-able data (times as ISO 8601 UTC)."""
    out: dict[str, object] = {}
    for f in fields(DaemonState):
        value = getattr(state, f.name)
        out[f.name] = _iso(value, f.name) if isinstance(value, datetime) else value
    return out


def state_from_dict(data: Mapping[str, object], where: str = "state") -> DaemonState:
    """The inverse of state_to_dict; absent fields keep their defaults, unknown ones are
    ignored (so a field added later reads fine from an older file)."""
    values: dict[str, Any] = {}
    for f in fields(DaemonState):
        if f.name not in data:
            continue
        value, kind, what = data[f.name], _STATE_TYPES[f.name], f"{where}.{f.name}"
        if kind == datetime | None:
            values[f.name] = None if value is None else _time(value, what)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{what}: expected true or false, got {value!r}")
            values[f.name] = value
        elif kind == str | None:
            values[f.name] = _str(value, what, optional=True)
        else:  # a new DaemonState field type: teach this function about it
            raise ValueError(f"{what}: no JSON rule for type {kind}")
    return DaemonState(**values)


# --- file handling -------------------------------------------------------------------


def _prepare(path: Path) -> None:
    """Create the directory (0700) and the file (0600) if missing, before SQLite does."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o700)
        parent.chmod(0o700)  # mkdir's mode goes through the umask
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)
    os.close(fd)


def _inspect(path: Path) -> int:
    """The file's schema version, after an integrity check; refuses what it cannot use.

    Read-only: a closing read-write connection deletes -wal/-shm, even beside a file that
    is not a database, and those are evidence to move aside with it.
    """
    companions = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    existed = [p.exists() for p in companions]
    try:
        version = _read_version(path)
        if version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}, newer than this ogsd knows "
                f"({schema.SCHEMA_VERSION}); left untouched: upgrade ogsd or move it away")
    except StoreError:
        # Leave a refused file as found: drop the empty -wal/-shm our reader created.
        wal, shm = companions
        if not existed[0] and wal.exists() and wal.stat().st_size == 0:
            wal.unlink()
            if not existed[1]:
                shm.unlink(missing_ok=True)
        raise
    return version


def _read_version(path: Path) -> int:
    # Judge the header before SQLite opens the file: opening rewrites the -shm.
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if header and header != _SQLITE_MAGIC:
        raise _CorruptError(f"file is not a database (header {header[:16]!r})")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                              timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        problems = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise _CorruptError("quick_check: " + "; ".join(map(str, problems[:5])))
        tables = {row[0] for row in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if "schema_version" not in tables:
            if tables:
                raise StoreError(f"{path} is not an ogsd database (it has tables "
                                 f"{', '.join(sorted(tables))} and no schema_version)")
            return 0
        rows = con.execute("SELECT version FROM schema_version").fetchall()
        if len(rows) != 1 or not isinstance(rows[0][0], int):
            raise StoreError(f"{path}: schema_version should hold one version, has {rows!r}")
        return int(rows[0][0])
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode & 0xFF in _CORRUPT_CODES:
            raise _CorruptError(str(exc)) from exc
        raise StoreError(f"cannot read {path}: {exc}") from exc
    finally:
        con.close()


def _move_aside(path: Path, now: datetime) -> Path:
    """Rename the file and its -wal/-shm to `<name>.corrupt-<UTC time>[-n]`; the new name."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm", ""):  # the main file last: until then, all is in place
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{target}{suffix}")
    return target


def _make_engine(path: Path) -> Engine:
    engine = create_engine(URL.create("sqlite", database=str(path)),
                           connect_args={"check_same_thread": False,
                                         "timeout": _BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Autocommit at the driver: pysqlite's own implicit BEGIN skips DDL, which would
        # leave migrations outside their transaction. We emit BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        for pragma in _PRAGMAS:
            dbapi_connection.execute(pragma).fetchall()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN, "BEGIN"))

    return engine


def _reason(exc: SQLAlchemyError) -> str:
    return str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)


# --- the store -----------------------------------------------------------------------


class Store:
    """The SQLite store; every method may be called from any thread."""

    def __init__(self, engine: Engine, path: Path, decision_limit: int) -> None:
        """Use Store.open."""
        self._engine = engine
        self._path = path
        self._decision_limit = decision_limit
        self._write_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls, path: Path, *, on_event: EventSink | None = None,
        decision_limit: int = DECISION_HISTORY_DEFAULT,
        clock: Callable[[], datetime] | None = None,
    ) -> Store:
        """Open (creating, migrating, or recovering from corruption) the store at `path`."""
        if decision_limit < 1:
            raise StoreError(f"decision history limit must be at least 1, not {decision_limit}")
        path = Path(path)
        try:
            _prepare(path)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc}") from exc
        try:
            version = _inspect(path)
        except _CorruptError as exc:
            try:
                moved = _move_aside(path, (clock or (lambda: datetime.now(UTC)))())
                _prepare(path)
            except OSError as os_exc:
                raise StoreError(f"{path} is corrupt ({exc}) and cannot be moved aside: "
                                 f"{os_exc}") from os_exc
            if on_event is not None:
                on_event("store.recovered",
                         {"path": str(path), "moved_to": str(moved), "error": str(exc)})
            version = 0
        engine = _make_engine(path)
        store = cls(engine, path, decision_limit)
        try:
            store._migrate(version, on_event)
        except BaseException:
            engine.dispose()
            raise
        return store

    def _migrate(self, seen: int, on_event: EventSink | None) -> None:
        if seen == schema.SCHEMA_VERSION:
            return
        with self._write("migrate the schema") as conn:
            start = schema.current_version(conn)  # again, under the write lock
            if start > schema.SCHEMA_VERSION:
                raise StoreError(f"{self._path} was upgraded to schema version {start} "
                                 "by a newer ogsd while opening")
            schema.migrate(conn, start)
        if on_event is not None and start < schema.SCHEMA_VERSION:
            on_event("store.migrated", {"path": str(self._path), "from": start,
                                        "to": schema.SCHEMA_VERSION})

    def close(self) -> None:
        """Close every connection; later calls fail with StoreError."""
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    @contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"cannot {action}: the store is closed")
        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot {action} in {self._path}: {_reason(exc)}") from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"cannot {action}: the store is closed")
        try:
            with (self._write_lock,
                  self._engine.connect().execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
                  as conn, conn.begin()):
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot {action} in {self._path}: {_reason(exc)}") from exc

    # cache ---------------------------------------------------------------------------

    def find_entry(self, keys: Sequence[str]) -> CacheEntry | None:
        """The entry any of `keys` points to; the newest if several. Expiry is core's call."""
        if isinstance(keys, str):
            raise StoreError("find_entry takes a sequence of keys, not one string")
        if not keys:
            return None
        entries, links = schema.cache_entries, schema.cache_keys
        query = (select(entries).join(links, links.c.entry_id == entries.c.id)
                 .where(links.c.key.in_(list(keys)))
                 .order_by(entries.c.created_at.desc(), entries.c.id.desc()).limit(1))
        with self._read("find a cache entry") as conn:
            row = conn.execute(query).first()
        return None if row is None else _entry_from_row(row)

    def save_entry(self, entry: CacheEntry) -> CacheEntry:
        """Store a new entry; each of its location's keys now points to it alone.

        Entries left without any key are deleted. Returns the entry with entry_id set.
        """
        keys = list(dict.fromkeys(entry.location.keys))
        if not keys:
            raise StoreError(f"cannot cache location {entry.location.domain!r}: "
                             "it has no DNS server, hence no key")
        try:
            values = {
                "domain": entry.location.domain,
                "servers": _dumps(list(entry.location.servers)),
                "metric": entry.metric.value,
                "order": _dumps(list(entry.order)),
                "results": _dumps([result_to_dict(r, entry.metric) for r in entry.results]),
                "created_at": _iso(entry.created_at, "created_at"),
                "expires_at": _iso(entry.expires_at, "expires_at"),
            }
        except ValueError as exc:
            raise StoreError(f"cannot save cache entry: {exc}") from exc
        entries, links = schema.cache_entries, schema.cache_keys
        with self._write("save a cache entry") as conn:
            entry_id = conn.execute(
                entries.insert().values(values).returning(entries.c.id)).scalar_one()
            upsert = insert(links).values([{"key": k, "entry_id": entry_id} for k in keys])
            conn.execute(upsert.on_conflict_do_update(
                index_elements=[links.c.key], set_={"entry_id": upsert.excluded.entry_id}))
            conn.execute(delete(entries).where(entries.c.id.not_in(select(links.c.entry_id))))
        return replace(entry, entry_id=int(entry_id))

    def list_entries(self) -> list[CacheEntry]:
        """Every cache entry, newest first."""
        entries = schema.cache_entries
        query = select(entries).order_by(entries.c.created_at.desc(), entries.c.id.desc())
        with self._read("list cache entries") as conn:
            rows = conn.execute(query).all()
        return [_entry_from_row(row) for row in rows]

    def clear_cache(self) -> int:
        """Delete every entry (and so every key); how many entries there were."""
        with self._write("clear the cache") as conn:
            return conn.execute(delete(schema.cache_entries)).rowcount

    def delete_expired(self, now: datetime) -> int:
        """Delete entries whose expiry is at or before `now`; how many."""
        try:
            cutoff = _iso(now, "now")
        except ValueError as exc:
            raise StoreError(f"cannot delete expired entries: {exc}") from exc
        entries = schema.cache_entries
        with self._write("delete expired cache entries") as conn:
            return conn.execute(delete(entries).where(entries.c.expires_at <= cutoff)).rowcount

    # decisions -----------------------------------------------------------------------

    def add_decision(self, decision: Decision) -> None:
        """Record a decision, dropping the oldest beyond the history limit."""
        try:
            values = {
                "decided_at": _iso(decision.decided_at, "decided_at"),
                "domain": decision.location.domain,
                "servers": _dumps(list(decision.location.servers)),
                "source": decision.source.value,
                "reason": decision.reason.value,
                "reason_text": decision.reason_text,
                "selected": decision.selected,
                "order": _dumps(list(decision.order)),
                "metric": decision.metric.value,
                "results": _dumps([result_to_dict(r, decision.metric)
                                   for r in decision.results]),
            }
        except ValueError as exc:
            raise StoreError(f"cannot record decision: {exc}") from exc
        table = schema.decisions
        # The id of the oldest row to keep; NULL (nothing deleted) while under the limit.
        oldest_kept = (select(table.c.id).order_by(table.c.id.desc())
                       .limit(1).offset(self._decision_limit - 1).scalar_subquery())
        with self._write("record a decision") as conn:
            conn.execute(table.insert().values(values))
            conn.execute(delete(table).where(table.c.id < oldest_kept))

    def decisions(self, limit: int = 50) -> list[Decision]:
        """The latest recorded decisions, newest first."""
        if limit < 0:
            raise StoreError(f"decision limit must not be negative, not {limit}")
        table = schema.decisions
        with self._read("read decisions") as conn:
            rows = conn.execute(select(table).order_by(table.c.id.desc()).limit(limit)).all()
        return [_decision_from_row(row) for row in rows]

    # state ---------------------------------------------------------------------------

    def load_state(self) -> DaemonState:
        """The persisted daemon state; the defaults when none was saved."""
        with self._read("load the daemon state") as conn:
            data = conn.execute(select(schema.state.c.data)).scalar_one_or_none()
        if data is None:
            return DaemonState()
        try:
            return state_from_dict(json.loads(data))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise StoreError(f"stored daemon state is unreadable: {exc}") from exc

    def save_state(self, state: DaemonState) -> None:
        """Replace the persisted daemon state in one transaction."""
        try:
            data = _dumps(state_to_dict(state))
        except ValueError as exc:
            raise StoreError(f"cannot save daemon state: {exc}") from exc
        upsert = insert(schema.state).values(id=1, data=data)
        with self._write("save the daemon state") as conn:
            conn.execute(upsert.on_conflict_do_update(index_elements=[schema.state.c.id],
                                                      set_={"data": data}))


def _dumps(value: object) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; fail here, not in a client's parser.
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _entry_from_row(row: Row[Any]) -> CacheEntry:
    where = f"cache entry {row.id}"
    try:
        metric = _enum(Metric, row.metric, f"{where}.metric")
        return CacheEntry(
            location=Location(domain=row.domain,
                              servers=_strs(json.loads(row.servers), f"{where}.servers")),
            order=_strs(json.loads(row.order), f"{where}.order"),
            results=_results_from(json.loads(row.results), f"{where}.results"),
            metric=metric,
            created_at=_time(row.created_at, f"{where}.created_at"),
            expires_at=_time(row.expires_at, f"{where}.expires_at"),
            entry_id=row.id,
        )
    except ValueError as exc:
        raise StoreError(f"stored {where} is unreadable: {exc}") from exc


def _decision_from_row(row: Row[Any]) -> Decision:
    where = f"decision {row.id}"
    try:
        return Decision(
            location=Location(domain=row.domain,
                              servers=_strs(json.loads(row.servers), f"{where}.servers")),
            source=_enum(Source, row.source, f"{where}.source"),
            reason=_enum(Reason, row.reason, f"{where}.reason"),
            reason_text=row.reason_text,
            selected=row.selected,
            order=_strs(json.loads(row.order), f"{where}.order"),
            metric=_enum(Metric, row.metric, f"{where}.metric"),
            decided_at=_time(row.decided_at, f"{where}.decided_at"),
            results=_results_from(json.loads(row.results), f"{where}.results"),
        )
    except ValueError as exc:
        raise StoreError(f"stored {where} is unreadable: {exc}") from exc
