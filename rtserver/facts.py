"""The facts decisions read and the actions they return: plain frozen dataclasses. Pure.

:func:`rtserver.workflows.decide` reads a person's :class:`Facts` (profile, open runs, the end
of their last runs, their last marketing mail) and answers with a list of :data:`Action`; the
caller commits those and folds them back into the facts. :func:`observe` folds one event into
the profile (orders, opens and clicks, time zone, verified email, recent history) before the
decision, so conditions see the event that is being decided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rtserver.events import Event

__all__ = [
    "HISTORY_LIMIT",
    "NAMES_BY_TYPE",
    "Action",
    "CallWebhook",
    "CancelTimer",
    "EmitEvent",
    "EndRun",
    "Facts",
    "Person",
    "Run",
    "ScheduleTimer",
    "Scheduled",
    "SendMail",
    "SkipStep",
    "StartRun",
    "TimerFired",
    "UpdateRun",
    "event_name",
    "known_zone",
    "observe",
]

ORDER_EVENT = "Order Completed"
HISTORY_LIMIT = 200
ORDER_TIMES_LIMIT = 100
NAMES_BY_TYPE = {
    "page": "Page Viewed",
    "screen": "Screen Viewed",
    "identify": "Identify",
    "alias": "Alias",
    "group": "Group",
}
"""The name of a non-track event (what triggers and waits match)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One person's way through one workflow (one per person and run key at a time)."""

    id: str
    workflow: str
    person_id: str
    key: str
    started: float
    step: int
    """Index of the step the run waits at."""
    step_kind: str
    """That step's kind when the run reached it: a config change is detected against it."""
    variant: str = ""
    """The variants chosen so far, ``"2:B"`` (step 2, variant B), comma-separated."""
    holdout: bool = False
    wait_met: bool = False
    sends: int = 0
    due: float | None = None


@dataclass(frozen=True, slots=True)
class Person:
    """What conditions may know of a person (``person.*`` in DESIGN.md)."""

    id: str
    email: str | None = None
    traits: Mapping[str, Any] = field(default_factory=dict)
    consent: str = "none"
    first_seen: float = 0.0
    last_seen: float = 0.0
    orders_count: int = 0
    total_spent: float = 0.0
    last_order_at: float | None = None
    opens: int = 0
    clicks: int = 0
    time_zone: str | None = None
    order_times: tuple[float, ...] = ()
    history: tuple[tuple[str, float], ...] = ()
    """Recent (event name, time), oldest first, for ``events_since``."""

    def orders_since(self, t: float) -> int:
        """Orders completed at or after ``t``."""
        return sum(1 for at in self.order_times if at >= t)

    def events_since(self, name: str, t: float) -> int:
        """Events named ``name`` at or after ``t`` (within the recent history)."""
        return sum(1 for n, at in self.history if n == name and at >= t)


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything ``decide`` may read about one person."""

    person: Person
    runs: tuple[Run, ...] = ()
    """The person's open runs."""
    last_ended: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(workflow, run key) → when the last such run ended, for ``reentry``."""
    last_sent: float | None = None
    """When the person's last marketing mail was decided, for the frequency cap."""


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A run's timer came due."""

    run_id: str
    step: int


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A scheduled workflow's sweep reached this person (the fallback trigger)."""

    workflow: str


@dataclass(frozen=True, slots=True)
class StartRun:
    run: Run


@dataclass(frozen=True, slots=True)
class UpdateRun:
    run: Run


@dataclass(frozen=True, slots=True)
class EndRun:
    run: Run
    reason: str


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    """Arm (or re-arm) the run's one timer."""

    run_id: str
    step: int
    due: float
    person_id: str


@dataclass(frozen=True, slots=True)
class CancelTimer:
    run_id: str


@dataclass(frozen=True, slots=True)
class SendMail:
    run_id: str
    step: int
    person_id: str
    workflow: str
    template: str
    variant: str


@dataclass(frozen=True, slots=True)
class SkipStep:
    """A send that was decided against, with the reason (holdout, frequency cap, no email)."""

    run_id: str
    step: int
    person_id: str
    workflow: str
    reason: str


@dataclass(frozen=True, slots=True)
class EmitEvent:
    run_id: str
    step: int
    person_id: str
    name: str
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CallWebhook:
    run_id: str
    step: int
    person_id: str
    url: str
    payload: Mapping[str, Any]


Action = (
    StartRun
    | UpdateRun
    | EndRun
    | ScheduleTimer
    | CancelTimer
    | SendMail
    | SkipStep
    | EmitEvent
    | CallWebhook
)


def event_name(event: Event) -> str:
    """The name triggers and waits match: a track's event name, else one per type."""
    if event.type == "track" and event.name:
        return event.name
    return NAMES_BY_TYPE.get(event.type, event.type)


def _amount(properties: Mapping[str, Any]) -> float:
    """The order's amount: the first number of ``revenue``, ``total``, ``value``; else 0."""
    for key in ("revenue", "total", "value"):
        value = properties.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return 0.0


def known_zone(*candidates: Any) -> str | None:
    """The first candidate that names a time zone the system knows."""
    for name in candidates:
        if isinstance(name, str) and name:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: unreadable file
                continue
            return name
    return None


CONSENT_STATES = ("none", "confirmed_opt_in", "soft_opt_in_customer", "unsubscribed")
"""A profile's marketing status (RELIABILITY.md G11); marketing mail needs one of the middle two."""
MARKETING_CONSENT = ("confirmed_opt_in", "soft_opt_in_customer")


def _consent(current: str, event: Event, name: str) -> str:
    """The marketing status after ``event``.

    Trusted sources (write key, rtserver's own mail events) set it; a browser only through an
    identify whose email the shop's backend verified (``emailHash``): a shopper may opt in their
    own address, never anybody else's (RELIABILITY.md G12).
    """
    trusted = event.source == "server"
    if event.type == "identify" and (trusted or (event.email and event.email_verified)):
        declared = event.traits.get("consent")
        if declared in CONSENT_STATES:
            return str(declared)
    if not trusted:
        return current
    if name == "Email Unsubscribed":
        return "unsubscribed"
    if name == "Email Confirmed":
        return "confirmed_opt_in"
    if name == ORDER_EVENT and current == "none":
        return "soft_opt_in_customer"  # a customer may get mail about similar products
    return current


def observe(person: Person, event: Event, now: float) -> Person:
    """The person after ``event``: last seen, traits, email, orders, opens, clicks, history."""
    name = event_name(event)
    changes: dict[str, Any] = {
        "last_seen": max(person.last_seen, now),
        "first_seen": min(person.first_seen, now) if person.first_seen else now,
        "history": (*person.history, (name, now))[-HISTORY_LIMIT:],
    }
    if event.type == "identify" and event.traits:
        traits = {k: v for k, v in event.traits.items() if k != "email"}
        changes["traits"] = {**person.traits, **traits}
    if event.email is not None and event.email_verified:
        changes["email"] = event.email
    zone = known_zone(event.context.get("timezone"), event.traits.get("timezone"))
    if zone is not None:
        changes["time_zone"] = zone
    if name == ORDER_EVENT:
        changes.update(
            orders_count=person.orders_count + 1,
            total_spent=person.total_spent + _amount(event.properties),
            last_order_at=now,
            order_times=(*person.order_times, now)[-ORDER_TIMES_LIMIT:],
        )
    consent = _consent(person.consent, event, name)
    if consent != person.consent:
        changes["consent"] = consent
    if name == "Email Opened" and not event.properties.get("machine"):
        changes["opens"] = person.opens + 1
    elif name == "Email Clicked" and not event.properties.get("machine"):
        changes["clicks"] = person.clicks + 1
    return replace(person, **changes)
