"""The domain model: events, people, the facts decisions read and the actions they return. Pure.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.model.actions import (
    Action,
    CallWebhook,
    CancelTimer,
    EmitEvent,
    EndRun,
    Scheduled,
    ScheduleTimer,
    SendMail,
    SkipStep,
    StartRun,
    TimerFired,
    UpdateRun,
)
from rtserver.model.events import (
    Event,
    Limits,
    Source,
    Submit,
    decode_json,
    message_id_of,
    parse_batch,
    parse_event,
    person_event,
    verify_identity,
)
from rtserver.model.facts import (
    AWAITING_CONFIRMATION,
    HISTORY_LIMIT,
    MARKETING_CONSENT,
    NAMES_BY_TYPE,
    Engagement,
    Facts,
    Person,
    Run,
    event_name,
    known_zone,
    observe,
)
from rtserver.model.history import History
from rtserver.model.people import Link, email_hash, ids_to_look_up, may_describe, resolve_people
from rtserver.model.products import (
    AVAILABILITY,
    BUYABLE,
    Product,
    RowError,
    product_from,
    web_url,
)

__all__ = [
    "AVAILABILITY",
    "Action",
    "BUYABLE",
    "CallWebhook",
    "CancelTimer",
    "EmitEvent",
    "EndRun",
    "Engagement",
    "Event",
    "Facts",
    "HISTORY_LIMIT",
    "History",
    "Limits",
    "Link",
    "AWAITING_CONFIRMATION",
    "MARKETING_CONSENT",
    "NAMES_BY_TYPE",
    "Person",
    "Product",
    "RowError",
    "Run",
    "ScheduleTimer",
    "Scheduled",
    "SendMail",
    "SkipStep",
    "Source",
    "StartRun",
    "Submit",
    "TimerFired",
    "UpdateRun",
    "decode_json",
    "email_hash",
    "event_name",
    "ids_to_look_up",
    "known_zone",
    "may_describe",
    "message_id_of",
    "observe",
    "parse_batch",
    "parse_event",
    "person_event",
    "product_from",
    "resolve_people",
    "verify_identity",
    "web_url",
]
