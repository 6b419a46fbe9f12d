"""The engine's memory: the facts of the persons decided lately, as the store holds them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from rtserver.model import Facts

__all__ = ["Memory", "estimated_bytes"]

PERSON_BYTES = 1900
"""Estimated bytes of one person's entry besides their recent events and orders: the entry,
``Facts``, ``Person`` (id, verified email, three traits, time zone), the empty ``History``, one
open run, one ended run, and the memory's own bookkeeping."""
EVENT_BYTES = 10
"""Estimated bytes of one recent event (an 8-byte time and a 1-byte name index)."""
ORDER_BYTES = 32
"""Estimated bytes of one order time (a float and its slot in a tuple)."""
RUN_BYTES = 400
"""Estimated bytes of each open run past the first."""
ENGAGEMENT_BIN_BYTES = 90
"""Estimated bytes of one hour of the person's engagement histogram (a dict slot, a float, the
dict's growth; the hours are small ints, shared). Measured with tracemalloc, the histogram
included: 86 bytes a bin with 5 bins, 59 with 20, 55 with 40, 72 with 100."""
# Measured with tracemalloc on realistic facts (``python -m bench.memory``; bench/RESULTS.md,
# "Facts memory"): 1,685 bytes a person with no recent events, 2,027 with 20, 3,616 with 200
# (about 9 a recent event past the first few); the RSS of a process holding 50,000 such persons
# with 200 events each grows about 5% more than that, which these round up to. Large traits are
# not counted: the estimate stays O(1) a person.


def estimated_bytes(facts: Facts) -> int:
    """What one person's entry costs in memory, about; O(1)."""
    person = facts.person
    return (
        PERSON_BYTES
        + EVENT_BYTES * len(person.history)
        + ORDER_BYTES * len(person.order_times)
        + RUN_BYTES * max(0, len(facts.runs) - 1)
        + ENGAGEMENT_BIN_BYTES * len(person.engagement.bins)
    )


class Memory:
    """The facts of the persons decided lately, exactly as the store holds them after the last
    commit, so that a group reads from the store only the persons it has not seen lately.

    Each entry is ``(facts, oldest)``: ``oldest`` is a lower bound of the times in the person's
    recent history, so that trimming it to a window costs nothing until something is older.
    Least recently kept entries are dropped first while the estimated size
    (:func:`estimated_bytes`) is over ``budget`` bytes. What goes in, and when an entry no
    longer matches the store, is the engine's business (:mod:`rtserver.engine.engine`).
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        """Estimated bytes of the entries."""
        self.entries: OrderedDict[str, tuple[Facts, float]] = OrderedDict()

    def recall(
        self, person_ids: Iterable[str], since: float | None
    ) -> tuple[dict[str, tuple[Facts, float]], list[str]]:
        """The entries there are (history trimmed to events at or after ``since``), and the
        persons missing."""
        found: dict[str, tuple[Facts, float]] = {}
        missing: list[str] = []
        entries = self.entries
        for person_id in person_ids:
            entry = entries.get(person_id)
            if entry is None:
                missing.append(person_id)
            elif since is not None and entry[1] < since:
                found[person_id] = _trimmed(entry[0], since)
            else:
                found[person_id] = entry
        return found, missing

    def keep(self, known: Mapping[str, tuple[Facts, float]]) -> None:
        """Remember (or refresh) these entries; drop the least recent while over the budget."""
        entries = self.entries
        size = self.size
        for person_id, entry in known.items():
            old = entries.get(person_id)
            if old is not None:
                size -= estimated_bytes(old[0])
            size += estimated_bytes(entry[0])
            entries[person_id] = entry
            entries.move_to_end(person_id)
        while size > self.budget and entries:
            size -= estimated_bytes(entries.popitem(last=False)[1][0])
        self.size = size

    def forget(self, person_ids: Iterable[str]) -> None:
        """Drop these persons: read them from the store next time."""
        for person_id in person_ids:
            entry = self.entries.pop(person_id, None)
            if entry is not None:
                self.size -= estimated_bytes(entry[0])

    def clear(self) -> None:
        """Drop everything (the store was written behind the engine's back)."""
        self.entries.clear()
        self.size = 0


def _trimmed(facts: Facts, since: float) -> tuple[Facts, float]:
    person = facts.person
    recent = person.history.since(since)
    oldest = min((at for _, at in recent), default=since)
    return replace(facts, person=replace(person, history=recent)), oldest
