"""The engine's memory of facts: bounded by an estimate of its bytes, least recent out first."""

from __future__ import annotations

from rtserver.engine.memory import (
    EVENT_BYTES,
    ORDER_BYTES,
    PERSON_BYTES,
    RUN_BYTES,
    Memory,
    estimated_bytes,
)
from rtserver.model import Facts, History, Person, Run


def facts(person_id: str, events: int = 0) -> Facts:
    history = History(("Product Viewed", float(k)) for k in range(events))
    return Facts(Person(person_id, history=history))


def test_estimate_counts_a_person_their_events_orders_and_extra_runs() -> None:
    """A fixed cost a person, plus a cost per recent event, order, and open run past the first."""
    run = Run("r", "w", "a", "", 0.0, 0, "wait")
    person = Person("a", history=History([("X", 1.0), ("Y", 2.0)]), order_times=(1.0,))
    assert estimated_bytes(Facts(Person("a"))) == PERSON_BYTES
    assert estimated_bytes(Facts(person, runs=(run, run, run))) == (
        PERSON_BYTES + 2 * EVENT_BYTES + ORDER_BYTES + 2 * RUN_BYTES
    )


def test_budget_evicts_the_least_recent_persons_first() -> None:
    """Past its budget the memory drops the persons kept longest ago (a refresh counts as
    recent), until its estimate fits; its size follows keeps, refreshes and forgets."""
    small, big = estimated_bytes(facts("a")), estimated_bytes(facts("x", 100))
    memory = Memory(budget=3 * small)
    memory.keep({p: (facts(p), 0.0) for p in "abc"})
    assert list(memory.entries) == ["a", "b", "c"] and memory.size == 3 * small
    memory.keep({"a": (facts("a"), 0.0)})  # a refreshed: b is now the least recent
    memory.keep({"d": (facts("d"), 0.0)})
    assert list(memory.entries) == ["c", "a", "d"] and memory.size == 3 * small
    memory.keep({"a": (facts("a", 100), 0.0)})  # a grows: c and d go, a is most recent
    assert list(memory.entries) == ["d", "a"] and memory.size == small + big
    memory.forget(["d", "nobody"])
    assert list(memory.entries) == ["a"] and memory.size == big
    memory.keep({"e": (facts("e", 1000), 0.0)})  # bigger than the budget alone: kept by none
    assert not memory.entries and memory.size == 0
    memory.keep({"f": (facts("f"), 0.0)})
    memory.clear()
    assert not memory.entries and memory.size == 0
