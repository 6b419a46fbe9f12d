"""The mail half of the store: the outbox, suppressions, double opt-in counts and the dev sink.

:class:`MailStore` is reached as ``store.mail``; like ``_writer.py`` it is part of ``store.py``
(all SQL stays behind the store), split off to keep each file readable. Writes run as plain
functions on the writer's thread in one hop each; reads use the read-only connection.

Outbox states: ``queued`` → ``sending`` (a lease, one attempt more) → ``sent`` |
``retry_wait`` | ``failed`` | ``ambiguous`` | ``suppressed``. A row left ``sending`` past its
lease (the process died mid-send) turns ``ambiguous``: it may or may not have been delivered.
Suppressions and consent are checked when a row is claimed, so an unsubscribe takes effect for
every mail not yet handed to SMTP.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from rtserver.store.schema import (
    GIVE_BACK_TOKEN,
    INSERT_OUTBOX,
    OUTBOX_COLUMNS,
    TOKEN_USED,
    USE_TOKEN,
)

__all__ = ["Claim", "MailStore", "NEVER", "in_transaction"]

NEVER = 1e18
"""``next_attempt_at`` of a row no one will claim again (an ambiguous row under 'drop')."""

PERSON_TABLES = (
    "events", "identities", "runs", "timers", "steps", "outbox", "deliveries", "mail_products",
)  # fmt: skip
"""Every table with a person's rows (by ``person_id``), for erasure."""
CLAIMABLE = "state IN ('queued', 'retry_wait', 'ambiguous')"
SUPPRESSION = (
    "SELECT reason FROM suppressions "
    "WHERE email_hash IN (email_hash(?), legacy_email_hash(?)) LIMIT 1"
)
"""An address's suppression: salted, or plain from before migration 0007."""
SUPPRESS_ALL = ("hard_bounce", "complaint", "erased", "manual")
"""Reasons that stop every mail; an unsubscribe stops marketing mail only."""
MARKETING_CONSENT = ("confirmed_opt_in", "soft_opt_in_customer")

PRODUCT_EVENTS = (
    "Product Viewed", "Product Added", "Product Removed", "Cart Viewed", "Checkout Started",
    "Order Completed",
)  # fmt: skip
"""What carts, views and purchases are made of (recommend.py reads them)."""
PRODUCT_ID = "product_id"
"""The product of an event: ``events.product_id``, the body's ``properties.product_id`` or
``.sku``, written with the event (migration 0015), indexed for views."""
VIEWS = f"""
    SELECT {PRODUCT_ID} AS pid, max(seq) AS last, count(*) AS n FROM events INDEXED BY %s
    WHERE name = 'Product Viewed' AND received_at >= ? AND {PRODUCT_ID} IS NOT NULL
"""
"""Views counted per product through a named index (the planner has no statistics to choose
by): ``events_product_viewers`` (migration 0005) counts from the index alone."""
CO_VIEWERS = 200
"""How many other viewers of the same products ``co_viewed`` looks at."""


def _properties(body: bytes) -> dict[str, Any]:
    properties = orjson.loads(body).get("properties")
    return properties if isinstance(properties, dict) else {}


InWriter = Callable[..., Awaitable[Any]]
Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class Claim:
    """A mail leased for one delivery attempt, with what rendering it needs."""

    id: str
    run_id: str | None
    step: int | None
    person_id: str
    workflow: str
    template: str
    variant: str
    marketing: bool
    recipient: str
    attempts: int
    created_at: float
    person: dict[str, Any]
    run: dict[str, Any]
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A mail the claim ended without sending: ``failed`` or ``suppressed``, with the reason."""

    id: str
    state: str
    reason: str


CLAIM_SQL = f"""
    SELECT o.id, o.run_id, o.step, o.person_id, o.workflow, o.template, o.variant, o.marketing,
           o.recipient, o.attempts, o.created_at, o.extra,
           p.email, p.traits, p.consent, p.first_seen, p.last_seen, p.orders_count,
           p.total_spent, p.opens, p.clicks, p.user_id, p.time_zone,
           r.key, r.started
    FROM outbox AS o
    LEFT JOIN profiles AS p ON p.person_id = o.person_id
    LEFT JOIN runs AS r ON r.id = o.run_id
    WHERE o.{CLAIMABLE} AND o.next_attempt_at <= ?
    ORDER BY o.next_attempt_at LIMIT ?
"""
PERSON_FIELDS = (
    "email", "traits", "consent", "first_seen", "last_seen", "orders_count", "total_spent",
    "opens", "clicks", "user_id", "time_zone",
)  # fmt: skip


def in_transaction(conn: sqlite3.Connection, work: Callable[[], Any]) -> Any:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _suppression(conn: sqlite3.Connection, address: str) -> str | None:
    row = conn.execute(SUPPRESSION, (address, address)).fetchone()
    return None if row is None else str(row[0])


def _why_not(
    conn: sqlite3.Connection, recipient: str | None, marketing: bool, consent: str | None
) -> tuple[str, str] | None:
    """(state, reason) when a claimed mail must not be sent; None when it may."""
    if not recipient:
        return "failed", "no verified email"
    reason = _suppression(conn, recipient)
    if reason is not None and (reason in SUPPRESS_ALL or marketing):
        return "suppressed", reason
    if marketing and consent not in MARKETING_CONSENT:
        return "suppressed", "no marketing consent"
    return None


def claim(
    conn: sqlite3.Connection, now: float, limit: int, lease_s: float, max_age_s: float
) -> tuple[list[Claim], list[Dropped]]:
    """Lease up to ``limit`` due mails for sending; end those that must not go out."""

    def work() -> tuple[list[Claim], list[Dropped]]:
        claims: list[Claim] = []
        dropped: list[Dropped] = []
        for row in conn.execute(CLAIM_SQL, (now, limit)).fetchall():
            (mail, run_id, step, person_id, workflow, template, variant, marketing,
             recipient, attempts, created, extra) = row[:12]  # fmt: skip
            person = dict(zip(PERSON_FIELDS, row[12:23], strict=True))
            person["id"] = person_id
            person["traits"] = orjson.loads(person["traits"] or "{}")
            to = recipient or person["email"]
            why = _why_not(conn, to, bool(marketing), person["consent"])
            if why is None and marketing and now - created > max_age_s:
                why = "failed", "expired"
            if why is not None:
                conn.execute(
                    "UPDATE outbox SET state = ?, last_error = ?, updated_at = ? WHERE id = ?",
                    (*why, now, mail),
                )
                dropped.append(Dropped(mail, *why))
                continue
            conn.execute(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, lease_until = ?, "
                "recipient = ?, updated_at = ? WHERE id = ?",
                (now + lease_s, to, now, mail),
            )
            run: dict[str, Any] = {}
            if run_id is not None:
                run = {"id": run_id, "workflow": workflow, "step": step, "variant": variant,
                       "key": row[23], "started": row[24]}  # fmt: skip
            claims.append(
                Claim(mail, run_id, step, person_id, workflow, template, variant,
                      bool(marketing), to, attempts + 1, created, person, run,
                      orjson.loads(extra))
            )  # fmt: skip
        return claims, dropped

    result: tuple[list[Claim], list[Dropped]] = in_transaction(conn, work)
    return result


def _finish(
    conn: sqlite3.Connection,
    mail: str,
    state: str,
    now: float,
    code: int | None,
    reason: str,
    next_attempt_at: float | None,
    suppress: str | None,
) -> None:
    conn.execute(
        "UPDATE outbox SET state = ?, last_code = ?, last_error = ?, updated_at = ?, "
        "lease_until = NULL, next_attempt_at = coalesce(?, next_attempt_at), "
        "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, "
        "ambiguous = ambiguous + (? = 'ambiguous') WHERE id = ?",
        (state, code, reason or None, now, next_attempt_at, state, now, state, mail),
    )
    if suppress is not None:
        row = conn.execute("SELECT recipient FROM outbox WHERE id = ?", (mail,)).fetchone()
        if row is not None and row[0]:
            _suppress(conn, row[0], suppress, now, reason)


def finish_many(
    conn: sqlite3.Connection,
    outcomes: Sequence[Sequence[Any]],
    shown: Sequence[Sequence[Any]] = (),
) -> None:
    """Record several attempts' outcomes in one transaction, each ``_finish``'s arguments:
    (mail, state, now, code, reason, next_attempt_at, suppress); and the products the sent
    ones showed, (mail, person, product, url, at) each."""

    def work() -> None:
        for outcome in outcomes:
            _finish(conn, *outcome)
        conn.executemany("INSERT OR IGNORE INTO mail_products VALUES (?, ?, ?, ?, ?)", shown)

    in_transaction(conn, work)


def _suppress(conn: sqlite3.Connection, address: str, reason: str, now: float, detail: str) -> None:
    conn.execute(
        "INSERT INTO suppressions (email_hash, reason, created_at, detail) "
        "VALUES (email_hash(?), ?, ?, ?) "
        "ON CONFLICT (email_hash) DO UPDATE SET reason = CASE WHEN reason = 'erased' "
        "THEN reason ELSE excluded.reason END, detail = excluded.detail",
        (address, reason, now, detail),
    )


def recover(conn: sqlite3.Connection, now: float, resend: bool) -> int:
    """Rows whose lease ran out while ``sending`` (a crash): ``ambiguous``; how many."""

    def work() -> int:
        cursor = conn.execute(
            "UPDATE outbox SET state = 'ambiguous', ambiguous = ambiguous + 1, lease_until = NULL, "
            "last_error = 'lease expired while sending', updated_at = ?, next_attempt_at = ? "
            "WHERE state = 'sending' AND lease_until <= ?",
            (now, now if resend else NEVER, now),
        )
        return cursor.rowcount

    result: int = in_transaction(conn, work)
    return result


def queue(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Queue mails decided outside a group commit (test mails, confirmations)."""
    in_transaction(conn, lambda: conn.executemany(INSERT_OUTBOX, rows))


def forget(conn: sqlite3.Connection, address: str, now: float) -> int:
    """Erase every person with ``address`` and all their data; keep a hashed suppression.

    Returns how many persons were erased. The caller vacuums afterwards.
    """
    lowered = address.strip().lower()

    def work() -> int:
        persons = [
            r[0]
            for r in conn.execute(
                "SELECT person_id FROM profiles WHERE lower(email) = ? OR lower(claimed_email) = ?",
                (lowered, lowered),
            ).fetchall()
        ]
        for person in persons:
            for table in (*PERSON_TABLES, "profiles"):
                conn.execute(f"DELETE FROM {table} WHERE person_id = ?", (person,))
        # Events of anyone else that carry the address (an anonymous form fill, say).
        pattern = f"%{lowered}%"
        conn.execute("DELETE FROM events WHERE lower(CAST(body AS TEXT)) LIKE ?", (pattern,))
        conn.execute("DELETE FROM sink_messages WHERE lower(recipients) LIKE ?", (pattern,))
        conn.execute("DELETE FROM deliveries WHERE lower(CAST(payload AS TEXT)) LIKE ?", (pattern,))
        conn.execute("DELETE FROM outbox WHERE lower(recipient) = ?", (lowered,))
        conn.execute("DELETE FROM suppressions WHERE email_hash = legacy_email_hash(?)", (lowered,))
        _suppress(conn, lowered, "erased", now, "")
        return len(persons)

    conn.execute("PRAGMA secure_delete = ON")
    erased: int = in_transaction(conn, work)
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return erased


class MailStore:
    """The outbox, suppressions, confirmations and the dev sink (``store.mail``)."""

    def __init__(self, in_writer: InWriter, read: Read) -> None:
        self._in_writer = in_writer
        self._read = read

    async def claim(
        self, now: float, limit: int, lease_s: float, max_age_s: float
    ) -> tuple[list[Claim], list[Dropped]]:
        """Lease due mails (suppressed, unconsented, expired ones end here instead)."""
        result: tuple[list[Claim], list[Dropped]] = await self._in_writer(
            claim, now, limit, lease_s, max_age_s
        )
        return result

    async def finish(
        self,
        mail: str,
        state: str,
        now: float,
        *,
        code: int | None = None,
        reason: str = "",
        next_attempt_at: float | None = None,
        suppress: str | None = None,
    ) -> None:
        """Record an attempt's outcome: ``sent``, ``retry_wait``, ``failed`` or ``ambiguous``."""
        outcome = (mail, state, now, code, reason, next_attempt_at, suppress)
        await self._in_writer(finish_many, [outcome])

    async def recover(self, now: float, resend: bool) -> int:
        """Turn rows whose sending lease ran out into ``ambiguous``; return how many."""
        result: int = await self._in_writer(recover, now, resend)
        return result

    async def queue(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Queue mails decided outside a group commit (``INSERT_OUTBOX`` rows)."""
        await self._in_writer(queue, rows)

    async def suppress(self, address: str, reason: str, now: float, detail: str = "") -> None:
        """Add ``address`` (hashed) to the suppression list."""

        def work(conn: sqlite3.Connection) -> None:
            in_transaction(conn, lambda: _suppress(conn, address, reason, now, detail))

        await self._in_writer(work)

    async def forget(self, address: str, now: float) -> int:
        """Erase the persons with ``address`` (see :func:`forget`); how many."""
        result: int = await self._in_writer(forget, address, now)
        return result

    async def save_sunk(
        self, message_id: str | None, mail_from: str, recipients: Sequence[str], subject: str,
        body: bytes, now: float,
    ) -> int:  # fmt: skip
        """Keep a mail the dev sink received; return its id."""

        def work(conn: sqlite3.Connection) -> int:
            def insert() -> int:
                cursor = conn.execute(
                    "INSERT INTO sink_messages (message_id, mail_from, recipients, subject, "
                    "received_at, body) VALUES (?, ?, ?, ?, ?, ?)",
                    (message_id, mail_from, orjson.dumps(list(recipients)).decode(), subject,
                     now, body),
                )  # fmt: skip
                return int(cursor.lastrowid or 0)

            result: int = in_transaction(conn, insert)
            return result

        result: int = await self._in_writer(work)
        return result

    # Reads.

    async def use_token(self, digest: str, kind: str, now: float) -> bool:
        """Mark a one-time link token (by its digest) used; False if it was used before."""

        def work(conn: sqlite3.Connection) -> bool:
            inserted: int = in_transaction(
                conn, lambda: conn.execute(USE_TOKEN, (digest, kind, now)).rowcount
            )
            return inserted == 1

        used: bool = await self._in_writer(work)
        return used

    async def give_back_token(self, digest: str) -> None:
        """Make a token usable again (what it was used for could not be recorded)."""

        def work(conn: sqlite3.Connection) -> None:
            in_transaction(conn, lambda: conn.execute(GIVE_BACK_TOKEN, (digest,)))

        await self._in_writer(work)

    async def token_used(self, digest: str) -> bool:
        """Whether a one-time link token has been used."""
        return bool(await self._read(TOKEN_USED, (digest,)))

    async def suppressed(self, address: str) -> str | None:
        """The suppression reason of ``address``, or None."""
        rows = await self._read(SUPPRESSION, (address, address))
        return str(rows[0][0]) if rows else None

    async def outbox(
        self, state: str | None = None, person_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Outbox rows, newest first (all, of one state, or of one person)."""
        where, parameters = [], []
        if state:
            where.append("state = ?")
            parameters.append(state)
        if person_id:
            where.append("person_id = ?")
            parameters.append(person_id)
        sql = (
            f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} "
            "ORDER BY created_at DESC, id LIMIT ?"
        )
        rows = await self._read(sql, (*parameters, limit))
        return [dict(zip(OUTBOX_COLUMNS, r, strict=True)) for r in rows]

    async def get(self, mail: str) -> dict[str, Any] | None:
        """One outbox row, or None."""
        rows = await self._read(
            f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM outbox WHERE id = ?", (mail,)
        )
        return dict(zip(OUTBOX_COLUMNS, rows[0], strict=True)) if rows else None

    async def counts(self) -> dict[str, int]:
        """How many outbox rows are in each state."""
        rows = await self._read("SELECT state, count(*) FROM outbox GROUP BY state", ())
        return {r[0]: int(r[1]) for r in rows}

    async def sent_since(self, since: float) -> int:
        """How many mails were sent since ``since`` (the daily limit)."""
        rows = await self._read("SELECT count(*) FROM outbox WHERE sent_at >= ?", (since,))
        return int(rows[0][0])

    async def next_due(self) -> float | None:
        """When the soonest claimable mail is due, or None."""
        rows = await self._read(f"SELECT min(next_attempt_at) FROM outbox WHERE {CLAIMABLE}", ())
        value = rows[0][0]
        return None if value is None or value >= NEVER else float(value)

    async def sunk(self, limit: int = 100) -> list[dict[str, Any]]:
        """Mails the dev sink received, newest first."""
        rows = await self._read(
            "SELECT id, message_id, mail_from, recipients, subject, received_at, body "
            "FROM sink_messages ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        names = ("id", "message_id", "mail_from", "recipients", "subject", "received_at", "body")
        result = [dict(zip(names, r, strict=True)) for r in rows]
        for item in result:
            item["recipients"] = orjson.loads(item["recipients"])
        return result

    async def product_events(
        self, person_id: str, since: float, limit: int = 500
    ) -> list[tuple[str, dict[str, Any]]]:
        """A person's e-commerce events since ``since`` as (name, properties), oldest first."""
        rows = await self._read(
            "SELECT name, body FROM (SELECT seq, name, body FROM events "
            "WHERE person_id = ? AND received_at >= ? AND name IN "
            f"({', '.join('?' * len(PRODUCT_EVENTS))}) ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (person_id, since, *PRODUCT_EVENTS, limit),
        )
        return [(r[0], _properties(r[1])) for r in rows]

    async def popular(self, since: float, limit: int) -> list[str]:
        """The ids of the products most viewed since ``since``, best first."""
        rows = await self._read(
            f"{VIEWS % 'events_product_viewers'} GROUP BY pid ORDER BY n DESC, pid LIMIT ?",
            (since, limit),
        )
        return [r[0] for r in rows]

    async def co_viewed(self, product_ids: Sequence[str], since: float, limit: int) -> list[str]:
        """The ids of the products most viewed by the people who viewed ``product_ids``, best
        first."""
        if not product_ids:
            return []
        marks = ", ".join("?" * len(product_ids))
        rows = await self._read(
            "WITH viewers AS (SELECT DISTINCT person_id FROM events INDEXED BY "
            "events_product_viewers WHERE name = 'Product Viewed' AND received_at >= ? "
            f"AND {PRODUCT_ID} IN ({marks}) LIMIT {CO_VIEWERS}) "
            f"{VIEWS % 'events_person'} AND person_id IN viewers "
            f"AND {PRODUCT_ID} NOT IN ({marks}) "
            "GROUP BY pid ORDER BY n DESC, pid LIMIT ?",
            (since, *product_ids, since, *product_ids, limit),
        )
        return [r[0] for r in rows]

    async def confirmations(self, address: str, client_ip: str, since: float) -> tuple[int, int]:
        """Double opt-in mails sent since ``since`` to ``address`` and caused by ``client_ip``."""
        by_address = await self._read(
            "SELECT count(*) FROM confirmations WHERE email_hash = email_hash(?) AND sent_at >= ?",
            (address, since),
        )
        by_ip = await self._read(
            "SELECT count(*) FROM confirmations WHERE client_ip = ? AND sent_at >= ?",
            (client_ip, since),
        )
        return int(by_address[0][0]), int(by_ip[0][0])

    async def finish_many(
        self, outcomes: Sequence[Sequence[Any]], shown: Sequence[Sequence[Any]] = ()
    ) -> None:
        """Record several outcomes in one writer hop and one transaction; each is
        ``(mail, state, now, code, reason, next_attempt_at, suppress)`` as for :meth:`finish`;
        ``shown``: the products sent mails showed, ``(mail, person, product, url, at)``."""
        await self._in_writer(finish_many, outcomes, shown)

    async def shown_product(self, mail_id: str, url: str) -> str | None:
        """The product of mail ``mail_id`` whose link ``url`` (with tracking parameters added)
        leads to, if any."""
        rows = await self._read(
            "SELECT product_id, url FROM mail_products WHERE mail_id = ? AND url IS NOT NULL",
            (mail_id,),
        )
        for product_id, shown_url in rows:
            if url == shown_url or url.startswith((f"{shown_url}?", f"{shown_url}&")):
                return str(product_id)
        return None

    async def shown(self, person_id: str, since: float) -> dict[str, int]:
        """How often each product was shown to ``person_id`` in mail since ``since``."""
        rows = await self._read(
            "SELECT product_id, count(*) FROM mail_products WHERE person_id = ? AND at >= ? "
            "GROUP BY product_id",
            (person_id, since),
        )
        return {r[0]: r[1] for r in rows}

    async def clicked(self, person_ids: Sequence[str], since: float) -> dict[str, int]:
        """Clicks on each product in mail by ``person_ids`` since ``since`` (people's clicks:
        those a machine made do not count)."""
        if not person_ids:
            return {}
        marks = ", ".join("?" * len(person_ids))
        rows = await self._read(
            "SELECT product_id, count(*) FROM events INDEXED BY events_person "
            f"WHERE person_id IN ({marks}) AND received_at >= ? AND name = 'Email Clicked' "
            "AND product_id IS NOT NULL "
            "AND json_extract(CAST(body AS TEXT), '$.properties.machine') = 0 "
            "GROUP BY product_id",
            (*person_ids, since),
        )
        return {r[0]: r[1] for r in rows}

    async def viewers(self, product_ids: Sequence[str], since: float, limit: int) -> list[str]:
        """Up to ``limit`` people who viewed any of ``product_ids`` since ``since``."""
        if not product_ids:
            return []
        marks = ", ".join("?" * len(product_ids))
        rows = await self._read(
            "SELECT DISTINCT person_id FROM events INDEXED BY events_product_viewers "
            f"WHERE name = 'Product Viewed' AND {PRODUCT_ID} IN ({marks}) AND received_at >= ? "
            "LIMIT ?",
            (*product_ids, since, limit),
        )
        return [r[0] for r in rows]
