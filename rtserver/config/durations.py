"""Durations in the config: ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1w"``, ``"1h30m"``."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_duration"]

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
