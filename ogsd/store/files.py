"""The database file under the store: created private, judged before SQLite opens it,
moved aside when corrupt, read as it is on read-only media, and the engine that opens it.

Every failure is a StoreError; a file found damaged is a CorruptError until it has been
set aside and started over.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ogsd.store import schema

EventSink = Callable[[str, dict[str, object]], None]

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
BEGIN = "ogsd_begin"  # execution option: the BEGIN statement of a transaction


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class CorruptError(Exception):
    """The file is damaged or not a database."""


def prepare(path: Path) -> None:
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


def inspect(path: Path) -> int:
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
        raise CorruptError(f"file is not a database (header {header[:16]!r})")
    try:
        con = sqlite3.connect(_read_only_uri(path), uri=True,
                              timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        problems = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise CorruptError("quick_check: " + "; ".join(map(str, problems[:5])))
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
            raise CorruptError(str(exc)) from exc
        raise StoreError(f"cannot read {path}: {exc}") from exc
    finally:
        con.close()


def start_over(path: Path, now: datetime, error: str, on_event: EventSink | None) -> None:
    """Move a corrupt file aside and create an empty one in its place."""
    try:
        moved = _move_aside(path, now)
        prepare(path)
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


def make_engine(path: Path) -> Engine:
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
        conn.exec_driver_sql(conn.get_execution_options().get(BEGIN, "BEGIN"))

    return engine


def is_corrupt(exc: SQLAlchemyError) -> bool:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return (isinstance(orig, sqlite3.DatabaseError)
            and orig.sqlite_errorcode & 0xFF in _CORRUPT_CODES)

