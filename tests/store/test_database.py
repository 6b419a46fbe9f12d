"""The SQLite store, against real database files: schema, dedup, people, secrets, retention,
reads and storage faults."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

import rtserver.store.database
import rtserver.store.writer
from rtserver.errors import StorageUnavailable, StoreError
from rtserver.model.events import Event, sign_identity
from rtserver.store.database import Store
from rtserver.store.schema import MIGRATIONS
from tests.support.events import event
from tests.support.server import IDENTITY_SECRET, TIMEOUT_UNIT
from tests.support.store import parse, store_group


async def writer_rows(store: Store, sql: str, *params: Any) -> list[Any]:
    """Rows read on the writer connection (what the next transaction builds on)."""
    return list(await store._db.execute_fetchall(sql, params))


def join_worker_threads(before: set[threading.Thread]) -> None:
    """Wait for aiosqlite threads started since ``before`` to end.

    When ``aiosqlite.connect`` fails, aiosqlite queues its thread's stop without waiting for it;
    the thread then calls back into the loop, which must still be open (else it raises in the
    thread, and pytest reports that against a later test). The callback only needs the loop to
    exist, not to run, so a plain join is safe here.
    """
    for thread in set(threading.enumerate()) - before:
        if "_connection_worker_thread" in thread.name:
            thread.join(TIMEOUT_UNIT)


async def page_count(store: Store) -> int:
    return int((await writer_rows(store, "PRAGMA page_count"))[0][0])


# Opening and migrations


async def test_open_creates_schema(store: Store) -> None:
    """A new file gets every table of the migrations."""
    rows = await writer_rows(store, "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert {r[0] for r in rows} >= {"events", "profiles", "identities", "secrets", "migrations"}


async def test_writer_uses_wal_and_full_sync(store: Store) -> None:
    """The writer runs in WAL mode with synchronous=FULL and foreign keys on."""
    assert (await writer_rows(store, "PRAGMA journal_mode"))[0][0] == "wal"
    assert (await writer_rows(store, "PRAGMA synchronous"))[0][0] == 2  # FULL
    assert (await writer_rows(store, "PRAGMA foreign_keys"))[0][0] == 1


async def test_reader_cannot_write(store: Store) -> None:
    """The query connection is read-only."""
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await store._ro.execute("DELETE FROM events")


async def test_reopen_is_idempotent(db_path: Path) -> None:
    """Migrations are recorded once; opening again applies nothing and keeps the data."""
    store = await Store.open(db_path)
    try:
        await store_group(store, [parse(event())])
    finally:
        await store.close()
    for _ in range(2):
        store = await Store.open(db_path)
        try:
            rows = await writer_rows(store, "SELECT name FROM migrations")
            assert [r[0] for r in rows] == [name for name, _ in MIGRATIONS]
            assert await store.count_events() == 1
        finally:
            await store.close()


async def test_open_path_with_uri_characters(tmp_path: Path) -> None:
    """A path holding '?', '#', '%' or spaces opens, and the reader sees the writer's file."""
    folder = tmp_path / "a dir?x=1#frag%20"
    folder.mkdir()
    store = await Store.open(folder / "store.db")
    try:
        await store_group(store, [parse(event())])
        assert await store.count_events() == 1
    finally:
        await store.close()


async def test_open_unusable_path_raises_store_error(tmp_path: Path) -> None:
    """A file that cannot be opened raises StoreError with the sqlite error as its cause."""
    threads = set(threading.enumerate())
    with pytest.raises(StoreError) as raised:
        await Store.open(tmp_path)  # a folder, not a database file
    join_worker_threads(threads)
    assert type(raised.value) is StoreError
    assert isinstance(raised.value.__cause__, sqlite3.Error)


async def test_open_rejects_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """Opening something else than SQLite is a (non-transient) StoreError."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database, just text " * 200)
    with pytest.raises(StoreError) as raised:
        await Store.open(path)
    assert type(raised.value) is StoreError


async def test_failed_migration_is_rolled_back(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails leaves nothing of itself and is not recorded; a fixed one applies."""
    broken = ("9999_broken", "CREATE TABLE extra (a TEXT); INSERT INTO nowhere VALUES (1)")
    monkeypatch.setattr(rtserver.store.database, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError, match="no such table"):
        await Store.open(db_path)
    fixed = ("9999_broken", "CREATE TABLE extra (a TEXT)")
    monkeypatch.setattr(rtserver.store.database, "MIGRATIONS", (*MIGRATIONS, fixed))
    store = await Store.open(db_path)
    try:
        rows = await writer_rows(store, "SELECT name FROM migrations ORDER BY name")
        assert [r[0] for r in rows] == [name for name, _ in MIGRATIONS] + ["9999_broken"]
        assert await writer_rows(store, "SELECT count(*) FROM extra") == [(0,)]
    finally:
        await store.close()


async def test_disk_full_during_migration_is_transient(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while migrating (SQLite rolls back by itself) raises StorageUnavailable."""
    # More pages than the file's free ones (a dropped index leaves one).
    full = (
        "0002_full",
        "PRAGMA max_page_count = 1; CREATE TABLE extra (a); "
        "INSERT INTO extra VALUES (zeroblob(100000))",
    )
    monkeypatch.setattr(rtserver.store.database, "MIGRATIONS", (*MIGRATIONS, full))
    with pytest.raises(StorageUnavailable, match="full"):
        await Store.open(db_path)


# Storing events once


async def test_commit_batch_stores_events(store: Store) -> None:
    """Prepared events are stored with their person, source and receive time."""
    raws = [event(), event("page", name="Home"), event(userId="u1", anonymousId=None)]
    prepared = await store_group(store, [parse(r) for r in raws], at=1234.5)
    assert (len(prepared.fresh), prepared.duplicates) == (3, 0)
    assert await store.count_events() == 3
    assert await store.stored_message_ids() == [r["messageId"] for r in raws]
    rows = await writer_rows(
        store, "SELECT type, name, person_id, source, received_at FROM events ORDER BY seq"
    )
    assert rows == [
        ("track", "Product Viewed", "a:anon-1", "server", 1234.5),
        ("page", "Home", "a:anon-1", "server", 1234.5),
        ("track", "Product Viewed", "u:u1", "server", 1234.5),
    ]
    assert await store.events_of("a:anon-1") == [raws[1], raws[0]]  # newest first, as sent


async def test_duplicate_in_a_later_group_is_stored_once(store: Store) -> None:
    """A messageId sent again later is counted as a duplicate and not stored twice."""
    raw = event()
    await store_group(store, [parse(raw)])
    again = await store_group(store, [parse(raw), parse(event())])
    assert (len(again.fresh), again.duplicates) == (1, 1)
    assert await store.count_events() == 2
    assert (await store.stored_message_ids())[0] == raw["messageId"]


async def test_duplicate_within_a_group_is_stored_once(store: Store) -> None:
    """A messageId repeated inside one group is stored once, the first copy kept."""
    raw = event()
    first, second = parse(raw), parse({**raw, "event": "Product Added"})
    prepared = await store_group(store, [first, second])
    assert (prepared.fresh, prepared.duplicates) == ([first], 1)
    assert await store.events_of("a:anon-1") == [raw]


async def test_group_of_duplicates_only_writes_nothing(store: Store) -> None:
    """A group whose every event is already stored commits nothing."""
    raw = event()
    await store_group(store, [parse(raw)], at=10.0)
    prepared = await store_group(store, [parse(raw)], at=20.0)
    assert (prepared.fresh, prepared.duplicates) == ([], 1)
    assert (await store.profile("a:anon-1") or {})["last_seen"] == 10.0


async def test_dedup_spans_several_lookup_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids are looked up in chunks; duplicates are found in every chunk."""
    monkeypatch.setattr(rtserver.store.writer, "IN_CHUNK", 2)
    raws = [event(anonymousId=f"anon-{i}") for i in range(5)]
    await store_group(store, [parse(r) for r in raws[::2]])
    prepared = await store_group(store, [parse(r) for r in raws])
    assert (len(prepared.fresh), prepared.duplicates) == (2, 3)
    assert sorted(await store.stored_message_ids()) == sorted(r["messageId"] for r in raws)


# People: stitching, verification, merges


async def test_trusted_identify_stitches_anonymous_history(store: Store) -> None:
    """A server identify moves the browser's history and merges its profile into the user's."""
    anon_traits = {"color": "red", "plan": "trial"}
    await store_group(store, [parse(event("identify", traits=anon_traits), "browser")], at=10.0)
    await store_group(store, [parse(event(), "browser")], at=20.0)
    known = event("identify", userId="u1", anonymousId=None, traits={"name": "Ann"})
    await store_group(store, [parse(known)], at=100.0)
    stitch = event("identify", userId="u1", traits={"plan": "pro"})
    await store_group(store, [parse(stitch)], at=200.0)

    assert await store.person_of("anon-1") == "u:u1"
    assert await store.profile("a:anon-1") is None
    assert await store.events_of("a:anon-1") == []
    assert len(await store.events_of("u:u1")) == 4
    profile = await store.profile("u:u1")
    assert profile == {
        "person_id": "u:u1",
        "user_id": "u1",
        "email": None,
        "claimed_email": None,
        "traits": {"name": "Ann", "plan": "pro"},  # trusted: the backend's
        "claimed_traits": {"color": "red", "plan": "trial"},  # what the browser said, kept apart
        "first_seen": 10.0,
        "last_seen": 200.0,
    }
    # Later anonymous events of that browser belong to the user.
    await store_group(store, [parse(event(), "browser")], at=300.0)
    assert len(await store.events_of("u:u1")) == 5
    assert (await store.profile("u:u1") or {})["last_seen"] == 300.0


async def test_identify_and_history_in_one_group(store: Store) -> None:
    """Events before and after the identify in the same group all end up with the user."""
    events = [
        parse(event(), "browser"),
        parse(event("identify", userId="u1", traits={"name": "Ann"})),
        parse(event(), "browser"),
    ]
    prepared = await store_group(store, events)
    assert prepared.people == ["a:anon-1", "u:u1", "u:u1"]
    assert len(await store.events_of("u:u1")) == 3
    assert await store.profile("a:anon-1") is None


async def test_verified_browser_identify_stitches(store: Store) -> None:
    """A browser identify with a valid userHash links its anonymousId to the user."""
    await store_group(store, [parse(event(), "browser")])
    user_hash = sign_identity(IDENTITY_SECRET, "u1")
    raw = event("identify", userId="u1", context={"userHash": user_hash})
    await store_group(store, [parse(raw, "browser")])
    assert await store.person_of("anon-1") == "u:u1"
    assert len(await store.events_of("u:u1")) == 2


async def test_unverified_browser_identify_does_not_stitch(store: Store) -> None:
    """A browser identify naming a userId without a valid hash acts only for its browser."""
    await store_group(store, [parse(event(userId="u1", anonymousId=None), "server")])
    raw = event("identify", userId="u1", traits={"name": "Mallory"}, context={"userHash": "00"})
    await store_group(store, [parse(raw, "browser")])
    assert await store.person_of("anon-1") is None
    assert len(await store.events_of("u:u1")) == 1
    assert len(await store.events_of("a:anon-1")) == 1
    assert (await store.profile("u:u1") or {})["traits"] == {}
    anon = await store.profile("a:anon-1") or {}
    assert (anon["user_id"], anon["traits"]) == (None, {})
    assert anon["claimed_traits"] == {"name": "Mallory"}  # the browser's own claim, kept apart


async def test_claimed_email_is_kept_apart(store: Store) -> None:
    """An unverified browser email goes to claimed_email only, never to email or traits; the
    browser's other traits are claimed traits (never shown in mail)."""
    traits = {"email": "Victim@Example.com", "name": "X"}
    await store_group(store, [parse(event("identify", traits=traits), "browser")])
    profile = await store.profile("a:anon-1") or {}
    assert profile["claimed_email"] == "victim@example.com"
    assert profile["email"] is None
    assert profile["traits"] == {} and profile["claimed_traits"] == {"name": "X"}


async def test_verified_email_is_stored(store: Store) -> None:
    """An email proven by emailHash (or sent server-side) is stored as the mailable email."""
    email_hash = sign_identity(IDENTITY_SECRET, "ann@example.com")
    raw = event("identify", traits={"email": "Ann@Example.com"}, context={"emailHash": email_hash})
    await store_group(store, [parse(raw, "browser")])
    profile = await store.profile("a:anon-1") or {}
    assert (profile["email"], profile["claimed_email"]) == ("ann@example.com", None)
    server = event("identify", userId="u2", anonymousId=None, traits={"email": "bo@example.com"})
    await store_group(store, [parse(server)])
    assert (await store.profile("u:u2") or {})["email"] == "bo@example.com"


async def test_claim_does_not_replace_a_verified_email(store: Store) -> None:
    """A later unverified email is only claimed; the verified one stays."""
    verified = event("identify", traits={"email": "ann@example.com"})
    await store_group(store, [parse(verified)])
    claim = event("identify", traits={"email": "eve@example.com"})
    await store_group(store, [parse(claim, "browser")])
    profile = await store.profile("a:anon-1") or {}
    assert (profile["email"], profile["claimed_email"]) == ("ann@example.com", "eve@example.com")
    assert profile["traits"] == {"email": "ann@example.com"}


async def test_server_alias_merges_an_earlier_user(store: Store) -> None:
    """A server alias moves the previous user's events and profile to the new user."""
    old = event("identify", userId="old", anonymousId=None, traits={"a": 1, "b": 1})
    await store_group(store, [parse(old)], at=10.0)
    new = event("identify", userId="new", anonymousId=None, traits={"b": 2})
    await store_group(store, [parse(new)], at=20.0)
    alias = event("alias", userId="new", previousId="old", anonymousId=None)
    await store_group(store, [parse(alias)], at=30.0)
    assert await store.profile("u:old") is None
    assert await store.events_of("u:old") == []
    assert len(await store.events_of("u:new")) == 3
    profile = await store.profile("u:new") or {}
    assert profile["traits"] == {"a": 1, "b": 2}
    assert (profile["first_seen"], profile["last_seen"]) == (10.0, 30.0)


async def test_browser_alias_stitches_its_own_anonymous_id(store: Store) -> None:
    """A verified browser alias links its anonymousId and moves the anonymous history."""
    await store_group(store, [parse(event(), "browser")])
    user_hash = sign_identity(IDENTITY_SECRET, "u1")
    alias = event("alias", userId="u1", previousId="anon-1", context={"userHash": user_hash})
    await store_group(store, [parse(alias, "browser")])
    assert await store.person_of("anon-1") == "u:u1"
    assert len(await store.events_of("u:u1")) == 2
    assert await store.profile("a:anon-1") is None


async def test_device_changing_hands_keeps_each_users_history(store: Store) -> None:
    """A second user identifying on a linked browser takes it over without the first's events."""
    await store_group(store, [parse(event("identify", userId="u1"))])
    await store_group(store, [parse(event("identify", userId="u2"))])
    assert await store.person_of("anon-1") == "u:u2"
    assert len(await store.events_of("u:u1")) == 1
    assert len(await store.events_of("u:u2")) == 1
    assert await store.profile("u:u1") is not None


# Secrets and retention


async def test_secret_is_generated_once(db_path: Path) -> None:
    """secret() generates on first use only and returns the same value after re-open."""
    made: list[str] = []

    def generate() -> str:
        made.append(f"secret-{len(made)}")
        return made[-1]

    store = await Store.open(db_path)
    try:
        first = await store.secret("write_key", generate, 1.0)
        assert await store.secret("write_key", generate, 2.0) == first
    finally:
        await store.close()
    store = await Store.open(db_path)
    try:
        assert await store.secret("write_key", generate, 3.0) == first
        assert await store.secret("other", generate, 3.0) != first
    finally:
        await store.close()
    assert made == ["secret-0", "secret-1"]


async def test_purge_deletes_only_older_events(store: Store) -> None:
    """purge_events deletes events received before the cutoff and returns how many, and the
    products mails showed before then."""
    for at in (10.0, 20.0, 30.0):
        await store_group(store, [parse(event())], at=at)
    shown = [("m1", "a:anon-1", "p1", None, 10.0), ("m2", "a:anon-1", "p1", None, 30.0)]
    await store.mail.finish_many([], shown)
    assert await store.purge_events(25.0) == 2
    assert await store.mail.shown("a:anon-1", 0.0) == {"p1": 1}
    assert await store.count_events() == 1
    assert (await writer_rows(store, "SELECT received_at FROM events")) == [(30.0,)]
    assert await store.profile("a:anon-1") is not None  # profiles stay
    assert await store.purge_events(25.0) == 0


async def test_purge_works_across_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Purging more events than one chunk deletes them all, chunk by chunk."""
    monkeypatch.setattr(rtserver.store.database, "PURGE_CHUNK", 2)
    await store_group(store, [parse(event()) for _ in range(5)], at=10.0)
    await store_group(store, [parse(event())], at=50.0)
    assert await store.purge_events(20.0) == 5
    assert await store.count_events() == 1


async def test_purge_finds_old_events_by_seq(store: Store) -> None:
    """With no index on received_at (migration 0017) the purge looks only at the events stored
    before the first one received a margin after the cutoff: one received before the cutoff
    but stored after that waits for a round whose cutoff passes that one too."""
    assert "events_received" not in str(await writer_rows(store, "SELECT name FROM sqlite_master"))
    for at in (10.0, 20.0, 30.0, 200.0, 15.0, 300.0):
        await store_group(store, [parse(event())], at=at)
    assert await store.purge_events(25.0) == 2
    assert (await writer_rows(store, "SELECT received_at FROM events ORDER BY seq")) == [
        (30.0,), (200.0,), (15.0,), (300.0,),
    ]  # fmt: skip
    assert await store.purge_events(250.0) == 3
    assert (await writer_rows(store, "SELECT received_at FROM events")) == [(300.0,)]


async def test_time_window_reads_use_an_index(store: Store) -> None:
    """The reads of a window of events by received_at search an index, none scans events."""
    queries = {
        "funnel orders": "SELECT person_id FROM events INDEXED BY events_orders "
        "WHERE received_at >= 0 AND name = 'Order Completed' ORDER BY seq",
        "funnel touches": "SELECT name FROM events WHERE received_at >= 0 "
        "AND name IN ('Email Opened', 'Email Clicked')",
        "history": "SELECT name FROM events WHERE person_id IN ('a', 'b') AND received_at >= 0",
        "purge": "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq > 0 "
        "AND seq < 9 AND received_at < 5 ORDER BY seq LIMIT 9)",
    }
    for label, sql in queries.items():
        plan = str(await writer_rows(store, "EXPLAIN QUERY PLAN " + sql))
        assert "SEARCH events" in plan and "SCAN events" not in plan, (label, plan)


# Reads


async def test_reads_on_an_empty_store(store: Store) -> None:
    """Reads of unknown things answer empty, zero or None."""
    assert await store.count_events() == 0
    assert await store.stored_message_ids() == []
    assert await store.events_of("u:nobody") == []
    assert await store.person_of("anon-x") is None
    assert await store.profile("u:nobody") is None


async def test_events_of_is_newest_first_and_limited(store: Store) -> None:
    """events_of returns at most ``limit`` events, newest first."""
    raws = [event(properties={"n": i}) for i in range(4)]
    await store_group(store, [parse(r) for r in raws])
    assert await store.events_of("a:anon-1", limit=2) == [raws[3], raws[2]]


async def test_read_error_is_store_error(store: Store) -> None:
    """A read the sqlite3 module refuses surfaces as StoreError, not transient."""
    with pytest.raises(StoreError) as raised:
        await store.events_of(["not", "a", "str"])  # type: ignore[arg-type]
    assert type(raised.value) is StoreError
    assert isinstance(raised.value.__cause__, sqlite3.ProgrammingError)


# Storage faults


def big_events(count: int) -> list[Event]:
    """Events large enough to need new database pages."""
    return [
        parse(event("identify", userId="u1", traits={"blob": "x" * 4000, "n": i}))
        for i in range(count)
    ]


async def test_disk_full_writes_nothing_and_the_group_commits_later(store: Store) -> None:
    """SQLITE_FULL: StorageUnavailable, nothing of the group written; the same group commits
    once there is room again."""
    await store_group(store, [parse(event(), "browser")], at=1.0)  # history to stitch
    prepared = await store.prepare(big_events(20), [2.0] * 20)
    await store._db.execute(f"PRAGMA max_page_count = {await page_count(store)}")
    with pytest.raises(StorageUnavailable) as raised:
        await store.commit_batch(prepared)
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert not store._db.in_transaction
    assert await store.count_events() == 1
    assert await store.person_of("anon-1") is None
    assert await store.profile("u:u1") is None
    assert (await store.profile("a:anon-1") or {})["last_seen"] == 1.0

    await store._db.execute("PRAGMA max_page_count = 1073741823")
    await store.commit_batch(prepared)
    assert await store.count_events() == 21
    assert await store.person_of("anon-1") == "u:u1"
    assert len(await store.events_of("u:u1", limit=100)) == 21


async def test_locked_database_is_transient(store: Store, db_path: Path) -> None:
    """Another process holding the write lock makes commit_batch raise StorageUnavailable."""
    prepared = await store.prepare([parse(event())], [1.0])
    await store._db.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageUnavailable, match="locked"):
            await store.commit_batch(prepared)
        other.execute("ROLLBACK")
    finally:
        other.close()
    await store.commit_batch(prepared)
    assert await store.count_events() == 1


async def test_non_transient_error_is_store_error(store: Store) -> None:
    """A constraint failure is a StoreError, not StorageUnavailable, and is rolled back."""
    await store._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON profiles BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    prepared = await store.prepare([parse(event())], [1.0])
    with pytest.raises(StoreError) as raised:
        await store.commit_batch(prepared)
    assert type(raised.value) is StoreError
    assert not store._db.in_transaction
    assert await store.count_events() == 0  # the event row before the failure is rolled back
    await store._db.execute("DROP TRIGGER refuse")
    await store.commit_batch(prepared)
    assert await store.count_events() == 1


async def test_prepare_error_is_store_error(store: Store) -> None:
    """A failing lookup in prepare raises StoreError."""
    await store._db.execute("DROP TABLE identities")
    with pytest.raises(StoreError, match="no such table"):
        await store.prepare([parse(event())], [1.0])


async def test_commit_recovers_a_transaction_left_open(store: Store) -> None:
    """A transaction left open on the writer is rolled back before the next group commits."""
    await store._db.execute("BEGIN")
    await store._db.execute("INSERT INTO secrets VALUES ('stray', 'x', 0)")
    await store_group(store, [parse(event())])
    assert await store.count_events() == 1
    assert await writer_rows(store, "SELECT name FROM secrets") == [("email_salt",)]


async def test_open_in_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    """A store path whose folder does not exist is a StoreError naming the folder."""
    with pytest.raises(StoreError, match="does not exist"):
        await Store.open(tmp_path / "nowhere" / "x.db")


async def test_the_store_files_are_private_to_their_owner(tmp_path: Path) -> None:
    """The store holds every secret: its file and its -wal and -shm files are 0600, whatever
    the umask, and a store file left group- or world-readable is made private when opened."""
    fresh = tmp_path / "fresh.db"
    old_umask = os.umask(0o022)
    try:
        store = await Store.open(fresh)
        try:
            await store_group(store, [parse(event())])
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(f"{fresh}{suffix}").st_mode)
                assert mode == 0o600, (suffix, oct(mode))
        finally:
            await store.close()
        os.chmod(fresh, 0o644)
        store = await Store.open(fresh)
        await store.close()
        assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize("tick_s", [1.0, 0.25, 3.0])
async def test_timer_ticks_are_the_ticks_arm_computes(store: Store, tick_s: float) -> None:
    """The store's ticks of the armed timers are ``ceil(due / tick_s)``, as the engine's."""
    dues = [1_800_000_000.0, 1_800_000_000.5, 1_800_000_001.25, 1_799_999_999.999, 1e9 + 1 / 3]
    async with store._write_lock:
        await store._db.executemany(
            "INSERT INTO timers (run_id, step, due, person_id) VALUES (?, 0, ?, 'a:x')",
            [(f"r{i}", due) for i, due in enumerate(dues)],
        )
        await store._db.commit()
    rows = await store.timer_ticks_after(tick_s, (-math.inf, None), 100)
    assert {run_id: tick for run_id, tick, _ in rows} == {
        f"r{i}": math.ceil(due / tick_s) for i, due in enumerate(dues)
    }


async def test_timer_ticks_after_pages_in_due_then_run_id_order(store: Store) -> None:
    """Pages of (due, run id) order: each starts after the last row of the one before, also
    among timers due at the same time; (due, None) starts after every timer due then."""
    timers = [(f"r{i}", 100.0 + i % 3) for i in range(10)]
    async with store._write_lock:
        await store._db.executemany(
            "INSERT INTO timers (run_id, step, due, person_id) VALUES (?, 0, ?, 'a:x')", timers
        )
        await store._db.commit()
    expected = sorted(timers, key=lambda t: (t[1], t[0]))
    pages, after = [], (-math.inf, None)
    while rows := await store.timer_ticks_after(1.0, after, 4):
        pages.append([(run_id, due) for run_id, _, due in rows])
        after = (rows[-1][2], rows[-1][0])
    assert [len(page) for page in pages] == [4, 4, 2]
    assert [t for page in pages for t in page] == expected
    later = await store.timer_ticks_after(1.0, (101.0, None), 10)
    assert [(run_id, due) for run_id, _, due in later] == [t for t in expected if t[1] > 101.0]
