"""Durations in the config: ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1w"``, ``"1h30m"``.

A duration setting is parsed once, when the config loads, into a :class:`Duration`: a float of
seconds that every part uses as it is, and that still shows as the text it was written as (in
the settings reference and in error messages).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Duration", "parse_duration"]

DURATION_RE = re.compile(r"(\d+)\s*(w|d|h|m|s)")
DURATION_UNITS_S = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_DURATION_S = 100 * 365 * 86400


def parse_duration(value: Any) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1w"`` or ``"1h30m"``.

    Raises:
        ValueError: anything else, zero or negative.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '30m', got {value!r}")
    text = value.strip()
    parts = DURATION_RE.findall(text)
    if not parts or DURATION_RE.sub("", text).strip():
        raise ValueError(f"expected a duration like '90s', '30m', '2h' or '7d', got {value!r}")
    seconds = sum(int(n) * DURATION_UNITS_S[unit] for n, unit in parts)
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration longer than 100 years, got {value!r}")
    return float(seconds)


class Duration(float):
    """Seconds, parsed from a duration string such as ``"30m"``; shown as that string.

    Raises:
        ValueError: ``text`` is not a duration (see :func:`parse_duration`).
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Duration:
        self = super().__new__(cls, parse_duration(text))
        self.text = text
        return self

    def __getnewargs__(self) -> tuple[str]:  # type: ignore[override]  # copies and pickles
        return (self.text,)

    def __repr__(self) -> str:
        return repr(self.text)

    def __str__(self) -> str:
        return self.text
