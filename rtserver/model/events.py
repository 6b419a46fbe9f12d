"""Events: the Segment-spec message, parsed and checked. Pure, no I/O.

Every transport (WebSocket, Segment HTTP API, beacon) turns its input into :class:`Event` with
:func:`parse_event`; a bad event raises :class:`InvalidEvent` whose message is the lowercase reason
sent back to the client. Limits (depth, keys, string and event size) come from :class:`Limits` (the
``[ingest]`` settings) and are checked after decoding, on the decoded value, so the parser never
sees more than one frame or body (their sizes are capped before decoding).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import msgspec
import orjson

from rtserver.errors import InvalidEvent, PolicyViolation

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "EVENT_TYPES",
    "Event",
    "Limits",
    "Submit",
    "decode_json",
    "message_id_of",
    "parse_batch",
    "parse_event",
    "person_event",
    "sign_identity",
    "verify_identity",
]

EventType = Literal["track", "page", "screen", "identify", "alias", "group"]
Source = Literal["browser", "server"]
EVENT_TYPES: frozenset[str] = frozenset(("track", "page", "screen", "identify", "alias", "group"))
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 200
EMAIL_RE = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+")
MAX_EMAIL_CHARS = 254
MAX_ECHO_CHARS = 40


Submit = Callable[[Sequence["Event"], float], Awaitable["asyncio.Future[None]"]]
"""How accepted events reach the pipeline: ``await submit(events, received_at)`` queues them and
gives a future that resolves once they are committed (the ack), or fails (the nack)."""


class Limits(Protocol):
    """The size limits events are checked against (the ``[ingest]`` settings)."""

    @property
    def max_json_depth(self) -> int: ...
    @property
    def max_keys(self) -> int: ...
    @property
    def max_string_bytes(self) -> int: ...
    @property
    def max_event_bytes(self) -> int: ...
    @property
    def max_batch_events(self) -> int: ...


class Event(msgspec.Struct, frozen=True):
    """One accepted Segment message.

    A frozen ``msgspec.Struct`` rather than a frozen dataclass: one is built for every event
    received, and a frozen dataclass sets each of its 16 fields through ``object.__setattr__``
    (2.1 µs an event against 0.1).
    """

    type: EventType
    message_id: str
    anonymous_id: str | None
    user_id: str | None
    name: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    timestamp: str | None
    previous_id: str | None
    body: bytes
    """The message as received, re-encoded compactly: what the store keeps."""
    source: Source = "server"
    user_verified: bool = True
    """False for a browser ``userId`` until :func:`verify_identity` checks ``context.userHash``."""
    email: str | None = None
    """``traits.email``, lowercased."""
    email_verified: bool = True
    """False for a browser email until :func:`verify_identity` checks ``context.emailHash``."""
    client_ip: str | None = None
    """The sender's address, for per-address caps (double opt-in); never stored."""

    @property
    def known_user(self) -> str | None:
        """The user id this event may act for (verified or trusted), else None."""
        return self.user_id if self.user_verified else None


def decode_json(text: str | bytes) -> Any:
    """Decode JSON, turning every parser failure into :class:`InvalidEvent`."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        reason = exc.msg[:1].lower() + exc.msg[1:]  # orjson capitalises a few of its messages
        raise InvalidEvent(f"malformed json: {reason}") from None


def _too_long(text: str, limit_bytes: int) -> bool:
    """Whether ``text`` encodes to more than ``limit_bytes`` of UTF-8, without encoding ASCII."""
    if len(text) > limit_bytes:
        return True
    if text.isascii() or len(text) * 4 <= limit_bytes:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit_bytes


def _echo(value: Any) -> str:
    """A bad value for an error message, shortened: the message goes back to the client."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 1] + "…"


def _check_shape(value: dict[str, Any], limits: Limits, *, strings: bool = True) -> None:
    """Depth, keys per object and (when ``strings``) string length, walked without recursion.

    The walk goes one nesting level at a time and visits containers only; scalars are looked at
    in their container's loop (strings only when ``strings``), and nothing is allocated per item.
    """
    max_depth = limits.max_json_depth
    max_keys = limits.max_keys
    max_bytes = limits.max_string_bytes
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > max_depth:
            raise PolicyViolation(f"json nested deeper than {max_depth}")
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                if len(item) > max_keys:
                    raise InvalidEvent(f"object with more than {max_keys} keys")
                if strings:
                    for key in item:
                        if isinstance(key, str) and _too_long(key, max_bytes):
                            raise InvalidEvent(f"string longer than {max_bytes} bytes")
                children = item.values()
            else:
                children = item
            for child in children:
                if isinstance(child, dict | list):
                    below.append(child)
                elif strings and isinstance(child, str) and _too_long(child, max_bytes):
                    raise InvalidEvent(f"string longer than {max_bytes} bytes")
        level = below
        depth += 1


def _fits_at_a_glance(body: bytes, limits: Limits) -> bool:
    """Whether the compact JSON encoding ``body`` of a value proves it within every shape limit.

    Each container of the value writes one ``{`` or ``[`` outside any string, so the nesting
    depth is at most their count; each key writes one ``:``, so no object has more keys than
    there are colons; and a string's UTF-8 bytes appear in the encoding (escapes only lengthen
    them), so none is longer than the whole. Brackets and colons inside strings only make the
    counts larger: the test errs on the side of the full walk.
    """
    return (
        len(body) <= limits.max_string_bytes
        and body.count(b"{") + body.count(b"[") <= limits.max_json_depth
        and body.count(b":") <= limits.max_keys
    )


def _check_encoded(value: dict[str, Any], body: bytes, limits: Limits) -> None:
    """:func:`_check_shape` of ``value`` whose encoding is ``body``, skipped when it cannot fail."""
    if not _fits_at_a_glance(body, limits):
        # Strings need no look when the whole encoding is within the string limit.
        _check_shape(value, limits, strings=len(body) > limits.max_string_bytes)


def parse_batch(text: str, limits: Limits) -> list[Any]:
    """Decode one WebSocket frame ``{"batch": [...]}`` into its raw events.

    Raises:
        InvalidEvent: the frame is not a batch (nothing in it can be acked).
        PolicyViolation: too many events or too deep: the connection is closed.
    """
    frame = decode_json(text)
    if not isinstance(frame, dict) or not isinstance(frame.get("batch"), list):
        raise InvalidEvent('expected {"batch": [...]}')
    batch = cast(list[Any], frame["batch"])
    if len(batch) > limits.max_batch_events:
        raise PolicyViolation(f"batch of {len(batch)} events, limit {limits.max_batch_events}")
    return batch


def _opt_str(
    raw: dict[str, Any], key: str, limit: int = MAX_ID_CHARS, *, numeric: bool = False
) -> str | None:
    """``raw[key]`` as a non-empty string, or None when absent.

    ``numeric`` ids may be integers, as some Segment libraries send a ``userId``; they are kept
    as their decimal string. ``parse_event`` has encoded the message by now, so an integer fits
    in 64 bits (far from Python's 4300-digit limit on ``str()``).
    """
    value = raw.get(key)
    if value is None:
        return None
    if numeric and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidEvent(f"{key} must be a non-empty string of at most {limit} characters")
    return value


def _object(raw: dict[str, Any], key: str, label: str | None = None) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(f"{label or key} must be an object")
    return value


def _email(traits: dict[str, Any]) -> str | None:
    value = traits.get("email")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_EMAIL_CHARS or not EMAIL_RE.fullmatch(value):
        raise InvalidEvent("traits.email is not a valid email address")
    return value.lower()


def message_id_of(raw: Any) -> str | None:
    """The messageId of a raw event, if it has a usable one (for rejecting it by id)."""
    if isinstance(raw, dict):
        value = raw.get("messageId")
        if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
            return value
    return None


def parse_event(
    raw: Any,
    limits: Limits,
    *,
    source: Source = "server",
    default_type: str | None = None,
    context: dict[str, Any] | None = None,
    client_ip: str | None = None,
) -> Event:
    """Check one raw Segment message and build its :class:`Event`.

    ``default_type`` is the type implied by the route (``/v1/track``); ``context`` is a batch-level
    context merged under the event's own, as Segment does.

    Raises:
        InvalidEvent: with the lowercase reason.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("event must be an object")
    if context:
        # Merged before the checks below, so the limits hold for the message as stored.
        raw = {**raw, "context": {**context, **_object(raw, "context")}}
    try:
        body = orjson.dumps(raw)
    except orjson.JSONEncodeError:
        # Only reachable from Python callers: decoded JSON always re-encodes. orjson stops at
        # 255 levels, so a deeper value ends here: the limits are checked first all the same.
        _check_shape(raw, limits)
        raise InvalidEvent("event is not representable as json") from None
    # The encoding bounds the shape: the walk runs only for big or bracket-heavy events.
    _check_encoded(raw, body, limits)
    if len(body) > limits.max_event_bytes:
        raise InvalidEvent(f"event larger than {limits.max_event_bytes} bytes")
    # Each field is taken as it is when it is well formed (the common case, inline: this runs
    # for every event received); anything else goes through the helper that names the fault.
    get = raw.get
    kind = get("type", default_type)
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event type {_echo(kind)}")
    if default_type is not None and kind != default_type:
        raise InvalidEvent(f"type {kind!r} sent to the {default_type} endpoint")
    message_id = get("messageId")
    if type(message_id) is not str or not 0 < len(message_id) <= MAX_ID_CHARS:
        message_id = _opt_str(raw, "messageId")
        if message_id is None:
            raise InvalidEvent("missing messageId")
    anonymous_id = get("anonymousId")
    if anonymous_id is not None and (
        type(anonymous_id) is not str or not 0 < len(anonymous_id) <= MAX_ID_CHARS
    ):
        anonymous_id = _opt_str(raw, "anonymousId", numeric=True)
    user_id = get("userId")
    if user_id is not None and (type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_CHARS):
        user_id = _opt_str(raw, "userId", numeric=True)
    if anonymous_id is None and user_id is None:
        raise InvalidEvent("anonymousId or userId is required")
    name_key = "event" if kind == "track" else "name"
    name = get(name_key)
    if name is not None and (type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS):
        name = _opt_str(raw, name_key, MAX_NAME_CHARS)
    if kind == "track" and name is None:
        raise InvalidEvent("track needs an event name")
    previous_id = get("previousId")
    if previous_id is not None:
        previous_id = _opt_str(raw, "previousId", numeric=True)
    if kind == "alias" and (previous_id is None or user_id is None):
        raise InvalidEvent("alias needs previousId and userId")
    if kind == "group" and _opt_str(raw, "groupId", numeric=True) is None:
        raise InvalidEvent("group needs groupId")
    timestamp = get("timestamp")
    if timestamp is not None:
        try:
            datetime.fromisoformat(timestamp)
        except (TypeError, ValueError):
            raise InvalidEvent("timestamp must be an ISO-8601 string") from None
    event_context = get("context")
    if type(event_context) is not dict:
        event_context = _object(raw, "context")
    traits = get("traits")
    if type(traits) is not dict:
        traits = _object(raw, "traits")
    if kind == "identify" and not traits:
        traits = _object(event_context, "traits", "context.traits")
    properties = get("properties")
    if type(properties) is not dict:
        properties = _object(raw, "properties")
    trusted = source == "server"  # a browser's claims count only once verify_identity checks them
    # Positional, in the order of Event's fields: half the cost of keywords, once an event.
    return Event(
        cast(EventType, kind),
        message_id,
        anonymous_id,
        user_id,
        name,
        properties,
        traits,
        event_context,
        timestamp,
        previous_id,
        body,
        source,
        trusted,
        _email(traits) if traits else None,
        trusted,
        client_ip,
    )


def person_event(
    person_id: str,
    message_id: str,
    name: str | None,
    properties: dict[str, Any] | None = None,
    *,
    kind: EventType = "track",
    traits: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> Event:
    """A trusted event rtserver makes itself for a person id (``u:<userId>`` or ``a:<anonId>``):
    emitted by a workflow, or an open, click, unsubscribe or confirmation of a mail."""
    prefix, _, ident = person_id.partition(":")
    user = prefix == "u"
    raw: dict[str, Any] = {
        "type": kind,
        "messageId": message_id,
        "userId" if user else "anonymousId": ident,
        "context": {"library": {"name": "rtserver"}, **(context or {})},
    }
    if name is not None:
        raw["event"] = name
    if properties is not None:
        raw["properties"] = properties
    if traits is not None:
        raw["traits"] = traits
    email = (traits or {}).get("email")
    return Event(
        type=kind,
        message_id=message_id,
        anonymous_id=None if user else ident,
        user_id=ident if user else None,
        name=name,
        properties=properties or {},
        traits=traits or {},
        context=raw["context"],
        timestamp=None,
        previous_id=None,
        body=orjson.dumps(raw),
        email=email.lower() if isinstance(email, str) else None,
    )


def sign_identity(secret: str, value: str) -> str:
    """The hash the shop's backend computes: lowercase hex HMAC-SHA256(secret, value)."""
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def _hash_matches(secret: str, value: str, claimed: Any) -> bool:
    # compare_digest raises TypeError on non-ASCII str; a hex digest is ASCII anyway.
    if not isinstance(claimed, str) or not claimed.isascii():
        return False
    return hmac.compare_digest(sign_identity(secret, value), claimed.lower())


def verify_identity(event: Event, identity_secret: str) -> Event:
    """Mark a browser event's ``userId`` and email as verified only when their hashes match.

    Server-side (write key) events are trusted as they are. A browser event must carry its own
    ``anonymousId``: it only ever acts for that browser, or for a user it can prove.
    """
    if event.source == "server":
        return event
    if event.anonymous_id is None:
        raise InvalidEvent("browser events need an anonymousId")
    user_ok = event.user_id is not None and _hash_matches(
        identity_secret, event.user_id, event.context.get("userHash")
    )
    if event.type == "alias":
        if not user_ok:
            raise InvalidEvent("alias from a browser needs a valid context.userHash")
        if event.previous_id != event.anonymous_id:
            raise InvalidEvent("alias from a browser may only alias its own anonymousId")
    email_ok = event.email is not None and _hash_matches(
        identity_secret, event.email, event.context.get("emailHash")
    )
    if user_ok == event.user_verified and email_ok == event.email_verified:
        return event  # the common case: parse_event left both False and neither hash matched
    return _with_flags(event, user_ok, email_ok)


def _with_flags(event: Event, user_verified: bool, email_verified: bool) -> Event:
    """The event with these flags, every other field the same."""
    return msgspec.structs.replace(
        event, user_verified=user_verified, email_verified=email_verified
    )
