"""The polling sources' half of the store: where each source stands, and which of its events
are stored already.

:class:`PollStore` is reached as ``store.polls``. A source's cursor is saved only after the
page it follows was committed (the poller's order), so a restart re-reads at most one page,
and the messageIds of that page are dropped as duplicates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["PollState", "PollStore"]

InWriter = Callable[..., Awaitable[Any]]
Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]

CHUNK = 500
"""messageIds looked up per statement."""
COLUMNS = "name, cursor, last_run, last_error, next_run, caught_up_at, failures"


@dataclass(frozen=True, slots=True)
class PollState:
    """Where one polling source stands.

    ``cursor`` is the value the next request carries (any JSON value; None: from the start);
    ``last_run`` when it last asked the API; ``last_error`` what went wrong last (None after
    a good page); ``next_run`` when it may ask again; ``caught_up_at`` when it last read to the
    end of the source; ``failures`` errors in a row (the backoff grows with them).
    """

    name: str
    cursor: Any = None
    last_run: float | None = None
    last_error: str | None = None
    next_run: float | None = None
    caught_up_at: float | None = None
    failures: int = 0


def _state(row: Sequence[Any]) -> PollState:
    cursor = None if row[1] is None else orjson.loads(row[1])
    return PollState(row[0], cursor, row[2], row[3], row[4], row[5], int(row[6]))


class PollStore:
    """The polling sources' state (SQL only; the pollers decide)."""

    def __init__(self, in_writer: InWriter, read: Read) -> None:
        self._in_writer = in_writer
        self._read = read

    async def state(self, name: str) -> PollState | None:
        """The saved state of source ``name``, if it ever ran."""
        rows = await self._read(f"SELECT {COLUMNS} FROM poll_state WHERE name = ?", (name,))
        return _state(rows[0]) if rows else None

    async def states(self) -> list[PollState]:
        """Every saved state, by name."""
        rows = await self._read(f"SELECT {COLUMNS} FROM poll_state ORDER BY name", ())
        return [_state(r) for r in rows]

    async def save(self, state: PollState, now: float) -> None:
        """Keep ``state`` (one write, on the writer's thread)."""
        cursor = None if state.cursor is None else orjson.dumps(state.cursor).decode()
        row = (state.name, cursor, state.last_run, state.last_error, state.next_run,
               state.caught_up_at, state.failures, now)  # fmt: skip

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO poll_state ({COLUMNS}, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._in_writer(save)

    async def stored(self, message_ids: Iterable[str]) -> set[str]:
        """Which of ``message_ids`` are stored events."""
        ids = list(dict.fromkeys(message_ids))
        found: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT message_id FROM events WHERE message_id IN ({marks})", chunk
            )
            found.update(r[0] for r in rows)
        return found
