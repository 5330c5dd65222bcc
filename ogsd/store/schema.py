"""What the store keeps and how: SQLite tables and migrations, and rows.

The tables describe the latest version and only build queries. The file itself is only
ever changed by `MIGRATIONS`, frozen DDL per version, so a database written by any older
ogsd is brought forward step by step. The JSON columns hold ogsd.wire.shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.dialects.sqlite import insert

from ogsd.core.models import (
    CacheEntry,
    Decision,
    Location,
    Metric,
    Reason,
    Source,
)
from ogsd.wire.decode import decode
from ogsd.wire.shapes import result_to_dict, results_from, time_text

# --- tables and migrations ---------------------------------------------------------------

# Times are UTC ISO 8601 text with microseconds ("2024-05-01T10:00:00.000000+00:00"):
# fixed width, so comparing the text compares the instants, and lossless.
metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("id", Integer, primary_key=True),  # always 1: a single row
    Column("version", Integer, nullable=False),
)
cache_entries = Table(
    "cache_entries", metadata,
    Column("id", Integer, primary_key=True),
    Column("domain", Text, nullable=False),
    Column("servers", Text, nullable=False),  # JSON list of DNS server addresses
    Column("metric", Text, nullable=False),
    Column("order", Text, nullable=False),  # JSON list of gateway hosts, best first
    Column("results", Text, nullable=False),  # JSON list of result dicts (store.result_to_dict)
    Column("created_at", Text, nullable=False),
    Column("expires_at", Text, nullable=False),
    Column("search", Text, nullable=False),  # JSON list of the other search domains (v3)
)
cache_keys = Table(
    "cache_keys", metadata,
    Column("key", Text, primary_key=True),  # "domain|server-ip"
    Column("entry_id", Integer, ForeignKey("cache_entries.id", ondelete="CASCADE"),
           nullable=False),
)
decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True),  # insertion order: the newest is the largest
    Column("decided_at", Text, nullable=False),
    Column("domain", Text, nullable=False),
    Column("servers", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("reason", Text, nullable=False),  # Reason code
    Column("reason_text", Text, nullable=False),
    Column("selected", Text),
    Column("order", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("results", Text, nullable=False),
    Column("search", Text, nullable=False),  # (v3)
)
state = Table(
    "state", metadata,
    Column("id", Integer, primary_key=True),  # always 1: one JSON document, replaced whole
    Column("data", Text, nullable=False),
)
Index("cache_keys_entry_id", cache_keys.c.entry_id)
Index("cache_entries_expires_at", cache_entries.c.expires_at)


def _v1_initial(conn: Connection) -> None:
    """Version 1: the tables."""
    for ddl in (
        "CREATE TABLE schema_version ("
        " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
        # AUTOINCREMENT: an id is never reused, so an id shown to a user (ogsctl) never
        # comes to mean another entry.
        "CREATE TABLE cache_entries ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, domain TEXT NOT NULL, servers TEXT NOT NULL,"
        ' metric TEXT NOT NULL, "order" TEXT NOT NULL, results TEXT NOT NULL,'
        " created_at TEXT NOT NULL, expires_at TEXT NOT NULL)",
        "CREATE TABLE cache_keys ("
        " key TEXT PRIMARY KEY,"
        " entry_id INTEGER NOT NULL REFERENCES cache_entries(id) ON DELETE CASCADE)",
        "CREATE TABLE decisions ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, decided_at TEXT NOT NULL,"
        " domain TEXT NOT NULL, servers TEXT NOT NULL, source TEXT NOT NULL,"
        " reason TEXT NOT NULL, reason_text TEXT NOT NULL, selected TEXT,"
        ' "order" TEXT NOT NULL, metric TEXT NOT NULL, results TEXT NOT NULL)',
        "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), data TEXT NOT NULL)",
    ):
        conn.exec_driver_sql(ddl)


def _v2_indexes(conn: Connection) -> None:
    """Version 2: indexes for the deletes that run on every round."""
    # Deleting an entry cascades to its keys; without an index on the child column SQLite
    # scans all of cache_keys per deleted entry (sqlite.org/foreignkeys.html, section 3).
    conn.exec_driver_sql("CREATE INDEX cache_keys_entry_id ON cache_keys(entry_id)")
    conn.exec_driver_sql("CREATE INDEX cache_entries_expires_at ON cache_entries(expires_at)")


def _v3_search_domains(conn: Connection) -> None:
    """Version 3: a location's other search domains (its keys use every one)."""
    for table in ("cache_entries", "decisions"):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN search TEXT NOT NULL DEFAULT '[]'")


# MIGRATIONS[n] takes a database from version n to n + 1 (0 is an empty file).
# Append only: a released step is never edited, since files in the field went through it.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1_initial, _v2_indexes,
                                                        _v3_search_domains)
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    """The file's schema version: 0 when it has no schema_version table yet."""
    has_table = conn.execute(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
    ).first()
    if has_table is None:
        return 0
    version = conn.execute(select(func.max(schema_version.c.version))).scalar_one()
    return int(version) if version is not None else 0


def migrate(conn: Connection, start: int) -> None:
    """Apply the steps after `start`, inside the caller's transaction."""
    for version in range(start, SCHEMA_VERSION):
        MIGRATIONS[version](conn)
        stmt = insert(schema_version).values(id=1, version=version + 1)
        conn.execute(stmt.on_conflict_do_update(index_elements=[schema_version.c.id],
                                                set_={"version": version + 1}))


# --- rows --------------------------------------------------------------------------------


def dumps(value: object) -> str:
    """Compact JSON; NaN/Infinity are refused here rather than in a client's parser."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def entry_row(entry: CacheEntry) -> dict[str, object]:
    """The cache_entries values of an entry (its id is the database's)."""
    return {
        "domain": entry.location.domain,
        "servers": dumps(list(entry.location.servers)),
        "search": dumps(list(entry.location.search)),
        "metric": entry.metric.value,
        "order": dumps(list(entry.order)),
        "results": dumps([result_to_dict(r, entry.metric) for r in entry.results]),
        "created_at": time_text(entry.created_at, "created_at"),
        "expires_at": time_text(entry.expires_at, "expires_at"),
    }


def entry_from_row(row: Row[Any]) -> CacheEntry:
    """The inverse of entry_row, with the id."""
    where = f"cache entry {row.id}"
    return CacheEntry(
        location=_row_location(row, where),
        order=decode(tuple[str, ...], json.loads(row.order), f"{where}.order"),
        results=results_from(json.loads(row.results), f"{where}.results"),
        metric=decode(Metric, row.metric, f"{where}.metric"),
        created_at=decode(datetime, row.created_at, f"{where}.created_at"),
        expires_at=decode(datetime, row.expires_at, f"{where}.expires_at"),
        entry_id=row.id,
    )


def _row_location(row: Row[Any], where: str) -> Location:
    return Location(domain=row.domain,
                    servers=decode(tuple[str, ...], json.loads(row.servers), f"{where}.servers"),
                    search=decode(tuple[str, ...], json.loads(row.search), f"{where}.search"))


def decision_row(decision: Decision) -> dict[str, object]:
    """The decisions values of a decision."""
    return {
        "decided_at": time_text(decision.decided_at, "decided_at"),
        "domain": decision.location.domain,
        "servers": dumps(list(decision.location.servers)),
        "search": dumps(list(decision.location.search)),
        "source": decision.source.value,
        "reason": decision.reason.value,
        "reason_text": decision.reason_text,
        "selected": decision.selected,
        "order": dumps(list(decision.order)),
        "metric": decision.metric.value,
        "results": dumps([result_to_dict(r, decision.metric) for r in decision.results]),
    }


def decision_from_row(row: Row[Any]) -> Decision:
    """The inverse of decision_row."""
    where = f"decision {row.id}"
    return Decision(
        location=_row_location(row, where),
        source=decode(Source, row.source, f"{where}.source"),
        reason=decode(Reason, row.reason, f"{where}.reason"),
        reason_text=row.reason_text,
        selected=row.selected,
        order=decode(tuple[str, ...], json.loads(row.order), f"{where}.order"),
        metric=decode(Metric, row.metric, f"{where}.metric"),
        decided_at=decode(datetime, row.decided_at, f"{where}.decided_at"),
        results=results_from(json.loads(row.results), f"{where}.results"),
    )
