"""The experiments' half of the store, for the dashboard: engagement histograms, the sends timed
``optimal`` (and their control arm) with their opens and clicks, and the bandit steps' mails.

:class:`ExperimentStore` is reached as ``store.experiments``; every read goes through the
read-only connection and is bounded by a person, a time window or the few bandit arms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from rtserver.store.schema import BANDIT_TALLIES
from rtserver.store.writer import engagement_of

__all__ = ["ExperimentStore"]

Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]

DAY_S = 86400


class ExperimentStore:
    """Reads for the dashboard's send-time and bandit panels."""

    def __init__(self, read: Read) -> None:
        self._read = read

    async def shop_engagement(self) -> dict[int, float]:
        """The shop's engagement by hour of the week (weights as stored: one scale for all)."""
        rows = await self._read("SELECT histogram FROM shop_engagement WHERE id = 1", ())
        return dict(engagement_of(rows[0][0]).bins) if rows else {}

    async def engagement(self, person_id: str) -> dict[int, float]:
        """A person's engagement by hour of their week (empty: none, or no such person)."""
        rows = await self._read("SELECT engagement FROM profiles WHERE person_id = ?", (person_id,))
        return dict(engagement_of(rows[0][0]).bins) if rows else {}

    async def pending_sends(self, person_id: str) -> list[dict[str, Any]]:
        """The person's open runs waiting at a send whose time was chosen: workflow, step,
        when it goes (``due``) and the choice (``timing``, decoded)."""
        rows = await self._read(
            "SELECT workflow, step, due, timing FROM runs WHERE person_id = ? "
            "AND state = 'active' AND step_kind = 'send' AND timing != '' ORDER BY due",
            (person_id,),
        )
        return [
            {"workflow": r[0], "step": r[1], "due": r[2], "timing": orjson.loads(r[3])}
            for r in rows
        ]

    async def timed_sends(self, since: float) -> list[tuple[str, bool, bool]]:
        """Each send decided since ``since`` whose time was chosen (``send_time = "optimal"``):
        (arm: ``optimal`` or ``control``, opened by a human, clicked by a human)."""
        sends = await self._read(
            "SELECT run_id || '-' || step, json_extract(detail, '$.send_time.arm') AS arm "
            "FROM steps WHERE decided_at >= ? AND action = 'send' AND arm IS NOT NULL",
            (since,),
        )
        touches = await self._read(
            "SELECT DISTINCT name, json_extract(CAST(body AS TEXT), '$.properties.mail_id') "
            "AS mail FROM events WHERE received_at >= ? "
            "AND name IN ('Email Opened', 'Email Clicked') "
            "AND coalesce(json_extract(CAST(body AS TEXT), '$.properties.machine'), 0) = 0 "
            "AND mail IS NOT NULL",
            (since,),
        )
        touched = {(name, mail) for name, mail in touches}
        rows = []
        for mail, arm in sends:
            clicked = ("Email Clicked", mail) in touched
            rows.append((arm, clicked or ("Email Opened", mail) in touched, clicked))
        return rows

    async def bandit_tallies(self) -> dict[tuple[str, int, str], tuple[int, int]]:
        """(workflow, step, variant) → (mails sent, of them rewarded) of every bandit arm."""
        rows = await self._read(BANDIT_TALLIES, ())
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    async def bandit_days(self, since: float) -> list[tuple[str, int, str, int, int]]:
        """Mails of the bandit steps sent since ``since``, per day (days since the epoch, UTC):
        (workflow, step, variant, day, mails)."""
        rows = await self._read(
            f"SELECT workflow, step, variant, CAST(sent_at / {DAY_S} AS INTEGER) AS day, "
            "count(*) FROM bandit_mails WHERE sent_at >= ? "
            "GROUP BY workflow, step, variant, day ORDER BY day",
            (since,),
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
