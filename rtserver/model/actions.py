"""What a decision answers: the actions on runs, timers, mail, events and webhooks. Pure.

:func:`rtserver.engine.decide.decide` takes a stored event or one of the inputs here
(:class:`TimerFired`, :class:`Scheduled`) and returns a list of :data:`Action`, small frozen
dataclasses that the engine turns into store changes committed in one transaction with the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtserver.model.facts import Run

__all__ = [
    "Action",
    "CallWebhook",
    "CancelTimer",
    "EmitEvent",
    "EndRun",
    "ScheduleTimer",
    "Scheduled",
    "SendMail",
    "SkipStep",
    "StartRun",
    "TimerFired",
    "UpdateRun",
]


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
    timing: str = ""
    """How its send time was chosen (JSON, see :attr:`Run.timing`); "": sent as decided."""


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
