"""SQLite store: the OGS location cache, the decision history and the daemon state.

Synchronous on purpose: the daemon calls it from worker threads (anyio.to_thread).
One engine; readers run side by side (WAL), writers take a lock and BEGIN IMMEDIATE so
a write never fails half-way upgrading its lock. Every failure is a StoreError. The file
itself (creation, checks, corruption set aside, read-only media) is ogsd.store.files.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Row, delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ogsd.core.models import CacheEntry, DaemonState, Decision
from ogsd.store import files, schema
from ogsd.store.files import EventSink, StoreError
from ogsd.wire.shapes import state_from_dict, state_to_dict, time_text

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Callable[..., Any])

# Bounded so the file stays small; 500 rounds is weeks of history at a few a day.
DECISION_HISTORY_DEFAULT = 500


class _RecoveredError(StoreError):
    """The file went bad while open and was replaced by a new one: the call may be retried."""


def _reason(exc: SQLAlchemyError) -> str:
    return str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)


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
            files.prepare(path)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc}") from exc
        clock = clock or (lambda: datetime.now(UTC))
        try:
            version = files.inspect(path)
        except files.CorruptError as exc:
            files.start_over(path, clock(), str(exc), on_event)
            version = 0
        engine = files.make_engine(path)
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
                files.start_over(self._path, self._clock(), reason, self._on_event)
                self._engine = files.make_engine(self._path)
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
            if files.is_corrupt(exc):
                raise self._recover(engine, action, exc) from exc
            raise StoreError(f"cannot {action} in {self._path}: {_reason(exc)}") from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"cannot {action}: the store is closed")
        engine = self._engine
        try:
            with (self._write_lock,
                  engine.connect().execution_options(**{files.BEGIN: "BEGIN IMMEDIATE"})
                  as conn, conn.begin()):
                yield conn
        except SQLAlchemyError as exc:
            if files.is_corrupt(exc):
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
