"""How fast a polling source may ask: a token bucket for its rate, and the backoff after errors.

Pure: every function takes ``now`` (the injected clock's reading), so tests drive time by hand.
The jitter is seeded by the source's name and its count of failures, so a schedule is the same
on every run (and two sources that fail together still spread out).
"""

from __future__ import annotations

import datetime
import email.utils
import random

__all__ = ["BASE_S", "MAX_S", "MAX_RETRY_AFTER_S", "Bucket", "backoff_s", "retry_after_s"]

BASE_S = 10.0
"""The first wait after an error."""
MAX_S = 3600.0
"""The longest wait the backoff grows to."""
MAX_RETRY_AFTER_S = 86400.0
"""The longest ``Retry-After`` honoured (a longer one is read as this)."""


class Bucket:
    """A token bucket: ``per_minute`` requests a minute, at most ``per_minute`` at once (one
    minute's worth; at least one)."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate_per_s = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.tokens = self.capacity
        self.at = now

    def _fill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate_per_s)
            self.at = now

    def take(self, now: float) -> float:
        """Take one token; 0.0 when taken, else the seconds until one is there (none taken)."""
        self._fill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


def backoff_s(name: str, failures: int) -> float:
    """The wait after ``failures`` errors in a row: ``BASE_S`` doubled each time up to
    ``MAX_S``, then between half and all of it (jitter seeded by ``name`` and ``failures``)."""
    ceiling = min(MAX_S, BASE_S * 2.0 ** min(max(failures - 1, 0), 32))
    return ceiling * (0.5 + 0.5 * random.Random(f"{name}:{failures}").random())


def retry_after_s(value: str | None, now: float) -> float:
    """Seconds a ``Retry-After`` header asks to wait from ``now`` (delta seconds or an HTTP
    date); 0.0 when absent or unreadable, at most ``MAX_RETRY_AFTER_S``."""
    if not value:
        return 0.0
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:  # an HTTP date is GMT; parsedate_to_datetime leaves "-0000" naive
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER_S)
