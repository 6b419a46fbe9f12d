"""Timers: a hierarchical timer wheel on integer ticks, and the one task that drives it.

The wheel is pure and never reads a clock: callers pass ticks, ``int(clock() // tick_s)``.
The store is the source of truth for pending timers; the wheel indexes them in memory, those due
soon at least: a :class:`Refill` hands the driver the later ones as their time nears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from operator import itemgetter
from typing import Generic, Protocol, TypeVar

from rtserver.clock import Clock

__all__ = [
    "LEVELS",
    "MAX_SLEEP_S",
    "MAX_TICK",
    "SLOTS",
    "Refill",
    "TimerWheel",
    "run_timer_driver",
]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

SLOTS = 64
"""Slots per level; a slot of level ``n`` spans ``64**n`` ticks."""
LEVELS = 6
"""Levels of the wheel: together they span ``64**6 = 2**36`` ticks (2177 years at 1 s)."""
MAX_TICK = 1 << 62
"""Deadlines must be below this tick (146 000 years at 1 ms)."""
MAX_SLEEP_S = 60.0
"""The longest the driver sleeps without reading the clock while timers are pending."""

_OVERFLOW = LEVELS * SLOTS  # index of the overflow slot in TimerWheel._slots
_ERA_BITS = 6 * LEVELS
# Two deadlines on the same level share its slot when they differ only below that level.
_SLOT_MASK = [SLOTS**level - 1 for level in range(LEVELS)] + [-1]
_MIN_GARBAGE = 64
_UNKNOWN = -1  # TimerWheel._next before next_deadline() looks again
_EMPTY = MAX_TICK  # TimerWheel._next when nothing is pending
_first = itemgetter(0)


def _slot_for(elapsed: int, when: int) -> int:
    """The slot of ``when`` > ``elapsed``: on the level of the highest 6-bit group that differs."""
    level = (((elapsed ^ when) | (SLOTS - 1)).bit_length() - 1) // 6
    if level >= LEVELS:
        return _OVERFLOW
    return level * SLOTS + (when >> 6 * level & (SLOTS - 1))


class TimerWheel(Generic[K]):
    """Pending deadlines by key, on integer ticks, in a six-level hierarchical wheel.

    As in tokio's ``wheel/mod.rs``, a deadline lives on the level of the highest 6-bit group in
    which it differs from the current tick ``elapsed``, in the slot given by that group::

        level   slot spans       level spans (at a 1 s tick)
          0     1 tick           64 ticks            (64 s)
          1     64 ticks         4 096 ticks         (68 min)
          2     4 096 ticks      262 144 ticks       (3 days)
          3     2**18 ticks      2**24 ticks         (194 days)
          4     2**24 ticks      2**30 ticks         (34 years)
          5     2**30 ticks      2**36 ticks         (2 177 years)
       overflow                  beyond the current 2**36-tick era

    Six levels rather than four (which span 194 days): two more cost 128 empty lists, and timers
    then reach the overflow only across a 2**36-tick boundary (in the year 4147 for 1 s ticks
    of the Unix clock), not every 194 days.
    An ``occupied`` bitmask per level finds the next busy slot without scanning, so ``poll``
    skips any stretch of empty time at once. When time reaches a slot above level 0, its timers
    fire if ``poll``'s ``now`` has passed them, or move down ("cascade") to lower levels.

    A timer costs one ``dict[key, deadline]`` entry plus one reference in its slot's list; no
    object of its own. Cancel only drops the dict entry, like asyncio's cancelled heap handles:
    the slot keeps a stale reference, skipped when the slot is read because the key's deadline
    no longer falls in the slot. Re-arming within the same slot leaves nothing stale. ``poll``
    rebuilds the slots when stale references outnumber live timers twice over.
    """

    __slots__ = ("_deadlines", "_elapsed", "_garbage", "_next", "_occupied", "_slots")

    def __init__(self, elapsed: int = 0) -> None:
        if elapsed < 0:
            raise ValueError(f"negative tick {elapsed!r}")
        self._elapsed = elapsed
        self._deadlines: dict[K, int] = {}
        self._slots: list[list[K]] = [[] for _ in range(_OVERFLOW + 1)]
        self._occupied = [0] * LEVELS
        self._garbage = 0  # stale references in slots
        self._next = _EMPTY

    @property
    def elapsed(self) -> int:
        """The current tick: the ``now_tick`` of the last ``poll`` that moved forward."""
        return self._elapsed

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def deadline(self, key: K) -> int | None:
        """The tick ``key`` is due at, or None if it is not pending."""
        return self._deadlines.get(key)

    def insert(self, key: K, deadline_tick: int) -> bool:
        """Arm ``key`` for ``deadline_tick``, replacing any deadline it had.

        Returns False, and leaves ``key`` unarmed, when the deadline is already due at the
        current tick: the caller fires it now (tokio's ``Err(Elapsed)``).
        """
        elapsed = self._elapsed
        deadlines = self._deadlines
        if deadline_tick <= elapsed:
            self.cancel(key)
            return False
        # _slot_for, unrolled for near deadlines: comparisons cost less than int.bit_length().
        differ = elapsed ^ deadline_tick
        if differ < 0x40:
            i = deadline_tick & 63
        elif differ < 0x1000:
            i = 64 + (deadline_tick >> 6 & 63)
        elif differ < 0x40000:
            i = 128 + (deadline_tick >> 12 & 63)
        elif differ < 0x1000000:
            i = 192 + (deadline_tick >> 18 & 63)
        elif deadline_tick < MAX_TICK:
            i = _slot_for(elapsed, deadline_tick)  # 194 days away or more: rare
        else:
            raise ValueError(f"deadline tick {deadline_tick!r} is not below MAX_TICK")
        old = deadlines.setdefault(key, deadline_tick)
        if old is not deadline_tick:  # a re-arm, or the very same deadline object again
            deadlines[key] = deadline_tick
            if old == self._next:
                self._next = _UNKNOWN
            if old ^ deadline_tick <= _SLOT_MASK[i >> 6]:  # same slot: its reference stays valid
                if deadline_tick < self._next:
                    self._next = deadline_tick
                return True
            self._garbage += 1
        slot = self._slots[i]
        if not slot and i < _OVERFLOW:
            self._occupied[i >> 6] |= 1 << (i & 63)
        slot.append(key)
        if deadline_tick < self._next:
            self._next = deadline_tick
        return True

    def cancel(self, key: K) -> bool:
        """Disarm ``key``; False if it was not pending."""
        when = self._deadlines.pop(key, None)
        if when is None:
            return False
        if when == self._next:
            self._next = _UNKNOWN
        self._garbage += 1
        return True

    def next_deadline(self) -> int | None:
        """The earliest pending deadline, or None when nothing is pending."""
        if self._next == _UNKNOWN:
            self._next = _EMPTY
            while (found := self._next_slot()) is not None:
                i, start = found
                live = self._compact(i)
                if live:
                    self._next = start if i < SLOTS else min(map(self._deadlines.__getitem__, live))
                    break
        return None if self._next == _EMPTY else self._next

    def poll(self, now_tick: int) -> list[K]:
        """Move the wheel to ``now_tick`` and return the keys due by then, in deadline order.

        Each key is returned once and disarmed. A ``now_tick`` at or before the current tick
        (a clock that went back) changes nothing and returns nothing.
        """
        if self._garbage > 2 * len(self._deadlines) + _MIN_GARBAGE:
            self._rebuild()
        if now_tick <= self._elapsed:
            return []
        fired: list[K] = []
        deadlines = self._deadlines
        dropped = 0
        while (found := self._next_slot()) is not None and found[1] <= now_tick:
            i, start = found
            low, high = self._bounds(i)
            slot = self._slots[i]
            self._slots[i] = []
            if i < _OVERFLOW:
                self._occupied[i >> 6] &= ~(1 << (i & 63))
            self._elapsed = start
            self._next = _UNKNOWN
            if i < SLOTS:  # level 0: one tick, so every live key is due at `start`
                for key in slot:
                    when = deadlines.pop(key, None)
                    if when == start:
                        fired.append(key)
                    else:
                        dropped += 1
                        if when is not None:  # re-armed: put it back
                            deadlines[key] = when
                continue
            if now_tick < high:
                # The poll ends inside this slot, so every later slot starts after `now_tick`:
                # move there now and put each timer left straight into its final slot.
                self._elapsed = start = now_tick
            due: list[tuple[int, K]] = []
            for key in slot:
                when = deadlines.get(key)
                if when is None or not low <= when < high:
                    dropped += 1
                elif when <= now_tick:
                    due.append((when, key))
                else:  # cascade
                    lower = _slot_for(start, when)
                    if not self._slots[lower] and lower < _OVERFLOW:
                        self._occupied[lower >> 6] |= 1 << (lower & 63)
                    self._slots[lower].append(key)
            # Everything earlier than this slot has fired and everything still pending is due
            # after `now_tick`, so sorting this slot's due keys keeps `fired` in order.
            due.sort(key=_first)
            for _, key in due:
                if deadlines.pop(key, None) is None:
                    dropped += 1  # a second reference to a key that was re-armed
                else:
                    fired.append(key)
        self._garbage = max(self._garbage - dropped, 0)
        self._elapsed = now_tick
        return fired

    def _next_slot(self) -> tuple[int, int] | None:
        """The earliest busy slot, as its index in ``_slots`` and the tick it starts at.

        Busy slots of a level all lie after the current tick's slot of that level, and every
        slot of a level ends before the next busy slot of a higher level starts, so the lowest
        set bit of the lowest non-empty level is the next slot to expire.
        """
        for level, occupied in enumerate(self._occupied):
            if occupied:
                i = level * SLOTS + (occupied & -occupied).bit_length() - 1
                return i, self._bounds(i)[0]
        if self._compact(_OVERFLOW):
            # Jump to the era of the earliest far deadline, not era by era.
            earliest = min(map(self._deadlines.__getitem__, self._slots[_OVERFLOW]))
            return _OVERFLOW, earliest >> _ERA_BITS << _ERA_BITS
        return None

    def _bounds(self, i: int) -> tuple[int, int]:
        """The ticks slot ``i`` covers at the current tick: ``low <= deadline < high``."""
        elapsed = self._elapsed
        if i == _OVERFLOW:
            return (elapsed >> _ERA_BITS) + 1 << _ERA_BITS, MAX_TICK
        shift = 6 * (i >> 6)
        low = (elapsed >> shift + 6 << shift + 6) | (i & 63) << shift
        return low, low + (1 << shift)

    def _rebuild(self) -> None:
        """Refill the slots from the live deadlines, dropping every stale reference at once.

        It reads the dict in order and never the stale references, so it costs O(live timers),
        like asyncio's heap rebuild once half of its handles are cancelled.
        """
        elapsed = self._elapsed
        slots: list[list[K]] = [[] for _ in range(_OVERFLOW + 1)]
        self._slots = slots
        for key, when in self._deadlines.items():
            slots[_slot_for(elapsed, when)].append(key)
        self._occupied = [0] * LEVELS
        for i in range(_OVERFLOW):
            if slots[i]:
                self._occupied[i >> 6] |= 1 << (i & 63)
        self._garbage = 0

    def _compact(self, i: int) -> list[K]:
        """Drop the stale references from slot ``i``; return its live keys."""
        slot = self._slots[i]
        low, high = self._bounds(i)
        get = self._deadlines.get
        live = [key for key in slot if low <= get(key, -1) < high]
        self._garbage = max(self._garbage - (len(slot) - len(live)), 0)
        self._slots[i] = live
        if not live and i < _OVERFLOW:
            self._occupied[i >> 6] &= ~(1 << (i & 63))
        return live


class Refill(Protocol):
    """Where later deadlines wait until the wheel needs them (the engine: the store's timers
    beyond its horizon), so a restart does not arm them all at once."""

    def refill_at(self) -> float | None:
        """The clock time from which the wheel needs more (None: it has everything)."""

    async def refill(self, now: float) -> None:
        """Insert the next bounded batch into the wheel; move ``refill_at`` on (a failure
        too, so the driver does not spin)."""


async def run_timer_driver(
    wheel: TimerWheel[K],
    clock: Clock,
    wake: asyncio.Event,
    on_fire: Callable[[list[K]], Awaitable[None]],
    *,
    tick_s: float = 1.0,
    stop: asyncio.Event | None = None,
    max_sleep_s: float = MAX_SLEEP_S,
    refill: Refill | None = None,
) -> None:
    """Hand the wheel's due keys to ``on_fire`` as time passes, until ``stop`` is set.

    Each round polls the wheel at ``int(clock() // tick_s)``, awaits ``on_fire(due)`` when
    anything is due, and otherwise sleeps until the next deadline, ``max_sleep_s`` (so a wall
    clock that jumps forward is noticed) or ``wake``, whichever comes first; with nothing
    pending it sleeps until ``wake``. After ``wheel.insert(key, tick)``, the caller sets
    ``wake`` if ``wheel.next_deadline() == tick``; a spurious wake only costs one more poll.
    Setting ``stop`` also wakes the driver.

    ``poll`` disarms keys before ``on_fire`` sees them, and an exception from ``on_fire`` is
    logged and not retried: the store is the source of truth for pending timers, so whatever
    ``on_fire`` did not record stays pending there and the caller re-arms it from the store.

    With ``refill``, a round first calls ``refill.refill(now)`` once ``now`` reaches
    ``refill.refill_at()``, a batch per round and before polling, so a deadline waiting there
    is in the wheel before the poll that is due to fire it; sleeps end at ``refill_at`` too.
    """
    relay = None
    if stop is not None:
        relay = asyncio.create_task(_wake_on(stop, wake), name="timer-driver-stop")
    try:
        while stop is None or not stop.is_set():
            wake.clear()
            now = clock()
            refill_at = None
            if refill is not None and (refill_at := refill.refill_at()) is not None:
                if refill_at <= now:
                    await refill.refill(now)
                    continue
            due = wheel.poll(int(now // tick_s))
            if due:
                try:
                    await on_fire(due)
                except Exception:
                    logger.exception("firing %d due timers failed, first %r", len(due), due[0])
                continue
            deadline = wheel.next_deadline()
            timeout = None
            if deadline is not None:
                timeout = min(max(deadline * tick_s - now, 0.0), max_sleep_s)
            if refill_at is not None:
                timeout = min(refill_at - now, max_sleep_s if timeout is None else timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
    finally:
        if relay is not None:
            relay.cancel()
            await asyncio.wait([relay])


async def _wake_on(stop: asyncio.Event, wake: asyncio.Event) -> None:
    await stop.wait()
    wake.set()
