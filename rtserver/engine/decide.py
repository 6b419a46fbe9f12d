"""Decisions: ``decide(rules, input, facts, now) -> list[Action]``. Pure: no I/O, no clock.

The input is a stored event of one person or a fired timer of one run; the facts are that
person's profile, open runs and mail history as the store knows them; ``now`` is the server's
receive (or firing) time. The answer is a list of small actions (start, update or end a run,
arm or cancel its timer, send a mail, skip a step with a reason, emit an event, call a webhook)
that the caller commits in one transaction with the event that caused them. The facts are
defined in :mod:`rtserver.model.facts`, the actions in :mod:`rtserver.model.actions`.

Semantics: exits first (``exit_on``), then waits (``wait_until`` met, ``wait_inactive``
re-armed by activity), then triggers (one open run per person and ``run_key``; ``reentry`` counted
from the end of the last run). A run walks its steps until it reaches a wait; a timer moves it
on. Runs whose current step changed kind in the config end with the reason. A paused workflow
starts no run and holds its runs' due steps, looking again every ``PAUSED_RECHECK_S``.

A send to a person whose only address awaits its double opt-in waits at that step for the
confirmation, up to ``mail.confirm_wait`` (a timer, so it outlives restarts; the run's
``timing`` says ``AWAITING_CONFIRMATION``). It is decided when the address is verified, so the
send's checks and ``mail.max_age`` count from then; if the wait runs out, the run ends saying so.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from rtserver.engine.bandit import NO_TALLIES, Tallies, tallies_of, thompson
from rtserver.engine.definitions import WAIT_KINDS, Step, Workflow, Workflows, step_value
from rtserver.engine.engagement import (
    UNIFORM,
    Prior,
    allowed_moments,
    choose,
    describe,
    send_moments,
)
from rtserver.model import (
    AWAITING_CONFIRMATION,
    MARKETING_CONSENT,
    Action,
    CallWebhook,
    CancelTimer,
    EmitEvent,
    EndRun,
    Event,
    Facts,
    Run,
    Scheduled,
    ScheduleTimer,
    SendMail,
    SkipStep,
    StartRun,
    TimerFired,
    UpdateRun,
    event_name,
    known_zone,
)

__all__ = [
    "decide",
    "quiet_until",
]

EMAIL_EVENT_PREFIX = "Email "
EVENT_WAITS = frozenset({"wait_until", "wait_inactive"})
"""The steps an event can move (the others wait for their timer)."""
IMPLICIT_SIGNALS = frozenset({"Time On Page", "Scroll Depth Reached"})
"""Engagement signals of the snippet: not activity for ``wait_inactive``."""
PAUSED_RECHECK_S = 3600.0
"""A due step of a paused workflow waits this long, then looks again."""


@functools.lru_cache(maxsize=4096)  # each event of a person in an A/B step asks again
def _bucket(*parts: str, size: int) -> int:
    """A deterministic number in ``range(size)`` for these parts (same person, same answer)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


def _event_names(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "event": event.name,
        "name": event.name,
        "properties": event.properties,
        "traits": event.traits,
        "context": event.context,
        "messageId": event.message_id,
        "anonymousId": event.anonymous_id,
        "userId": event.user_id,
        "timestamp": event.timestamp,
        "previousId": event.previous_id,
    }


EVENT_FIELDS = {
    "type": "type", "event": "name", "name": "name", "properties": "properties",
    "traits": "traits", "context": "context", "messageId": "message_id",
    "anonymousId": "anonymous_id", "userId": "user_id", "timestamp": "timestamp",
    "previousId": "previous_id",
}  # fmt: skip
"""The names of :func:`_event_names`, as attributes of the event."""


@functools.lru_cache(maxsize=256)
def _parts(path: str) -> tuple[str | None, tuple[str, ...]]:
    first, *rest = path.split(".")
    return EVENT_FIELDS.get(first), tuple(rest)


def _lookup(event: Event, path: str) -> str:
    """The run key of ``event`` at ``path`` (``properties.cart_id``); "" when absent."""
    attribute, rest = _parts(path)  # as _event_names(event) would give, without building it
    value: Any = None if attribute is None else getattr(event, attribute)
    for part in rest:
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None or isinstance(value, dict | list) else str(value)


def _key(workflow: Workflow, event: Event) -> str:
    """The run key ``event`` has for ``workflow``; "" (the person) without a ``run_key``."""
    return _lookup(event, workflow.run_key) if workflow.run_key else ""


def _json(detail: Mapping[str, Any]) -> str:
    return orjson.dumps(detail).decode()


def _zone(name: str | None, fallback: str) -> ZoneInfo:
    return ZoneInfo(known_zone(name, fallback) or "UTC")


def _duration(seconds: float) -> str:
    """``seconds`` in the largest whole unit that fits: "7d", "36h", "90m", "45s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def quiet_until(now: float, window: tuple[int, int] | None, zone: ZoneInfo) -> float | None:
    """If ``now`` falls in the quiet window (local minutes), when it ends; else None."""
    if window is None:
        return None
    start, end = window
    local = datetime.fromtimestamp(now, zone)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start <= end else (minute >= start or minute < end)
    if not inside:
        return None
    ends = local.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
    if ends <= local:
        ends = datetime.combine(local.date() + timedelta(days=1), ends.timetz())
    return ends.timestamp()


class _Decider:
    """One decision: walks runs, collects actions."""

    def __init__(self, rules: Workflows, facts: Facts, now: float, prior: Prior, tallies: Tallies):
        self.rules = rules
        self.tallies = tallies
        self.person = facts.person
        self.now = now
        self.prior = prior
        self.runs = {run.id: run for run in facts.runs}
        self.last_ended = facts.last_ended
        """Copied on the first end (most decisions end nothing)."""
        self.last_sent = facts.last_sent
        self.actions: list[Action] = []
        self._event: dict[str, Any] | None = None
        """The names of the one event decided, built for its first condition."""

    def names(self, run: Run | None, event: Event | None) -> dict[str, Any]:
        names: dict[str, Any] = {"person": self.person, "now": self.now}
        if run is not None:
            names["run"] = run
        if event is not None:
            if self._event is None:
                self._event = _event_names(event)
            names["event"] = self._event
        return names

    def update(self, run: Run) -> Run:
        self.runs[run.id] = run
        self.actions.append(UpdateRun(run))
        return run

    def end(self, run: Run, reason: str) -> None:
        if run.due is not None:
            self.actions.append(CancelTimer(run.id))
        self.actions.append(EndRun(replace(run, due=None), reason))
        self.runs.pop(run.id, None)
        self.last_ended = {**self.last_ended, (run.workflow, run.key): self.now}

    def wait(self, run: Run, step: Step, due: float, wait_met: bool | None = None) -> None:
        moved = Run(
            run.id, run.workflow, run.person_id, run.key, run.started, step.index, step.kind,
            run.variant, run.holdout, run.wait_met if wait_met is None else wait_met, run.sends,
            due, run.timing,
        )  # fmt: skip
        run = self.update(moved)  # built, not replace()d: it runs on every re-arm
        self.actions.append(ScheduleTimer(run.id, step.index, due, run.person_id))

    def current(self, workflow: Workflow | None, run: Run) -> Step | None:
        """The step the run waits at, unless the config changed under it (then it ends)."""
        if workflow is None:
            self.end(run, "workflow removed from the config")
            return None
        if run.step >= len(workflow.steps):
            self.end(run, f"config changed: step {run.step + 1} was removed")
            return None
        if workflow.steps[run.step].kind != run.step_kind:
            self.end(run, f"config changed: step {run.step + 1} is no longer a {run.step_kind}")
            return None
        return workflow.steps[run.step]

    def variant(self, workflow: Workflow, run: Run, step: Step) -> tuple[Run, str]:
        if len(step.variants) == 1:
            return run, step.variants[0].name
        if step.selection == "bandit":
            return self.bandit(workflow, run, step)
        bounds = list(itertools.accumulate(v.weight for v in step.variants))
        pick = _bucket(run.person_id, workflow.name, str(step.index), size=bounds[-1])
        v = step.variants[bisect.bisect_right(bounds, pick)]  # a weight of 0 is never picked
        return self.assign(run, step, v.name)

    def assign(self, run: Run, step: Step, name: str) -> tuple[Run, str]:
        """The run with the variant ``name`` of ``step`` recorded (``"2:B"``)."""
        label = f"{step.number}:{name}"
        if label not in run.variant.split(","):
            run = replace(run, variant=",".join(filter(None, (run.variant, label))))
        return run, name

    def bandit(self, workflow: Workflow, run: Run, step: Step) -> tuple[Run, str]:
        """The run's arm of a bandit step: the one it was given (sticky), else a Thompson draw
        from the posteriors as they stand, seeded by the person and the step."""
        prefix = f"{step.number}:"
        for label in run.variant.split(","):
            if label.startswith(prefix):
                return run, label[len(prefix) :]
        names = [v.name for v in step.variants]
        arm, _ = thompson(
            tallies_of(self.tallies, workflow.name, step.index, names),
            step.floor,
            (run.person_id, workflow.name, str(step.index)),
        )
        return self.assign(run, step, names[arm])

    def walk(
        self, workflow: Workflow, run: Run, index: int, event: Event | None, timed: bool = False
    ) -> None:
        """Run steps from ``index`` until a wait, the end, or an exit.

        ``timed``: the send at ``index`` waited for its time already (it is not chosen again).
        """
        first = index
        while index < len(workflow.steps):
            step = workflow.steps[index]
            if step.exit_if is not None and step.exit_if(self.names(run, event)):
                self.end(run, f"exit_if at step {step.number}")
                return
            if step.when is not None and not step.when(self.names(run, event)):
                index += 1
                continue
            run, variant = self.variant(workflow, run, step)
            value = step_value(step, variant)
            if step.kind in WAIT_KINDS:
                seconds = step.timeout if step.kind == "wait_until" else value
                assert seconds is not None  # definitions require a timeout on wait_until
                met = False if step.kind == "wait_until" else run.wait_met
                self.wait(run, step, self.now + seconds, wait_met=met)
                return
            if step.kind == "send":
                if step.send_time == "optimal" and not (timed and index == first):
                    chosen = self.send_time(workflow, run, step)
                    if chosen is None:
                        return  # the run waits for the chosen moment
                    run = chosen
                sent = self.send(workflow, run, step, value, variant)
                if sent is None:
                    return  # deferred past quiet hours: the run waits at this step
                run = sent
            elif step.kind == "emit":
                self.actions.append(
                    EmitEvent(run.id, step.index, run.person_id, value, dict(step.properties))
                )
            else:
                payload = {"workflow": workflow.name, "run": run.id, "step": step.number}
                payload.update(step.properties)
                self.actions.append(CallWebhook(run.id, step.index, run.person_id, value, payload))
            index += 1
        self.end(run, "completed")

    def send(
        self, workflow: Workflow, run: Run, step: Step, template: str, variant: str
    ) -> Run | None:
        def skip(reason: str) -> Run:
            self.actions.append(SkipStep(run.id, step.index, run.person_id, workflow.name, reason))
            return replace(run, timing="") if run.timing else run

        if run.holdout:
            return skip("holdout")
        if not self.person.email:
            wait_s = self.rules.policy.confirm_wait_s
            if self.person.confirming and wait_s > 0:
                self.wait(replace(run, timing=AWAITING_CONFIRMATION), step, self.now + wait_s)
                return None  # decided again once the address is confirmed
            return skip("no verified email")
        policy = self.rules.policy
        if not workflow.transactional:
            if self.person.consent not in MARKETING_CONSENT:
                return skip("no marketing consent")
            # A cap of 0 is off, even when the clock went back behind the last send.
            cap = policy.frequency_cap_s
            if cap > 0 and self.last_sent is not None and self.now - self.last_sent < cap:
                return skip("frequency cap")
            zone = _zone(self.person.time_zone, policy.time_zone)
            resume = quiet_until(self.now, policy.quiet_hours, zone)
            if resume is not None:
                self.wait(run, step, resume)
                return None
            self.last_sent = self.now
        self.actions.append(
            SendMail(
                run.id, step.index, run.person_id, workflow.name, template, variant, run.timing
            )
        )
        return replace(run, sends=run.sends + 1, timing="")

    def send_time(self, workflow: Workflow, run: Run, step: Step) -> Run | None:
        """Time an optimal send: arm the run's timer for the person's best moment within the
        step's ``within`` (None: the run waits for it), or send now, with the choice noted in
        the run's ``timing``. A ``control`` share goes now, to measure the lift against.

        The draws depend on the run and the step only, so a replay chooses the same.
        """
        policy = self.rules.policy
        timing = policy.send_timing
        if _bucket(run.id, str(step.index), "control", size=10_000) < timing.control * 10_000:
            return replace(run, timing=_json({"arm": "control"}))
        zone = _zone(self.person.time_zone, policy.time_zone)
        moments = send_moments(self.now, step.within, zone)
        quiet = policy.quiet_hours
        if quiet is not None and not workflow.transactional:
            end = self.now + step.within
            moments = allowed_moments(moments, end, lambda t: quiet_until(t, quiet, zone))
            if not moments:  # send() holds it until the quiet hours end, after the window
                return replace(run, timing=_json({"arm": "optimal", "reason": "window quiet"}))
        choice = choose(
            moments, self.person.engagement, self.prior, self.now, timing,
            (run.id, str(step.index)),
        )  # fmt: skip
        run = replace(run, timing=_json(describe(choice, {"arm": "optimal"})))
        if choice.at <= self.now:
            return run
        self.wait(run, step, choice.at)
        return None

    def fire(self, fired: TimerFired) -> None:
        run = self.runs.get(fired.run_id)
        if run is None or run.step != fired.step:
            return  # stale: the run ended or moved on since the timer was armed
        workflow = self.rules.by_name.get(run.workflow)
        step = self.current(workflow, run)
        if workflow is None or step is None:
            return
        if workflow.paused:
            self.wait(run, step, self.now + PAUSED_RECHECK_S)
            return
        run = replace(run, due=None)
        if run.timing == AWAITING_CONFIRMATION:
            if not self.person.email:
                wait = _duration(self.rules.policy.confirm_wait_s)
                reason = f"address not confirmed within {wait}"
                self.actions.append(
                    SkipStep(run.id, step.index, run.person_id, workflow.name, reason)
                )
                self.end(replace(run, timing=""), reason)
                return
            run = replace(run, timing="")  # verified some other way: decided now
            self.walk(workflow, run, step.index, None)
            return
        if step.kind == "send":  # a send held back by quiet hours, or timed
            self.walk(workflow, run, step.index, None, timed=True)
        else:
            self.walk(workflow, run, step.index + 1, None)

    def activity(self, event: Event, name: str, step: Step) -> bool:
        if step.activity is not None:
            return name in step.activity
        return (
            event.type in ("track", "page", "screen")
            and not name.startswith(EMAIL_EVENT_PREFIX)
            and name not in IMPLICIT_SIGNALS
        )

    def event(self, event: Event) -> None:
        name = event_name(event)
        if name.startswith(EMAIL_EVENT_PREFIX) and event.properties.get("machine") is True:
            return  # a link scanner's click or a proxy's open: recorded, but no engagement
        rules = self.rules
        for run in list(self.runs.values()):  # exits
            workflow = rules.by_name.get(run.workflow)
            if workflow is None or name not in workflow.exit_on:
                continue
            key = _key(workflow, event)
            # An exit event with the run_key property ends only that key's run (and a run
            # that started without one: it stands for all of the person's keys).
            if not key or not run.key or key == run.key:
                self.end(run, f"exit on {name}")
        for run in list(self.runs.values()):  # waits
            step = self.current(rules.by_name.get(run.workflow), run)
            if step is None:
                continue  # ended
            workflow = rules.by_name[run.workflow]
            if run.timing == AWAITING_CONFIRMATION:
                if self.person.email and not workflow.paused:  # confirmed: decided now
                    self.actions.append(CancelTimer(run.id))
                    self.walk(workflow, replace(run, timing="", due=None), step.index, event)
                continue
            if step.kind not in EVENT_WAITS:
                continue  # waits for time only
            run, variant = self.variant(workflow, run, step)
            if step.kind == "wait_until" and name == step_value(step, variant):
                if step.where is None or step.where(self.names(run, event)):
                    self.met(workflow, run, step, event)
            elif step.kind == "wait_inactive" and (
                self.activity(event, name, step)
                or (name == workflow.trigger and _key(workflow, event) == run.key)
            ):  # a trigger of an open run counts as its activity, whatever `activity` lists
                self.wait(run, step, self.now + step_value(step, variant))
        for workflow in rules.by_trigger.get(name, ()):  # triggers
            self.trigger(workflow, event)

    def met(self, workflow: Workflow, run: Run, step: Step, event: Event) -> None:
        """The event a ``wait_until`` waits for came: move on (or, paused, hold it as met)."""
        if workflow.paused:
            self.wait(run, step, self.now + PAUSED_RECHECK_S, wait_met=True)
            return
        self.actions.append(CancelTimer(run.id))
        self.walk(workflow, replace(run, wait_met=True, due=None), step.index + 1, event)

    def trigger(self, workflow: Workflow, event: Event) -> None:
        if workflow.paused:
            return
        key = _key(workflow, event)
        if self.may_start(workflow, key) and (
            workflow.where is None or workflow.where(self.names(None, event))
        ):
            self.start(workflow, key, event.message_id, event)

    def scheduled(self, scheduled: Scheduled) -> None:
        """The fallback: a scheduled sweep starts a run where ``where`` holds for the person."""
        workflow = self.rules.by_name.get(scheduled.workflow)
        if workflow is None or workflow.paused or workflow.schedule_s is None:
            return
        if self.may_start(workflow, "") and (
            workflow.where is None or workflow.where(self.names(None, None))
        ):
            self.start(workflow, "", f"schedule:{self.now!r}", None)

    def may_start(self, workflow: Workflow, key: str) -> bool:
        """No open run for this person and key, and re-entry allows a new one."""
        for r in self.runs.values():
            if r.workflow == workflow.name and r.key == key:
                return False  # already open: the trigger counted as activity
        ended = self.last_ended.get((workflow.name, key))
        # "always" (0) allows a new run even when the clock went back behind the last end.
        reentry = workflow.reentry_s
        return ended is None or reentry == 0 or self.now - ended >= reentry

    def start(self, workflow: Workflow, key: str, seed: str, event: Event | None) -> None:
        person = self.person.id
        run_id = hashlib.sha256("\x00".join((workflow.name, person, key, seed)).encode())
        holdout = workflow.holdout > 0 and _bucket(person, workflow.name, "holdout", size=100) < (
            workflow.holdout
        )
        first = workflow.steps[0]
        run = Run(
            run_id.hexdigest()[:24], workflow.name, person, key, self.now, 0, first.kind,
            holdout=holdout,
        )  # fmt: skip
        self.runs[run.id] = run
        self.actions.append(StartRun(run))
        self.walk(workflow, run, 0, event)


def decide(
    rules: Workflows,
    input: Event | TimerFired | Scheduled,
    facts: Facts,
    now: float,
    prior: Prior = UNIFORM,
    tallies: Tallies = NO_TALLIES,
) -> list[Action]:
    """The actions ``input`` causes for the person of ``facts`` at ``now``.

    ``prior``: the shop's engagement by hour, for the sends timed ``optimal``; ``tallies``:
    the sends and successes of each arm of the bandit steps.
    """
    if isinstance(input, Event) and not facts.runs and event_name(input) not in rules.by_trigger:
        return []  # no run to exit, wait or re-arm, and no trigger: nothing can happen
    decider = _Decider(rules, facts, now, prior, tallies)
    if isinstance(input, TimerFired):
        decider.fire(input)
    elif isinstance(input, Scheduled):
        decider.scheduled(input)
    else:
        decider.event(input)
    return decider.actions
