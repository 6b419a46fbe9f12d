"""The webhook half of the store: deliveries of ``webhook`` steps and disabled endpoints.

:class:`DeliveryStore` is reached as ``store.deliveries``; like ``_outbox.py`` it is part of
``store.py``, split off to keep each file readable. A delivery is written in the group commit
that decided its step (:func:`delivery_row`), so a crash can neither lose nor double it; its id
(``<run>-<step>``) is the ``webhook-id`` of every attempt, so a receiver deduplicates repeats.

States: ``queued`` → ``sending`` (a lease, one attempt more) → ``delivered`` | ``retry_wait``
| ``failed``. A row left ``sending`` past its lease (the process died mid-request) is claimed
again: deliveries are at least once. Rows for an endpoint disabled by a 410 fail when claimed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from rtserver.model import CallWebhook, Person
from rtserver.store.outbox import in_transaction

__all__ = ["Delivery", "DeliveryStore", "Outcome", "delivery_row"]

EVENT_TYPE = "workflow.webhook"
"""The ``type`` of every payload (Standard Webhooks' envelope: type, timestamp, data)."""

DUE = (
    "d.state IN ('queued', 'retry_wait', 'sending') "
    "AND (d.state <> 'sending' OR d.lease_until <= ?) AND d.next_attempt_at <= ?"
)
"""Due rows (a lease a crash left behind counts as due); its first term is the partial index
``deliveries_due``'s WHERE, spelled alike so SQLite searches that index, not the table."""
Outcome = tuple[str, str, float, int | None, str, float | None, str | None]
"""(delivery, state, when, HTTP status, error, next attempt, disable reason)."""

InWriter = Callable[..., Awaitable[Any]]
Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


def delivery_row(action: CallWebhook, workflow: str, person: Person, at: float) -> tuple[Any, ...]:
    """The ``deliveries`` row of a decided webhook step (``INSERT_DELIVERY``)."""
    data = {
        **action.payload,
        "workflow": workflow,
        "run": action.run_id,
        "person": {"id": person.id, "email": person.email, "traits": dict(person.traits)},
    }
    payload = {
        "type": EVENT_TYPE,
        "timestamp": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    delivery = f"{action.run_id}-{action.step}"
    return (
        delivery, action.run_id, action.step, action.person_id, workflow, action.url,
        orjson.dumps(payload), at, at, at,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery leased for one attempt."""

    id: str
    url: str
    payload: bytes
    attempts: int
    """Including this one."""


def claim(conn: sqlite3.Connection, now: float, limit: int, lease_s: float) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries; those of a disabled endpoint fail instead."""

    def work() -> list[Delivery]:
        rows = conn.execute(
            f"SELECT d.id, d.url, d.payload, d.attempts, e.reason FROM deliveries AS d "
            f"LEFT JOIN disabled_endpoints AS e ON e.url = d.url "
            f"WHERE {DUE} ORDER BY d.next_attempt_at LIMIT ?",
            (now, now, limit),
        ).fetchall()
        leased: list[Delivery] = []
        for delivery, url, payload, attempts, disabled in rows:
            if disabled is not None:
                conn.execute(
                    "UPDATE deliveries SET state = 'failed', last_error = ?, lease_until = NULL, "
                    "updated_at = ? WHERE id = ?",
                    (f"endpoint disabled: {disabled}", now, delivery),
                )
                continue
            conn.execute(
                "UPDATE deliveries SET state = 'sending', attempts = attempts + 1, "
                "lease_until = ?, updated_at = ? WHERE id = ?",
                (now + lease_s, now, delivery),
            )
            leased.append(Delivery(delivery, url, bytes(payload), attempts + 1))
        return leased

    result: list[Delivery] = in_transaction(conn, work)
    return result


def finish_many(conn: sqlite3.Connection, outcomes: list[Outcome]) -> None:
    """Record attempts in one transaction: each ``delivered``, ``retry_wait`` (due at its next
    attempt) or ``failed``; a disable reason turns its endpoint off for every later delivery."""

    def work() -> None:
        for delivery, state, now, status, error, next_attempt_at, disable in outcomes:
            conn.execute(
                "UPDATE deliveries SET state = ?, last_status = ?, last_error = ?, "
                "lease_until = NULL, next_attempt_at = coalesce(?, next_attempt_at), "
                "updated_at = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? "
                "ELSE delivered_at END WHERE id = ?",
                (state, status, error, next_attempt_at, now, state, now, delivery),
            )
            if disable is not None:
                conn.execute(
                    "INSERT INTO disabled_endpoints (url, reason, disabled_at) "
                    "SELECT url, ?, ? FROM deliveries WHERE id = ? ON CONFLICT (url) DO NOTHING",
                    (disable, now, delivery),
                )

    in_transaction(conn, work)


class DeliveryStore:
    """Webhook deliveries and disabled endpoints (``store.deliveries``)."""

    def __init__(self, in_writer: InWriter, read: Read) -> None:
        self._in_writer = in_writer
        self._read = read

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Lease due deliveries (a lease left by a crash counts as due)."""
        result: list[Delivery] = await self._in_writer(claim, now, limit, lease_s)
        return result

    async def finish(
        self,
        delivery: str,
        state: str,
        now: float,
        *,
        status: int | None = None,
        error: str = "",
        next_attempt_at: float | None = None,
        disable: str | None = None,
    ) -> None:
        """Record an attempt's outcome (see :func:`finish_many`)."""
        await self.finish_many([(delivery, state, now, status, error, next_attempt_at, disable)])

    async def finish_many(self, outcomes: list[Outcome]) -> None:
        """Record a batch's outcomes in one transaction (see :func:`finish_many`)."""
        await self._in_writer(finish_many, outcomes)

    async def purge(self, before: float) -> int:
        """Delete deliveries that ended (delivered or failed) before ``before``; how many."""
        result: int = await self._in_writer(_purge, before)
        return result

    async def release(self, deliveries: list[str], now: float) -> None:
        """Give leased deliveries back untried: queued, due at ``now``, the attempt the claim
        counted taken back (a stopping courier)."""
        await self._in_writer(_release, deliveries, now)

    async def enable(self, url: str) -> bool:
        """Turn an endpoint disabled by a 410 back on; whether it was disabled."""
        result: bool = await self._in_writer(_enable, url)
        return result

    # Reads.

    async def next_due(self) -> float | None:
        """When the next delivery is due (a lease: when it runs out), or None."""
        rows = await self._read(
            "SELECT min(CASE WHEN state = 'sending' THEN lease_until ELSE next_attempt_at END) "
            "FROM deliveries WHERE state IN ('queued', 'retry_wait', 'sending')",
            (),
        )
        return None if rows[0][0] is None else float(rows[0][0])

    async def counts(self) -> dict[str, int]:
        """Deliveries by state."""
        rows = await self._read("SELECT state, count(*) FROM deliveries GROUP BY state", ())
        return {str(state): int(n) for state, n in rows}

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest deliveries, newest first (without their payloads)."""
        columns = (
            "id", "run_id", "step", "person_id", "workflow", "url", "state", "attempts",
            "next_attempt_at", "last_status", "last_error", "created_at", "delivered_at",
        )  # fmt: skip
        rows = await self._read(
            f"SELECT {', '.join(columns)} FROM deliveries ORDER BY created_at DESC, id LIMIT ?",
            (limit,),
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    async def get(self, delivery: str) -> dict[str, Any] | None:
        """One delivery with its payload decoded, or None."""
        rows = await self._read(
            "SELECT id, url, state, attempts, last_status, last_error, payload "
            "FROM deliveries WHERE id = ?",
            (delivery,),
        )
        if not rows:
            return None
        keys = ("id", "url", "state", "attempts", "last_status", "last_error")
        return {**dict(zip(keys, rows[0][:6], strict=True)), "payload": orjson.loads(rows[0][6])}

    async def disabled(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        rows = await self._read("SELECT url, reason FROM disabled_endpoints ORDER BY url", ())
        return {str(url): str(reason) for url, reason in rows}


def _release(conn: sqlite3.Connection, deliveries: list[str], now: float) -> None:
    in_transaction(
        conn,
        lambda: conn.executemany(
            "UPDATE deliveries SET state = 'queued', attempts = max(attempts - 1, 0), "
            "lease_until = NULL, next_attempt_at = ?, updated_at = ? "
            "WHERE id = ? AND state = 'sending'",
            [(now, now, delivery) for delivery in deliveries],
        ),
    )


def _purge(conn: sqlite3.Connection, before: float) -> int:
    def work() -> int:
        cursor = conn.execute(
            "DELETE FROM deliveries WHERE state IN ('delivered', 'failed') AND updated_at < ?",
            (before,),
        )
        return cursor.rowcount

    result: int = in_transaction(conn, work)
    return result


def _enable(conn: sqlite3.Connection, url: str) -> bool:
    cursor = conn.execute("DELETE FROM disabled_endpoints WHERE url = ?", (url,))
    return cursor.rowcount > 0
