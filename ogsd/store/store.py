"""SQLite store: the OGS location cache, the decision history and the daemon state.

Synchronous on purpose: the daemon calls it from worker threads (anyio.to_thread).
One engine; readers run side by side (WAL), writers take a lock and BEGIN IMMEDIATE so
a write never fails half-way upgrading its lock. Every failure is a StoreError.
The JSON shape functions live in store_schema and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Row, create_engine, delete, event, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ogsd.core.models import CacheEntry, DaemonState, Decision
from ogsd.store import schema
from ogsd.wire.shapes import state_from_dict, state_to_dict, time_text

EventSink = Callable[[str, dict[str, object]], None]
_T = TypeVar("_T")
_M = TypeVar("_M", bound=Callable[..., Any])

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


class _RecoveredError(StoreError):
    """The file went bad while open and was replaced by a new one: the call may be retried."""


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
        con = sqlite3.connect(_read_only_uri(path), uri=True,
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


def _start_over(path: Path, now: datetime, error: str, on_event: EventSink | None) -> None:
    """Move a corrupt file aside and create an empty one in its place."""
    try:
        moved = _move_aside(path, now)
        _prepare(path)
    except OSError as exc:
        raise StoreError(f"{path} is corrupt ({error}) and cannot be moved aside: "
                         f"{exc}") from exc
    if on_event is not None:
        on_event("store.recovered", {"path": str(path), "moved_to": str(moved), "error": error})


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


def _read_only_media(path: Path) -> bool:
    """Whether `path`'s file system is mounted read-only (as after disk errors)."""
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _immutable(path: Path) -> bool:
    """On read-only media without a -wal (closed cleanly) SQLite cannot create the -shm
    a WAL reader needs; `immutable` reads the file as it is, safe where nothing can
    write. (With a -wal left, its -shm is there too and a plain read-only open works.)"""
    wal = Path(f"{path}-wal")
    return _read_only_media(path) and (not wal.exists() or wal.stat().st_size == 0)


def _read_only_uri(path: Path) -> str:
    return f"{path.resolve().as_uri()}?{'immutable=1' if _immutable(path) else 'mode=ro'}"


def _make_engine(path: Path) -> Engine:
    connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": _BUSY_TIMEOUT_S}
    url = URL.create("sqlite", database=str(path))
    if _immutable(path):  # reads still answer; every write is a StoreError
        url = URL.create("sqlite", database=_read_only_uri(path), query={"uri": "true"})
    engine = create_engine(url, connect_args=connect_args)

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


def _is_corrupt(exc: SQLAlchemyError) -> bool:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return (isinstance(orig, sqlite3.DatabaseError)
            and orig.sqlite_errorcode & 0xFF in _CORRUPT_CODES)


def _recovering(method: _M) -> _M:
    """Run the call once more on the new file when the old one was found corrupt."""
    @wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except _RecoveredError:
            return method(*args, **kwargs)
    return cast(_M, call)


# --- the store -----------------------------------------------------------------------


class Store:
    """The SQLite store; every method may be called from any thread."""

    def __init__(self, engine: Engine, path: Path, decision_limit: int,
                 on_event: EventSink | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        """Use Store.open."""
        self._engine = engine
        self._path = path
        self._decision_limit = decision_limit
        self._on_event = on_event
        self._clock = clock or (lambda: datetime.now(UTC))
        self._write_lock = threading.RLock()  # recovery migrates the new file under it
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
        clock = clock or (lambda: datetime.now(UTC))
        try:
            version = _inspect(path)
        except _CorruptError as exc:
            _start_over(path, clock(), str(exc), on_event)
            version = 0
        engine = _make_engine(path)
        store = cls(engine, path, decision_limit, on_event, clock)
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
        # A new file (version 0) is not news; an upgrade of a user's file is.
        if on_event is not None and 0 < start < schema.SCHEMA_VERSION:
            on_event("store.migrated", {"path": str(self._path), "from": start,
                                        "to": schema.SCHEMA_VERSION})

    def _recover(self, failed: Engine, action: str, exc: SQLAlchemyError) -> StoreError:
        """The open file went bad: set it aside and start a new one, as `open` does."""
        reason = _reason(exc)
        with self._write_lock:
            if self._engine is failed:  # not already done by another thread
                failed.dispose()
                _start_over(self._path, self._clock(), reason, self._on_event)
                self._engine = _make_engine(self._path)
                self._migrate(0, None)
        return _RecoveredError(f"cannot {action} in {self._path}: {reason} (the file was "
                               "moved aside and a new one started)")

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
        engine = self._engine
        try:
            with engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            if _is_corrupt(exc):
                raise self._recover(engine, action, exc) from exc
            raise StoreError(f"cannot {action} in {self._path}: {_reason(exc)}") from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"cannot {action}: the store is closed")
        engine = self._engine
        try:
            with (self._write_lock,
                  engine.connect().execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
                  as conn, conn.begin()):
                yield conn
        except SQLAlchemyError as exc:
            if _is_corrupt(exc):
                raise self._recover(engine, action, exc) from exc
            raise StoreError(f"cannot {action} in {self._path}: {_reason(exc)}") from exc

    # cache ---------------------------------------------------------------------------

    @_recovering
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
        return None if row is None else _decoded(schema.entry_from_row, row, "cache_entries")

    @_recovering
    def save_entry(self, entry: CacheEntry) -> CacheEntry:
        """Store a new entry; each of its location's keys now points to it alone.

        Entries left without any key are deleted. Returns the entry with entry_id set.
        """
        keys = list(dict.fromkeys(entry.location.keys))
        if not keys:
            raise StoreError(f"cannot cache location {entry.location.domain!r}: "
                             "it has no DNS server, hence no key")
        try:
            values = schema.entry_row(entry)
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

    @_recovering
    def list_entries(self) -> list[CacheEntry]:
        """Every cache entry, newest first."""
        entries = schema.cache_entries
        query = select(entries).order_by(entries.c.created_at.desc(), entries.c.id.desc())
        with self._read("list cache entries") as conn:
            rows = conn.execute(query).all()
        return [_decoded(schema.entry_from_row, row, "cache_entries") for row in rows]

    @_recovering
    def clear_cache(self) -> int:
        """Delete every entry (and so every key); how many entries there were."""
        with self._write("clear the cache") as conn:
            return conn.execute(delete(schema.cache_entries)).rowcount

    @_recovering
    def delete_expired(self, now: datetime) -> int:
        """Delete entries whose expiry is at or before `now`; how many."""
        try:
            cutoff = time_text(now, "now")
        except ValueError as exc:
            raise StoreError(f"cannot delete expired entries: {exc}") from exc
        entries = schema.cache_entries
        with self._write("delete expired cache entries") as conn:
            return conn.execute(delete(entries).where(entries.c.expires_at <= cutoff)).rowcount

    # decisions -----------------------------------------------------------------------

    @_recovering
    def add_decision(self, decision: Decision) -> None:
        """Record a decision, dropping the oldest beyond the history limit."""
        try:
            values = schema.decision_row(decision)
        except ValueError as exc:
            raise StoreError(f"cannot record decision: {exc}") from exc
        table = schema.decisions
        # The id of the oldest row to keep; NULL (nothing deleted) while under the limit.
        oldest_kept = (select(table.c.id).order_by(table.c.id.desc())
                       .limit(1).offset(self._decision_limit - 1).scalar_subquery())
        with self._write("record a decision") as conn:
            conn.execute(table.insert().values(values))
            conn.execute(delete(table).where(table.c.id < oldest_kept))

    @_recovering
    def decisions(self, limit: int = 50) -> list[Decision]:
        """The latest recorded decisions, newest first."""
        if limit < 0:
            raise StoreError(f"decision limit must not be negative, not {limit}")
        table = schema.decisions
        with self._read("read decisions") as conn:
            rows = conn.execute(select(table).order_by(table.c.id.desc()).limit(limit)).all()
        return [_decoded(schema.decision_from_row, row, "decisions") for row in rows]

    # state ---------------------------------------------------------------------------

    @_recovering
    def load_state(self) -> DaemonState:
        """The persisted daemon state; the defaults when none was saved."""
        with self._read("load the daemon state") as conn:
            return _state_of(conn)

    @_recovering
    def save_state(self, state: DaemonState) -> None:
        """Replace the persisted daemon state in one transaction."""
        with self._write("save the daemon state") as conn:
            _put_state(conn, state)

    @_recovering
    def update_state(self, **changes: Any) -> DaemonState:
        """Change some fields of the state atomically (read and write in one transaction),
        so concurrent updaters never overwrite each other's fields; returns the result."""
        with self._write("update the daemon state") as conn:
            state = dataclasses.replace(_state_of(conn), **changes)
            _put_state(conn, state)
        return state


def _state_of(conn: Connection) -> DaemonState:
    data = conn.execute(select(schema.state.c.data)).scalar_one_or_none()
    if data is None:
        return DaemonState()
    try:
        return state_from_dict(json.loads(data))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise StoreError(f"stored daemon state is unreadable: {exc}") from exc


def _put_state(conn: Connection, state: DaemonState) -> None:
    try:
        data = schema.dumps(state_to_dict(state))
    except ValueError as exc:
        raise StoreError(f"cannot save daemon state: {exc}") from exc
    upsert = insert(schema.state).values(id=1, data=data)
    conn.execute(upsert.on_conflict_do_update(index_elements=[schema.state.c.id],
                                              set_={"data": data}))


def _decoded(convert: Callable[[Row[Any]], _T], row: Row[Any], table: str) -> _T:
    try:
        return convert(row)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise StoreError(f"row {row.id} of {table} is unreadable: {exc}") from exc
