"""The SQLite store against real database files in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy

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
from ogsd.store import schema as store_schema
from ogsd.store.files import StoreError
from ogsd.store.store import DECISION_HISTORY_DEFAULT, Store
from ogsd.wire.shapes import (
    decision_from_dict,
    decision_to_dict,
    entry_to_dict,
    result_from_dict,
    result_to_dict,
    state_from_dict,
    state_to_dict,
)
from tests.fault_helpers import garble

T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
LIFETIME = timedelta(days=14)
HOME = Location("corp.example", ("198.18.0.53", "198.18.1.53"))


def gateway_result(host: str, base: float, *, proxy: ProxyCheck | None = None) -> GatewayResult:
    """A result with a full sample, one without TCP_INFO, and a failed probe."""
    return GatewayResult(
        host=host,
        address="198.18.10.1",
        samples=(
            ProbeSample(started_at=1714557600.123456, network_rtt_ms=base + 0.25,
                        tcp_info_rtt_ms=base + 0.5, exchange_ms=base * 3 + 0.1),
            ProbeSample(started_at=1714557600.2, network_rtt_ms=base, exchange_ms=base * 2),
            ProbeSample(started_at=1714557600.3, network_rtt_ms=base + 1,
                        error="TLS handshake timed out"),
        ),
        proxy_check=proxy,
    )


RESULTS = (
    gateway_result("vpn-a.example", 12.5,
                   proxy=ProxyCheck(status=200, elapsed_ms=3.25)),
    gateway_result("vpn-b.example", 40.0,
                   proxy=ProxyCheck(status=302, location="http://portal.example/",
                                    proxy_detected=True, elapsed_ms=8.0)),
    GatewayResult(host="vpn-c.example", error="no address: NXDOMAIN",
                  proxy_check=ProxyCheck(error="connection refused")),
)


def entry(location: Location = HOME, created: datetime = T0, *,
          order: tuple[str, ...] = ("vpn-a.example", "vpn-b.example")) -> CacheEntry:
    return CacheEntry(location=location, order=order, results=RESULTS, metric=Metric.NETWORK,
                      created_at=created, expires_at=created + LIFETIME)


def decision(n: int = 0, *, metric: Metric = Metric.EXCHANGE) -> Decision:
    return Decision(location=HOME, source=Source.PROBES, reason=Reason.PROBES,
                    reason_text=f"fresh probes #{n}", selected="vpn-a.example",
                    order=("vpn-a.example", "vpn-b.example", "vpn-c.example"),
                    metric=metric, decided_at=T0 + timedelta(minutes=n), results=RESULTS)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ogsd.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store.open(db_path) as opened:
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, to look at the file behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- JSON shapes -----------------------------------------------------------------------


def test_result_dict_has_the_documented_shape() -> None:
    result = RESULTS[1]
    as_network = result_to_dict(result, Metric.NETWORK)
    assert as_network == {
        "host": "vpn-b.example",
        "address": "198.18.10.1",
        "family": "IPv4",
        "proxy": None,
        "rtt_ms": 40.0,  # min over completed probes; the failed one (41.0) is not counted
        "network_rtt_ms": [40.25, 40.0, 41.0],
        "exchange_ms": [120.1, 80.0, None],
        "error": None,
        "tcp_info_rtt_ms": [40.5, None, None],
        "started_at": [1714557600.123456, 1714557600.2, 1714557600.3],
        "probe_errors": [None, None, "TLS handshake timed out"],
        "proxy_check": {"status": 302, "location": "http://portal.example/",
                        "proxy_detected": True, "error": None, "elapsed_ms": 8.0},
    }
    assert result_to_dict(result, Metric.EXCHANGE)["rtt_ms"] == 80.0
    assert result_to_dict(RESULTS[2], Metric.NETWORK)["rtt_ms"] is None


@pytest.mark.parametrize("result", RESULTS)
def test_result_round_trips_through_json(result: GatewayResult) -> None:
    text = json.dumps(result_to_dict(result, Metric.NETWORK))
    assert result_from_dict(json.loads(text)) == result


def test_decision_round_trips_through_json() -> None:
    original = decision(3)
    data = decision_to_dict(original)
    assert data["reason"] == "fresh probes #3"
    assert data["reason_code"] == "probes"
    assert data["decided_at"] == "2024-05-01T10:03:00.123456+00:00"
    assert data["location"] == {"domain": "corp.example",
                                "servers": ["198.18.0.53", "198.18.1.53"], "search": [],
                                "keys": ["corp.example|198.18.0.53", "corp.example|198.18.1.53"]}
    assert data["results"][0]["rtt_ms"] == 25.0  # type: ignore[index]  # exchange metric
    back = decision_from_dict(json.loads(json.dumps(data)))
    assert back == original
    assert back.decided_at.tzinfo is UTC


def test_state_round_trips_through_json() -> None:
    state = DaemonState(last_gateway="vpn-a.example", connected=None,
                        last_connect_at=T0, connected_at_sleep=True,
                        sleep_started_at=T0.astimezone(timezone(timedelta(hours=9))),
                        connected_servers=("198.18.0.53", "198.18.1.53"))
    assert state_from_dict(json.loads(json.dumps(state_to_dict(state)))) == state
    assert state_from_dict({}) == DaemonState()
    with pytest.raises(ValueError, match=r"state.connected_servers\[1\]: expected text, got 7"):
        state_from_dict({"connected_servers": ["198.18.0.53", 7]})


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("metric"), "decision: missing 'metric'"),
    (lambda d: d.update(source="psychic"), r"decision.source: unknown value 'psychic'"),
    (lambda d: d.update(decided_at="2024-05-01T10:00:00"), "decided_at: time without a UTC"),
    (lambda d: d.update(decided_at="yesterday"), "decided_at: not an ISO 8601 time"),
    (lambda d: d.update(order="vpn-a"), r"decision.order: expected a list"),
    (lambda d: d["results"][0]["exchange_ms"].pop(), r"results\[0\]: per-probe lists differ"),
    (lambda d: d["results"][1]["network_rtt_ms"].__setitem__(0, "fast"),
     r"results\[1\].network_rtt_ms\[0\]: expected a number"),
    (lambda d: d["results"][0]["proxy_check"].update(proxy_detected="no"),
     r"results\[0\].proxy_check.proxy_detected: expected true or false"),
    (lambda d: d["location"].pop("servers"), "decision.location: missing 'servers'"),
])
def test_bad_decision_dict_names_the_problem(mutate: object, message: str) -> None:
    data = json.loads(json.dumps(decision_to_dict(decision())))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        decision_from_dict(data)


# --- cache -------------------------------------------------------------------------------


def test_entry_round_trips_and_times_come_back_as_utc(store: Store) -> None:
    tokyo = timezone(timedelta(hours=9))
    original = entry(created=T0.astimezone(tokyo))
    saved = store.save_entry(original)
    assert saved.entry_id is not None
    assert saved == replace(original, entry_id=saved.entry_id)
    found = store.find_entry(HOME.keys[1:])
    assert found == saved
    assert found is not None
    assert found.created_at.tzinfo is UTC
    assert found.expires_at.tzinfo is UTC
    assert entry_to_dict(found)["id"] == saved.entry_id


def test_keys_point_to_one_entry_and_move_on_a_new_save(store: Store, db_path: Path) -> None:
    first = store.save_entry(entry())
    with raw(db_path) as con:
        assert sorted(con.execute("SELECT key, entry_id FROM cache_keys")) == [
            ("corp.example|198.18.0.53", first.entry_id),
            ("corp.example|198.18.1.53", first.entry_id),
        ]
    # A network that shares one DNS server with HOME takes that key over.
    second = store.save_entry(entry(Location("corp.example", ("198.18.1.53",)),
                                    T0 + timedelta(hours=1), order=("vpn-b.example",)))
    assert store.find_entry(["corp.example|198.18.1.53"]) == second
    assert store.find_entry(["corp.example|198.18.0.53"]) == first
    assert [e.entry_id for e in store.list_entries()] == [second.entry_id, first.entry_id]
    # Its last key moves too: the first entry has no key left, so it is gone.
    third = store.save_entry(entry(Location("corp.example", ("198.18.0.53",)),
                                   T0 + timedelta(hours=2)))
    assert [e.entry_id for e in store.list_entries()] == [third.entry_id, second.entry_id]
    assert store.find_entry(["corp.example|198.18.0.53"]) == third


def test_find_entry_prefers_the_newest_of_several_matches(store: Store) -> None:
    old = store.save_entry(entry(Location("a.example", ("198.18.0.1",)), T0))
    new = store.save_entry(entry(Location("b.example", ("198.18.0.2",)), T0 + timedelta(1)))
    assert store.find_entry(["b.example|198.18.0.2", "a.example|198.18.0.1"]) == new
    assert store.find_entry(["a.example|198.18.0.1", "nowhere|198.18.9.9"]) == old
    assert store.find_entry(["nowhere|198.18.9.9"]) is None
    assert store.find_entry([]) is None


def test_clear_cache_removes_entries_and_their_keys(store: Store, db_path: Path) -> None:
    store.save_entry(entry())
    store.save_entry(entry(Location("b.example", ("198.18.0.2",))))
    assert store.clear_cache() == 2
    assert store.list_entries() == []
    with raw(db_path) as con:  # the cascade ran: foreign_keys is on
        assert con.execute("SELECT count(*) FROM cache_keys").fetchone() == (0,)
    assert store.clear_cache() == 0


def test_delete_expired_keeps_entries_valid_at_now(store: Store) -> None:
    for days, domain in ((0, "old.example"), (1, "mid.example"), (2, "new.example")):
        store.save_entry(entry(Location(domain, ("198.18.0.1",)), T0 + timedelta(days)))
    now = T0 + LIFETIME + timedelta(days=1)  # exactly mid's expiry: expired (now < expires)
    assert store.delete_expired(now) == 2
    assert [e.location.domain for e in store.list_entries()] == ["new.example"]
    assert store.delete_expired(now) == 0


def test_bad_entries_are_refused_with_a_reason(store: Store) -> None:
    with pytest.raises(StoreError, match="created_at: naive datetime"):
        store.save_entry(entry(created=datetime(2024, 5, 1)))
    with pytest.raises(StoreError, match="no DNS server"):
        store.save_entry(entry(Location("corp.example", ())))
    with pytest.raises(StoreError, match="not one string"):
        store.find_entry("corp.example|198.18.0.53")
    assert store.list_entries() == []


def test_unreadable_row_is_a_store_error(store: Store, db_path: Path) -> None:
    saved = store.save_entry(entry())
    with raw(db_path) as con:
        bad = {**result_to_dict(RESULTS[0], Metric.NETWORK), "host": 1}
        con.execute("UPDATE cache_entries SET results = ?", (json.dumps([bad]),))
    unreadable = (rf"row {saved.entry_id} of cache_entries is unreadable: "
                  rf"cache entry {saved.entry_id}.results\[0\].host: expected text, got 1")
    with pytest.raises(StoreError, match=unreadable):
        store.find_entry(HOME.keys)


# --- decisions and state ---------------------------------------------------------------


def test_decision_round_trips_through_the_store(store: Store) -> None:
    plain = Decision(location=HOME, source=Source.FALLBACK, reason=Reason.FALLBACK,
                     reason_text="no results within 7 s", selected=None, order=(),
                     metric=Metric.NETWORK, decided_at=T0)
    store.add_decision(decision(1))
    store.add_decision(plain)
    assert store.decisions() == [plain, decision(1)]
    assert store.decisions(limit=1) == [plain]


def test_decision_history_keeps_the_newest(db_path: Path) -> None:
    with Store.open(db_path, decision_limit=5) as store:
        for n in range(8):
            store.add_decision(decision(n))
        assert [d.reason_text for d in store.decisions(limit=50)] == [
            f"fresh probes #{n}" for n in (7, 6, 5, 4, 3)]
    with raw(db_path) as con:
        assert con.execute("SELECT count(*) FROM decisions").fetchone() == (5,)
    assert DECISION_HISTORY_DEFAULT == 500


def test_state_is_saved_whole_and_survives_reopening(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.load_state() == DaemonState()
        store.save_state(DaemonState(last_gateway="vpn-a.example", connected="vpn-a.example",
                                     last_connect_at=T0))
        later = DaemonState(last_gateway="vpn-b.example", last_disconnect_at=T0,
                            cache_cleared_at=T0 + timedelta(seconds=1))
        store.save_state(later)
    with Store.open(db_path) as store:
        assert store.load_state() == later
    with raw(db_path) as con:
        assert con.execute("SELECT count(*) FROM state").fetchone() == (1,)


def test_state_written_by_another_version_loads(db_path: Path) -> None:
    Store.open(db_path).close()
    with raw(db_path) as con:  # a field this ogsd lacks, and none of the others
        con.execute("INSERT INTO state VALUES (1, ?)",
                    (json.dumps({"connected": "vpn-a.example", "from_the_future": [1]}),))
    with Store.open(db_path) as store:
        assert store.load_state() == DaemonState(connected="vpn-a.example")


# --- the file ------------------------------------------------------------------------------


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "ogsd" / "ogsd.db"
    old = os.umask(0)
    try:
        with Store.open(path) as store:
            store.add_decision(decision())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode)
                     for p in (path.parent, path, Path(f"{path}-wal"), Path(f"{path}-shm"))}
    finally:
        os.umask(old)
    assert modes == {"ogsd": 0o700, "ogsd.db": 0o600, "ogsd.db-wal": 0o600,
                     "ogsd.db-shm": 0o600}


def test_a_new_file_is_created_silently_at_the_current_version(db_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    Store.open(db_path, on_event=lambda name, f: events.append((name, f))).close()
    assert events == []
    with raw(db_path) as con:
        assert con.execute("SELECT * FROM schema_version").fetchall() == [
            (1, store_schema.SCHEMA_VERSION)]
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_connections_carry_the_pragmas(store: Store, db_path: Path) -> None:
    with store._engine.connect() as conn:
        values = [conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in
                  ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")]
    assert values == ["wal", 5000, 1, 1]  # synchronous 1 is NORMAL


def test_schema_tables_match_the_migrated_file(store: Store) -> None:
    inspector = sqlalchemy.inspect(store._engine)
    for table in store_schema.metadata.sorted_tables:
        assert [c["name"] for c in inspector.get_columns(table.name)] == \
            [c.name for c in table.columns]
        assert {i["name"] for i in inspector.get_indexes(table.name)} == \
            {i.name for i in table.indexes}


V1_DDL = (  # frozen copy of version 1, as ogsd 0.1 wrote it: independent of the code
    "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " version INTEGER NOT NULL)",
    "CREATE TABLE cache_entries (id INTEGER PRIMARY KEY AUTOINCREMENT, domain TEXT NOT NULL,"
    ' servers TEXT NOT NULL, metric TEXT NOT NULL, "order" TEXT NOT NULL,'
    " results TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL)",
    "CREATE TABLE cache_keys (key TEXT PRIMARY KEY,"
    " entry_id INTEGER NOT NULL REFERENCES cache_entries(id) ON DELETE CASCADE)",
    "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, decided_at TEXT NOT NULL,"
    " domain TEXT NOT NULL, servers TEXT NOT NULL, source TEXT NOT NULL,"
    " reason TEXT NOT NULL, reason_text TEXT NOT NULL, selected TEXT,"
    ' "order" TEXT NOT NULL, metric TEXT NOT NULL, results TEXT NOT NULL)',
    "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), data TEXT NOT NULL)",
)
V1_RESULT = {"host": "vpn-a.example", "address": "198.18.10.1", "rtt_ms": 12.0,
             "network_rtt_ms": [12.0], "exchange_ms": [30.5], "error": None,
             "tcp_info_rtt_ms": [12.5], "started_at": [1714557600.5], "probe_errors": [None],
             "proxy_check": None}


def make_v1(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    with raw(path) as con:
        for ddl in V1_DDL:
            con.execute(ddl)
        con.execute("INSERT INTO schema_version VALUES (1, 1)")
        con.execute(
            "INSERT INTO cache_entries VALUES (7, 'corp.example', '[\"198.18.0.53\"]',"
            " 'network', '[\"vpn-a.example\"]', ?, '2024-05-01T10:00:00.000000+00:00',"
            " '2024-05-15T10:00:00.000000+00:00')", (json.dumps([V1_RESULT]),))
        con.execute("INSERT INTO cache_keys VALUES ('corp.example|198.18.0.53', 7)")
        con.execute(
            "INSERT INTO decisions VALUES (1, '2024-05-01T10:00:00.000000+00:00',"
            " 'corp.example', '[\"198.18.0.53\"]', 'probes', 'probes', 'fresh',"
            " 'vpn-a.example', '[\"vpn-a.example\"]', 'network', ?)", (json.dumps([V1_RESULT]),))
        con.execute("INSERT INTO state VALUES (1, '{\"last_gateway\": \"vpn-a.example\"}')")
    os.chmod(path, 0o600)


def test_v1_database_is_migrated_and_keeps_its_data(db_path: Path) -> None:
    make_v1(db_path)
    events: list[tuple[str, dict[str, object]]] = []
    with Store.open(db_path, on_event=lambda name, f: events.append((name, f))) as store:
        found = store.find_entry(["corp.example|198.18.0.53"])
        assert found is not None
        assert (found.entry_id, found.order, found.results[0].rtt(Metric.EXCHANGE)) == \
            (7, ("vpn-a.example",), 30.5)
        assert [d.reason_text for d in store.decisions()] == ["fresh"]
        # Its results have neither "family" nor "proxy" (no proxies then): both are derived
        # or default.
        assert store.decisions()[0].results == found.results
        assert (found.results[0].family, found.results[0].proxy) == ("IPv4", None)
        assert store.load_state() == DaemonState(last_gateway="vpn-a.example")
        assert found.location.search == ()  # v3: no other search domains were known
        store.save_entry(entry())  # and it is writable at the new version
    assert events == [("store.migrated", {"path": str(db_path), "from": 1, "to": 3})]
    with raw(db_path) as con:
        assert con.execute("SELECT * FROM schema_version").fetchall() == [(1, 3)]
        assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'"
                                          " AND name NOT LIKE 'sqlite_%'")} == \
            {"cache_keys_entry_id", "cache_entries_expires_at"}
    events.clear()
    Store.open(db_path, on_event=lambda name, f: events.append((name, f))).close()
    assert events == []  # already current: nothing to do


def test_failed_migration_leaves_the_file_at_its_version(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store.open(db_path).close()

    current = store_schema.SCHEMA_VERSION

    def broken_next(conn: sqlalchemy.Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")

    monkeypatch.setattr(store_schema, "MIGRATIONS", (*store_schema.MIGRATIONS, broken_next))
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", current + 1)
    with pytest.raises(StoreError, match=r"migrate the schema.*no such table: no_such_table"):
        Store.open(db_path)
    with raw(db_path) as con:  # the DDL before the failure was rolled back too
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(current,)]
        assert con.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'"
                           ).fetchall() == []


def test_newer_database_is_refused_and_left_untouched(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.save_entry(entry())
    with raw(db_path) as con:
        con.execute("UPDATE schema_version SET version = 99")
    before = (sha(db_path), sorted(p.name for p in db_path.parent.iterdir()))
    with pytest.raises(StoreError, match="schema version 99, newer than this ogsd knows"):
        Store.open(db_path)
    assert (sha(db_path), sorted(p.name for p in db_path.parent.iterdir())) == before


def test_foreign_database_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    with raw(db_path) as con:
        con.execute("CREATE TABLE moz_places (id INTEGER)")
    digest = sha(db_path)
    with pytest.raises(StoreError, match=r"not an ogsd database .*moz_places"):
        Store.open(db_path)
    assert sha(db_path) == digest


def open_recording(path: Path) -> tuple[Store, list[tuple[str, dict[str, object]]]]:
    events: list[tuple[str, dict[str, object]]] = []
    opened = Store.open(path, on_event=lambda name, f: events.append((name, f)),
                        clock=lambda: T0)
    return opened, events


def assert_recovered(path: Path, damaged: dict[str, bytes]) -> None:
    """Open `path`, expect it moved aside intact with its companions and a working store."""
    store, events = open_recording(path)
    moved = f"{path}.corrupt-20240501T100000Z"
    with store:
        assert events[0][0] == "store.recovered"
        assert events[0][1]["path"] == str(path)
        assert events[0][1]["moved_to"] == moved
        assert events[0][1]["error"]
        for suffix, content in damaged.items():
            assert Path(moved + suffix).read_bytes() == content
        assert store.list_entries() == []
        saved = store.save_entry(entry())
        assert store.find_entry(HOME.keys) == saved
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_random_bytes_are_moved_aside_with_wal_and_shm(db_path: Path) -> None:
    rng = random.Random(1)
    db_path.parent.mkdir()
    damaged = {"": rng.randbytes(20_000), "-wal": rng.randbytes(5_000),
               "-shm": rng.randbytes(32_768)}
    for suffix, content in damaged.items():
        Path(f"{db_path}{suffix}").write_bytes(content)
    assert_recovered(db_path, damaged)


def test_overwritten_page_is_detected_and_moved_aside(db_path: Path) -> None:
    with Store.open(db_path) as store:
        for n in range(40):  # several pages of decisions
            store.add_decision(decision(n))
    page = 4096  # SQLite's default page size
    content = bytearray(db_path.read_bytes())
    assert len(content) > 8 * page
    content[2 * page:3 * page] = random.Random(2).randbytes(page)  # page 3: header intact
    db_path.write_bytes(bytes(content))
    assert_recovered(db_path, {"": bytes(content)})


def test_second_recovery_in_the_same_second_gets_its_own_name(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"not a database" * 100)
    open_recording(db_path)[0].close()
    db_path.write_bytes(b"still not a database" * 100)
    store, events = open_recording(db_path)
    store.close()
    assert events[0][1]["moved_to"] == f"{db_path}.corrupt-20240501T100000Z-1"


@pytest.mark.parametrize("call", ["read", "write"])
def test_corruption_found_while_open_is_recovered_as_at_start_up(
        db_path: Path, call: str) -> None:
    store, events = open_recording(db_path)
    with store:
        store.save_entry(entry())
        store.update_state(last_gateway="vpn-a.example")
        damaged = garble(db_path)
        # The call that meets the damage sets the file aside and is answered from a new one.
        if call == "read":
            assert store.load_state() == DaemonState()
        else:
            store.add_decision(decision(1))
            assert store.decisions() == [decision(1)]
        assert [name for name, _ in events] == ["store.recovered"]
        moved = Path(str(events[0][1]["moved_to"]))
        assert "not a database" in str(events[0][1]["error"])
        assert moved.read_bytes() == damaged[""]
        assert store.find_entry(HOME.keys) is None
        store.save_entry(entry())  # and the new file takes writes
    with Store.open(db_path) as reopened:
        assert reopened.find_entry(HOME.keys) is not None


def test_misuse_is_a_store_error(db_path: Path) -> None:
    with pytest.raises(StoreError, match="at least 1"):
        Store.open(db_path, decision_limit=0)
    store = Store.open(db_path)
    store.close()
    with pytest.raises(StoreError, match="the store is closed"):
        store.load_state()
    with pytest.raises(StoreError, match="the store is closed"):
        store.save_state(DaemonState())


def test_threads_writing_at_once_lose_nothing(store: Store) -> None:
    threads, writes = 4, 50
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait(timeout=10)
            for n in range(writes):
                location = Location(f"t{t}.example", (f"198.18.{t}.{n}",))
                saved = store.save_entry(entry(location, T0 + timedelta(seconds=n)))
                store.add_decision(decision(t * 1000 + n))
                assert store.find_entry(location.keys) == saved  # reads see own writes
        except BaseException as exc:  # collected: a thread's exception is otherwise lost
            failures.append(exc)

    began = time.monotonic()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    elapsed = time.monotonic() - began
    assert not any(w.is_alive() for w in workers)
    assert failures == []
    assert len(store.list_entries()) == threads * writes
    recorded = [d.reason_text for d in store.decisions(limit=10_000)]
    assert len(recorded) == threads * writes
    numbers = [int(r.rsplit("#", 1)[1]) for r in recorded]
    for t in range(threads):  # newest first, so each thread's own writes descend
        mine = [n % 1000 for n in numbers if n // 1000 == t]
        assert mine == list(range(writes - 1, -1, -1))
    print(f"{threads * writes * 2} writes from {threads} threads in {elapsed:.2f} s")


def test_update_state_changes_only_its_fields_even_concurrently(store: Store) -> None:
    """Two updaters of different fields (a round ending, a connection reported) both win."""
    store.save_state(DaemonState(last_gateway="a"))
    barrier = threading.Barrier(2)

    def connect(i: int) -> None:
        barrier.wait()
        store.update_state(connected=f"gw-{i}")

    def disconnect_time(i: int) -> None:
        barrier.wait()
        store.update_state(last_disconnect_at=T0 + timedelta(minutes=i))

    for i in range(50):
        threads = [threading.Thread(target=connect, args=(i,)),
                   threading.Thread(target=disconnect_time, args=(i,))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = store.load_state()
        assert (state.connected, state.last_disconnect_at, state.last_gateway) == (
            f"gw-{i}", T0 + timedelta(minutes=i), "a")
    assert store.update_state(last_gateway="b").last_gateway == "b"
