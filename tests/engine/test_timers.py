"""The timer wheel against a dict model, and the driver under a fake clock. No sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from rtserver.engine import timers
from rtserver.engine.timers import MAX_TICK, TimerWheel, run_timer_driver
from tests.support.server import TIMEOUT_UNIT, FakeClock

YEAR_S = 365 * 24 * 3600
BOUNDARIES = [1, 2, 63, 64, 65, 4095, 4096, 4097, 2**18 - 1, 2**18, 2**24, 2**30, 2**36 - 1, 2**36]
STARTS = [0, 1, 63, 64, 4095, 4096, 1_800_000_000, 2**36 - 70, 2**36 - 1, 2**36]


# --- the wheel ---------------------------------------------------------------------------


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("offset", BOUNDARIES + [2**36 + 1, 2**40 + 3])
def test_timer_fires_at_its_deadline_and_not_before(start: int, offset: int) -> None:
    """A timer fires at the poll that reaches its deadline, never at the tick before."""
    wheel: TimerWheel[str] = TimerWheel(start)
    assert wheel.insert("k", start + offset)
    assert wheel.next_deadline() == start + offset
    assert wheel.poll(start + offset - 1) == []
    assert wheel.deadline("k") == start + offset
    assert wheel.next_deadline() == start + offset
    assert wheel.poll(start + offset) == ["k"]
    assert len(wheel) == 0
    assert wheel.next_deadline() is None


@pytest.mark.parametrize("deadline", [-5, 0, 99, 100])
def test_insert_of_a_due_deadline_returns_false(deadline: int) -> None:
    """A deadline at or before the current tick is not armed: the caller fires it now."""
    wheel: TimerWheel[str] = TimerWheel(100)
    assert not wheel.insert("new", deadline)
    assert wheel.insert("k", 500)
    assert not wheel.insert("k", deadline)
    assert "k" not in wheel
    assert "new" not in wheel
    assert wheel.next_deadline() is None
    assert wheel.poll(1000) == []


def test_insert_of_an_existing_key_rearms_it_earlier_or_later() -> None:
    """Inserting a pending key replaces its deadline, earlier or later."""
    wheel: TimerWheel[str] = TimerWheel(0)
    wheel.insert("first", 3)
    wheel.insert("a", 5000)
    wheel.insert("a", 10)
    assert wheel.deadline("a") == 10
    assert wheel.next_deadline() == 3
    wheel.insert("a", 300_000)
    assert wheel.next_deadline() == 3
    assert wheel.poll(3) == ["first"]
    assert wheel.next_deadline() == 300_000
    assert wheel.poll(299_999) == []
    assert wheel.poll(300_000) == ["a"]


def test_rearm_within_one_slot_fires_once_at_the_last_deadline() -> None:
    """Re-arming again and again inside one slot fires the key once, at its last deadline."""
    wheel: TimerWheel[str] = TimerWheel(0)
    wheel.insert("other", 4100)
    for deadline in range(4200, 4160, -1):
        wheel.insert("a", deadline)
    assert wheel.next_deadline() == 4100
    wheel.insert("other", 4170)
    assert wheel.next_deadline() == 4161
    wheel.insert("b", 4190)
    wheel.insert("b", 4150)
    assert wheel.next_deadline() == 4150
    assert wheel.poll(5000) == ["b", "a", "other"]


def test_reinserting_the_same_deadline_fires_once() -> None:
    """The very same deadline object inserted twice, or cancelled and re-added, fires once."""
    wheel: TimerWheel[str] = TimerWheel(0)
    deadline = 10**6
    wheel.insert("a", deadline)
    wheel.insert("a", deadline)
    wheel.insert("b", 10)
    wheel.cancel("b")
    wheel.insert("b", 10)
    assert wheel.poll(10**7) == ["b", "a"]


def test_stale_reference_of_a_rearmed_key_does_not_fire_it() -> None:
    """A key moved to a later tick is skipped at its old tick and fires at its new one."""
    wheel: TimerWheel[str] = TimerWheel(0)
    wheel.insert("a", 10)
    wheel.insert("a", 20)
    assert wheel.poll(10) == []
    assert wheel.deadline("a") == 20
    assert wheel.poll(20) == ["a"]


def test_stale_references_in_a_higher_slot_are_skipped() -> None:
    """Cancelled and moved timers leave references in a slot above level 0 that never fire."""
    wheel: TimerWheel[str] = TimerWheel(0)
    for key in ("cancelled", "moved", "kept"):
        wheel.insert(key, 5000)
    wheel.cancel("cancelled")
    wheel.insert("moved", 300_000)
    assert wheel.poll(6000) == ["kept"]
    assert wheel.poll(300_000) == ["moved"]


def test_cancel_after_cascade() -> None:
    """A timer moved down a level by time passing can still be cancelled."""
    wheel: TimerWheel[str] = TimerWheel(0)
    wheel.insert("a", 5000)
    wheel.insert("b", 5001)
    assert wheel.poll(4999) == []
    assert wheel.cancel("a")
    assert not wheel.cancel("a")
    assert wheel.next_deadline() == 5001
    assert wheel.poll(10**6) == ["b"]


def test_cancel_of_an_unknown_key_returns_false() -> None:
    """Cancelling a key that is not pending changes nothing."""
    wheel: TimerWheel[str] = TimerWheel(0)
    assert not wheel.cancel("nope")
    assert len(wheel) == 0


def test_poll_returns_keys_in_deadline_order() -> None:
    """One poll across many levels returns every due key once, earliest first."""
    wheel: TimerWheel[int] = TimerWheel(1_800_000_000)
    deadlines = {key: 1_800_000_000 + (key * 7919) % 500_000 + 1 for key in range(2000)}
    for key, deadline in deadlines.items():
        wheel.insert(key, deadline)
    fired = wheel.poll(1_800_000_000 + 250_000) + wheel.poll(1_800_000_000 + 500_000)
    assert sorted(fired) == list(range(2000))
    assert [deadlines[key] for key in fired] == sorted(deadlines.values())


def test_ten_year_jump_fires_everything_once_without_walking_the_ticks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 10-year jump fires every timer once, visiting busy slots only, not every tick."""
    start = 1_800_000_000
    wheel: TimerWheel[int] = TimerWheel(start)
    deadlines = {key: start + 1 + key * (10 * YEAR_S // 1000) for key in range(1000)}
    for key, deadline in deadlines.items():
        wheel.insert(key, deadline)
    visits = 0
    next_slot = TimerWheel._next_slot

    def counting(self: TimerWheel[int]) -> tuple[int, int] | None:
        nonlocal visits
        visits += 1
        return next_slot(self)

    monkeypatch.setattr(TimerWheel, "_next_slot", counting)
    fired = wheel.poll(start + 10 * YEAR_S + 1)
    assert fired == sorted(deadlines, key=deadlines.__getitem__)
    assert visits <= 7 * len(deadlines)
    assert wheel.poll(start + 20 * YEAR_S) == []


def test_backward_poll_fires_nothing_and_loses_nothing() -> None:
    """A clock that goes back fires nothing; the timers fire when time catches up."""
    wheel: TimerWheel[str] = TimerWheel(10_000)
    wheel.insert("a", 10_000 + 7200)
    assert wheel.poll(10_000 - 7200) == []
    assert wheel.elapsed == 10_000
    assert wheel.poll(10_000) == []
    assert wheel.deadline("a") == 17_200
    assert wheel.poll(17_200) == ["a"]
    assert wheel.poll(17_200) == []


def test_next_deadline_is_exact_after_cascades() -> None:
    """next_deadline is the earliest deadline, not a slot start, before and after cascades."""
    wheel: TimerWheel[str] = TimerWheel(0)
    wheel.insert("late", 300_007)
    wheel.insert("mid", 5003)
    wheel.insert("early", 5001)
    assert wheel.next_deadline() == 5001
    assert wheel.poll(4096) == []  # cascades the 4096..8191 slot
    assert wheel.next_deadline() == 5001
    assert wheel.cancel("early")
    assert wheel.next_deadline() == 5003
    assert wheel.poll(5003) == ["mid"]
    assert wheel.next_deadline() == 300_007
    assert wheel.poll(300_006) == []
    assert wheel.next_deadline() == 300_007


def test_next_deadline_skips_slots_that_hold_only_cancelled_timers() -> None:
    """Cancelled timers leave no trace in next_deadline."""
    wheel: TimerWheel[str] = TimerWheel(0)
    wheel.insert("a", 10)
    wheel.insert("b", 100)
    wheel.insert("c", 70_000)
    wheel.cancel("a")
    wheel.cancel("b")
    assert wheel.next_deadline() == 70_000
    wheel.cancel("c")
    assert wheel.next_deadline() is None


def test_len_contains_and_deadline() -> None:
    """len, in and deadline() describe exactly the pending keys."""
    wheel: TimerWheel[tuple[int, int]] = TimerWheel(0)
    wheel.insert((1, 0), 50)
    wheel.insert((2, 0), 5000)
    assert len(wheel) == 2
    assert (1, 0) in wheel
    assert (3, 0) not in wheel
    assert wheel.deadline((2, 0)) == 5000
    assert wheel.deadline((3, 0)) is None
    assert wheel.poll(50) == [(1, 0)]
    assert len(wheel) == 1
    assert (1, 0) not in wheel


def test_far_deadlines_beyond_the_wheel_era_fire_in_order() -> None:
    """Deadlines past the 2**36-tick era wait in the overflow and still fire in order."""
    wheel: TimerWheel[str] = TimerWheel(2**36 - 10)
    wheel.insert("next-era", 2**36 + 5)
    wheel.insert("far", 2**50 + 3)
    wheel.insert("farther", 2**55)
    wheel.insert("near", 2**36 - 5)
    assert wheel.next_deadline() == 2**36 - 5
    assert wheel.poll(2**36 - 5) == ["near"]
    assert wheel.next_deadline() == 2**36 + 5
    assert wheel.poll(2**36 + 5) == ["next-era"]
    assert wheel.next_deadline() == 2**50 + 3
    assert wheel.poll(2**50) == []
    assert wheel.deadline("far") == 2**50 + 3
    assert wheel.poll(2**56) == ["far", "farther"]


def test_deadline_at_max_tick_is_refused() -> None:
    """Deadlines must stay below MAX_TICK."""
    wheel: TimerWheel[str] = TimerWheel(0)
    with pytest.raises(ValueError, match="not below MAX_TICK"):
        wheel.insert("k", MAX_TICK)
    assert "k" not in wheel


def test_negative_start_tick_is_refused() -> None:
    """Ticks count up from zero."""
    with pytest.raises(ValueError, match="negative tick -1"):
        TimerWheel(-1)


def test_cancelled_timers_are_swept_by_poll() -> None:
    """Once stale references outnumber live timers twice over, poll drops them all."""
    wheel: TimerWheel[int] = TimerWheel(0)
    for key in range(1000):
        wheel.insert(key, 10 + key * 300)
    for key in range(990):
        wheel.cancel(key)
    assert wheel.poll(1) == []
    assert sum(map(len, wheel._slots)) == 10
    assert wheel.poll(10**6) == list(range(990, 1000))


class WheelMachine(RuleBasedStateMachine):
    """The wheel next to a dict of key → deadline, under random inserts, cancels and polls."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.wheel: TimerWheel[int] = TimerWheel(0)
        self.model: dict[int, int] = {}

    @initialize(start=st.sampled_from(STARTS) | st.integers(0, 2**40))
    def start(self, start: int) -> None:
        self.now = start
        self.wheel = TimerWheel(start)

    @rule(
        key=st.integers(0, 7),
        offset=st.integers(-3, 70) | st.sampled_from(BOUNDARIES) | st.integers(-10, 2**40),
    )
    def insert(self, key: int, offset: int) -> None:
        deadline = self.now + offset
        armed = self.wheel.insert(key, deadline)
        assert armed == (deadline > self.now)
        self.model.pop(key, None)
        if armed:
            self.model[key] = deadline

    @rule(key=st.integers(0, 7))
    def cancel(self, key: int) -> None:
        assert self.wheel.cancel(key) == (self.model.pop(key, None) is not None)

    @rule(
        step=st.integers(-100, 100)
        | st.sampled_from(BOUNDARIES)
        | st.integers(-(2**20), 2**20)
        | st.integers(0, 2**42)
    )
    def poll(self, step: int) -> None:
        now = self.now + step
        fired = self.wheel.poll(now)
        if now <= self.now:
            assert fired == []
            return
        due = {key: deadline for key, deadline in self.model.items() if deadline <= now}
        assert len(fired) == len(set(fired))  # none twice
        assert set(fired) == set(due)  # none early, none later than this poll
        assert [due[key] for key in fired] == sorted(due.values())
        for key in fired:
            del self.model[key]
        self.now = now

    @rule()
    def next_deadline(self) -> None:
        assert self.wheel.next_deadline() == min(self.model.values(), default=None)

    @invariant()
    def same_keys(self) -> None:
        assert len(self.wheel) == len(self.model)
        for key in range(8):
            assert self.wheel.deadline(key) == self.model.get(key)
            assert (key in self.wheel) == (key in self.model)


def test_wheel_agrees_with_a_dict_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same keys fire at the same polls as in a dict model: once, never early, never late."""
    monkeypatch.setattr(timers, "_MIN_GARBAGE", 0)  # sweep stale references often
    run_state_machine_as_test(
        WheelMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- the driver --------------------------------------------------------------------------


class Recorder:
    """An on_fire that records each batch and lets the test wait for the next one."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.fail_first = fail_first
        self.fired = asyncio.Event()

    async def __call__(self, due: list[str]) -> None:
        self.batches.append(due)
        self.fired.set()
        if len(self.batches) <= self.fail_first:
            raise RuntimeError("store unavailable")

    async def next_batch(self) -> list[str]:
        await asyncio.wait_for(self.fired.wait(), TIMEOUT_UNIT)
        self.fired.clear()
        return self.batches[-1]


class WatchedClock(FakeClock):
    """A fake clock that tells the test when the driver has read it (and so is about to wait)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        super().__init__(now)
        self.read = asyncio.Event()

    def __call__(self) -> float:
        self.read.set()
        return self.now

    async def driver_waiting(self) -> None:
        """Wait until the driver has read the clock; it runs on to its wait without yielding."""
        self.read.clear()
        await asyncio.wait_for(self.read.wait(), TIMEOUT_UNIT)


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, TIMEOUT_UNIT)


def _driver(
    wheel: TimerWheel[str],
    clock: Callable[[], float],
    wake: asyncio.Event,
    on_fire: Recorder,
    stop: asyncio.Event | None,
    **options: float,
) -> asyncio.Task[None]:
    driver = run_timer_driver(wheel, clock, wake, on_fire, stop=stop, **options)
    return asyncio.create_task(driver, name="test-timer-driver")


async def test_driver_fires_due_keys_when_woken() -> None:
    """Advancing the clock and setting wake fires the keys due by then."""
    clock = WatchedClock()
    wheel: TimerWheel[str] = TimerWheel(int(clock.now))
    wheel.insert("a", int(clock.now) + 10)
    wheel.insert("b", int(clock.now) + 20)
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop)
    await clock.driver_waiting()
    clock.advance(10)
    wake.set()
    assert await on_fire.next_batch() == ["a"]
    assert wheel.deadline("b") == int(clock.now) + 10
    await _stop(task, stop)
    assert on_fire.batches == [["a"]]


async def test_driver_fires_overdue_keys_at_once() -> None:
    """Timers restored already overdue fire on the driver's first round."""
    clock = WatchedClock()
    wheel: TimerWheel[str] = TimerWheel(int(clock.now) - 3600)
    wheel.insert("overdue", int(clock.now) - 60)
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop)
    assert await on_fire.next_batch() == ["overdue"]
    await _stop(task, stop)


async def test_driver_rearms_on_wake_for_an_earlier_timer() -> None:
    """After wake, the driver sleeps until the new earlier deadline, not the old later one."""
    tick_s = 1 / 1024  # exact in binary, so the fake clock lands on tick boundaries
    clock = WatchedClock(1000.0)
    now_tick = int(clock.now / tick_s)
    wheel: TimerWheel[str] = TimerWheel(now_tick)
    wheel.insert("late", now_tick + 10**6)  # far beyond TIMEOUT_UNIT of real time
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop, tick_s=tick_s)
    await clock.driver_waiting()
    wheel.insert("early", now_tick + 1)
    assert wheel.next_deadline() == now_tick + 1
    wake.set()
    await clock.driver_waiting()
    clock.advance(tick_s)  # no wake: the driver's own, shorter timeout fires "early"
    assert await on_fire.next_batch() == ["early"]
    assert "late" in wheel
    await _stop(task, stop)


async def test_driver_wakes_itself_at_the_next_deadline() -> None:
    """Without wake, the driver sleeps until the next deadline and fires it."""
    tick_s = 1 / 1024  # exact in binary, so the fake clock lands on tick boundaries
    clock = WatchedClock(1000.0)
    now_tick = int(clock.now / tick_s)
    wheel: TimerWheel[str] = TimerWheel(now_tick)
    wheel.insert("soon", now_tick + 1)
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop, tick_s=tick_s)
    await clock.driver_waiting()
    clock.advance(tick_s)
    assert await on_fire.next_batch() == ["soon"]
    await _stop(task, stop)


async def test_driver_notices_a_forward_clock_jump_within_max_sleep() -> None:
    """A wall clock that jumps forward is read again after max_sleep_s, and the due key fires."""
    clock = WatchedClock()
    now = int(clock.now)
    wheel: TimerWheel[str] = TimerWheel(now)
    wheel.insert("in-two-hours", now + 7200)
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop, max_sleep_s=0.001)
    await clock.driver_waiting()
    clock.advance(7200)
    assert await on_fire.next_batch() == ["in-two-hours"]
    await _stop(task, stop)


async def test_driver_fires_nothing_when_the_clock_goes_back() -> None:
    """A backward jump delays timers, it never fires or repeats them."""
    clock = WatchedClock()
    now = int(clock.now)
    wheel: TimerWheel[str] = TimerWheel(now)
    wheel.insert("a", now + 60)
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop)
    await clock.driver_waiting()
    clock.advance(-7200)
    wake.set()
    await clock.driver_waiting()
    assert on_fire.batches == []
    clock.advance(7200 + 60)
    wake.set()
    assert await on_fire.next_batch() == ["a"]
    await _stop(task, stop)
    assert on_fire.batches == [["a"]]


async def test_driver_logs_on_fire_errors_and_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    """An on_fire failure is logged, not retried, and later timers still fire."""
    clock = WatchedClock()
    now = int(clock.now)
    wheel: TimerWheel[str] = TimerWheel(now)
    wheel.insert("a", now + 1)
    wheel.insert("b", now + 2)
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder(fail_first=1)
    task = _driver(wheel, clock, wake, on_fire, stop)
    await clock.driver_waiting()
    with caplog.at_level(logging.ERROR, logger="rtserver.engine.timers"):
        clock.advance(1)
        wake.set()
        assert await on_fire.next_batch() == ["a"]
        await clock.driver_waiting()
    assert "firing 1 due timers failed" in caplog.text
    assert "a" not in wheel
    clock.advance(1)
    wake.set()
    assert await on_fire.next_batch() == ["b"]
    await _stop(task, stop)
    assert on_fire.batches == [["a"], ["b"]]


async def test_driver_stops_when_stop_is_set() -> None:
    """Setting stop alone ends the driver, even with nothing pending and no wake."""
    clock = WatchedClock()
    wheel: TimerWheel[str] = TimerWheel(int(clock.now))
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = _driver(wheel, clock, wake, on_fire, stop)
    await clock.driver_waiting()
    await _stop(task, stop)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_driver_without_stop_ends_when_cancelled() -> None:
    """With no stop event, cancelling the task ends the driver and leaves no task behind."""
    clock = WatchedClock()
    wheel: TimerWheel[str] = TimerWheel(int(clock.now))
    wheel.insert("a", int(clock.now) + 60)
    task = _driver(wheel, clock, asyncio.Event(), Recorder(), None)
    await clock.driver_waiting()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() == {asyncio.current_task()}


class Feed:
    """A refill of batches of (key, tick), needed from the times in ``at`` (one per batch)."""

    def __init__(
        self, wheel: TimerWheel[str], batches: list[list[tuple[str, int]]], at: list[float]
    ) -> None:
        self.wheel, self.batches, self.at = wheel, batches, at
        self.calls: list[float] = []

    def refill_at(self) -> float | None:
        return self.at[0] if self.at else None

    async def refill(self, now: float) -> None:
        self.calls.append(now)
        self.at.pop(0)
        for key, tick in self.batches.pop(0):
            self.wheel.insert(key, tick)


async def test_driver_refills_a_batch_a_round_before_it_polls() -> None:
    """Batches needed by now come in first, one per round: what they hold that is due fires
    in the same poll as the wheel's, in deadline order."""
    clock = WatchedClock()
    now_tick = int(clock.now)
    wheel: TimerWheel[str] = TimerWheel(now_tick - 10)
    wheel.insert("wheel", now_tick - 2)
    feed = Feed(wheel, [[("first", now_tick - 1)], [("second", now_tick)]], [0.0, clock.now])
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = asyncio.create_task(
        run_timer_driver(wheel, clock, wake, on_fire, stop=stop, refill=feed)
    )
    assert await on_fire.next_batch() == ["wheel", "first", "second"]
    assert feed.calls == [clock.now, clock.now]
    await _stop(task, stop)


async def test_driver_wakes_itself_when_a_refill_is_needed() -> None:
    """Without wake, the driver's sleep ends when the refill is needed, not at the wheel's
    next deadline, so a deadline refilled then still fires at its tick."""
    tick_s = 1 / 1024  # exact in binary, so the fake clock lands on tick boundaries
    clock = WatchedClock(1000.0)
    now_tick = int(clock.now / tick_s)
    wheel: TimerWheel[str] = TimerWheel(now_tick)
    wheel.insert("late", now_tick + 10**6)  # far beyond TIMEOUT_UNIT of real time
    feed = Feed(wheel, [[("soon", now_tick + 2)]], [clock.now + tick_s])
    wake, stop, on_fire = asyncio.Event(), asyncio.Event(), Recorder()
    task = asyncio.create_task(
        run_timer_driver(wheel, clock, wake, on_fire, tick_s=tick_s, stop=stop, refill=feed)
    )
    await clock.driver_waiting()
    clock.advance(2 * tick_s)  # no wake
    assert await on_fire.next_batch() == ["soon"]
    assert feed.calls == [clock.now] and "late" in wheel
    await _stop(task, stop)
