"""The writer's half of the store: what one group commit does, as plain synchronous functions.

Each function takes the writer's ``sqlite3.Connection`` and runs entirely on aiosqlite's thread,
called by :class:`~rtserver.store.database.Store` in a single hop: measured, a group commit made 11
to 18 separate trips to that thread, and more than half of its time went to waiting for the busy
event loop between them (bench/RESULTS.md). Only ``store.py`` imports this module; the SQL text
itself is in ``_schema.py``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from rtserver.model import (
    HISTORY_LIMIT,
    NAMES_BY_TYPE,
    Engagement,
    Event,
    Facts,
    History,
    Link,
    Person,
    Run,
    ids_to_look_up,
    may_describe,
    resolve_people,
)
from rtserver.store.changes import Changes, Prepared
from rtserver.store.schema import (
    BANDIT_TALLIES,
    DROP_ENDED_TIMERS,
    END_CONFLICTING_RUNS,
    FACT_COLUMNS,
    INSERT_BANDIT_MAIL,
    INSERT_DELIVERY,
    INSERT_EVENT,
    INSERT_OUTBOX,
    INSERT_STEP,
    MERGE_PROFILE,
    MERGE_PROFILE_FACTS,
    PROBE,
    REWARD_BANDIT_MAIL,
    RUN_COLUMNS,
    UPDATE_PROFILE_FACTS,
    UPSERT_IDENTITY,
    UPSERT_PROFILE,
    UPSERT_RUN,
    UPSERT_SCHEDULE,
    UPSERT_SHOP_ENGAGEMENT,
    UPSERT_TIMER,
)

__all__ = [
    "Plan",
    "Source",
    "bandit_tallies",
    "commit",
    "facts",
    "generation",
    "group",
    "open_runs",
    "prepare",
    "probe",
]

logger = logging.getLogger("rtserver.store")

IN_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


def _marks(items: Sequence[str]) -> str:
    return ",".join("?" * len(items))


def _profile_row(event: Event, person: str, received_at: float) -> tuple[Any, ...]:
    """(person, user id, email, claimed email, traits, claimed traits, first and last seen).

    Traits go to ``traits`` from a trusted source (the write key, or a browser whose user id
    the shop signed), to ``claimed_traits`` from a browser describing its own anonymous profile,
    and nowhere from a browser that only knows a known user's anonymous id."""
    user = event.known_user
    if not may_describe(event, person):
        return (person, user, None, None, {}, {}, received_at, received_at)
    traits = dict(event.traits)
    claimed = None
    if event.email is not None and not event.email_verified:
        claimed = event.email
        traits.pop("email", None)  # a claimed address must not look like a mailable one
    email = event.email if event.email_verified else None
    if event.source == "server" or user is not None:
        return (person, user, email, claimed, traits, {}, received_at, received_at)
    return (person, user, email, claimed, {}, traits, received_at, received_at)


def _profile_rows(
    events: Sequence[Event], people: Sequence[str], received_at: Sequence[float]
) -> list[tuple[Any, ...]]:
    """One profile upsert per person of the group (not per event), merged in event order."""
    merged: dict[str, list[Any]] = {}
    for event, person, at in zip(events, people, received_at, strict=True):
        row = _profile_row(event, person, at)
        seen = merged.get(person)
        if seen is None:
            merged[person] = [*row[:4], dict(row[4]), dict(row[5]), row[6], row[7]]
            continue
        for i in (1, 2, 3):  # user id, email, claimed email: the latest given wins
            if row[i] is not None:
                seen[i] = row[i]
        seen[4].update(row[4])
        seen[5].update(row[5])
        seen[6] = min(seen[6], at)
        seen[7] = max(seen[7], at)
    return [
        (*r[:4], orjson.dumps(r[4]).decode(), orjson.dumps(r[5]).decode(), r[6], r[7])
        for r in merged.values()
    ]


def _run_row(run: Run) -> tuple[Any, ...]:
    return (
        run.id, run.workflow, run.person_id, run.key, run.started, run.step, run.step_kind,
        run.variant, int(run.holdout), int(run.wait_met), run.sends, run.due, run.timing,
    )  # fmt: skip


def _run_of(row: Sequence[Any]) -> Run:
    values = dict(zip(RUN_COLUMNS, row, strict=True))
    values["holdout"] = bool(values["holdout"])
    values["wait_met"] = bool(values["wait_met"])
    return Run(**values)


def engagement_json(engagement: Engagement) -> str:
    """``[at, hour, weight, hour, weight, ...]`` (only the bins there are); ``[]``: none."""
    if not engagement.bins:
        return "[]"
    flat: list[float] = [engagement.at]
    for hour, weight in sorted(engagement.bins.items()):
        flat += (hour, weight)
    return orjson.dumps(flat).decode()


def engagement_of(text: str) -> Engagement:
    """The :class:`Engagement` of :func:`engagement_json`."""
    flat = orjson.loads(text)
    if not flat:
        return Engagement()
    return Engagement(flat[0], {int(h): w for h, w in zip(flat[1::2], flat[2::2], strict=True)})


def _facts_row(person: Person) -> tuple[Any, ...]:
    return (
        person.orders_count, person.total_spent, person.last_order_at,
        orjson.dumps(person.order_times).decode(), person.opens, person.clicks,
        person.time_zone, person.consent, engagement_json(person.engagement), person.id,
    )  # fmt: skip


def _person_of(row: Sequence[Any]) -> Person:
    values = dict(zip(FACT_COLUMNS, row, strict=True))
    values["id"] = values.pop("person_id")
    # Conditions see what a browser claimed for itself too; trusted traits win.
    values["traits"] = {
        **orjson.loads(values.pop("claimed_traits")),
        **orjson.loads(values["traits"]),
    }
    values["order_times"] = tuple(orjson.loads(values["order_times"]))
    values["engagement"] = engagement_of(values["engagement"])
    return Person(**values)


def product_of(properties: dict[str, Any]) -> str | None:
    """``events.product_id``: ``properties.product_id``, else ``.sku``, as SQLite's
    ``json_extract`` into a TEXT column gives them (what migration 0015 stored for the events
    before it): a number as its decimal text, true and false as 1 and 0, an array or object as
    its compact JSON; null or absent is none."""
    value = properties.get("product_id")
    if value is None:
        value = properties.get("sku")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _rows(conn: sqlite3.Connection, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
    return conn.execute(sql, parameters).fetchall()


def prepare(
    conn: sqlite3.Connection, events: Sequence[Event], received_at: Sequence[float]
) -> Prepared:
    """Drop events already stored (or repeated in the group) and resolve their persons."""
    stored: set[str] = set()
    for chunk in _chunks([e.message_id for e in events]):
        sql = f"SELECT message_id FROM events WHERE message_id IN ({_marks(chunk)})"
        stored.update(r[0] for r in _rows(conn, sql, chunk))
    fresh: list[Event] = []
    times: list[float] = []
    for event, at in zip(events, received_at, strict=True):
        if event.message_id not in stored:
            stored.add(event.message_id)
            fresh.append(event)
            times.append(at)
    known: dict[str, str] = {}
    for chunk in _chunks(sorted(ids_to_look_up(fresh))):
        sql = (
            "SELECT anonymous_id, person_id FROM identities "
            f"WHERE anonymous_id IN ({_marks(chunk)})"
        )
        known.update((r[0], r[1]) for r in _rows(conn, sql, chunk))
    resolution = resolve_people(fresh, known)
    return Prepared(fresh, times, resolution.people, resolution.links, len(events) - len(fresh))


def _begin(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> None:
    if conn.in_transaction:
        # Left over by an earlier failure: without this, every later BEGIN fails.
        logger.warning("rolling back a transaction left open on the writer")
        conn.execute("ROLLBACK")
    conn.execute(begin)


def _roll_back(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back by itself (disk full): the original error is what
    # the caller must see.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.warning("rollback failed; the next commit rolls back first")


def commit(
    conn: sqlite3.Connection,
    prepared: Prepared,
    changes: Changes,
    *,
    grouped: bool = False,
    begun: bool = False,
) -> None:
    """Write a prepared group and its decisions in one transaction (rolled back on any error);
    ``begun``: the write transaction :func:`group` holds already; not ``grouped``
    (``Store.commit_batch``), behind the engine's back (see :func:`generation`).
    """
    if not grouped:
        with contextlib.suppress(sqlite3.OperationalError):  # never watched: nobody compares
            conn.execute("UPDATE temp.rt_outside_writes SET n = n + 1")
    events, received_at = prepared.fresh, prepared.received_at
    people = prepared.people
    event_rows = [
        (e.message_id, e.type, e.name, person, e.anonymous_id, e.user_id, e.source, at,
         e.timestamp, e.body, product_of(e.properties))
        for e, person, at in zip(events, people, received_at, strict=True)
    ]  # fmt: skip
    profile_rows = _profile_rows(events, people, received_at)
    at = max(received_at, default=0.0)
    if not begun:
        _begin(conn)
    try:
        if event_rows:
            conn.executemany(INSERT_EVENT, event_rows)
        if profile_rows:
            _write_profiles(conn, profile_rows, changes.profiled)
        for link in prepared.links:
            _apply_link(conn, link, at)
        _write_changes(conn, changes)
        conn.execute("COMMIT")
    except BaseException:
        _roll_back(conn)
        raise


def _apply_link(conn: sqlite3.Connection, link: Link, at: float) -> None:
    if link.anonymous_id is not None:
        conn.execute(UPSERT_IDENTITY, (link.anonymous_id, link.person_id))
    old = link.merge_from
    if old is None or old == link.person_id:
        return
    conn.execute("UPDATE events SET person_id = ? WHERE person_id = ?", (link.person_id, old))
    conn.execute(MERGE_PROFILE, (link.person_id, old))
    conn.execute(MERGE_PROFILE_FACTS, (old, link.person_id))
    conn.execute("DELETE FROM profiles WHERE person_id = ?", (old,))
    conn.execute(END_CONFLICTING_RUNS, (at, old, link.person_id))
    conn.execute(DROP_ENDED_TIMERS, (old, old))
    for table in ("identities", "runs", "timers", "steps", "outbox", "deliveries", "mail_products"):
        conn.execute(f"UPDATE {table} SET person_id = ? WHERE person_id = ?", (link.person_id, old))


SEEN_PROFILE = """
    UPDATE profiles SET user_id = coalesce(?, user_id), first_seen = min(first_seen, ?),
        last_seen = max(last_seen, ?) WHERE person_id = ?
"""
"""``UPSERT_PROFILE`` of a known profile: no insert tried, no ``json_patch`` (2 µs, not 4.5)."""


def _write_profiles(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], profiled: set[str]
) -> None:
    """Upsert the group's profiles: those known to exist, seen by events that carry no email
    or traits, as plain updates."""
    seen: list[tuple[Any, ...]] = []
    rest: list[tuple[Any, ...]] = []
    for row in rows:
        # No email, claimed email or traits: only the user id and the seen times may move.
        (seen if row[0] in profiled and row[2:6] == (None, None, "{}", "{}") else rest).append(row)
    if seen:
        updated = conn.executemany(SEEN_PROFILE, [(r[1], r[6], r[7], r[0]) for r in seen]).rowcount
        if updated != len(seen):
            rest = rows  # one was not there after all: upsert all (min and max twice is once)
    if rest:
        conn.executemany(UPSERT_PROFILE, rest)


MOVE_OPEN_RUN = """
    UPDATE runs SET step = ?, step_kind = ?, variant = ?, wait_met = ?, sends = ?, due = ?,
        updated_at = ?
    WHERE id = ? AND state = 'active'
"""
"""A step or a timer of an open run moved: no indexed column changes, unlike ``UPSERT_RUN``
(which sets ``state`` and so rewrites three index entries; 3 µs a row against 10)."""


def _write_runs(conn: sqlite3.Connection, changes: Changes) -> None:
    """Upsert the group's runs: moves of runs open in the store as plain updates."""
    rows = [
        (*_run_row(run), "active" if reason is None else "ended",
         None if reason is None else at, reason, at)
        for run, reason, at in changes.runs.values()
    ]  # fmt: skip
    moved: list[tuple[Any, ...]] = []
    rest: list[tuple[Any, ...]] = []
    for r in rows:
        if r[12] == "active" and r[0] not in changes.started:
            moved.append((*r[5:8], *r[9:12], r[15], r[0]))  # MOVE_OPEN_RUN's parameters
        else:
            rest.append(r)
    if moved and conn.executemany(MOVE_OPEN_RUN, moved).rowcount != len(moved):
        rest = rows  # one is not open any more (a merge here ended it): all as before, in order
    if rest:
        conn.executemany(UPSERT_RUN, rest)


def _write_changes(conn: sqlite3.Connection, changes: Changes) -> None:
    if changes.runs:
        _write_runs(conn, changes)
    armed = [(rid, *t) for rid, t in changes.timers.items() if t is not None]
    dropped = [(rid,) for rid, t in changes.timers.items() if t is None]
    if armed:
        conn.executemany(UPSERT_TIMER, armed)
    if dropped:
        conn.executemany("DELETE FROM timers WHERE run_id = ?", dropped)
    if changes.steps:
        conn.executemany(INSERT_STEP, changes.steps)
    if changes.outbox:
        conn.executemany(INSERT_OUTBOX, changes.outbox)
    if changes.deliveries:
        conn.executemany(INSERT_DELIVERY, changes.deliveries)
    if changes.confirmations:
        conn.executemany(
            "INSERT INTO confirmations VALUES (email_hash(?), ?, ?)", changes.confirmations
        )
    if changes.schedules:
        conn.executemany(UPSERT_SCHEDULE, [(wf, *st) for wf, st in changes.schedules.items()])
    if changes.people:
        conn.executemany(UPDATE_PROFILE_FACTS, [_facts_row(p) for p in changes.people.values()])
    if changes.shop is not None:
        conn.execute(UPSERT_SHOP_ENGAGEMENT, (engagement_json(changes.shop), changes.shop.at))
    if changes.bandit_mails:
        conn.executemany(INSERT_BANDIT_MAIL, changes.bandit_mails)
    if changes.rewards:
        conn.executemany(REWARD_BANDIT_MAIL, [(at, m) for m, at in changes.rewards.items()])


def facts(
    conn: sqlite3.Connection, person_ids: Iterable[str], history_since: float | None
) -> dict[str, Facts]:
    """Profile, open runs, last ends and sends (and recent events, with ``history_since``)."""
    ids = sorted(set(person_ids))
    people: dict[str, Person] = {p: Person(p) for p in ids}
    runs: dict[str, list[Run]] = {p: [] for p in ids}
    ended: dict[str, dict[tuple[str, str], float]] = {p: {} for p in ids}
    sent: dict[str, float] = {}
    history: dict[str, list[tuple[str, float]]] = {p: [] for p in ids}
    for chunk in _chunks(ids):
        marks = _marks(chunk)
        sql = f"SELECT {', '.join(FACT_COLUMNS)} FROM profiles WHERE person_id IN ({marks})"
        for row in _rows(conn, sql, chunk):
            people[row[0]] = _person_of(row)
        # In the order they were first written, as the engine keeps them (it folds new runs
        # in after the open ones): the order decides which of two sends the cap lets through.
        sql = (
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
            f"WHERE state = 'active' AND person_id IN ({marks}) ORDER BY rowid"
        )
        for row in _rows(conn, sql, chunk):
            runs[row[2]].append(_run_of(row))
        sql = (
            "SELECT person_id, workflow, key, max(ended_at) FROM runs "
            f"WHERE state = 'ended' AND person_id IN ({marks}) GROUP BY person_id, workflow, key"
        )
        for person, workflow, key, at in _rows(conn, sql, chunk):
            ended[person][(workflow, key)] = at
        sql = (
            "SELECT person_id, max(decided_at) FROM steps "
            f"WHERE capped = 1 AND person_id IN ({marks}) GROUP BY person_id"
        )
        for person, at in _rows(conn, sql, chunk):
            sent[person] = at
        if history_since is None:
            continue
        sql = (
            "SELECT person_id, type, name, received_at FROM events "
            f"WHERE person_id IN ({marks}) AND received_at >= ? ORDER BY seq"
        )
        for person, kind, name, at in _rows(conn, sql, (*chunk, history_since)):
            label = name if kind == "track" and name else NAMES_BY_TYPE.get(kind, kind)
            history[person].append((label, at))
    for p, recent in history.items():
        if recent:
            people[p] = replace(people[p], history=History(recent[-HISTORY_LIMIT:]))
    return {p: Facts(people[p], tuple(runs[p]), ended[p], sent.get(p)) for p in ids}


def shop_engagement(conn: sqlite3.Connection) -> Engagement:
    """The shop's engagement by hour of the week; empty before the first."""
    rows = _rows(conn, "SELECT histogram FROM shop_engagement WHERE id = 1")
    return engagement_of(rows[0][0]) if rows else Engagement()


def bandit_tallies(conn: sqlite3.Connection) -> dict[tuple[str, int, str], tuple[int, int]]:
    """(workflow, step, variant) → (mails sent, of them rewarded) of every bandit arm."""
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in _rows(conn, BANDIT_TALLIES)}


def open_runs(conn: sqlite3.Connection, run_ids: Iterable[str]) -> dict[str, Run]:
    """The open runs among ``run_ids``."""
    found: dict[str, Run] = {}
    for chunk in _chunks(sorted(set(run_ids))):
        sql = (
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
            f"WHERE state = 'active' AND id IN ({_marks(chunk)})"
        )
        for row in _rows(conn, sql, chunk):
            found[row[0]] = _run_of(row)
    return found


def mailable_after(conn: sqlite3.Connection, cursor: str | None, limit: int) -> list[str]:
    """The next ``limit`` persons with a verified email, by id, after ``cursor``."""
    sql = (
        "SELECT person_id FROM profiles WHERE email IS NOT NULL AND person_id > ? "
        "ORDER BY person_id LIMIT ?"
    )
    return [r[0] for r in _rows(conn, sql, (cursor or "", limit))]


class Source:
    """The facts a plan may read, on the writer's connection, inside the group's trip."""

    def __init__(self, conn: sqlite3.Connection, generation: tuple[int, int] | None = None):
        self._conn = conn
        self.generation = generation
        """:func:`generation` before the group was prepared."""

    def facts(self, person_ids: Iterable[str], history_since: float | None) -> dict[str, Facts]:
        """See :func:`facts`."""
        return facts(self._conn, person_ids, history_since)

    def shop_engagement(self) -> Engagement:
        """The shop's engagement by hour of the week (the prior of send times)."""
        return shop_engagement(self._conn)

    def bandit_tallies(self) -> dict[tuple[str, int, str], tuple[int, int]]:
        """See :func:`bandit_tallies`."""
        return bandit_tallies(self._conn)

    def bandit_mail(self, mail_id: str) -> tuple[str, int, str, bool] | None:
        """(workflow, step, variant, rewarded already) of a bandit step's mail; else None."""
        rows = _rows(
            self._conn,
            "SELECT workflow, step, variant, rewarded_at IS NOT NULL FROM bandit_mails "
            "WHERE mail_id = ?",
            (mail_id,),
        )
        return (rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    def touches(self, person_id: str, since: float) -> list[tuple[str, str, float]]:
        """The person's human opens and clicks of mails since ``since``, newest first:
        (mail id, event name, when)."""
        rows = _rows(
            self._conn,
            "SELECT json_extract(CAST(body AS TEXT), '$.properties.mail_id') AS mail, name, "
            "received_at FROM events INDEXED BY events_person WHERE person_id = ? "
            "AND received_at >= ? AND name IN ('Email Opened', 'Email Clicked') "
            "AND coalesce(json_extract(CAST(body AS TEXT), '$.properties.machine'), 0) = 0 "
            "AND mail IS NOT NULL ORDER BY received_at DESC, seq DESC",
            (person_id, since),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def open_runs(self, run_ids: Iterable[str]) -> dict[str, Run]:
        """See :func:`open_runs`."""
        return open_runs(self._conn, run_ids)

    def mailable_after(self, cursor: str | None, limit: int) -> list[str]:
        """See :func:`mailable_after`."""
        return mailable_after(self._conn, cursor, limit)

    def confirmations(self, address: str, client_ip: str, since: float) -> tuple[int, int]:
        """Double opt-in mails since ``since`` to ``address``, and caused by the client."""
        sql = "SELECT count(*) FROM confirmations WHERE {} AND sent_at >= ?"
        by_address = _rows(self._conn, sql.format("email_hash = email_hash(?)"), (address, since))[
            0
        ][0]
        by_client = _rows(self._conn, sql.format("client_ip = ?"), (client_ip, since))[0][0]
        return int(by_address), int(by_client)


Plan = Callable[[Prepared, Source], Changes]
"""Decides a prepared group, reading facts through the source (the engine's ``plan``)."""


def group(
    conn: sqlite3.Connection,
    events: Sequence[Event],
    received_at: Sequence[float],
    plan: Plan | None,
) -> tuple[Prepared, Changes]:
    """A whole group commit in one trip and one transaction: prepare, decide (``plan``),
    commit.

    Its reads share one read transaction: outside one, each statement began and ended a read
    transaction of its own (the WAL's locks; ``generation``'s pragma alone cost 10 to 20 µs of
    a one-event group, measured). Other connections may still commit while ``plan`` decides:
    then the write cannot build on the group's snapshot, and begins afresh, as a commit did
    before, with nothing of the facts read trusted.
    """
    _begin(conn, "BEGIN")
    try:
        before = generation(conn)
        prepared = prepare(conn, events, received_at)
        changes = plan(prepared, Source(conn, before)) if plan is not None else Changes()
        current = _upgrade(conn) if prepared.fresh or changes else True
    except BaseException:
        _roll_back(conn)
        raise
    if prepared.fresh or changes:
        commit(conn, prepared, changes, grouped=True, begun=True)
    else:
        conn.execute("COMMIT")
    # No other connection committed between ``before`` and the write (``current``); one that
    # commits after it changes the next group's ``before``.
    changes.generation = (before[0], _outside_writes(conn)) if before and current else None
    return prepared, changes


TAKE_WRITE_LOCK = "DELETE FROM secrets WHERE 0"
"""A write of nothing: it makes the read transaction a write transaction."""


def _upgrade(conn: sqlite3.Connection) -> bool:
    """Make the group's read transaction a write transaction: True if it still reads the
    newest data; if another connection wrote since or holds the write lock, begin a write
    transaction afresh (waiting for the lock as ``BEGIN IMMEDIATE`` does) and return False."""
    try:
        conn.execute(TAKE_WRITE_LOCK)
    except sqlite3.OperationalError:  # busy: anything else fails the fresh begin again
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        return False
    return True


def _watch(conn: sqlite3.Connection) -> None:
    """Count this connection's writes of facts outside the group commit, in a TEMP table (the
    connection's own, not in the file): deletes by TEMP triggers (``MailStore.forget`` and the
    retention purge run on the writer too), commits by :func:`commit` itself."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS rt_outside_writes (n INTEGER NOT NULL)")
    conn.execute(
        "INSERT INTO rt_outside_writes SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM rt_outside_writes)"
    )
    for table in ("profiles", "runs", "steps", "events"):  # what facts are read from
        conn.execute(
            f"CREATE TEMP TRIGGER IF NOT EXISTS rt_delete_{table} AFTER DELETE ON main.{table} "
            "BEGIN UPDATE rt_outside_writes SET n = n + 1; END"
        )


def generation(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """Where the store stands against writes of facts outside the group commit: (commits of
    other connections, outside writes on this one), or None if unreadable.

    The engine remembers what group commits wrote; the store changes behind its back only
    through another connection (``PRAGMA data_version``: ``rtserver forget`` in another
    process), a delete on this one (``MailStore.forget``, the retention purge) or a
    :func:`commit` outside :func:`group` (``tests/test_actions.py`` checks for other writers).
    """
    try:
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        try:
            (writes,) = conn.execute("SELECT n FROM temp.rt_outside_writes").fetchone()
        except sqlite3.OperationalError:  # the connection's first group
            _watch(conn)
            writes = 0
    except sqlite3.Error:
        return None
    return int(version), int(writes)


def _outside_writes(conn: sqlite3.Connection) -> int:
    """The second half of :func:`generation` (watched already): a read of the connection's
    TEMP table only, which begins no read transaction of the database file."""
    (writes,) = conn.execute("SELECT n FROM temp.rt_outside_writes").fetchone()
    return int(writes)


def probe(conn: sqlite3.Connection, now: float) -> None:
    """Write and commit one row: whether the store takes writes again after commits failed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(PROBE, (now,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
