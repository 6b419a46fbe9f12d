"""The facts decisions read: a person, their open runs, what they did lately. Pure.

:func:`rtserver.engine.decide.decide` reads a person's :class:`Facts` (profile, open runs, the end
of their last runs, their last marketing mail) and answers with actions
(:mod:`rtserver.model.actions`). :func:`observe` folds one event into the profile (orders, opens
and clicks, time zone, verified email, recent history) before the decision, so conditions see the
event that is being decided.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from rtserver.model.events import Event
from rtserver.model.history import History
from rtserver.model.people import may_describe

__all__ = [
    "AWAITING_CONFIRMATION",
    "HISTORY_LIMIT",
    "MARKETING_CONSENT",
    "NAMES_BY_TYPE",
    "CONSENT_STATES",
    "Engagement",
    "Facts",
    "Person",
    "Run",
    "event_name",
    "known_zone",
    "observe",
]

AWAITING_CONFIRMATION = '{"waiting":"confirmation"}'
"""The ``timing`` of a run whose send waits for the person to confirm their address."""
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
    timing: str = ""
    """How the current send step's time was chosen (JSON), until it sends; "" otherwise."""


class Engagement(msgspec.Struct, frozen=True):
    """Human engagement by hour of the week (0: Monday 00:00, local time), decaying.

    Sparse: only the hours engaged in have a bin. A bin's weight at time ``t`` is
    ``bins[hour] * 0.5 ** ((t - at) / half_life)``, so adding an engagement touches one bin
    (:mod:`rtserver.engine.engagement` keeps it, and reads it).

    A frozen ``msgspec.Struct``, not a frozen dataclass: one is built for every engagement
    event, and a frozen dataclass's fields are set through ``object.__setattr__`` (0.6 µs a
    build against 0.1, bench.send_time --cost).
    """

    at: float = 0.0
    """The time the bins' weights are as of."""
    bins: Mapping[int, float] = msgspec.field(default_factory=dict)


NO_ENGAGEMENT = Engagement()


@dataclass(frozen=True, slots=True)
class Person:
    """What conditions may know of a person (``person.*`` in a condition)."""

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
    history: History = History()
    """Recent (event name, time), oldest first, for ``events_since``."""
    engagement: Engagement = NO_ENGAGEMENT
    """When they engage, by hour of their week (kept by the engine, not by :func:`observe`)."""
    claimed_email: str | None = None
    """The address a browser claimed and the person has not yet confirmed (double opt-in):
    their sends wait for the confirmation."""

    @property
    def confirming(self) -> bool:
        """Whether an address of theirs awaits its double opt-in (and none is verified)."""
        return self.email is None and self.claimed_email is not None

    def orders_since(self, t: float) -> int:
        """Orders completed at or after ``t``."""
        return sum(1 for at in self.order_times if at >= t)

    def events_since(self, name: str, t: float) -> int:
        """Events named ``name`` at or after ``t`` (within the recent history)."""
        return self.history.events_since(name, t)


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


@functools.lru_cache(maxsize=1024)
def _is_zone(name: str) -> bool:
    # Cached: browsers send their zone with every event, and an unknown name is looked up on
    # disk each time (ZoneInfo caches only the zones it found).
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: unreadable file
        return False
    return True


def known_zone(*candidates: Any) -> str | None:
    """The first candidate that names a time zone the system knows."""
    for name in candidates:
        if isinstance(name, str) and name and _is_zone(name):
            return name
    return None


CONSENT_STATES = ("none", "confirmed_opt_in", "soft_opt_in_customer", "unsubscribed")
"""A profile's marketing status; marketing mail needs one of the middle two."""
MARKETING_CONSENT = ("confirmed_opt_in", "soft_opt_in_customer")


def _consent(current: str, event: Event, name: str) -> str:
    """The marketing status after ``event``.

    Trusted sources (write key, rtserver's own mail events) set it; a browser only through an
    identify whose email the shop's backend verified (``emailHash``): a shopper may opt in their
    own address, never anybody else's.
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


def observe(
    person: Person,
    event: Event,
    now: float,
    *,
    history: bool = True,
    engagement: Engagement | None = None,
) -> Person:
    """The person after ``event``: last seen, traits, email, orders, opens, clicks, history.

    ``history=False`` leaves the recent events alone (nothing reads them: no condition uses
    ``events_since``). ``engagement``: the person's engagement after the event, as the engine
    keeps it (None: unchanged). Built in one call, not a chain of ``replace``: it runs for
    every event.
    """
    name = event_name(event)
    traits = person.traits
    describes = may_describe(event, person.id)
    if event.type == "identify" and event.traits and describes:
        traits = {**traits, **{k: v for k, v in event.traits.items() if k != "email"}}
    zone = known_zone(event.context.get("timezone"), event.traits.get("timezone"))
    orders, spent, last_order, order_times = (
        person.orders_count, person.total_spent, person.last_order_at, person.order_times
    )  # fmt: skip
    if name == ORDER_EVENT:
        orders, spent, last_order = orders + 1, spent + _amount(event.properties), now
        order_times = (*order_times, now)[-ORDER_TIMES_LIMIT:]
    opens, clicks = person.opens, person.clicks
    if name == "Email Opened" and not event.properties.get("machine"):
        opens += 1
    elif name == "Email Clicked" and not event.properties.get("machine"):
        clicks += 1
    return Person(
        id=person.id,
        email=event.email
        if event.email is not None and event.email_verified and describes
        else person.email,
        traits=traits,
        consent=_consent(person.consent, event, name) if describes else person.consent,
        first_seen=min(person.first_seen, now) if person.first_seen else now,
        last_seen=max(person.last_seen, now),
        orders_count=orders,
        total_spent=spent,
        last_order_at=last_order,
        opens=opens,
        clicks=clicks,
        time_zone=person.time_zone if zone is None else zone,
        order_times=order_times,
        history=person.history.appended(name, now, HISTORY_LIMIT) if history else person.history,
        engagement=person.engagement if engagement is None else engagement,
        claimed_email=event.email
        if event.email is not None and not event.email_verified and describes
        else person.claimed_email,
    )
