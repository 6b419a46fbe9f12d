"""Latency distributions: a fixed-bucket histogram cheap enough to observe every event, and
nearest-rank percentiles of a sample. Pure: no clock, no I/O.

The histogram keeps counts in log-spaced buckets (``BOUNDS_S``), so observing costs one bisect
and an increment, whatever the traffic; a percentile is the upper bound of the bucket its rank
falls in (an over-estimate by at most one bucket). ``/metrics`` exposes the same buckets as a
Prometheus histogram.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

__all__ = ["BOUNDS_S", "Histogram", "percentile"]

BOUNDS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip
"""Upper bounds of the buckets, in seconds; one more bucket holds everything above."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


class Histogram:
    """Counts of observations (seconds) per bucket, with their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = BOUNDS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        """Count one observation (a negative one, from a clock that went back, counts as 0)."""
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def observe_all(self, values: Iterable[float]) -> None:
        """Count every value of ``values``."""
        for value in values:
            self.observe(value)

    def percentile(self, q: float) -> float | None:
        """The bucket bound below which ``q`` percent of observations fall (``inf`` past the
        last bound); None before the first observation."""
        total = self.count
        if not total:
            return None
        rank = max(1, math.ceil(q / 100.0 * total))
        seen = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        raise AssertionError("unreachable: the ranks add up to the total")  # pragma: no cover

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, ending with ``inf``."""
        result, seen = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += count
            result.append((bound, seen))
        return result

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since ``earlier`` (a copy of this histogram taken then)."""
        result = Histogram(self.bounds)
        result.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        result.sum = self.sum - earlier.sum
        return result

    def copy(self) -> Histogram:
        """A copy, for :meth:`minus` later."""
        result = Histogram(self.bounds)
        result.counts = list(self.counts)
        result.sum = self.sum
        return result
