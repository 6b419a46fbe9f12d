"""Events: parsing Segment messages and batches, limits, and identity verification. Pure."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, strategies as st

from rtserver.config.schema import IngestConfig
from rtserver.errors import InvalidEvent, PolicyViolation, RtServerError
from rtserver.model.events import (
    EVENT_TYPES,
    Event,
    decode_json,
    message_id_of,
    parse_batch,
    parse_event,
    sign_identity,
    verify_identity,
)

LIMITS = IngestConfig()
SECRET = "idsecret_0123456789abcdefghijklmnopqrstuvwxyz"


def raw_event(kind: str = "track", **fields: Any) -> dict[str, Any]:
    """A valid Segment message; ``fields`` override (None removes a field)."""
    raw: dict[str, Any] = {
        "type": kind,
        "messageId": "m-1",
        "anonymousId": "anon-1",
        "timestamp": "2026-11-25T10:00:00Z",
    }
    if kind == "track":
        raw["event"] = "Product Viewed"
        raw["properties"] = {"product_id": "p1", "price": 12.5}
    if kind == "alias":
        raw["userId"] = "user-1"
        raw["previousId"] = "anon-1"
    if kind == "group":
        raw["groupId"] = "g-1"
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def rejected(raw: Any, **kwargs: Any) -> str:
    """The reason ``parse_event`` gives for ``raw``; it must read like a websockets error."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, LIMITS, **kwargs)
    return reason_of(caught.value)


def reason_of(exc: Exception) -> str:
    reason = str(exc)
    assert reason and reason[0] == reason[0].lower() and not reason.endswith("."), reason
    return reason


def browser(**fields: Any) -> Event:
    """A browser event (identify by default), parsed but not yet verified."""
    fields.setdefault("kind", "identify")
    return parse_event(raw_event(**fields), LIMITS, source="browser")


def nested(depth: int) -> Any:
    """``depth`` nested lists, built without recursion."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Decoding frames


def test_valid_track_event_is_parsed() -> None:
    """A track message becomes an Event with every field in place."""
    raw = raw_event(userId="user-1", context={"page": {"url": "https://s.example/"}})
    event = parse_event(raw, LIMITS)
    assert event.type == "track"
    assert event.message_id == "m-1"
    assert event.anonymous_id == "anon-1"
    assert event.user_id == "user-1"
    assert event.name == "Product Viewed"
    assert event.properties == {"product_id": "p1", "price": 12.5}
    assert event.context == {"page": {"url": "https://s.example/"}}
    assert event.traits == {}
    assert event.timestamp == "2026-11-25T10:00:00Z"
    assert event.previous_id is None
    assert event.source == "server"
    assert event.email is None
    assert orjson.loads(event.body) == raw


def test_every_event_type_is_accepted() -> None:
    """track, page, screen, identify, alias and group all parse."""
    for kind in sorted(EVENT_TYPES):
        assert parse_event(raw_event(kind), LIMITS).type == kind


def test_page_name_is_optional() -> None:
    """A page may carry a name; it is the event's name."""
    assert parse_event(raw_event("page"), LIMITS).name is None
    assert parse_event(raw_event("page", name="Home"), LIMITS).name == "Home"


def test_parse_batch_returns_raw_events() -> None:
    """A ``{"batch": [...]}`` frame gives its events, undecoded further."""
    events = [raw_event(), raw_event("page")]
    assert parse_batch(orjson.dumps({"batch": events}).decode(), LIMITS) == events
    assert parse_batch('{"batch": []}', LIMITS) == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "malformed json: unexpected end of data"),
        ("", "malformed json: input is a zero-length, empty document"),
        ("{'batch': []}", "malformed json: "),
        ('{"batch": [1,]}', "malformed json: trailing comma is not allowed"),
        ("NaN", "malformed json: "),
    ],
)
def test_malformed_json_is_invalid(text: str, reason: str) -> None:
    """Unparseable frames give 'malformed json: <lowercase parser reason>'."""
    with pytest.raises(InvalidEvent) as caught:
        parse_batch(text, LIMITS)
    assert reason_of(caught.value).startswith(reason)
    assert not isinstance(caught.value, PolicyViolation)


def test_decode_json_accepts_bytes_and_rejects_bad_utf8() -> None:
    """Bytes bodies decode; invalid UTF-8 is malformed json."""
    assert decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(InvalidEvent, match="^malformed json: "):
        decode_json(b'{"a": "\xff"}')


@pytest.mark.parametrize(
    "text", ["[]", '"batch"', "null", '{"events": []}', '{"batch": {}}', '{"batch": "x"}']
)
def test_frame_must_be_a_batch(text: str) -> None:
    """Anything but an object with a "batch" list is refused."""
    with pytest.raises(InvalidEvent) as caught:
        parse_batch(text, LIMITS)
    assert reason_of(caught.value) == 'expected {"batch": [...]}'


def test_batch_too_large_is_a_policy_violation() -> None:
    """More events than max_batch_events closes the connection; exactly the limit is fine."""
    n = LIMITS.max_batch_events
    assert len(parse_batch(orjson.dumps({"batch": [{}] * n}).decode(), LIMITS)) == n
    with pytest.raises(PolicyViolation) as caught:
        parse_batch(orjson.dumps({"batch": [{}] * (n + 1)}).decode(), LIMITS)
    assert reason_of(caught.value) == f"batch of {n + 1} events, limit {n}"


def test_deeply_nested_frame_is_invalid_not_recursion_error() -> None:
    """``'[' * 100000`` is refused by the parser, never with RecursionError."""
    with pytest.raises(InvalidEvent) as caught:
        parse_batch("[" * 100_000, LIMITS)
    assert reason_of(caught.value).startswith("malformed json: ")
    with pytest.raises(InvalidEvent):
        decode_json(b"{" * 100_000)


def test_huge_number_is_invalid() -> None:
    """A 5000-digit number is refused (it would be an infinite double)."""
    frame = '{"batch": [{"price": ' + "9" * 5000 + "}]}"
    with pytest.raises(InvalidEvent) as caught:
        parse_batch(frame, LIMITS)
    assert reason_of(caught.value).startswith("malformed json: number")


# Checking one event


@pytest.mark.parametrize("raw", [[], "track", 1, None, True])
def test_event_must_be_an_object(raw: Any) -> None:
    """A batch item that is not a JSON object is refused."""
    assert rejected(raw) == "event must be an object"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("purchase", "unknown event type 'purchase'"),
        (None, "unknown event type None"),
        (["track"], "unknown event type ['track']"),
        ({"a": 1}, "unknown event type {'a': 1}"),
        ("x" * 100, "unknown event type '" + "x" * 38 + "…"),
    ],
)
def test_unknown_event_type_is_invalid(kind: Any, reason: str) -> None:
    """A missing, unknown or non-string type is refused, echoing a short form of it."""
    raw = raw_event()
    raw.pop("type")
    if kind is not None:
        raw["type"] = kind
    assert rejected(raw) == reason


def test_default_type_comes_from_the_route() -> None:
    """``/v1/track`` implies type track; a different explicit type is refused."""
    raw = raw_event()
    raw.pop("type")
    assert parse_event(raw, LIMITS, default_type="track").type == "track"
    assert parse_event(raw_event(), LIMITS, default_type="track").type == "track"
    reason = rejected(raw_event("page"), default_type="track")
    assert reason == "type 'page' sent to the track endpoint"


@pytest.mark.parametrize(
    ("message_id", "reason"),
    [
        (None, "missing messageId"),
        ("", "messageId must be a non-empty string of at most 256 characters"),
        (42, "messageId must be a non-empty string of at most 256 characters"),
        (["m"], "messageId must be a non-empty string of at most 256 characters"),
        ("m" * 257, "messageId must be a non-empty string of at most 256 characters"),
    ],
)
def test_bad_message_id_is_invalid(message_id: Any, reason: str) -> None:
    """messageId is a non-empty string of at most 256 characters (acks echo it as is)."""
    raw = raw_event()
    raw.pop("messageId")
    if message_id is not None:
        raw["messageId"] = message_id
    assert rejected(raw) == reason


def test_longest_message_id_is_accepted() -> None:
    """A 256-character messageId is fine."""
    assert parse_event(raw_event(messageId="m" * 256), LIMITS).message_id == "m" * 256


def test_some_identity_is_required() -> None:
    """Without anonymousId and userId the event belongs to nobody."""
    assert rejected(raw_event(anonymousId=None)) == "anonymousId or userId is required"
    assert parse_event(raw_event(anonymousId=None, userId="u"), LIMITS).user_id == "u"


def test_integer_user_id_becomes_a_string() -> None:
    """Segment libraries may send numeric ids; they are kept as decimal strings."""
    event = parse_event(raw_event(userId=42, anonymousId=7), LIMITS)
    assert event.user_id == "42" and event.anonymous_id == "7"


@pytest.mark.parametrize("user_id", [True, 1.5, "", {"id": 1}, "u" * 257])
def test_bad_user_id_is_invalid(user_id: Any) -> None:
    """Booleans, floats, empty strings, objects and over-long strings are not user ids."""
    reason = rejected(raw_event(userId=user_id))
    assert reason == "userId must be a non-empty string of at most 256 characters"


@pytest.mark.parametrize("user_id", [2**64, -(2**70), pytest.param(10**5000, id="5000-digits")])
def test_huge_integer_user_id_is_invalid(user_id: int) -> None:
    """An integer id beyond 64 bits is refused, never a ValueError from str()."""
    assert rejected(raw_event(userId=user_id)) == "event is not representable as json"


def test_largest_integer_user_id_is_accepted() -> None:
    """Integers up to JSON's 64-bit range are ids."""
    assert parse_event(raw_event(userId=2**64 - 1), LIMITS).user_id == str(2**64 - 1)
    assert parse_event(raw_event(userId=-(2**63)), LIMITS).user_id == str(-(2**63))


def test_track_needs_an_event_name() -> None:
    """A track without ``event`` (or with a bad one) is refused."""
    assert rejected(raw_event(event=None)) == "track needs an event name"
    too_long = "event must be a non-empty string of at most 200 characters"
    assert rejected(raw_event(event="E" * 201)) == too_long
    assert rejected(raw_event(event=5)) == too_long


def test_alias_needs_previous_id_and_user_id() -> None:
    """An alias without previousId or userId is refused."""
    assert rejected(raw_event("alias", previousId=None)) == "alias needs previousId and userId"
    assert rejected(raw_event("alias", userId=None)) == "alias needs previousId and userId"
    assert parse_event(raw_event("alias"), LIMITS).previous_id == "anon-1"


def test_group_needs_group_id() -> None:
    """A group call without groupId is refused."""
    assert rejected(raw_event("group", groupId=None)) == "group needs groupId"
    assert parse_event(raw_event("group", groupId=12), LIMITS).type == "group"


@pytest.mark.parametrize("timestamp", ["yesterday", "2026-13-01T00:00:00Z", 1764064800, [], ""])
def test_bad_timestamp_is_invalid(timestamp: Any) -> None:
    """The timestamp, when present, must be an ISO-8601 string."""
    assert rejected(raw_event(timestamp=timestamp)) == "timestamp must be an ISO-8601 string"


def test_timestamp_is_optional_and_kept() -> None:
    """No timestamp is fine; a valid one is kept verbatim (timers use receive time)."""
    assert parse_event(raw_event(timestamp=None), LIMITS).timestamp is None
    stamp = "2026-11-25T10:00:00.123+01:00"
    assert parse_event(raw_event(timestamp=stamp), LIMITS).timestamp == stamp


@pytest.mark.parametrize("key", ["properties", "context", "traits"])
@pytest.mark.parametrize("value", [[], "x", 1, True])
def test_objects_must_be_objects(key: str, value: Any) -> None:
    """properties, context and traits must be JSON objects; null counts as absent."""
    assert rejected(raw_event(**{key: value})) == f"{key} must be an object"
    raw = raw_event()
    raw[key] = None
    assert getattr(parse_event(raw, LIMITS), key) == {}


def test_identify_traits_may_sit_in_context() -> None:
    """An identify without top-level traits takes ``context.traits``; it must be an object."""
    event = parse_event(raw_event("identify", context={"traits": {"plan": "pro"}}), LIMITS)
    assert event.traits == {"plan": "pro"}
    reason = rejected(raw_event("identify", context={"traits": "pro"}))
    assert reason == "context.traits must be an object"
    top = parse_event(raw_event("identify", traits={"a": 1}, context={"traits": {"b": 2}}), LIMITS)
    assert top.traits == {"a": 1}


def test_deep_nesting_is_a_policy_violation() -> None:
    """Nesting deeper than max_json_depth closes the connection; exactly the limit is fine."""
    depth = LIMITS.max_json_depth
    # event (1) > properties (2) > x: the nested lists take the remaining levels
    parse_event(raw_event(properties={"x": nested(depth - 2)}), LIMITS)
    with pytest.raises(PolicyViolation) as caught:
        parse_event(raw_event(properties={"x": nested(depth - 1)}), LIMITS)
    assert reason_of(caught.value) == f"json nested deeper than {depth}"
    with pytest.raises(PolicyViolation):
        parse_event(raw_event(context={"a": {"b": {"c": nested(depth)}}}), LIMITS)


def test_very_deep_python_value_is_no_recursion_error() -> None:
    """A 100000-deep value (decoded by a more lenient parser) is a PolicyViolation."""
    with pytest.raises(PolicyViolation):
        parse_event(raw_event(properties={"x": nested(100_000)}), LIMITS)


def test_long_string_is_invalid() -> None:
    """A string over max_string_bytes, as value or key, is refused; the limit itself is fine."""
    limit = LIMITS.max_string_bytes
    parse_event(raw_event(properties={"x": "a" * limit}), LIMITS)
    reason = f"string longer than {limit} bytes"
    assert rejected(raw_event(properties={"x": "a" * (limit + 1)})) == reason
    assert rejected(raw_event(properties={"k" * (limit + 1): 1})) == reason
    assert rejected(raw_event(event="a" * (limit + 1))) == reason


def test_string_limit_counts_utf8_bytes() -> None:
    """Multi-byte characters count by their UTF-8 size, not as one each."""
    limit = LIMITS.max_string_bytes
    parse_event(raw_event(properties={"x": "é" * (limit // 2)}), LIMITS)
    parse_event(raw_event(properties={"x": "é" * (limit // 4)}), LIMITS)
    assert rejected(raw_event(properties={"x": "é" * (limit // 2 + 1)})).startswith("string")
    assert rejected(raw_event(properties={"x": "😀" * (limit // 4 + 1)})).startswith("string")


def test_object_with_too_many_keys_is_invalid() -> None:
    """An object with more than max_keys keys is refused; exactly the limit is fine."""
    n = LIMITS.max_keys
    parse_event(raw_event(properties={f"k{i}": i for i in range(n)}), LIMITS)
    reason = rejected(raw_event(properties={f"k{i}": i for i in range(n + 1)}))
    assert reason == f"object with more than {n} keys"


def test_event_too_large_is_invalid() -> None:
    """An event whose encoding exceeds max_event_bytes is refused."""
    chunk = "x" * (LIMITS.max_string_bytes - 100)
    props = {f"p{i}": chunk for i in range(LIMITS.max_event_bytes // len(chunk) + 1)}
    assert (
        rejected(raw_event(properties=props)) == f"event larger than {LIMITS.max_event_bytes} bytes"
    )


def test_limits_hold_for_events_too_small_to_need_the_walk() -> None:
    """The limits count what the value holds, not what its text looks like: brackets and colons
    inside strings are fine (they only make the event take the full check); each limit still
    holds just past it, with an encoding shorter than the string limit or not."""
    tight = IngestConfig(max_json_depth=4, max_keys=6, max_string_bytes=200)  # raw_event: 6 keys
    text = "[{:" * 20
    event = parse_event(raw_event(properties={"a": text, "b": [text]}), tight)
    assert event.properties == {"a": text, "b": [text]}
    with pytest.raises(PolicyViolation):  # event > properties > list > list > list
        parse_event(raw_event(properties={"b": [[[1]]]}), tight)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw_event(properties={k: 1 for k in "abcdefg"}), tight)
    assert reason_of(caught.value) == "object with more than 6 keys"
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw_event(properties={"a": "é" * 101}), tight)
    assert reason_of(caught.value) == "string longer than 200 bytes"


def test_values_json_cannot_carry_are_invalid() -> None:
    """Python-only values (a set, a 70-bit int, a lone surrogate) are refused, not TypeError."""
    reason = "event is not representable as json"
    assert rejected(raw_event(properties={"s": {1, 2}})) == reason
    assert rejected(raw_event(properties={"n": 2**70})) == reason
    assert rejected(raw_event(properties={"n": 10**5000})) == reason
    assert rejected(raw_event(properties={"t": "\ud800"})) == reason
    assert rejected(raw_event(properties={1: "x"})) == reason


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "a@b",
        "two@at@s.example",
        "sp ace@s.example",
        "line\n@s.example",
        "nul\x00@s.example",
        "a@s.example\r\nBcc: x@y.example",
        "x" * 65 + "@s.example",
        "a@" + "b" * 250 + ".example",
        42,
        ["a@s.example"],
    ],
)
def test_invalid_email_is_refused(email: Any) -> None:
    """traits.email must look like one address: no spaces, controls, or a second @."""
    reason = rejected(raw_event("identify", traits={"email": email}))
    assert reason == "traits.email is not a valid email address"


def test_email_is_lowercased() -> None:
    """A valid traits.email is kept lowercased; an empty one counts as absent."""
    event = parse_event(raw_event("identify", traits={"email": "Ann@Shop.Example"}), LIMITS)
    assert event.email == "ann@shop.example"
    assert event.traits == {"email": "Ann@Shop.Example"}
    assert parse_event(raw_event("identify", traits={"email": ""}), LIMITS).email is None


def test_batch_context_merges_under_the_event_context() -> None:
    """A batch-level context fills in what the event's own context lacks; the event's wins."""
    batch = {"library": {"name": "analytics-python"}, "ip": "192.0.2.1"}
    raw = raw_event(context={"library": {"name": "rt.js"}, "locale": "en"})
    event = parse_event(raw, LIMITS, context=batch)
    expected = {"library": {"name": "rt.js"}, "ip": "192.0.2.1", "locale": "en"}
    assert event.context == expected
    assert orjson.loads(event.body)["context"] == expected
    assert raw["context"] == {"library": {"name": "rt.js"}, "locale": "en"}  # not modified
    assert parse_event(raw_event(), LIMITS, context=batch).context == batch


def test_batch_context_counts_toward_the_limits() -> None:
    """The merged message is what is checked: a batch context can't smuggle in too much."""
    half = LIMITS.max_keys // 2 + 1
    mine = {f"a{i}": 1 for i in range(half)}
    theirs = {f"b{i}": 1 for i in range(half)}
    reason = rejected(raw_event(context=mine), context=theirs)
    assert reason == f"object with more than {LIMITS.max_keys} keys"
    with pytest.raises(PolicyViolation):
        parse_event(raw_event(), LIMITS, context={"deep": nested(LIMITS.max_json_depth)})
    assert rejected(raw_event(context="x"), context={"ip": "192.0.2.1"}) == (
        "context must be an object"
    )


def test_message_id_of_finds_usable_ids() -> None:
    """The messageId of a raw event, for a reject, only when it is a usable string."""
    assert message_id_of({"messageId": "m-1"}) == "m-1"
    assert message_id_of({"messageId": 42}) is None
    assert message_id_of({"messageId": ""}) is None
    assert message_id_of({"messageId": "m" * 257}) is None
    assert message_id_of({}) is None
    assert message_id_of(["m-1"]) is None


def test_invalid_event_hierarchy() -> None:
    """PolicyViolation is an InvalidEvent, which is a ValueError and an RtServerError."""
    assert issubclass(PolicyViolation, InvalidEvent)
    assert issubclass(InvalidEvent, ValueError) and issubclass(InvalidEvent, RtServerError)


# Identity


def test_server_events_are_trusted() -> None:
    """Write-key events act for their userId and email as given, with no hashes."""
    event = parse_event(raw_event("identify", userId="u1", traits={"email": "a@s.example"}), LIMITS)
    assert event.user_verified and event.email_verified
    assert event.known_user == "u1"
    assert verify_identity(event, SECRET) is event


def test_browser_claims_are_unverified_until_checked() -> None:
    """parse_event alone never trusts a browser's userId or email."""
    event = browser(userId="u1", traits={"email": "a@s.example"})
    assert not event.user_verified and not event.email_verified
    assert event.known_user is None


def test_sign_identity_is_lowercase_hex_hmac_sha256() -> None:
    """The hash the shop's backend computes."""
    expected = hmac.new(SECRET.encode(), b"u1", hashlib.sha256).hexdigest()
    assert sign_identity(SECRET, "u1") == expected
    assert expected == expected.lower() and len(expected) == 64


def test_valid_user_hash_verifies_the_user() -> None:
    """A browser identify with the right userHash acts for that user."""
    event = browser(userId="u1", context={"userHash": sign_identity(SECRET, "u1")})
    checked = verify_identity(event, SECRET)
    assert checked.user_verified and checked.known_user == "u1"
    assert not checked.email_verified


def test_valid_email_hash_verifies_the_lowercased_email() -> None:
    """emailHash is computed over the lowercased address."""
    context = {"emailHash": sign_identity(SECRET, "ann@shop.example")}
    event = browser(traits={"email": "Ann@Shop.Example"}, context=context)
    checked = verify_identity(event, SECRET)
    assert checked.email_verified and checked.email == "ann@shop.example"
    assert not checked.user_verified
    wrong_case = {"emailHash": sign_identity(SECRET, "Ann@Shop.Example")}
    event = browser(traits={"email": "Ann@Shop.Example"}, context=wrong_case)
    assert not verify_identity(event, SECRET).email_verified


def test_uppercase_hex_hash_is_accepted() -> None:
    """The same digest in uppercase hex (some backends print it so) verifies too."""
    upper = sign_identity(SECRET, "u1").upper()
    checked = verify_identity(browser(userId="u1", context={"userHash": upper}), SECRET)
    assert checked.user_verified


@pytest.mark.parametrize(
    "claimed",
    [
        sign_identity(SECRET, "u2"),  # another user's hash
        sign_identity("another-secret-entirely-0123456789", "u1"),
        sign_identity(SECRET, "u1")[:32],  # truncated
        sign_identity(SECRET, "u1")[:-1],
        sign_identity(SECRET, "u1") + "0",
        "",
        "é" * 64,  # non-ASCII: compare_digest would raise TypeError on it
        sign_identity(SECRET, "u1")[:-1] + "é",
        42,
        None,
        [sign_identity(SECRET, "u1")],
        {"hash": sign_identity(SECRET, "u1")},
    ],
)
def test_bad_user_hash_leaves_user_unverified(claimed: Any) -> None:
    """Wrong, truncated, non-hex or non-string hashes never verify, and never raise."""
    context = {"userHash": claimed, "emailHash": claimed}
    event = browser(userId="u1", traits={"email": "u1@s.example"}, context=context)
    checked = verify_identity(event, SECRET)
    assert not checked.user_verified and not checked.email_verified
    assert checked.known_user is None
    assert checked.user_id == "u1" and checked.email == "u1@s.example"  # kept, as claims


def test_browser_event_needs_an_anonymous_id() -> None:
    """A browser event must carry its own anonymousId, even with a valid userHash."""
    event = browser(
        anonymousId=None, userId="u1", context={"userHash": sign_identity(SECRET, "u1")}
    )
    with pytest.raises(InvalidEvent) as caught:
        verify_identity(event, SECRET)
    assert reason_of(caught.value) == "browser events need an anonymousId"


def test_browser_alias_needs_a_valid_user_hash() -> None:
    """A browser alias without the user's hash is refused, not just left unverified."""
    for context in ({}, {"userHash": sign_identity(SECRET, "someone-else")}):
        event = browser(kind="alias", userId="u1", previousId="anon-1", context=context)
        with pytest.raises(InvalidEvent) as caught:
            verify_identity(event, SECRET)
        assert reason_of(caught.value) == "alias from a browser needs a valid context.userHash"


def test_browser_alias_of_another_anonymous_id_is_refused() -> None:
    """A browser may alias only its own anonymousId, never someone else's."""
    context = {"userHash": sign_identity(SECRET, "u1")}
    event = browser(kind="alias", userId="u1", previousId="anon-victim", context=context)
    with pytest.raises(InvalidEvent) as caught:
        verify_identity(event, SECRET)
    assert reason_of(caught.value) == "alias from a browser may only alias its own anonymousId"
    own = browser(kind="alias", userId="u1", previousId="anon-1", context=context)
    assert verify_identity(own, SECRET).known_user == "u1"


def test_hash_comparison_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both hashes are compared in constant time, via hmac.compare_digest."""
    calls: list[tuple[Any, Any]] = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("rtserver.model.events.hmac.compare_digest", spy)
    context = {
        "userHash": sign_identity(SECRET, "u1"),
        "emailHash": sign_identity(SECRET, "a@s.example"),
    }
    checked = verify_identity(
        browser(userId="u1", traits={"email": "a@s.example"}, context=context), SECRET
    )
    assert checked.user_verified and checked.email_verified
    assert calls == [
        (context["userHash"], context["userHash"]),
        (context["emailHash"], context["emailHash"]),
    ]


def test_verified_event_keeps_every_other_field() -> None:
    """Verifying copies the event with its two flags set, every other field unchanged; an event
    whose flags do not change is returned as it is."""
    context = {"userHash": sign_identity(SECRET, "u1")}
    event = browser(userId="u1", traits={"email": "a@s.example"}, context=context)
    checked = verify_identity(event, SECRET)
    assert checked == msgspec.structs.replace(event, user_verified=True, email_verified=False)
    unverified = browser(userId="u1")
    assert verify_identity(unverified, SECRET) is unverified
    trusted = msgspec.structs.replace(unverified, user_verified=True, email_verified=True)
    assert verify_identity(trusted, SECRET) == unverified  # a browser's flags are recomputed


# Properties: nothing but InvalidEvent, whatever arrives


def json_of(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nested lists and objects over ``scalars``."""
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )


json_values = json_of(st.none() | st.booleans() | st.integers() | st.floats() | st.text())
"""Any Python value of JSON's types: unbounded ints, NaN, lone surrogates included."""
encodable = json_of(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]))
)
"""What orjson can encode, so what a frame can carry."""
segment_keys = st.sampled_from(
    [
        "type",
        "messageId",
        "anonymousId",
        "userId",
        "event",
        "name",
        "previousId",
        "groupId",
        "timestamp",
        "properties",
        "traits",
        "context",
    ]
)
event_like = st.dictionaries(
    segment_keys,
    st.sampled_from(sorted(EVENT_TYPES)) | st.text(max_size=8) | st.integers(0, 99) | encodable,
    max_size=10,
)

valid_events = st.sampled_from(
    [raw_event(kind, userId="user-1", previousId="anon-1") for kind in sorted(EVENT_TYPES)]
)
mutated_events = st.builds(
    lambda base, changes: {**base, **changes},
    valid_events,
    st.dictionaries(segment_keys, json_values, max_size=3),
)
"""A valid event with a few fields replaced by arbitrary values: reaches every check."""


@given(json_values | event_like | mutated_events, st.sampled_from(["server", "browser"]))
def test_parse_event_raises_only_invalid_event(raw: Any, source: Any) -> None:
    """For any JSON value, parse_event returns an Event or raises InvalidEvent."""
    try:
        event = parse_event(raw, LIMITS, source=source)
    except InvalidEvent:
        return
    try:
        verify_identity(event, SECRET)
    except InvalidEvent:
        pass


@given(st.text())
def test_parse_batch_raises_only_invalid_event(text: str) -> None:
    """For any text, parse_batch returns a list or raises InvalidEvent."""
    try:
        assert isinstance(parse_batch(text, LIMITS), list)
    except InvalidEvent:
        pass


@given(st.lists(encodable | event_like, max_size=3).map(lambda b: orjson.dumps({"batch": b})))
def test_frames_of_arbitrary_events_raise_only_invalid_event(frame: bytes) -> None:
    """A well-formed frame of arbitrary items: each item parses or is refused with a reason."""
    for raw in parse_batch(frame.decode(), LIMITS):
        try:
            parse_event(raw, LIMITS, source="browser")
        except InvalidEvent as exc:
            assert str(exc)


def shape_violations(value: Any, limits: IngestConfig) -> set[str]:
    """Every limit ``value`` breaks, by a plain recursive walk (the specification)."""
    found: set[str] = set()

    def walk(item: Any, depth: int) -> None:
        if isinstance(item, str):
            if len(item.encode("utf-8", "surrogatepass")) > limits.max_string_bytes:
                found.add(f"string longer than {limits.max_string_bytes} bytes")
            return
        if not isinstance(item, dict | list):
            return
        if depth > limits.max_json_depth:
            found.add(f"json nested deeper than {limits.max_json_depth}")
            return
        if isinstance(item, dict):
            if len(item) > limits.max_keys:
                found.add(f"object with more than {limits.max_keys} keys")
            for key, child in item.items():
                walk(key, depth)
                walk(child, depth + 1)
        else:
            for child in item:
                walk(child, depth + 1)

    walk(value, 1)
    return found


SMALL_LIMITS = IngestConfig(max_json_depth=4, max_keys=5, max_string_bytes=12)


@given(st.dictionaries(st.text(max_size=14), encodable, max_size=5))
def test_limits_are_exactly_the_specification(properties: dict[str, Any]) -> None:
    """With small limits, an event is refused for its shape exactly when a plain walk finds a
    limit broken, and with one of the reasons it finds."""
    raw = {"type": "track", "messageId": "m", "anonymousId": "a", "event": "e", "properties": {}}
    raw["properties"] = properties
    expected = shape_violations(raw, SMALL_LIMITS)
    if not expected:
        assert parse_event(raw, SMALL_LIMITS).properties == properties
        return
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, SMALL_LIMITS)
    assert str(caught.value) in expected
    assert isinstance(caught.value, PolicyViolation) == str(caught.value).startswith("json nested")
