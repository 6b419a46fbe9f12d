"""Stored timers beyond the engine's horizon: restore arms only the near ones, and the rest come
in from the store, a batch at a time, as the clock nears them. On a real store and engine, under a
fake clock; the store stays the truth for timers cancelled or re-armed before their batch."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rtserver.config.schema import IngestConfig
from rtserver.engine.definitions import Workflows
from rtserver.engine.engine import HORIZON_S, LOAD_BATCH, LOAD_RETRY_S, Engine
from rtserver.engine.pipeline import Pipeline
from rtserver.engine.timers import run_timer_driver
from rtserver.model.events import Event, parse_event
from rtserver.runtime import load_rules
from rtserver.store.changes import Changes
from rtserver.store.database import Store
from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT, FakeClock, make_config
from tests.support.workflows import cart_workflow

START = 1_800_000_000.0
WORKFLOW = cart_workflow(
    name="cart_abandonment",
    reentry="always",
    step=[{"wait_inactive": "30m"}, {"send": "cart_reminder"}],
)


def track(user: str, name: str, properties: dict[str, Any]) -> Event:
    """A track event of the shop's backend."""
    raw = event("track", event=name, userId=f"u{user}", properties=properties)
    return parse_event(raw, IngestConfig())


def rules(folder: Path) -> Workflows:
    return load_rules(make_config(folder, workflow=[WORKFLOW], mail={"frequency_cap": "off"}))[0]


async def stored(path: Path, dues: list[float]) -> list[str]:
    """A store with an open run waiting on a timer at each of ``dues``; their run ids."""
    store = await Store.open(path)  # creates the schema
    await store.close()
    ids = [f"r{i:06d}" for i in range(len(dues))]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO runs (id, workflow, person_id, key, started, step, step_kind, variant, "
            "holdout, wait_met, sends, due, state, ended_at, end_reason, updated_at) "
            "VALUES (?, 'cart_abandonment', ?, ?, ?, 0, 'wait_inactive', '', 0, 0, 0, ?, "
            "'active', NULL, NULL, ?)",
            [
                (rid, f"u:{rid}", "c", START - 10, due, START - 10)
                for rid, due in zip(ids, dues, strict=True)
            ],
        )
        conn.execute("INSERT INTO timers SELECT id, step, due, person_id FROM runs")
    return ids


class Stack:
    """A store, an engine restored from it and a pipeline decided in the caller's task."""

    def __init__(self, store: Store, engine: Engine, clock: FakeClock) -> None:
        self.store, self.engine, self.clock = store, engine, clock
        self.pipeline = Pipeline(
            store, max_queue=16, max_group_events=100, queue_timeout_s=1.0, engine=engine,
            clock=clock,
        )  # fmt: skip
        self.fired: dict[str, float] = {}

    @classmethod
    async def open(cls, path: Path, clock: FakeClock) -> Stack:
        store = await Store.open(path)
        engine = Engine(rules(path.parent), store)
        await engine.restore(clock())
        return cls(store, engine, clock)

    async def advance_to(self, until: float) -> None:
        """What the timer driver does, tick by tick: refill the wheel when it asks, then fire
        what is due."""
        engine, wheel = self.engine, self.engine.wheel
        while True:
            if (at := engine.refill_at()) is not None and at <= self.clock.now:
                await engine.refill(self.clock.now)
                continue
            deadline = wheel.next_deadline()
            horizon = at if at is not None else until
            if deadline is None or deadline > until or deadline > horizon:
                if horizon >= until:
                    break
                self.clock.now = max(self.clock.now, horizon)
                continue
            self.clock.now = max(self.clock.now, float(deadline))
            due = wheel.poll(deadline)
            self.fired.update(dict.fromkeys(due, self.clock.now))
            await self.pipeline.commit_now(received_at=self.clock.now, fired=due)
        self.clock.now = until


async def test_restore_arms_the_first_batch_only(tmp_path: Path) -> None:
    """Of timers due every second from now on, the wheel gets the first batch; the next is
    needed once the clock is within the horizon of its last timer."""
    path = tmp_path / "store.db"
    ids = await stored(path, [START + 1 + i for i in range(2 * LOAD_BATCH)])
    stack = await Stack.open(path, FakeClock(START))
    try:
        assert LOAD_BATCH > HORIZON_S
        assert len(stack.engine.wheel) == LOAD_BATCH
        assert (
            ids[LOAD_BATCH - 1] in stack.engine.wheel and ids[LOAD_BATCH] not in stack.engine.wheel
        )
        assert stack.engine.refill_at() == START + LOAD_BATCH - HORIZON_S
    finally:
        await stack.store.close()


async def test_far_timer_fires_at_its_time_after_several_batches(tmp_path: Path) -> None:
    """Timers over five batches, the last hours away: the real driver loads each batch before
    the clock reaches it, and every timer fires at its tick, once, in order."""
    path = tmp_path / "store.db"
    dues = [START + 700 + i * 2.5 for i in range(5 * LOAD_BATCH)]
    ids = await stored(path, dues)
    clock = FakeClock(START)
    store = await Store.open(path)
    engine = Engine(rules(tmp_path), store)
    fired: list[tuple[float, list[str]]] = []
    idle = asyncio.Event()

    async def on_fire(due: list[str]) -> None:
        fired.append((clock.now, due))

    class Watched(FakeClock):
        def __call__(self) -> float:
            # Read at the top of each round: idle when the round will neither refill nor fire.
            at = engine.refill_at()
            deadline = engine.wheel.next_deadline()
            if (at is None or at > clock.now) and (deadline is None or deadline > clock.now):
                idle.set()
            return clock.now

    try:
        await engine.restore(clock())
        assert len(engine.wheel) == LOAD_BATCH
        stop = asyncio.Event()
        driver = asyncio.create_task(
            run_timer_driver(
                engine.wheel, Watched(), engine.wake, on_fire, stop=stop, refill=engine
            )
        )
        most = 0
        while clock.now < dues[-1] + 60:
            idle.clear()
            clock.advance(60)
            engine.wake.set()
            await asyncio.wait_for(idle.wait(), TIMEOUT_UNIT)
            most = max(most, len(engine.wheel))
        stop.set()
        await asyncio.wait_for(driver, TIMEOUT_UNIT)
    finally:
        await store.close()
    order = [key for _, due in fired for key in due]
    assert order == ids  # each once, in due order
    when = {key: at for at, due in fired for key in due}
    assert all(due <= when[rid] < due + 60 for rid, due in zip(ids, dues, strict=True))
    assert most <= 2 * LOAD_BATCH  # batches came in as needed, not all at once
    assert engine.refill_at() is None and len(engine.wheel) == 0


async def test_far_timers_cancelled_or_rearmed_before_their_batch(tmp_path: Path) -> None:
    """A far run ended, and one whose timer moved, before their batch is read: the ended one
    never fires, the moved one fires once, at its new time. The store is the truth."""
    path = tmp_path / "store.db"
    clock = FakeClock(START)
    stack = await Stack.open(path, clock)
    try:
        order = track("1", "Order Completed", {"cart_id": "c", "revenue": 20})
        added = [track(u, "Product Added", {"cart_id": "c", "product_id": "p1"}) for u in "12"]
        await stack.pipeline.commit_now(added, clock.now)  # two runs due at START + 1800
        runs = {r["person_id"][-1]: r["id"] for r in await stack.store.runs("active")}
    finally:
        await stack.store.close()
    # Earlier timers fill the first batch: the two runs' are beyond it and the horizon.
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO timers (run_id, step, due, person_id) VALUES (?, 0, ?, 'u:x')",
            [(f"filler{i:05d}", START + 700 + i / 10) for i in range(LOAD_BATCH)],
        )
    stack = await Stack.open(path, clock)
    try:
        wheel = stack.engine.wheel
        assert runs["1"] not in wheel and runs["2"] not in wheel
        clock.now = START + 600
        await stack.pipeline.commit_now([order], clock.now)  # ends u1's run: its timer goes
        clock.now = START + 650
        again = track("2", "Product Viewed", {"product_id": "p2"})
        await stack.pipeline.commit_now([again], clock.now)  # u2 active again: re-armed
        assert wheel.deadline(runs["2"]) == stack.engine.tick(START + 650 + 1800)
        await stack.advance_to(START + 3 * 3600)
        assert runs["1"] not in stack.fired
        assert stack.fired[runs["2"]] == START + 650 + 1800
        (step,) = [s for s in await stack.store.steps() if s["run_id"] == runs["2"]]
        assert step["at"] == START + 650 + 1800
    finally:
        await stack.store.close()


@pytest.mark.parametrize("change", ["cancel", "rearm"])
async def test_a_commit_during_a_batch_read_wins_over_the_row_read(
    tmp_path: Path, change: str
) -> None:
    """A timer cancelled or re-armed by a commit while its batch is being read: the batch's row
    may predate the commit, so the wheel keeps what the commit armed."""
    path = tmp_path / "store.db"
    ids = await stored(path, [START + 1 + i for i in range(2 * LOAD_BATCH)])
    clock = FakeClock(START + LOAD_BATCH - HORIZON_S)
    stack = await Stack.open(path, FakeClock(START))
    engine, far = stack.engine, ids[LOAD_BATCH + 5]
    try:
        async with stack.store._write_lock:  # the read waits: the commit below comes first
            refill = asyncio.create_task(engine.refill(clock.now))
            while engine.touched is None:
                await asyncio.sleep(0)
            changes = Changes()
            changes.timers[far] = None if change == "cancel" else (0, START + 9e5, f"u:{far}")
            engine.committed(changes)
        await asyncio.wait_for(refill, TIMEOUT_UNIT)
        assert ids[LOAD_BATCH + 6] in engine.wheel  # the batch came in
        expected = None if change == "cancel" else engine.tick(START + 9e5)
        assert engine.wheel.deadline(far) == expected
    finally:
        await stack.store.close()


async def test_restart_in_the_middle_of_a_batch(tmp_path: Path) -> None:
    """A crash after part of a loaded batch fired: the new engine reads the store from the start
    again, fires what is overdue at once (in order: more than its first batch) and the rest at
    their time; each run fires once.
    (500 runs share each due time, so batches also end among runs due at the same time.)"""
    path = tmp_path / "store.db"
    dues = [START + 700 + (i // 500) * 100 for i in range(3 * LOAD_BATCH + 100)]
    ids = await stored(path, dues)
    clock = FakeClock(START)
    stack = await Stack.open(path, clock)
    crash = dues[LOAD_BATCH + LOAD_BATCH // 2]  # halfway through the second batch
    try:
        await stack.advance_to(crash)
        assert stack.engine.refill_at() is not None  # the last runs are still in the store only
        before = stack.fired
    finally:
        await stack.store.close()  # a crash: nothing more is committed
    restart = clock.now = crash + 1000.5  # more overdue than a batch: the rest before a poll
    stack = await Stack.open(path, clock)
    try:
        assert (stack.engine.refill_at() or math.inf) <= restart  # overdue still in the store
        await stack.advance_to(dues[-1] + 10)
        after = stack.fired
        assert list(after) == [rid for rid in ids if rid in after]  # in due order
        assert not before.keys() & after.keys()
        assert sorted(before.keys() | after.keys()) == ids
        for rid, due in zip(ids, dues, strict=True):
            assert (before | after)[rid] == (due if due <= crash else max(due, restart))
        assert await stack.store.pending_timers() == []
        assert len(await stack.store.steps(limit=10 * LOAD_BATCH)) == len(ids)
    finally:
        await stack.store.close()


async def test_a_failed_read_is_tried_again_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails the next batch's read: logged, the wheel keeps what it has, and the read
    is tried again ``LOAD_RETRY_S`` later, when it succeeds."""
    path = tmp_path / "store.db"
    ids = await stored(path, [START + 1 + i for i in range(2 * LOAD_BATCH)])
    stack = await Stack.open(path, FakeClock(START))
    engine = stack.engine
    now = START + LOAD_BATCH - HORIZON_S
    try:
        with sqlite3.connect(path) as conn:
            conn.execute("ALTER TABLE timers RENAME TO timers_away")
        await engine.refill(now)
        assert "reading the stored timers failed" in caplog.text
        assert engine.refill_at() == now + LOAD_RETRY_S and len(engine.wheel) == LOAD_BATCH
        with sqlite3.connect(path) as conn:
            conn.execute("ALTER TABLE timers_away RENAME TO timers")
        await engine.refill(now + LOAD_RETRY_S)
        assert ids[-1] in engine.wheel and len(engine.wheel) == len(ids)
        assert engine.refill_at() == START + len(ids) - HORIZON_S  # an empty read will end it
    finally:
        await stack.store.close()
