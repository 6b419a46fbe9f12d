"""The compact recent history answers as the list of (name, time) pairs it stands for."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from rtserver.model import HISTORY_LIMIT, History, Person
from rtserver.model.history import MAX_NAMES

NAMES = st.sampled_from(["Page Viewed", "Product Viewed", "Product Added", "Order Completed", "é"])
TIMES = st.floats(min_value=0, max_value=2e9, allow_nan=False)
PAIRS = st.lists(st.tuples(NAMES, TIMES), max_size=40)


def naive_events_since(pairs: list[tuple[str, float]], name: object, t: float) -> int:
    return sum(1 for n, at in pairs if n == name and at >= t)


@settings(max_examples=200, derandomize=True)
@given(PAIRS, st.lists(st.tuples(NAMES, TIMES), max_size=30), NAMES, TIMES,
       st.integers(1, 25))  # fmt: skip
def test_history_answers_like_a_list(
    start: list[tuple[str, float]],
    appended: list[tuple[str, float]],
    name: str,
    t: float,
    limit: int,
) -> None:
    """Built at once or event by event (keeping the last ``limit``), then trimmed, a history
    reads and counts exactly as the naive list does."""
    naive = list(start)
    history = History(start)
    for pair in appended:
        naive = [*naive, pair][-limit:]
        history = history.appended(*pair, limit)
    assert list(history) == naive and len(history) == len(naive)
    assert history == History(naive) and hash(history) == hash(History(naive))
    assert [history[k] for k in range(len(naive))] == naive
    assert list(history[1:]) == naive[1:]
    for probe in (name, "Nothing", 5):
        assert history.events_since(probe, t) == naive_events_since(naive, probe, t)
    recent = history.since(t)
    assert list(recent) == [(n, at) for n, at in naive if at >= t]
    assert recent.events_since(name, 0.0) == naive_events_since(naive, name, t)


@settings(max_examples=100, derandomize=True)
@given(PAIRS, st.lists(TIMES, max_size=20), NAMES, TIMES)
def test_person_counts_like_the_naive_lists(
    pairs: list[tuple[str, float]], orders: list[float], name: str, t: float
) -> None:
    """``person.events_since`` and ``person.orders_since`` read as before the compaction."""
    person = Person("u:1", history=History(pairs), order_times=tuple(orders))
    assert person.events_since(name, t) == naive_events_since(pairs, name, t)
    assert person.orders_since(t) == sum(1 for at in orders if at >= t)


def test_many_distinct_names_drop_the_unused_ones() -> None:
    """A history indexes at most MAX_NAMES distinct names; past that, the names no kept event
    uses are dropped, and the kept events still read right."""
    history = History()
    names = [f"event {k}" for k in range(MAX_NAMES + 50)]
    for k, name in enumerate(names):
        history = history.appended(name, float(k), HISTORY_LIMIT)
    expected = [(n, float(k)) for k, n in enumerate(names)][-HISTORY_LIMIT:]
    assert list(history) == expected
    assert history.events_since(names[-1], 0.0) == 1 and history.events_since(names[0], 0) == 0
    with pytest.raises(ValueError, match="distinct event names"):
        History((name, 0.0) for name in names)


def test_history_reads_as_pairs() -> None:
    """Equality is with histories only; the repr shows the pairs."""
    history = History([("A", 1.0)])
    assert history != [("A", 1.0)] and history != History([("A", 2.0)])
    assert repr(history) == "History([('A', 1.0)])"
    assert History() == Person("u:1").history and not Person("u:1").history
