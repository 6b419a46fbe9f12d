"""The store: every line of SQL in rtserver, over one SQLite file.

One aiosqlite *writer* connection (WAL, ``synchronous=FULL``) does all writes, one group of events
per transaction (group commit: one ``executemany`` per table, then one fsync). Queries for the
dashboard and the CLI go through a separate read-only connection, so they never wait behind the
writer. Migrations are named, applied in order, each in ``BEGIN IMMEDIATE``, and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from rtserver.errors import StorageUnavailable, StoreError
from rtserver.events import Event
from rtserver.people import Link, ids_to_look_up, resolve_people

__all__ = ["MIGRATIONS", "Prepared", "Store"]

logger = logging.getLogger(__name__)

IN_CHUNK = 500
PURGE_CHUNK = 5000
TRANSIENT_CODES = frozenset(
    (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
)
"""Primary result codes after which nothing was written and a retry may succeed."""

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_events_profiles",
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            name TEXT,
            person_id TEXT NOT NULL,
            anonymous_id TEXT,
            user_id TEXT,
            source TEXT NOT NULL,
            received_at REAL NOT NULL,
            timestamp TEXT,
            body BLOB NOT NULL
        );
        CREATE INDEX events_person ON events (person_id, received_at);
        CREATE INDEX events_received ON events (received_at);
        CREATE TABLE profiles (
            person_id TEXT PRIMARY KEY,
            user_id TEXT,
            email TEXT,
            claimed_email TEXT,
            traits TEXT NOT NULL DEFAULT '{}',
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        CREATE INDEX profiles_email ON profiles (email);
        CREATE TABLE identities (
            anonymous_id TEXT PRIMARY KEY,
            person_id TEXT NOT NULL
        );
        CREATE INDEX identities_person ON identities (person_id);
        CREATE TABLE secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
)

INSERT_EVENT = """
    INSERT INTO events (message_id, type, name, person_id, anonymous_id, user_id, source,
                        received_at, timestamp, body)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (message_id) DO NOTHING
"""
UPSERT_PROFILE = """
    INSERT INTO profiles (person_id, user_id, email, claimed_email, traits, first_seen, last_seen)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (person_id) DO UPDATE SET
        user_id = coalesce(excluded.user_id, user_id),
        email = coalesce(excluded.email, email),
        claimed_email = coalesce(excluded.claimed_email, claimed_email),
        traits = json_patch(traits, excluded.traits),
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen)
"""
MERGE_PROFILE = """
    INSERT INTO profiles (person_id, user_id, email, claimed_email, traits, first_seen, last_seen)
    SELECT ?, user_id, email, claimed_email, traits, first_seen, last_seen
    FROM profiles WHERE person_id = ? AND true
    ON CONFLICT (person_id) DO UPDATE SET
        user_id = coalesce(user_id, excluded.user_id),
        email = coalesce(email, excluded.email),
        claimed_email = coalesce(claimed_email, excluded.claimed_email),
        traits = json_patch(excluded.traits, traits),
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen)
"""
PROFILE_COLUMNS = (
    "person_id",
    "user_id",
    "email",
    "claimed_email",
    "traits",
    "first_seen",
    "last_seen",
)
UPSERT_IDENTITY = """
    INSERT INTO identities (anonymous_id, person_id) VALUES (?, ?)
    ON CONFLICT (anonymous_id) DO UPDATE SET person_id = excluded.person_id
"""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A group of events checked against the store: the new ones, with their persons."""

    fresh: list[Event]
    received_at: list[float]
    people: list[str]
    links: list[Link]
    duplicates: int


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


def _marks(items: Sequence[str]) -> str:
    return ",".join("?" * len(items))


def _classify(exc: sqlite3.Error) -> StoreError:
    # The result code, not the message: "database table is locked" (SQLITE_LOCKED) and the
    # extended I/O errors have other wordings. Errors raised by the sqlite3 module itself (a
    # closed connection, a misuse) carry no code and are not transient.
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in TRANSIENT_CODES:
        return StorageUnavailable(f"storage unavailable: {exc}")
    return StoreError(f"store failed: {exc}")


@contextlib.asynccontextmanager
async def _sqlite_errors() -> AsyncIterator[None]:
    """Turn ``sqlite3.Error`` into :class:`StoreError` (its ``__cause__``)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _classify(exc) from exc


async def _rollback(db: aiosqlite.Connection) -> None:
    """Roll back the open transaction, if any, for a caller about to re-raise its error.

    SQLite may already have rolled back by itself (disk full), and a cancelled COMMIT may still
    finish in aiosqlite's thread; either way the original error is what the caller must see (a
    CancelledError turned into a StoreError would keep a cancelled pipeline running). A
    transaction a failed ROLLBACK leaves open is rolled back before the next commit.
    """
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")


def _profile_row(event: Event, person: str, received_at: float) -> tuple[Any, ...]:
    traits = dict(event.traits)
    claimed = None
    if event.email is not None and not event.email_verified:
        claimed = event.email
        traits.pop("email", None)  # a claimed address must not look like a mailable one
    email = event.email if event.email_verified else None
    user = event.known_user
    return (person, user, email, claimed, orjson.dumps(traits).decode(), received_at, received_at)


class Store:
    """The SQLite store. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._db = writer
        self._ro = reader
        # Every write goes through this lock: the pipeline's transaction spans several awaits,
        # and a statement from another task on the same connection would join it.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating if needed) the database and apply pending migrations.

        Raises:
            StoreError: the file cannot be opened or migrated.
        """
        path = str(path)
        folder = Path(path).resolve().parent
        if not folder.is_dir():
            # Checked here: a failed aiosqlite.connect leaves its worker thread behind.
            raise StoreError(
                f"cannot open the store {path!r}: folder {str(folder)!r} does not exist"
            )
        async with _sqlite_errors():
            writer = await aiosqlite.connect(path, isolation_level=None)
            try:
                for pragma in (
                    "journal_mode = WAL",
                    "synchronous = FULL",
                    "foreign_keys = ON",
                    "busy_timeout = 5000",
                ):
                    await writer.execute(f"PRAGMA {pragma}")
                await cls._migrate(writer)
                # A URI, so the reader cannot write; as_uri() escapes '?', '#' and '%' in the path.
                reader_uri = Path(path).resolve().as_uri() + "?mode=ro"
                reader = await aiosqlite.connect(reader_uri, uri=True)
            except BaseException:
                await writer.close()
                raise
        return cls(path, writer, reader)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
        )
        for name, script in MIGRATIONS:
            await db.execute("BEGIN IMMEDIATE")
            try:
                # Checked inside the write transaction: two processes opening a new file at once
                # must not both apply the same migration.
                rows = await db.execute_fetchall("SELECT 1 FROM migrations WHERE name = ?", (name,))
                if not rows:
                    logger.info("applying migration %s", name)
                    for statement in filter(str.strip, script.split(";")):
                        await db.execute(statement)
                    await db.execute("INSERT INTO migrations VALUES (?, datetime('now'))", (name,))
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise

    async def close(self) -> None:
        """Close both connections."""
        try:
            await self._ro.close()
        finally:
            await self._db.close()

    # Writes: only the pipeline and the lifespan call these, one at a time.

    async def prepare(self, events: Sequence[Event], received_at: Sequence[float]) -> Prepared:
        """Drop events already stored (or repeated in the group) and resolve their persons.

        Runs on the writer connection, under the write lock, so it never reads another task's
        uncommitted transaction (an event it saw there, then rolled back, would be dropped as a
        duplicate and acked without being stored).
        """
        ids = [e.message_id for e in events]
        stored: set[str] = set()
        async with self._write_lock, _sqlite_errors():
            for chunk in _chunks(ids):
                rows = await self._db.execute_fetchall(
                    f"SELECT message_id FROM events WHERE message_id IN ({_marks(chunk)})", chunk
                )
                stored.update(r[0] for r in rows)
            fresh: list[Event] = []
            times: list[float] = []
            for event, at in zip(events, received_at, strict=True):
                if event.message_id not in stored:
                    stored.add(event.message_id)
                    fresh.append(event)
                    times.append(at)
            lookup = sorted(ids_to_look_up(fresh))
            known: dict[str, str] = {}
            for chunk in _chunks(lookup):
                rows = await self._db.execute_fetchall(
                    "SELECT anonymous_id, person_id FROM identities "
                    f"WHERE anonymous_id IN ({_marks(chunk)})",
                    chunk,
                )
                known.update((r[0], r[1]) for r in rows)
        resolution = resolve_people(fresh, known)
        return Prepared(fresh, times, resolution.people, resolution.links, len(events) - len(fresh))

    async def commit_batch(self, prepared: Prepared) -> None:
        """Write a prepared group in one transaction: events, profiles, identity links.

        Raises:
            StorageUnavailable: nothing was written (disk full, locked); retry later.
            StoreError: anything else.
        """
        events, received_at = prepared.fresh, prepared.received_at
        if not events:
            return
        event_rows = [
            (
                e.message_id,
                e.type,
                e.name,
                person,
                e.anonymous_id,
                e.user_id,
                e.source,
                at,
                e.timestamp,
                e.body,
            )
            for e, person, at in zip(events, prepared.people, received_at, strict=True)
        ]
        profile_rows = [
            _profile_row(e, person, at)
            for e, person, at in zip(events, prepared.people, received_at, strict=True)
        ]
        async with self._write_lock, _sqlite_errors():
            await self._commit(event_rows, profile_rows, prepared.links)

    async def _commit(
        self,
        event_rows: list[tuple[Any, ...]],
        profile_rows: list[tuple[Any, ...]],
        links: list[Link],
    ) -> None:
        db = self._db
        if db.in_transaction:
            # Left over by a ROLLBACK that failed below: without this, every later BEGIN fails.
            logger.warning("rolling back a transaction left open on the writer")
            await db.execute("ROLLBACK")
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.executemany(INSERT_EVENT, event_rows)
            await db.executemany(UPSERT_PROFILE, profile_rows)
            for link in links:
                await self._apply_link(link)
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def _apply_link(self, link: Link) -> None:
        db = self._db
        if link.anonymous_id is not None:
            await db.execute(UPSERT_IDENTITY, (link.anonymous_id, link.person_id))
        old = link.merge_from
        if old is None or old == link.person_id:
            return
        await db.execute(
            "UPDATE events SET person_id = ? WHERE person_id = ?", (link.person_id, old)
        )
        await db.execute(MERGE_PROFILE, (link.person_id, old))
        await db.execute("DELETE FROM profiles WHERE person_id = ?", (old,))
        await db.execute(
            "UPDATE identities SET person_id = ? WHERE person_id = ?", (link.person_id, old)
        )

    async def secret(self, name: str, generate: Callable[[], str], now: float) -> str:
        """The stored secret ``name``; ``generate`` makes it on first use only."""
        query = "SELECT value FROM secrets WHERE name = ?"
        async with self._write_lock, _sqlite_errors():
            rows = list(await self._db.execute_fetchall(query, (name,)))
            if not rows:
                # DO NOTHING: another process may have stored one since; theirs wins, once.
                await self._db.execute(
                    "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO NOTHING",
                    (name, generate(), now),
                )
                rows = list(await self._db.execute_fetchall(query, (name,)))
            return str(rows[0][0])

    async def purge_events(self, before: float) -> int:
        """Delete raw events received before ``before``, in small transactions; return how many."""
        total = 0
        while True:
            async with self._write_lock, _sqlite_errors():
                cursor = await self._db.execute(
                    "DELETE FROM events WHERE seq IN "
                    "(SELECT seq FROM events WHERE received_at < ? LIMIT ?)",
                    (before, PURGE_CHUNK),
                )
            total += cursor.rowcount
            if cursor.rowcount < PURGE_CHUNK:
                return total

    # Reads: the read-only connection.

    async def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        async with _sqlite_errors():
            return list(await self._ro.execute_fetchall(sql, parameters))

    async def count_events(self) -> int:
        """How many events are stored."""
        rows = await self._read("SELECT count(*) FROM events")
        return int(rows[0][0])

    async def stored_message_ids(self) -> list[str]:
        """Every stored messageId, in arrival order."""
        rows = await self._read("SELECT message_id FROM events ORDER BY seq")
        return [r[0] for r in rows]

    async def events_of(self, person_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A person's newest events, newest first, as the stored Segment messages."""
        rows = await self._read(
            "SELECT body FROM events WHERE person_id = ? ORDER BY seq DESC LIMIT ?",
            (person_id, limit),
        )
        return [orjson.loads(r[0]) for r in rows]

    async def person_of(self, anonymous_id: str) -> str | None:
        """The person an anonymous id belongs to, if it was ever linked."""
        rows = await self._read(
            "SELECT person_id FROM identities WHERE anonymous_id = ?", (anonymous_id,)
        )
        return rows[0][0] if rows else None

    async def profile(self, person_id: str) -> dict[str, Any] | None:
        """One profile, traits decoded; None if unknown."""
        rows = await self._read(
            f"SELECT {', '.join(PROFILE_COLUMNS)} FROM profiles WHERE person_id = ?", (person_id,)
        )
        if not rows:
            return None
        profile = dict(zip(PROFILE_COLUMNS, rows[0], strict=True))
        profile["traits"] = orjson.loads(profile["traits"])
        return profile
