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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from rtserver._schema import (
    DROP_ENDED_TIMERS,
    END_CONFLICTING_RUNS,
    FACT_COLUMNS,
    INSERT_EVENT,
    INSERT_STEP,
    MERGE_PROFILE,
    MERGE_PROFILE_FACTS,
    MIGRATIONS,
    PROFILE_COLUMNS,
    RUN_COLUMNS,
    UPDATE_PROFILE_FACTS,
    UPSERT_IDENTITY,
    UPSERT_PROFILE,
    UPSERT_RUN,
    UPSERT_SCHEDULE,
    UPSERT_TIMER,
)
from rtserver.errors import StorageUnavailable, StoreError
from rtserver.events import Event
from rtserver.people import Link, ids_to_look_up, resolve_people
from rtserver.workflows import HISTORY_LIMIT, NAMES_BY_TYPE, Facts, Person, Run

__all__ = ["MIGRATIONS", "Changes", "Prepared", "Store"]

logger = logging.getLogger(__name__)

IN_CHUNK = 500
PURGE_CHUNK = 5000
TRANSIENT_CODES = frozenset(
    (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
)
"""Primary result codes after which nothing was written and a retry may succeed."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A group of events checked against the store: the new ones, with their persons."""

    fresh: list[Event]
    received_at: list[float]
    people: list[str]
    links: list[Link]
    duplicates: int


@dataclass(slots=True)
class Changes:
    """What the decisions of one group change, committed with its events in one transaction."""

    runs: dict[str, tuple[Run, str | None, float]] = field(default_factory=dict)
    """Run id → (its last state, the end reason or None while open, when decided)."""
    timers: dict[str, tuple[int, float, str] | None] = field(default_factory=dict)
    """Run id → (step, due, person id) to arm, or None to drop."""
    steps: list[tuple[str, int, str, str, str, str, bool, float]] = field(default_factory=list)
    """(run id, step, person id, workflow, action, detail JSON, counts for the cap, when)."""
    people: dict[str, Person] = field(default_factory=dict)
    """The persons whose facts (orders, opens, clicks, time zone) changed."""
    schedules: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    """Scheduled workflow → (next sweep, the last person swept so far or None when done)."""

    def __bool__(self) -> bool:
        return bool(self.runs or self.timers or self.steps or self.people or self.schedules)


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


def _run_row(run: Run) -> tuple[Any, ...]:
    return (
        run.id, run.workflow, run.person_id, run.key, run.started, run.step, run.step_kind,
        run.variant, int(run.holdout), int(run.wait_met), run.sends, run.due,
    )  # fmt: skip


def _run_of(row: Sequence[Any]) -> Run:
    values = dict(zip(RUN_COLUMNS, row, strict=True))
    values["holdout"] = bool(values["holdout"])
    values["wait_met"] = bool(values["wait_met"])
    return Run(**values)


def _facts_row(person: Person) -> tuple[Any, ...]:
    return (
        person.orders_count, person.total_spent, person.last_order_at,
        orjson.dumps(person.order_times).decode(), person.opens, person.clicks,
        person.time_zone, person.id,
    )  # fmt: skip


def _person_of(row: Sequence[Any]) -> Person:
    values = dict(zip(FACT_COLUMNS, row, strict=True))
    values["id"] = values.pop("person_id")
    values["traits"] = orjson.loads(values["traits"])
    values["order_times"] = tuple(orjson.loads(values["order_times"]))
    return Person(**values)


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

    async def commit_batch(self, prepared: Prepared, changes: Changes | None = None) -> None:
        """Write a prepared group and the decisions it caused in one transaction.

        Raises:
            StorageUnavailable: nothing was written (disk full, locked); retry later.
            StoreError: anything else.
        """
        events, received_at = prepared.fresh, prepared.received_at
        changes = changes or Changes()
        if not events and not changes:
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
            at = max(received_at, default=0.0)
            await self._commit(event_rows, profile_rows, prepared.links, changes, at)

    async def _commit(
        self,
        event_rows: list[tuple[Any, ...]],
        profile_rows: list[tuple[Any, ...]],
        links: list[Link],
        changes: Changes,
        at: float,
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
                await self._apply_link(link, at)
            await self._write_changes(changes)
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def _apply_link(self, link: Link, at: float) -> None:
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
        await db.execute(MERGE_PROFILE_FACTS, (old, link.person_id))
        await db.execute("DELETE FROM profiles WHERE person_id = ?", (old,))
        await db.execute(END_CONFLICTING_RUNS, (at, old, link.person_id))
        await db.execute(DROP_ENDED_TIMERS, (old, old))
        for table in ("identities", "runs", "timers", "steps"):
            await db.execute(
                f"UPDATE {table} SET person_id = ? WHERE person_id = ?", (link.person_id, old)
            )

    async def _write_changes(self, changes: Changes) -> None:
        db = self._db
        if changes.runs:
            await db.executemany(
                UPSERT_RUN,
                [
                    (
                        *_run_row(run),
                        "active" if reason is None else "ended",
                        None if reason is None else at,
                        reason,
                        at,
                    )
                    for run, reason, at in changes.runs.values()
                ],
            )
        armed = [(rid, *t) for rid, t in changes.timers.items() if t is not None]
        dropped = [(rid,) for rid, t in changes.timers.items() if t is None]
        if armed:
            await db.executemany(UPSERT_TIMER, armed)
        if dropped:
            await db.executemany("DELETE FROM timers WHERE run_id = ?", dropped)
        if changes.steps:
            await db.executemany(INSERT_STEP, changes.steps)
        if changes.schedules:
            await db.executemany(
                UPSERT_SCHEDULE, [(wf, *state) for wf, state in changes.schedules.items()]
            )
        if changes.people:
            await db.executemany(
                UPDATE_PROFILE_FACTS, [_facts_row(p) for p in changes.people.values()]
            )

    async def facts_for(
        self, person_ids: Iterable[str], history_since: float | None = None
    ) -> dict[str, Facts]:
        """The facts ``decide`` needs for each person: profile, open runs, last ends and sends,
        and, with ``history_since``, their recent events (for ``person.events_since``).

        Reads on the writer (under its lock) for the same reason as :meth:`prepare`; a person the
        store does not know yet gets empty facts.
        """
        ids = sorted(set(person_ids))
        people: dict[str, Person] = {p: Person(p) for p in ids}
        runs: dict[str, list[Run]] = {p: [] for p in ids}
        ended: dict[str, dict[tuple[str, str], float]] = {p: {} for p in ids}
        sent: dict[str, float] = {}
        history: dict[str, list[tuple[str, float]]] = {p: [] for p in ids}
        db = self._db
        async with self._write_lock, _sqlite_errors():
            for chunk in _chunks(ids):
                marks = _marks(chunk)
                for row in await db.execute_fetchall(
                    f"SELECT {', '.join(FACT_COLUMNS)} FROM profiles WHERE person_id IN ({marks})",
                    chunk,
                ):
                    people[row[0]] = _person_of(row)
                for row in await db.execute_fetchall(
                    f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
                    f"WHERE state = 'active' AND person_id IN ({marks})",
                    chunk,
                ):
                    runs[row[2]].append(_run_of(row))
                for person, workflow, key, at in await db.execute_fetchall(
                    "SELECT person_id, workflow, key, max(ended_at) FROM runs "
                    f"WHERE state = 'ended' AND person_id IN ({marks}) "
                    "GROUP BY person_id, workflow, key",
                    chunk,
                ):
                    ended[person][(workflow, key)] = at
                for person, at in await db.execute_fetchall(
                    "SELECT person_id, max(decided_at) FROM steps "
                    f"WHERE capped = 1 AND person_id IN ({marks}) GROUP BY person_id",
                    chunk,
                ):
                    sent[person] = at
                if history_since is None:
                    continue
                for person, kind, name, at in await db.execute_fetchall(
                    "SELECT person_id, type, name, received_at FROM events "
                    f"WHERE person_id IN ({marks}) AND received_at >= ? ORDER BY seq",
                    (*chunk, history_since),
                ):
                    label = name if kind == "track" and name else NAMES_BY_TYPE.get(kind, kind)
                    history[person].append((label, at))
        for p, recent in history.items():
            if recent:
                people[p] = replace(people[p], history=tuple(recent[-HISTORY_LIMIT:]))
        return {p: Facts(people[p], tuple(runs[p]), ended[p], sent.get(p)) for p in ids}

    async def runs_by_id(self, run_ids: Iterable[str]) -> dict[str, Run]:
        """The open runs among ``run_ids`` (a timer's run may have ended since)."""
        ids = sorted(set(run_ids))
        found: dict[str, Run] = {}
        async with self._write_lock, _sqlite_errors():
            for chunk in _chunks(ids):
                for row in await self._db.execute_fetchall(
                    f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
                    f"WHERE state = 'active' AND id IN ({_marks(chunk)})",
                    chunk,
                ):
                    found[row[0]] = _run_of(row)
        return found

    async def schedules(
        self, intervals: dict[str, float], now: float
    ) -> dict[str, tuple[float, str | None]]:
        """The sweep state of each scheduled workflow; a new one first sweeps one interval on."""
        async with self._write_lock, _sqlite_errors():
            await self._db.executemany(
                "INSERT INTO schedules (workflow, next_at) VALUES (?, ?) "
                "ON CONFLICT (workflow) DO NOTHING",
                [(name, now + seconds) for name, seconds in intervals.items()],
            )
            rows = await self._db.execute_fetchall(
                "SELECT workflow, next_at, cursor FROM schedules"
            )
        return {r[0]: (r[1], r[2]) for r in rows if r[0] in intervals}

    async def mailable_after(self, cursor: str | None, limit: int) -> list[str]:
        """The next ``limit`` persons with a verified email, by id, after ``cursor``."""
        async with self._write_lock, _sqlite_errors():
            rows = await self._db.execute_fetchall(
                "SELECT person_id FROM profiles WHERE email IS NOT NULL AND person_id > ? "
                "ORDER BY person_id LIMIT ?",
                (cursor or "", limit),
            )
        return [r[0] for r in rows]

    async def pending_timers(self) -> list[tuple[str, float]]:
        """Every armed timer as (run id, due): the wheel is rebuilt from these on start."""
        async with self._write_lock, _sqlite_errors():
            rows = await self._db.execute_fetchall("SELECT run_id, due FROM timers")
        return [(r[0], r[1]) for r in rows]

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

    async def runs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest runs first (all, or in one state: 'active' / 'ended'), for the live view."""
        where = "WHERE state = ?" if state else ""
        rows = await self._read(
            f"SELECT {', '.join(RUN_COLUMNS)}, state, ended_at, end_reason, updated_at FROM runs "
            f"{where} ORDER BY updated_at DESC, id LIMIT ?",
            (state, limit) if state else (limit,),
        )
        names = (*RUN_COLUMNS, "state", "ended_at", "end_reason", "updated_at")
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def timers(self, limit: int = 100) -> list[dict[str, Any]]:
        """Pending timers, soonest first, for the live view."""
        rows = await self._read(
            "SELECT t.run_id, t.step, t.due, t.person_id, r.workflow, r.key FROM timers AS t "
            "JOIN runs AS r ON r.id = t.run_id ORDER BY t.due, t.run_id LIMIT ?",
            (limit,),
        )
        names = ("run_id", "step", "due", "person_id", "workflow", "key")
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def steps(self, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Decided steps (sends, skips, emits, webhooks), newest first; of one run if given."""
        where = "WHERE run_id = ?" if run_id else ""
        rows = await self._read(
            "SELECT run_id, step, person_id, workflow, action, detail, capped, decided_at "
            f"FROM steps {where} ORDER BY decided_at DESC, run_id, step DESC LIMIT ?",
            (run_id, limit) if run_id else (limit,),
        )
        names = ("run_id", "step", "person_id", "workflow", "action", "detail", "capped", "at")
        result = [dict(zip(names, r, strict=True)) for r in rows]
        for item in result:
            item["detail"] = orjson.loads(item["detail"])
            item["capped"] = bool(item["capped"])
        return result

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
