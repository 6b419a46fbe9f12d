"""What one group commit carries besides its events: :class:`Prepared` (the events checked
against the store, with their persons) and :class:`Changes` (what the decisions change).

Part of the store (``_writer.py`` writes them), split off to keep each file readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rtserver.model import Engagement, Event, Facts, Link, Person, Run

__all__ = ["Changes", "Prepared"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A group of events checked against the store: the new ones, with their persons."""

    fresh: list[Event]
    received_at: list[float]
    people: list[str]
    links: list[Link]
    duplicates: int


@dataclass(slots=True)
class Changes:
    """What the decisions of one group change, committed with its events in one transaction."""

    runs: dict[str, tuple[Run, str | None, float]] = field(default_factory=dict)
    """Run id → (its last state, the end reason or None while open, when decided)."""
    started: set[str] = field(default_factory=set)
    """The runs among ``runs`` started by this group (the others are open in the store)."""
    profiled: set[str] = field(default_factory=set)
    """Persons whose profile row exists (their events' upsert may be a plain update)."""
    timers: dict[str, tuple[int, float, str] | None] = field(default_factory=dict)
    """Run id → (step, due, person id) to arm, or None to drop."""
    steps: list[tuple[str, int, str, str, str, str, bool, float]] = field(default_factory=list)
    """(run id, step, person id, workflow, action, detail JSON, counts for the cap, when)."""
    people: dict[str, Person] = field(default_factory=dict)
    """The persons whose facts (orders, opens, clicks, time zone) changed."""
    schedules: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    """Scheduled workflow → (next sweep, the last person swept so far or None when done)."""
    shop: Engagement | None = None
    """The shop's engagement by hour, when this group changed it."""
    bandit_mails: list[tuple[str, str, int, str, float]] = field(default_factory=list)
    """Mails of bandit steps decided: (mail id, workflow, step, variant, when)."""
    rewards: dict[str, float] = field(default_factory=dict)
    """Mail id → when it reached its bandit step's goal (the first time)."""
    tallies: dict[tuple[str, int, str], tuple[int, int]] | None = None
    """Every bandit arm's (sends, successes) once this commits, when read or changed here
    (for the engine, never written: ``bandit_mails`` is what is written)."""
    known: dict[str, tuple[Facts, float]] = field(default_factory=dict)
    """Person → (facts as stored once this commits, a lower bound of their history's times),
    for the engine's memory (never written)."""
    stale: set[str] = field(default_factory=set)
    """Persons whose stored facts change beyond the engine's fold (traits, merges)."""
    reset: bool = False
    """The engine's memory was not trusted for this group: clear it once this commits."""
    generation: tuple[int, int] | None = None
    """:func:`generation` right after this commit (None: not to be trusted)."""
    confirmations: list[tuple[str, str, float]] = field(default_factory=list)
    """Double opt-in mails queued: (address, client address, when), for the caps; the address
    is hashed with the store's salt as it is written."""
    outbox: list[tuple[Any, ...]] = field(default_factory=list)
    """Mails to send, as ``INSERT_OUTBOX`` rows: (id, run id, step, person id, workflow,
    template, variant, marketing, recipient or None for the person's email, due, created,
    updated, extra JSON)."""
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    """Webhooks to deliver, as ``INSERT_DELIVERY`` rows: (id, run id, step, person id,
    workflow, url, payload JSON, due, created, updated)."""

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.timers
            or self.steps
            or self.people
            or self.schedules
            or self.shop is not None
            or self.rewards
            or self.outbox
            or self.deliveries
        )
