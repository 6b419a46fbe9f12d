"""Standard Webhooks signatures: round trips, interoperability with the reference
library both ways, secret rotation, several signatures in one header, the freshness window on
the injected clock, and every malformed header or tampered body refused with its reason."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings, strategies as st
from standardwebhooks import Webhook
from starlette.datastructures import Headers

from rtserver.errors import InvalidSignature
from rtserver.hooks.signatures import TOLERANCE_S, new_secret, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PREVIOUS = new_secret(bytes(range(32)))
STRANGER = new_secret(b"\x07" * 32)
NOW = 1_800_000_000
WEBHOOK_ID = "msg_2LqX0hZ3aWv"
BODY = b'{"type":"bounce","email":"ann@example.com","status":"5.1.1","reason":"user unknown"}'


def signed(
    body: bytes = BODY, *, secret: str = SECRET, timestamp: int = NOW, webhook_id: str = WEBHOOK_ID
) -> dict[str, str]:
    return sign(secret, webhook_id, timestamp, body)


def v1_of(headers: Mapping[str, str]) -> str:
    """The ``v1,<base64>`` item of a header our sign() made."""
    return headers["webhook-signature"]


def test_round_trip_returns_the_webhook_id() -> None:
    """sign() makes the three headers and verify() accepts them, returning the webhook-id."""
    headers = signed()
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == WEBHOOK_ID
    assert headers["webhook-timestamp"] == str(NOW)
    version, _, value = headers["webhook-signature"].partition(",")
    assert version == "v1"
    assert len(base64.b64decode(value, validate=True)) == 32  # HMAC-SHA256
    assert verify([SECRET], headers, BODY, NOW) == WEBHOOK_ID


def test_sign_is_deterministic_and_depends_on_every_input() -> None:
    """The same inputs sign alike; another secret, id, timestamp or body signs differently."""
    base = v1_of(signed())
    assert v1_of(signed()) == base
    others = {
        v1_of(signed(secret=PREVIOUS)),
        v1_of(signed(webhook_id=WEBHOOK_ID + "x")),
        v1_of(signed(timestamp=NOW + 1)),
        v1_of(signed(BODY + b" ")),
    }
    assert base not in others
    assert len(others) == 4


def test_starlette_headers_are_matched_case_insensitively() -> None:
    """Headers as Starlette gives them verify whatever the case the sender wrote them in."""
    raw = signed()
    headers = Headers(
        headers={
            "Webhook-Id": raw["webhook-id"],
            "WEBHOOK-TIMESTAMP": raw["webhook-timestamp"],
            "Webhook-Signature": raw["webhook-signature"],
            "Content-Type": "application/json",
        }
    )
    assert verify([SECRET], headers, BODY, NOW) == WEBHOOK_ID


@pytest.mark.parametrize(
    "body",
    [BODY, '{"note": "caf\u00e9 \u2603 \U0001f600"}'.encode(), b""],
    ids=["json", "non-ascii", "empty"],
)
def test_a_reference_signature_verifies(body: bytes) -> None:
    """A signature made by the reference library (standardwebhooks) is accepted."""
    signature = Webhook(SECRET).sign(WEBHOOK_ID, datetime.fromtimestamp(NOW, UTC), body.decode())
    headers = {
        "webhook-id": WEBHOOK_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": signature,
    }
    assert signature == v1_of(signed(body))
    assert verify([SECRET], headers, body, NOW) == WEBHOOK_ID


def test_the_reference_verify_accepts_our_signature() -> None:
    """The reference library's verify() accepts the headers our sign() made.

    The reference checks the timestamp on the wall clock, so this one test signs at the
    current time; every other test uses a fixed NOW."""
    now = int(time.time())
    headers = sign(SECRET, WEBHOOK_ID, now, BODY)
    assert Webhook(SECRET).verify(BODY, headers) == orjson.loads(BODY)
    assert Webhook(PREVIOUS).verify(BODY, sign(PREVIOUS, WEBHOOK_ID, now, BODY)) is not None


@pytest.mark.parametrize(
    ("signer", "accepted"),
    [(SECRET, True), (PREVIOUS, True), (STRANGER, False)],
    ids=["current-secret", "previous-secret", "unknown-secret"],
)
def test_rotation_accepts_either_secret(signer: str, accepted: bool) -> None:
    """During a rotation a signature by either secret verifies; by any other, it is refused."""
    headers = signed(secret=signer)
    if accepted:
        assert verify([SECRET, PREVIOUS], headers, BODY, NOW) == WEBHOOK_ID
        assert verify(iter([PREVIOUS, SECRET]), headers, BODY, NOW) == WEBHOOK_ID
    else:
        with pytest.raises(InvalidSignature, match="^no valid signature$"):
            verify([SECRET, PREVIOUS], headers, BODY, NOW)


def test_no_secret_verifies_nothing() -> None:
    """With no secret configured nothing is authentic."""
    with pytest.raises(InvalidSignature, match="^no valid signature$"):
        verify([], signed(), BODY, NOW)


def _with_signature(value: str) -> dict[str, str]:
    return {**signed(), "webhook-signature": value}


GOOD = v1_of(signed()).partition(",")[2]
"""The base64 of the valid signature of BODY at NOW."""


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (f"v2,{GOOD} v1,!!not*base64!! v1,{GOOD}", True),
        (f"v1,{base64.b64encode(b'x' * 32).decode()} v1,{GOOD}", True),
        (f"v1a,{GOOD}   v1,{GOOD}", True),
        (f"v1 v1, v1,{GOOD}", True),
        (f"v2,{GOOD} v1a,{GOOD} V1,{GOOD} {GOOD}", False),
        (f"v1,{GOOD[:-4]}", False),
        (f"v1,{GOOD[:-1]}", False),
        ("v1,!!not*base64!!", False),
        (f"v1,{GOOD}x", False),
    ],
    ids=[
        "v2-garbage-then-good-v1",
        "wrong-v1-then-good-v1",
        "lookalike-version-then-good-v1",
        "empty-v1-items-then-good-v1",
        "good-value-only-under-other-versions",
        "truncated-signature",
        "unpadded-signature",
        "garbage-only",
        "trailing-junk",
    ],
)
def test_several_signatures_in_one_header(header: str, accepted: bool) -> None:
    """Any valid v1 signature among space-separated items verifies; other versions and
    undecodable values are skipped, never a crash."""
    headers = _with_signature(header)
    if accepted:
        assert verify([SECRET], headers, BODY, NOW) == WEBHOOK_ID
    else:
        with pytest.raises(InvalidSignature, match="^no valid signature$"):
            verify([SECRET], headers, BODY, NOW)


@pytest.mark.parametrize(
    "offset",
    [0, TOLERANCE_S, -TOLERANCE_S, 0.5, TOLERANCE_S - 0.001],
    ids=["now", "exactly-tolerance-old", "exactly-tolerance-ahead", "fraction", "just-inside"],
)
def test_timestamps_within_tolerance_pass(offset: float) -> None:
    """A timestamp at most TOLERANCE_S (300 s) from now, either way, passes."""
    assert TOLERANCE_S == 300
    assert verify([SECRET], signed(), BODY, NOW + offset) == WEBHOOK_ID


@pytest.mark.parametrize(
    "offset",
    [TOLERANCE_S + 1, -(TOLERANCE_S + 1), TOLERANCE_S + 0.001, 86_400, -NOW],
    ids=["stale", "future", "a-millisecond-too-old", "a-day-old", "at-epoch-clock"],
)
def test_timestamps_past_tolerance_fail(offset: float) -> None:
    """A timestamp more than the tolerance from now, either way, is refused naming it."""
    with pytest.raises(InvalidSignature, match=r"^webhook-timestamp more than 300 s from now$"):
        verify([SECRET], signed(), BODY, NOW + offset)


@pytest.mark.parametrize(
    ("tolerance", "offset", "accepted", "shown"),
    [
        (10, 10, True, ""),
        (10, -10, True, ""),
        (10, 11, False, "10"),
        (10, -11, False, "10"),
        (2.5, 2.5, True, ""),
        (2.5, 3, False, "2.5"),
        (3600, 3600, True, ""),
        (3600, 3601, False, "3600"),
    ],
    ids=[
        "10s-stale-edge",
        "10s-future-edge",
        "10s-stale",
        "10s-future",
        "fractional-edge",
        "fractional-past",
        "hour-edge",
        "hour-past",
    ],
)
def test_custom_tolerance_is_respected(
    tolerance: float, offset: float, accepted: bool, shown: str
) -> None:
    """tolerance_s replaces the default window and is named in the refusal."""
    if accepted:
        assert verify([SECRET], signed(), BODY, NOW + offset, tolerance_s=tolerance) == WEBHOOK_ID
    else:
        with pytest.raises(InvalidSignature, match=rf"^webhook-timestamp more than {shown} s "):
            verify([SECRET], signed(), BODY, NOW + offset, tolerance_s=tolerance)


@pytest.mark.parametrize(
    "name", ["webhook-id", "webhook-timestamp", "webhook-signature"], ids=["id", "ts", "sig"]
)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_a_missing_header_is_refused(name: str, how: str) -> None:
    """Without any one of the three headers (or with it empty) the request is refused."""
    headers = signed()
    if how == "absent":
        del headers[name]
    else:
        headers[name] = ""
    with pytest.raises(InvalidSignature, match="^missing webhook-id, webhook-timestamp or "):
        verify([SECRET], headers, BODY, NOW)


@pytest.mark.parametrize(
    "stamp",
    [
        "abc",
        "-1799999999",
        "+1800000000",
        "1800000000.0",
        "1.8e9",
        " 1800000000",
        "1800000000 ",
        "0x6B49D200",
        "1" * 13,
        "0001800000000",
        "9" * 40,
    ],
    ids=[
        "letters",
        "negative",
        "plus-sign",
        "decimal-point",
        "exponent",
        "leading-space",
        "trailing-space",
        "hex",
        "13-digits",
        "13-digits-zero-padded",
        "40-digits",
    ],
)
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp: str) -> None:
    """Only up to 12 ASCII digits are a timestamp; anything else is refused, never parsed."""
    headers = {**signed(), "webhook-timestamp": stamp}
    with pytest.raises(InvalidSignature, match="^webhook-timestamp must be Unix seconds$"):
        verify([SECRET], headers, BODY, NOW)


def test_twelve_digits_are_parsed_then_judged_on_freshness() -> None:
    """A 12-digit timestamp is a number, refused for being far from now, not for its form."""
    headers = {**signed(), "webhook-timestamp": "9" * 12}
    with pytest.raises(InvalidSignature, match="more than 300 s from now"):
        verify([SECRET], headers, BODY, NOW)


@pytest.mark.parametrize(
    "stamp", [b"180000000\xb2", b"\xb9"], ids=["trailing-superscript-two", "superscript-one"]
)
def test_superscript_digits_are_not_unix_seconds(stamp: bytes) -> None:
    """A timestamp with superscript digits (latin-1 header bytes) is refused, not a crash."""
    raw = [(k.encode(), v.encode()) for k, v in signed().items() if k != "webhook-timestamp"]
    headers = Headers(raw=[*raw, (b"webhook-timestamp", stamp)])
    assert headers["webhook-timestamp"].isdigit()  # what Starlette hands to verify()
    with pytest.raises(InvalidSignature, match="Unix seconds"):
        verify([SECRET], headers, BODY, NOW)


def test_a_flipped_byte_is_refused() -> None:
    """Changing one byte of the body breaks the signature."""
    tampered = bytearray(BODY)
    tampered[BODY.index(b"5.1.1")] = ord("4")
    with pytest.raises(InvalidSignature, match="^no valid signature$"):
        verify([SECRET], signed(), bytes(tampered), NOW)


def test_reserialised_json_is_refused() -> None:
    """The same data re-serialised (other spacing, other key order) no longer verifies:
    the signature covers the raw bytes."""
    data = orjson.loads(BODY)
    spaced = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    reordered = orjson.dumps(dict(reversed(data.items())))
    sorted_keys = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    for body in (spaced, reordered, sorted_keys):
        assert body != BODY and orjson.loads(body) == data
        with pytest.raises(InvalidSignature, match="^no valid signature$"):
            verify([SECRET], signed(), body, NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("webhook-id", WEBHOOK_ID + "2"), ("webhook-timestamp", str(NOW + 1))],
    ids=["other-id", "other-timestamp"],
)
def test_the_id_and_timestamp_are_signed_too(field: str, value: str) -> None:
    """A signature does not carry over to another webhook-id or timestamp."""
    headers = {**signed(), field: value}
    with pytest.raises(InvalidSignature, match="^no valid signature$"):
        verify([SECRET], headers, BODY, NOW)


@pytest.mark.parametrize(
    "body",
    [b"\xff" + BODY, BODY[:-1] + b"\xc3", "café".encode("latin-1"), b"\xed\xa0\x80"],
    ids=["leading-0xff", "truncated-sequence", "latin-1", "encoded-surrogate"],
)
def test_a_body_that_is_not_utf8_is_refused(body: bytes) -> None:
    """A body that does not decode as UTF-8 is refused with that reason, never a crash."""
    with pytest.raises(InvalidSignature, match="^body is not UTF-8$"):
        verify([SECRET], signed(), body, NOW)


@settings(deadline=None, max_examples=150)
@given(body=st.text(), webhook_id=st.text(min_size=1))
def test_arbitrary_bodies_and_ids_round_trip(body: str, webhook_id: str) -> None:
    """Any text body and any non-empty id sign and verify."""
    raw = body.encode()
    headers = sign(SECRET, webhook_id, NOW, raw)
    assert verify([STRANGER, SECRET], headers, raw, NOW) == webhook_id


@settings(deadline=None, max_examples=150)
@given(body=st.text(min_size=1), data=st.data())
def test_any_single_byte_change_is_refused(body: str, data: st.DataObject) -> None:
    """Replacing any one byte of a signed body with any other byte is refused."""
    raw = body.encode()
    headers = sign(SECRET, WEBHOOK_ID, NOW, raw)
    at = data.draw(st.integers(0, len(raw) - 1), label="at")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
    tampered = raw[:at] + bytes([byte]) + raw[at + 1 :]
    with pytest.raises(InvalidSignature):
        verify([SECRET], headers, tampered, NOW)


@pytest.mark.parametrize(
    "random_bytes",
    [bytes(32), bytes(range(32)), b"\xff" * 32, bytes(range(100, 124))],
    ids=["zeros", "counting", "all-ones", "24-bytes"],
)
def test_new_secret_is_whsec_base64_the_reference_accepts(random_bytes: bytes) -> None:
    """new_secret() gives whsec_ + base64 of the bytes, usable by the reference library."""
    secret = new_secret(random_bytes)
    assert secret.startswith("whsec_")
    assert base64.b64decode(secret.removeprefix("whsec_"), validate=True) == random_bytes
    reference = Webhook(secret)
    signature = reference.sign(WEBHOOK_ID, datetime.fromtimestamp(NOW, UTC), BODY.decode())
    headers = {**signed(secret=secret), "webhook-signature": signature}
    assert verify([secret], headers, BODY, NOW) == WEBHOOK_ID
    with pytest.raises(InvalidSignature):
        verify([SECRET], headers, BODY, NOW)


def test_new_secrets_differ_with_their_bytes() -> None:
    """Different random bytes give different secrets."""
    assert new_secret(bytes(32)) != new_secret(b"\x01" + bytes(31))
