"""store.polls: a source's state saved and read back (any JSON cursor), and which messageIds
are stored."""

from __future__ import annotations

from rtserver.store import PollState, Store
from tests.support.store import parse, store_group


async def test_state_round_trip(store: Store) -> None:
    assert await store.polls.state("orders") is None and await store.polls.states() == []
    state = PollState("orders", {"page": 2, "token": "a"}, 1.0, "500", 70.0, None, 3)
    await store.polls.save(state, 2.0)
    assert await store.polls.state("orders") == state
    await store.polls.save(PollState("orders", 7), 3.0)
    await store.polls.save(PollState("a"), 3.0)
    assert [s.cursor for s in await store.polls.states()] == [None, 7]


async def test_stored_message_ids(store: Store) -> None:
    await store_group(store, [parse({"type": "track", "event": "X", "messageId": "m1",
                                     "userId": "u"})])  # fmt: skip
    assert await store.polls.stored(["m1", "m2", "m1"]) == {"m1"}
    assert await store.polls.stored(f"x{n}" for n in range(1200)) == set()
