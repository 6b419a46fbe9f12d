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
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
import orjson

from rtserver.errors import StorageUnavailable, StoreError
from rtserver.model import Event, email_hash
from rtserver.store import writer
from rtserver.store.backup import backup, pending_migrations
from rtserver.store.catalog import CatalogStore
from rtserver.store.changes import Changes, Prepared
from rtserver.store.deliveries import DeliveryStore
from rtserver.store.experiments import ExperimentStore
from rtserver.store.outbox import MailStore
from rtserver.store.polls import PollStore
from rtserver.store.schema import MIGRATIONS, PROFILE_COLUMNS, RUN_COLUMNS
from rtserver.store.writer import Plan

__all__ = [
    "Store",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

PURGE_CHUNK = 5000
PURGE_MARGIN_S = 60.0
"""How far past the retention cutoff the purge looks for old events stored late (an event
received before the cutoff but stored after one received this much later waits for a later
round)."""
WEBHOOK_IDS_KEPT_S = 7 * 86400.0
"""How long a processed webhook's id is kept to refuse its replays (at least 24 h)."""
TRANSIENT_CODES = frozenset(
    (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
)
"""Primary result codes after which nothing was written and a retry may succeed."""


def _classify(exc: sqlite3.Error) -> StoreError:
    # The result code, not the message: "database table is locked" (SQLITE_LOCKED) and the
    # extended I/O errors have other wordings. Errors raised by the sqlite3 module itself (a
    # closed connection, a misuse) carry no code and are not transient.
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in TRANSIENT_CODES:
        return StorageUnavailable(f"storage unavailable: {exc}")
    return StoreError(f"store failed: {exc}")


def _make_private(path: str) -> None:
    """Create the store file readable by its owner only (it holds every secret), or make an
    existing one so; SQLite gives its -wal and -shm files the mode of the database file."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)
    except OSError:
        return  # not a file we can create: SQLite's own open says why


@contextlib.asynccontextmanager
async def _sqlite_errors() -> AsyncIterator[None]:
    """Turn ``sqlite3.Error`` into :class:`StoreError` (its ``__cause__``)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _classify(exc) from exc


async def _rollback(db: aiosqlite.Connection) -> None:
    """Roll back the open transaction, if any, for a caller about to re-raise its error
    (SQLite may already have rolled back by itself; the original error is what counts)."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")


async def _hash_functions(writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
    """Register ``email_hash(address)`` (keyed with the store's salt) and
    ``legacy_email_hash(address)`` (plain SHA-256, before migration 0007) on both connections:
    SQL hashes addresses itself, so no caller needs the salt."""
    (row,) = await writer.execute_fetchall("SELECT value FROM secrets WHERE name = 'email_salt'")
    salt = bytes.fromhex(row[0])

    def salted(address: str) -> str:
        return email_hash(address, salt)

    for connection in (writer, reader):
        await connection.create_function("email_hash", 1, salted, deterministic=True)
        await connection.create_function("legacy_email_hash", 1, email_hash, deterministic=True)


def _backup_before_upgrade(path: str) -> None:
    """Copy a store that holds data to ``<path>.before-<migration>`` before this version's
    first new migration changes it (once: an existing copy is kept)."""
    if not Path(path).is_file():
        return  # a new store, or no store at all: opening it says which
    try:
        pending = pending_migrations(path)
    except StoreError:
        return  # not a store this version reads: opening it says why
    if not pending or len(pending) == len(MIGRATIONS):
        return  # nothing to apply, or a new store
    saved = f"{path}.before-{pending[0]}"
    if not Path(saved).exists():
        size = backup(path, saved)
        logger.info("upgrade: backed up the store to %s (%d bytes) before migrating", saved, size)


class Store:
    """The SQLite store. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._db = writer
        self._ro = reader
        # Every write goes through this lock: the pipeline's transaction spans several awaits,
        # and a statement from another task on the same connection would join it.
        self._write_lock = asyncio.Lock()
        self.mail = MailStore(self._in_writer, self._read)
        """The outbox, suppressions and the dev sink's mails."""
        self.deliveries = DeliveryStore(self._in_writer, self._read)
        """The webhook steps' deliveries and the endpoints a 410 disabled."""
        self.catalog = CatalogStore(self._in_writer, self._read)
        """The shop's products and the feeds' state."""
        self.polls = PollStore(self._in_writer, self._read)
        """Where each polling source stands."""
        self.experiments = ExperimentStore(self._read)
        """Engagement histograms, timed sends and the bandit steps' mails (dashboard reads)."""

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
        _make_private(path)
        await asyncio.to_thread(_backup_before_upgrade, path)
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
                await _hash_functions(writer, reader)
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

    async def _in_writer(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(connection, *args)`` on the writer's thread, in one hop.

        aiosqlite runs each of its calls as a function on its own thread through ``_execute``;
        it has no public way to run several statements in one trip, and a group commit of
        separate awaits spent most of its time waiting for the event loop between them
        (bench/RESULTS.md). The lock keeps other tasks' writes (secrets, purges) out of it.
        """
        async with self._write_lock, _sqlite_errors():
            result: T = await self._db._execute(function, self._db._conn, *args)  # type: ignore[no-untyped-call]
            return result

    async def prepare(self, events: Sequence[Event], received_at: Sequence[float]) -> Prepared:
        """Drop events already stored (or repeated in the group) and resolve their persons.

        Reads on the writer, so it never sees another connection's view of the group.
        """
        return await self._in_writer(writer.prepare, events, received_at)

    async def commit_batch(self, prepared: Prepared, changes: Changes | None = None) -> None:
        """Write a prepared group and the decisions it caused in one transaction.

        Raises:
            StorageUnavailable: nothing was written (disk full, locked); retry later.
            StoreError: anything else.
        """
        changes = changes or Changes()
        if prepared.fresh or changes:
            await self._in_writer(writer.commit, prepared, changes)

    async def group_commit(
        self, events: Sequence[Event], received_at: Sequence[float], plan: Plan | None = None
    ) -> tuple[Prepared, Changes]:
        """Prepare, decide (``plan``, on the writer's thread) and commit a group in one trip.

        Raises:
            StorageUnavailable: nothing was written (disk full, locked); retry later.
            StoreError: anything else.
        """
        return await self._in_writer(writer.group, events, received_at, plan)

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

    async def timer_ticks_after(
        self, tick_s: float, after: tuple[float, str | None], limit: int
    ) -> list[tuple[str, int, float]]:
        """The next ``limit`` armed timers after ``after`` in (due, run id) order, as (run id,
        the wheel tick it is due in: ``ceil(due / tick_s)``, computed by SQLite, whose division
        is Python's; due).

        ``after`` is the last (due, run id) read, or (due, None) for every timer due later
        than ``due``: pages of the ``timers_due`` index, so the engine loads the far timers
        a batch at a time (SQLite sorts only the run ids that share a due time).
        """
        async with self._write_lock, _sqlite_errors():
            rows = await self._db.execute_fetchall(
                "SELECT run_id, "
                "CAST(due / ?1 AS INTEGER) + (due / ?1 > CAST(due / ?1 AS INTEGER)), due "
                "FROM timers WHERE due >= ?2 AND (due > ?2 OR run_id > ?3) "
                "ORDER BY due, run_id LIMIT ?4",
                (tick_s, *after, limit),
            )
        return cast(list[tuple[str, int, float]], rows)

    async def pending_timers(self) -> list[tuple[str, float]]:
        """Every armed timer as (run id, due), in no order (the engine reads them in batches:
        :meth:`timer_ticks_after`)."""
        async with self._write_lock, _sqlite_errors():
            rows = await self._db.execute_fetchall("SELECT run_id, due FROM timers")
        return [(r[0], r[1]) for r in rows]

    async def bandit_tallies(self) -> dict[tuple[str, int, str], tuple[int, int]]:
        """(workflow, step, variant) → (mails sent, of them rewarded) of every bandit arm: the
        engine's counts are rebuilt from these on start."""
        return await self._in_writer(writer.bandit_tallies)

    async def replace_secret(self, name: str, value: str, now: float) -> None:
        """Store ``value`` as the secret ``name``, whatever was kept before."""
        async with self._write_lock, _sqlite_errors():
            await self._db.execute(
                "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "created_at = excluded.created_at",
                (name, value, now),
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
        """Delete raw events received before ``before``, in small transactions, and the
        products mails showed before then; return how many events."""
        # No index on received_at (migration 0017): events are stored in the order they
        # arrive, so the old ones come first by seq. The scan in seq order stops at the first
        # event received a margin after the cutoff; only the events before it are looked at.
        rows = await self._read(
            "SELECT seq FROM events WHERE received_at >= ? ORDER BY seq LIMIT 1",
            (before + PURGE_MARGIN_S,),
        )
        end = rows[0][0] if rows else 1 << 62
        total, after = 0, 0
        while True:
            async with self._write_lock, _sqlite_errors():
                cursor = await self._db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq > ? "
                    "AND seq < ? AND received_at < ? ORDER BY seq LIMIT ?) "
                    "RETURNING seq",
                    (after, end, before, PURGE_CHUNK),
                )
                deleted = [r[0] for r in await cursor.fetchall()]
            total += len(deleted)
            if len(deleted) < PURGE_CHUNK:
                break
            after = max(deleted)
        # What mails showed is learnt from as long as the clicks on it are kept.
        async with self._write_lock, _sqlite_errors():
            await self._db.execute("DELETE FROM mail_products WHERE at < ?", (before,))
        return total

    async def webhook_done(self, webhook_id: str, source: str, now: float) -> None:
        """Note that the webhook ``webhook_id`` was processed, to refuse replays; ids older than
        :data:`WEBHOOK_IDS_KEPT_S` go, in the same transaction."""
        async with self._write_lock, _sqlite_errors():
            await self._db.execute(
                "INSERT INTO webhooks (id, source, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (webhook_id, source, now),
            )
            await self._db.execute(
                "DELETE FROM webhooks WHERE received_at < ?", (now - WEBHOOK_IDS_KEPT_S,)
            )

    async def revoke_session(self, session_id: str, now: float, expires_at: float) -> None:
        """Keep a logged-out dashboard session's id until it would have expired anyway."""
        async with self._write_lock, _sqlite_errors():
            await self._db.execute(
                "INSERT INTO revoked_sessions VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (session_id, now, expires_at),
            )
            await self._db.execute("DELETE FROM revoked_sessions WHERE expires_at < ?", (now,))

    async def revoked_sessions(self, now: float) -> list[tuple[str, float]]:
        """``(id, revoked at)`` of the logged-out sessions not expired yet, oldest first."""
        rows = await self._read(
            "SELECT id, revoked_at FROM revoked_sessions WHERE expires_at >= ? ORDER BY revoked_at",
            (now,),
        )
        return [(str(r[0]), float(r[1])) for r in rows]

    async def webhook_seen(self, webhook_id: str) -> bool:
        """Whether the webhook ``webhook_id`` was processed already."""
        rows = await self._read("SELECT 1 FROM webhooks WHERE id = ?", (webhook_id,))
        return bool(rows)

    # Reads: the read-only connection.

    async def inconsistencies(self) -> dict[str, int]:
        """Rows that break an invariant of the engine (each count should be 0).

        ``runs_waiting_without_a_timer``: an active run with a due time and no timer row
        (nothing would ever wake it); ``timers_of_no_active_run``: a timer whose run ended or
        is gone. A group commit writes both in one transaction, so one snapshot never shows a
        half-written decision.
        """
        rows = await self._read(
            "SELECT (SELECT count(*) FROM runs WHERE state = 'active' AND due IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM timers WHERE timers.run_id = runs.id)), "
            "(SELECT count(*) FROM timers WHERE NOT EXISTS "
            "(SELECT 1 FROM runs WHERE runs.id = timers.run_id AND runs.state = 'active'))"
        )
        waiting, orphans = rows[0]
        return {
            "runs_waiting_without_a_timer": int(waiting),
            "timers_of_no_active_run": int(orphans),
        }

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
        profile["claimed_traits"] = orjson.loads(profile["claimed_traits"])
        return profile

    # Reads for the dashboard: the read-only connection, bounded by a limit or a time window.

    async def ping(self) -> None:
        """Answer one trivial query (readiness: the store is open and answers)."""
        await self._read("SELECT 1")

    async def probe(self, now: float) -> None:
        """Write one row and commit it (is the store writable again?).

        Raises:
            StorageUnavailable, StoreError: it is not.
        """
        await self._in_writer(writer.probe, now)

    async def recent_events(
        self, limit: int = 50, person_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest events, newest first (of one person if given): ``seq``, ``received_at``,
        ``person_id``, ``type``, ``name``, ``source`` and the stored ``message``."""
        where = "WHERE person_id = ?" if person_id else ""
        rows = await self._read(
            "SELECT seq, received_at, person_id, type, name, source, body FROM events "
            f"{where} ORDER BY seq DESC LIMIT ?",
            (person_id, limit) if person_id else (limit,),
        )
        names = ("seq", "received_at", "person_id", "type", "name", "source")
        return [
            {**dict(zip(names, r[:6], strict=True)), "message": orjson.loads(r[6])} for r in rows
        ]

    async def active_runs(self) -> dict[str, int]:
        """How many runs are open, per workflow."""
        rows = await self._read(
            "SELECT workflow, count(*) FROM runs WHERE state = 'active' GROUP BY workflow"
        )
        return {r[0]: int(r[1]) for r in rows}

    async def runs_of(self, person_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A person's runs, newest first."""
        rows = await self._read(
            f"SELECT {', '.join(RUN_COLUMNS)}, state, ended_at, end_reason, updated_at FROM runs "
            "WHERE person_id = ? ORDER BY started DESC, id LIMIT ?",
            (person_id, limit),
        )
        names = (*RUN_COLUMNS, "state", "ended_at", "end_reason", "updated_at")
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def sunk_mail(self, sunk_id: int) -> dict[str, Any] | None:
        """One mail the dev sink received (its raw ``body``), or None."""
        rows = await self._read(
            "SELECT id, message_id, mail_from, recipients, subject, received_at, body "
            "FROM sink_messages WHERE id = ?",
            (sunk_id,),
        )
        if not rows:
            return None
        names = ("id", "message_id", "mail_from", "recipients", "subject", "received_at", "body")
        mail = dict(zip(names, rows[0], strict=True))
        mail["recipients"] = orjson.loads(mail["recipients"])
        return mail

    async def funnel_rows(
        self, since: float
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """What the funnel is computed from, for runs started and events received since
        ``since``: runs (id, workflow, variant, holdout, person, started, first sent), first
        human opens and clicks per run (name, run id, when), and orders (person, when, source,
        properties JSON)."""
        runs = await self._read(
            "SELECT r.id, r.workflow, r.variant, r.holdout, r.person_id, r.started, "
            "(SELECT min(o.sent_at) FROM outbox AS o WHERE o.run_id = r.id) "
            "FROM runs AS r WHERE r.started >= ?",
            (since,),
        )
        touches = await self._read(
            "SELECT name, json_extract(CAST(body AS TEXT), '$.properties.run_id') AS run, "
            "min(received_at) FROM events WHERE received_at >= ? "
            "AND name IN ('Email Opened', 'Email Clicked') "
            "AND coalesce(json_extract(CAST(body AS TEXT), '$.properties.machine'), 0) = 0 "
            "AND run IS NOT NULL GROUP BY name, run",
            (since,),
        )
        orders = await self._read(
            "SELECT person_id, received_at, source, "
            "json_extract(CAST(body AS TEXT), '$.properties') FROM events "
            # Named: for ORDER BY seq the planner (no statistics) would scan the whole table.
            "INDEXED BY events_orders WHERE received_at >= ? AND name = 'Order Completed' "
            "ORDER BY seq",
            (since,),
        )
        return [tuple(r) for r in runs], [tuple(r) for r in touches], [tuple(r) for r in orders]

    async def delivery_delays(self, limit: int = 1000) -> list[float]:
        """Due → sent, in seconds, of the newest mails sent at their first attempt."""
        rows = await self._read(
            "SELECT sent_at - next_attempt_at FROM outbox WHERE sent_at IS NOT NULL "
            "AND attempts = 1 ORDER BY sent_at DESC LIMIT ?",
            (limit,),
        )
        return [float(r[0]) for r in rows]
