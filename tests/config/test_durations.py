"""Durations in the config: ``"30m"`` and friends, parsed to seconds."""

from __future__ import annotations

from typing import Any

import pytest

from rtserver.config.durations import MAX_DURATION_S, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1h30m", 5400),
        (" 1h 30m ", 5400),
    ],
)
def test_parse_duration_forms(text: str, seconds: int) -> None:
    """Every documented duration form parses to seconds."""
    assert parse_duration(text) == float(seconds)


@pytest.mark.parametrize(
    "value", ["", "30", "30x", "m30", "-5m", "1.5h", "0s", "0h0m", "30M", "5m and", 30, None]
)
def test_parse_duration_rejects_bad_values(value: Any) -> None:
    """Empty, unitless, unknown units, negative, fractional, zero and non-strings fail."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_parse_duration_rejects_absurd_lengths() -> None:
    """A duration past 100 years (a typo, or a float overflow) fails with a clear message."""
    assert parse_duration(f"{MAX_DURATION_S}s") == MAX_DURATION_S
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration("36501d")
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration("9" * 400 + "d")
