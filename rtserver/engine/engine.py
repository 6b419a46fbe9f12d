"""Where decisions meet I/O: facts in, :func:`decide` for each input, store changes and timers out.

The :class:`Engine` is called by the pipeline, the single writer, for every group: it loads the
facts of the group's persons (those it decided lately from memory, as committed: see
:meth:`Engine._facts`), folds each new event into its person (:func:`observe`), runs
:func:`decide` on the events in order and on the timers that came due, and turns the actions into
:class:`~rtserver.store.database.Changes` that the pipeline commits with the events in one
transaction.
Only after that commit does the engine arm or cancel timers in its in-memory wheel, so the wheel
never runs ahead of the store, which stays the source of truth.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import operator
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from rtserver.config import DashboardConfig, EngineConfig, MailConfig
from rtserver.engine.bandit import NO_TALLIES
from rtserver.engine.decide import decide
from rtserver.engine.definitions import (
    Workflows,
)
from rtserver.engine.engagement import (
    UNIFORM,
    Prior,
    engaged,
    engaged_one,
    engagement_weight,
    hour_of_week,
    prior_of,
)
from rtserver.engine.memory import Memory
from rtserver.engine.timers import TimerWheel
from rtserver.errors import StoreError
from rtserver.model import (
    Action,
    CallWebhook,
    CancelTimer,
    EmitEvent,
    EndRun,
    Engagement,
    Event,
    Facts,
    History,
    Person,
    Scheduled,
    ScheduleTimer,
    SendMail,
    SkipStep,
    StartRun,
    TimerFired,
    UpdateRun,
    event_name,
    known_zone,
    may_describe,
    observe,
    person_event,
)
from rtserver.store import Changes, Plan, Prepared, Source, Store, delivery_row

__all__ = [
    "Engine",
    "emitted_event",
    "mail_id",
    "outbox_row",
]

logger = logging.getLogger(__name__)

HISTORY_WINDOW_S = 7 * 86400.0
"""How far back ``person.events_since`` sees (and at most ``HISTORY_LIMIT`` events)."""
SWEEP_PREFIX = "schedule:"
"""Wheel keys of scheduled sweeps (run ids are hex digests: they never clash)."""
SWEEP_CHUNK = 500
"""Persons a scheduled sweep decides per commit, so ingest never waits long behind it."""
CONFIRM_WINDOW_S = 86400.0
"""Double opt-in caps count the mails of the last day."""
CONFIRM_WORKFLOW = "double_opt_in"
"""The outbox's workflow name for confirmation mails (no run)."""
REWARDING = frozenset({"Email Clicked", "Order Completed"})
"""The events that may reach a bandit step's goal."""
MAX_EMIT_DEPTH = 4
"""Emitted events may trigger workflows that emit again, this many generations deep."""
HORIZON_S = 600.0
"""The wheel holds the stored timers due within this much of now; later ones wait in the store
(see :meth:`Engine.refill`)."""
LOAD_BATCH = 4096
"""Stored timers read into the wheel at a time: the event loop inserts them in a few ms."""
LOAD_RETRY_S = 5.0
"""After a failed read of the stored timers, the next try waits this long."""


def mail_id(run_id: str, step: int) -> str:
    """The outbox id of a run's send step: stable, so its Message-ID is the same on every try."""
    return f"{run_id}-{step}"


def outbox_row(action: SendMail, marketing: bool, at: float) -> tuple[Any, ...]:
    """The outbox row of a decided send, written in the transaction that decided it."""
    return (
        mail_id(action.run_id, action.step), action.run_id, action.step, action.person_id,
        action.workflow, action.template, action.variant, marketing, None, at, at, at, "{}",
    )  # fmt: skip


def emitted_event(action: EmitEvent) -> Event:
    """The internal event an ``emit`` step adds, with a messageId unique to its (run, step)."""
    return person_event(
        action.person_id,
        f"rt-emit-{action.run_id}-{action.step}",
        action.name,
        dict(action.properties),
        context={"run": action.run_id},
    )


_stored_facts: Callable[[Person], tuple[Any, ...]] = operator.attrgetter(
    "orders_count", "total_spent", "last_order_at", "order_times", "opens", "clicks",
    "time_zone", "consent", "engagement",
)  # fmt: skip
"""The facts the profile row keeps (the rest, like recent history, is loaded or derived)."""


def _condition_sources(rules: Workflows) -> list[str]:
    conditions = []
    for workflow in rules.items:
        conditions.append(workflow.where)
        for step in workflow.steps:
            conditions.extend((step.when, step.exit_if, step.where))
    return [c.source for c in conditions if c is not None]


class Engine:
    """The workflows of one server: decides groups, owns the timer wheel."""

    def __init__(
        self,
        rules: Workflows,
        store: Store,
        *,
        tick_s: float = 1.0,
        confirmations_per_ip: int = MailConfig().confirmations_per_ip,
        memory_mb: int = EngineConfig().memory_mb,
        click_window_s: float = DashboardConfig().click_window,
        open_window_s: float = DashboardConfig().open_window,
    ):
        self.rules = rules
        self.store = store
        self.tick_s = tick_s
        self.confirmations_per_ip = confirmations_per_ip
        self.wheel: TimerWheel[str] = TimerWheel()
        self.loaded: tuple[float, str | None] | None = None
        """The last stored timer read into the wheel, as (due, run id), while later ones wait
        in the store ((-inf, None) before the first read); None once every stored timer was
        read (see :meth:`refill`)."""
        self.touched: set[str] | None = None
        """Timers armed or cancelled while a read of the stored ones is under way."""
        self.retry_at = -math.inf
        """No read of the stored timers before this time (one just failed)."""
        self.memory = Memory(memory_mb * 1024 * 1024)
        """The facts of the persons decided lately, as committed (see :meth:`_facts`)."""
        self.generation: tuple[int, int] | None = None
        """The store's write generation after the last commit (None: trust no memory)."""
        self.sweeps: dict[str, tuple[float, str | None]] = {}
        """Scheduled workflow → (next sweep, last person swept or None), as committed."""
        self.wake = asyncio.Event()
        """Set when a timer earlier than the wheel's next deadline is armed."""
        self.shop: Engagement | None = None
        """The shop's engagement by hour of the week, as committed (None: read it)."""
        self.prior: tuple[Engagement, Prior] = (Engagement(), UNIFORM)
        """The last shop histogram made into a prior, and that prior."""
        self.tallies: dict[tuple[str, int, str], tuple[int, int]] | None = None
        """Every bandit arm's (sends, successes), as committed (None: read them)."""
        self.windows = (click_window_s, open_window_s)
        """An order is attributed to the mail clicked (opened) last within these (the
        dashboard's attribution), for the bandit steps whose goal is ``ordered``."""
        self.bandit_workflows = frozenset(workflow for workflow, _ in rules.bandits)
        self.orders_count = any(step.goal == "ordered" for step in rules.bandits.values())
        # Recent events are loaded only when a condition asks for them: that read is the
        # one fact whose cost grows with the shop's traffic.
        self.needs_history = any("events_since" in source for source in _condition_sources(rules))

    def tick(self, at: float) -> int:
        """The wheel tick a due time falls in (rounded up: never early)."""
        return math.ceil(at / self.tick_s)

    async def restore(self, now: float) -> int:
        """Rebuild the wheel from the store; overdue timers fire at the driver's first poll.

        Only the ``LOAD_BATCH`` stored timers due first are read now: a million of them took
        two seconds to read and arm, most of them due hours or days later. The rest wait in
        the store: the timer driver reads those due within ``HORIZON_S`` (or overdue) before
        its first poll, while the server already serves, and the later ones as the clock nears
        them (:meth:`refill`). Scheduled workflows get their sweep armed too: a sweep cut short
        by a stop resumes.
        """
        # Starting the wheel at the current tick spares its first poll moving every restored
        # timer down from tick 0 (about a second with a million of them).
        self.wheel = TimerWheel(max(0, int(now // self.tick_s) - 1))
        self.loaded, self.retry_at = (-math.inf, None), -math.inf
        await self._load()
        intervals = {wf.name: wf.schedule_s for wf in self.rules.scheduled if wf.schedule_s}
        self.sweeps = await self.store.schedules(intervals, now)
        if self.rules.bandits:
            self.tallies = await self.store.bandit_tallies()
        for name, (next_at, cursor) in self.sweeps.items():
            self.arm(SWEEP_PREFIX + name, next_at if cursor is None else now)
        self.wake.set()
        return len(self.wheel)

    def refill_at(self) -> float | None:
        """When the wheel needs the next stored timers: ``HORIZON_S`` before the last one read
        is due (None: the wheel has them all)."""
        if self.loaded is None:
            return None
        return max(self.loaded[0] - HORIZON_S, self.retry_at)

    async def refill(self, now: float) -> None:
        """Read the next ``LOAD_BATCH`` stored timers into the wheel (the driver's refill).

        A failed read is logged and tried again ``LOAD_RETRY_S`` later: the timers stay in
        the store meanwhile.
        """
        try:
            await self._load()
        except StoreError:
            logger.exception("reading the stored timers failed; trying again in %g s", LOAD_RETRY_S)
            self.retry_at = now + LOAD_RETRY_S

    async def _load(self) -> None:
        """Arm the next ``LOAD_BATCH`` stored timers after :attr:`loaded`.

        A timer armed or cancelled by a commit while the read is under way is skipped: the
        row read may be older than that commit, and the wheel already holds what it armed
        (every arm goes into the wheel, however far away).
        """
        assert self.loaded is not None
        touched = self.touched = set()
        try:
            rows = await self.store.timer_ticks_after(self.tick_s, self.loaded, LOAD_BATCH)
        finally:
            self.touched = None
        # The ticks come computed by the store (what ``arm`` computes for each): the batch is
        # armed in one plain loop.
        insert, overdue = self.wheel.insert, self.wheel.elapsed + 1
        for run_id, tick, _ in rows:
            if run_id not in touched and not insert(run_id, tick):
                insert(run_id, overdue)
        self.loaded = (rows[-1][2], rows[-1][0]) if len(rows) == LOAD_BATCH else None

    def arm(self, run_id: str, due: float) -> None:
        """Arm (or re-arm) a run's timer; a deadline already passed fires at the next poll."""
        if self.touched is not None:
            self.touched.add(run_id)
        if not self.wheel.insert(run_id, self.tick(due)):
            self.wheel.insert(run_id, self.wheel.elapsed + 1)

    def plan(self, fired: Sequence[str], now: float) -> Plan:
        """What the store runs, on its writer thread, between preparing a group and committing
        it: the group's decisions, in one trip (the sweep states are copied for that thread)."""
        sweeps = dict(self.sweeps)
        return lambda prepared, source: self.decide(prepared, source, fired, now, sweeps)

    def decide(
        self,
        prepared: Prepared,
        source: Source,
        fired: Sequence[str],
        now: float,
        sweeps: Mapping[str, tuple[float, str | None]],
    ) -> Changes:
        """The changes a group causes: its new events, in order, then its due timers.

        Synchronous: it runs on the store's writer thread, reading facts through ``source``.
        """
        changes = Changes()
        # The memory holds what the group commits wrote; anything else written since (another
        # process, an erasure) makes it unreliable: read everything from the store this time.
        trusted = source.generation is not None and source.generation == self.generation
        changes.reset = not trusted
        due_sweeps = [key[len(SWEEP_PREFIX) :] for key in fired if key.startswith(SWEEP_PREFIX)]
        fired = [key for key in fired if not key.startswith(SWEEP_PREFIX)]
        runs = source.open_runs(fired) if fired else {}
        persons = set(prepared.people) | {run.person_id for run in runs.values()}
        since = now - HISTORY_WINDOW_S if self.needs_history else None
        oldest: dict[str, float] = {}
        facts = self._facts(source, persons, since, trusted, oldest)
        changes.profiled = {p for p, known in facts.items() if known.person.first_seen}
        queue = deque(zip(prepared.fresh, prepared.people, prepared.received_at, strict=True))
        depth = {e.message_id: 0 for e, _, _ in queue}
        rules, history = self.rules, since is not None
        shop = self.shop if trusted and self.shop is not None else source.shop_engagement()
        changes.shop = None if trusted and self.shop is not None else shop
        prior = self._prior(shop)
        if rules.bandits:  # a copy: the counts move as this group sends and gets rewards
            known_tallies = self.tallies if trusted else None
            changes.tallies = dict(
                source.bandit_tallies() if known_tallies is None else known_tallies
            )
        tallies = NO_TALLIES if changes.tallies is None else changes.tallies
        engagements: list[tuple[int, float, float]] = []  # the shop's, added once at the end
        policy = rules.policy
        while queue:
            event, person_id, at = queue.popleft()
            known = facts[person_id]
            added = None
            name = event_name(event)
            if name in REWARDING and changes.tallies is not None:
                self._reward(event, name, person_id, at, source, changes.tallies, changes)
            weight = engagement_weight(event, name, known.person.last_seen, at)
            if weight:
                zone = known_zone(
                    event.context.get("timezone"), event.traits.get("timezone"),
                    known.person.time_zone,
                ) or policy.time_zone  # fmt: skip
                hour = hour_of_week(at, ZoneInfo(zone))
                engagements.append((hour, weight, at))
                added = engaged_one(
                    known.person.engagement, hour, weight, at, policy.send_timing.half_life_s
                )
            person = observe(known.person, event, at, history=history, engagement=added)
            if _stored_facts(person) != _stored_facts(known.person):
                changes.people[person_id] = person
            if event.traits:  # the profile's traits and email are merged by SQL, not here
                changes.stale.add(person_id)
            if (
                event.type == "identify"
                and event.email
                and not event.email_verified
                and may_describe(event, person_id)
            ):
                self._confirm(event, person, at, source, changes)
            known = Facts(person, known.runs, known.last_ended, known.last_sent)
            if not rules.items:
                facts[person_id] = known
                continue
            actions = decide(rules, event, known, at, prior, tallies)
            facts[person_id] = self._fold(known, actions, at, changes) if actions else known
            for action in actions:
                if isinstance(action, EmitEvent) and depth[event.message_id] < MAX_EMIT_DEPTH:
                    emitted = emitted_event(action)
                    depth[emitted.message_id] = depth[event.message_id] + 1
                    prepared.fresh.append(emitted)
                    prepared.people.append(person_id)
                    prepared.received_at.append(at)
                    queue.append((emitted, person_id, at))
        for run_id in fired:
            loaded = runs.get(run_id)
            # The run as it stands after this group's events, which may have re-armed or ended it.
            current = facts[loaded.person_id] if loaded is not None else None
            run = next((r for r in current.runs if r.id == run_id), None) if current else None
            if (
                current is None
                or run is None
                or run.due is None
                or self.tick(run.due) > self.tick(now)
            ):
                continue  # ended, or re-armed for later since the wheel fired it
            actions = decide(self.rules, TimerFired(run_id, run.step), current, now, prior, tallies)
            facts[run.person_id] = self._fold(current, actions, now, changes)
            if not any(isinstance(a, ScheduleTimer) and a.run_id == run_id for a in actions):
                changes.timers[run_id] = None  # fired, and not armed again by this decision
        for name in due_sweeps:
            self._sweep(name, sweeps.get(name), source, facts, now, since, changes, oldest, prior)
        if engagements:
            changes.shop = engaged(shop, engagements, policy.send_timing.half_life_s)
        for link in prepared.links:  # merged (or re-linked) by the commit: read them again
            changes.stale.add(link.person_id)
            if link.merge_from is not None:
                changes.stale.add(link.merge_from)
        floor = min(now, min(prepared.received_at, default=now))  # no event here is older
        changes.known = {
            p: (f, min(oldest.get(p, floor), floor))
            for p, f in facts.items()
            if p not in changes.stale
        }
        return changes

    def _sweep(
        self,
        name: str,
        state: tuple[float, str | None] | None,
        source: Source,
        facts: dict[str, Facts],
        now: float,
        since: float | None,
        changes: Changes,
        oldest: dict[str, float],
        prior: Prior,
    ) -> None:
        """One chunk of a scheduled workflow's sweep over the persons who can get mail."""
        workflow = self.rules.by_name.get(name)
        if workflow is None or workflow.schedule_s is None or state is None:
            return
        next_at, cursor = state
        if cursor is None and self.tick(next_at) > self.tick(now):
            return  # not due yet
        persons = source.mailable_after(cursor, SWEEP_CHUNK)
        missing = {p for p in persons if p not in facts}
        facts.update(self._facts(source, missing, since, not changes.reset, oldest))
        for person_id in persons:
            known = facts[person_id]
            actions = decide(
                self.rules, Scheduled(name), known, now, prior, changes.tallies or NO_TALLIES
            )
            facts[person_id] = self._fold(known, actions, now, changes)
        if len(persons) == SWEEP_CHUNK:
            changes.schedules[name] = (next_at, persons[-1])  # more to sweep at the next tick
            return
        following = next_at + workflow.schedule_s
        while following <= now:  # periods missed while stopped are skipped, not caught up
            following += workflow.schedule_s
        changes.schedules[name] = (following, None)

    def _reward(
        self,
        event: Event,
        name: str,
        person_id: str,
        at: float,
        source: Source,
        tallies: dict[tuple[str, int, str], tuple[int, int]],
        changes: Changes,
    ) -> None:
        """Count a bandit mail's success: its first human click (goal ``clicked``), or an order
        attributed to it (``ordered``: the mail the person clicked or opened last, within the
        attribution windows)."""
        if name == "Email Clicked":
            properties = event.properties
            if properties.get("machine") or properties.get("workflow") not in self.bandit_workflows:
                return
            goal, mail = "clicked", properties.get("mail_id")
        else:
            if not self.orders_count:
                return
            goal, mail = "ordered", self._last_touch(source, person_id, at)
        if not isinstance(mail, str) or mail in changes.rewards:
            return
        found = source.bandit_mail(mail)
        if found is None:
            return
        workflow, step, variant, rewarded = found
        bandit = self.rules.bandits.get((workflow, step))
        if rewarded or bandit is None or bandit.goal != goal:
            return
        changes.rewards[mail] = at
        sends, successes = tallies.get((workflow, step, variant), (0, 0))
        tallies[(workflow, step, variant)] = (sends, successes + 1)

    def _last_touch(self, source: Source, person_id: str, at: float) -> str | None:
        """The mail an order at ``at`` is attributed to, as the dashboard's funnel does."""
        click_s, open_s = self.windows
        for mail, name, touched in source.touches(person_id, at - max(click_s, open_s)):
            window = click_s if name == "Email Clicked" else open_s
            if touched <= at <= touched + window:
                return mail
        return None

    def _prior(self, shop: Engagement) -> Prior:
        """The prior of ``shop``, made again only when the shop's histogram changed (on the
        writer's thread, between the engine's commits)."""
        made, prior = self.prior
        if made is not shop:
            prior = prior_of(shop)
            self.prior = (shop, prior)
        return prior

    def _confirm(
        self, event: Event, person: Person, at: float, source: Source, changes: Changes
    ) -> None:
        """Queue one double opt-in mail to a claimed address.

        At most one per address a day and ``mail.confirmations_per_ip`` per client address, so
        a browser cannot make rtserver mail anybody: nothing else goes to a claimed address
        until its link is followed (sends need a verified email).
        """
        address = event.email
        if address is None or address == person.email:
            return
        normal, client = address.strip().lower(), event.client_ip or "unknown"
        by_address, by_client = source.confirmations(normal, client, at - CONFIRM_WINDOW_S)
        by_address += sum(1 for a, _, _ in changes.confirmations if a == normal)
        by_client += sum(1 for _, c, _ in changes.confirmations if c == client)
        if by_address or by_client >= self.confirmations_per_ip:
            logger.info(
                "double opt-in for %s not sent: %s", person.id,
                "one was sent to that address today" if by_address else
                f"{by_client} caused by {client} today",
            )  # fmt: skip
            return
        changes.confirmations.append((normal, client, at))
        mail = "confirm-" + hashlib.sha256(event.message_id.encode()).hexdigest()[:24]
        changes.outbox.append(
            (mail, None, None, person.id, CONFIRM_WORKFLOW, "confirm", "", False, address,
             at, at, at, "{}")
        )  # fmt: skip

    def _fold(self, facts: Facts, actions: list[Action], at: float, changes: Changes) -> Facts:
        """Record ``actions`` in ``changes`` and return the facts as they now stand.

        They are what the store returns once this commits (new runs after the open ones, the
        latest end per workflow and key, the latest capped step), or the person is stale.
        """
        runs = {run.id: run for run in facts.runs}
        ended: dict[tuple[str, str], float] | None = None  # copied on the first end
        last_sent, person_id = facts.last_sent, facts.person.id
        for action in actions:
            if isinstance(action, UpdateRun | StartRun):
                runs[action.run.id] = action.run
                changes.runs[action.run.id] = (action.run, None, at)
                if type(action) is StartRun:
                    changes.started.add(action.run.id)
            elif isinstance(action, ScheduleTimer):
                changes.timers[action.run_id] = (action.step, action.due, action.person_id)
            elif isinstance(action, EndRun):
                run = action.run
                runs.pop(run.id, None)
                ended = dict(facts.last_ended) if ended is None else ended
                if ended.get((run.workflow, run.key), at) > at:
                    changes.stale.add(person_id)  # the clock went back: the store keeps the max
                ended[(run.workflow, run.key)] = at
                changes.runs[run.id] = (run, action.reason, at)
            elif isinstance(action, CancelTimer):
                changes.timers[action.run_id] = None
            else:
                # The run is open while it acts: started or known before this action.
                step = self._step_row(action, runs[action.run_id].workflow, at)
                changes.steps.append(step)
                if isinstance(action, SendMail):
                    changes.outbox.append(outbox_row(action, bool(step[6]), at))
                    if changes.tallies is not None:
                        self._count_send(action, at, changes.tallies, changes)
                elif isinstance(action, CallWebhook):
                    changes.deliveries.append(delivery_row(action, step[3], facts.person, at))
                if step[6]:
                    if last_sent is not None and last_sent > at:
                        changes.stale.add(person_id)  # as above
                    last_sent = at
        last_ended = facts.last_ended if ended is None else ended
        return Facts(facts.person, tuple(runs.values()), last_ended, last_sent)

    def _count_send(
        self,
        action: SendMail,
        at: float,
        tallies: dict[tuple[str, int, str], tuple[int, int]],
        changes: Changes,
    ) -> None:
        """A bandit step's mail: one more send of its arm."""
        if (action.workflow, action.step) not in self.rules.bandits:
            return
        key = (action.workflow, action.step, action.variant)
        changes.bandit_mails.append((mail_id(action.run_id, action.step), *key, at))
        sends, successes = tallies.get(key, (0, 0))
        tallies[key] = (sends + 1, successes)

    def _step_row(
        self, action: SendMail | SkipStep | EmitEvent | CallWebhook, workflow: str, at: float
    ) -> tuple[str, int, str, str, str, str, bool, float]:
        """The ``steps`` row recording a decided step (exactly once per run and step)."""
        capped = False
        detail: dict[str, Any]
        if isinstance(action, SendMail):
            rules = self.rules.by_name.get(workflow)
            capped = rules is not None and not rules.transactional
            kind, detail = "send", {"template": action.template, "variant": action.variant}
            if action.timing:
                detail["send_time"] = orjson.loads(action.timing)
        elif isinstance(action, SkipStep):
            kind, detail = "skip", {"reason": action.reason}
        elif isinstance(action, EmitEvent):
            kind, detail = "emit", {"event": action.name, "properties": dict(action.properties)}
        else:
            kind, detail = "webhook", {"url": action.url, "payload": dict(action.payload)}
        row = (action.run_id, action.step, action.person_id, workflow, kind)
        return (*row, orjson.dumps(detail).decode(), capped, at)

    def _facts(
        self,
        source: Source,
        persons: set[str],
        since: float | None,
        trusted: bool,
        oldest: dict[str, float],
    ) -> dict[str, Facts]:
        """Facts of ``persons``: from memory where the engine has them, else from the store.

        Reading each group's persons from SQLite (profile, open runs, last ends and sends,
        recent events) was the largest part of deciding (bench/RESULTS.md, ``bench.decide``).
        The pipeline is the only writer of facts, so what it committed is known here: the
        engine remembers the facts each group ends with, except where the commit changes
        them beyond the fold (traits, merges), and trusts that memory only while the store's
        :func:`~rtserver.store.database.Source` generation shows no other write (another process, an
        erasure). ``oldest`` receives a lower bound of each person's history times.
        """
        facts: dict[str, Facts] = {}
        missing: Iterable[str] = persons
        if trusted:
            found, missing = self.memory.recall(persons, since)
            for person_id, (known, low) in found.items():
                facts[person_id] = known
                oldest[person_id] = low
        if missing:
            facts.update(source.facts(missing, since))
            if since is not None:  # the store gave only events at or after ``since``
                oldest.update(dict.fromkeys(missing, since))
        return facts

    @property
    def history(self) -> dict[str, History]:
        """Recent events of the persons in memory, least recently decided first."""
        return {p: known.person.history for p, (known, _) in self.memory.entries.items()}

    def committed(self, changes: Changes, merged: Sequence[str] = ()) -> None:
        """Mirror committed timer changes in the wheel; wake the driver for an earlier one.

        Also remembers the facts of the persons just decided, as committed, and forgets those
        the commit changed otherwise (``changes.stale``; ``merged``: persons whose history was
        just merged with another's).
        """
        memory = self.memory
        if changes.reset:
            memory.clear()
        memory.forget(merged)
        memory.forget(changes.stale)
        memory.keep(changes.known)
        self.generation = changes.generation
        if changes.shop is not None:
            self.shop = changes.shop
        if changes.tallies is not None:
            self.tallies = changes.tallies
        before = self.wheel.next_deadline()
        for run_id, timer in changes.timers.items():
            if timer is None:
                if self.touched is not None:
                    self.touched.add(run_id)
                self.wheel.cancel(run_id)
            else:
                self.arm(run_id, timer[1])
        for name, (next_at, cursor) in changes.schedules.items():
            self.sweeps[name] = (next_at, cursor)
            if cursor is None:
                self.arm(SWEEP_PREFIX + name, next_at)
            else:
                self.wheel.insert(SWEEP_PREFIX + name, self.wheel.elapsed + 1)
        after = self.wheel.next_deadline()
        if after is not None and (before is None or after < before):
            self.wake.set()
