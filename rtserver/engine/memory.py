"""The engine's memory: the facts of the persons decided lately, as the store holds them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from rtserver.model import Facts

__all__ = ["Memory"]


class Memory:
    """The facts of the persons decided lately, exactly as the store holds them after the last
    commit, so that a group reads from the store only the persons it has not seen lately.

    Each entry is ``(facts, oldest)``: ``oldest`` is a lower bound of the times in the person's
    recent history, so that trimming it to a window costs nothing until something is older.
    Least recently kept entries are dropped first, past ``limit`` persons. What goes in, and
    when an entry no longer matches the store, is the engine's business
    (:mod:`rtserver.engine.engine`).
    """

    def __init__(self, limit: int):
        self.limit = limit
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
        """Remember (or refresh) these entries; drop the least recent past the limit."""
        entries = self.entries
        for person_id, entry in known.items():
            entries[person_id] = entry
            entries.move_to_end(person_id)
        while len(entries) > self.limit:
            entries.popitem(last=False)

    def forget(self, person_ids: Iterable[str]) -> None:
        """Drop these persons: read them from the store next time."""
        for person_id in person_ids:
            self.entries.pop(person_id, None)

    def clear(self) -> None:
        """Drop everything (the store was written behind the engine's back)."""
        self.entries.clear()


def _trimmed(facts: Facts, since: float) -> tuple[Facts, float]:
    person = facts.person
    recent = tuple(h for h in person.history if h[1] >= since)
    oldest = min((at for _, at in recent), default=since)
    return replace(facts, person=replace(person, history=recent)), oldest
