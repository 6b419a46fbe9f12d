"""The token bucket, the seeded backoff and Retry-After, on times passed in."""

from __future__ import annotations

import email.utils

from rtserver.sources.backoff import (
    BASE_S,
    MAX_RETRY_AFTER_S,
    MAX_S,
    Bucket,
    backoff_s,
    retry_after_s,
)


def test_the_bucket_gives_a_minute_at_once_then_paces() -> None:
    bucket = Bucket(3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 20.0
    assert bucket.take(10.0) == 10.0  # half a token back: nothing taken
    assert bucket.take(20.0) == 0.0
    assert Bucket(0.5, now=0.0).capacity == 1.0
    late = Bucket(60, now=100.0)
    assert late.take(50.0) == 0.0  # a clock that goes back takes from what is there


def test_the_backoff_doubles_with_seeded_jitter_up_to_the_cap() -> None:
    waits = [backoff_s("orders", n) for n in range(1, 12)]
    assert waits == [backoff_s("orders", n) for n in range(1, 12)]  # the same every run
    for n, wait in enumerate(waits, start=1):
        ceiling = min(MAX_S, BASE_S * 2 ** (n - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert backoff_s("orders", 1) != backoff_s("refunds", 1)
    assert backoff_s("orders", 10_000) <= MAX_S


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = 1_800_000_000.0
    assert retry_after_s(None, now) == 0.0 and retry_after_s("", now) == 0.0
    assert retry_after_s("120", now) == 120.0
    assert retry_after_s("99999999", now) == MAX_RETRY_AFTER_S
    assert retry_after_s(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert retry_after_s(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
    naive = email.utils.formatdate(now + 30).replace("+0000", "-0000")
    assert retry_after_s(naive, now) == 30.0
    assert retry_after_s("soon", now) == 0.0
