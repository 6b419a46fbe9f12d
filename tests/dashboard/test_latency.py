"""Latency histograms and percentiles (pure)."""

from __future__ import annotations

import math

from rtserver.dashboard.latency import BOUNDS_S, Histogram, percentile


def test_percentile_is_nearest_rank() -> None:
    """Nearest rank over the sorted values; None without values."""
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 99) == 5.0
    assert percentile(values, 0) == 1.0
    assert percentile([], 50) is None


def test_histogram_percentiles_are_bucket_bounds() -> None:
    """A percentile is the upper bound of the bucket its rank falls in; past the last: inf."""
    histogram = Histogram()
    assert histogram.percentile(50) is None and histogram.count == 0
    histogram.observe_all([0.0004] * 90 + [0.02] * 9 + [7200.0])
    assert histogram.count == 100
    assert histogram.percentile(50) == 0.001
    assert histogram.percentile(95) == 0.025
    assert histogram.percentile(100) == math.inf
    assert math.isclose(histogram.sum, 90 * 0.0004 + 9 * 0.02 + 7200.0)


def test_negative_latency_counts_as_zero() -> None:
    """A clock that went back gives a zero, not a negative sum."""
    histogram = Histogram()
    histogram.observe(-3.0)
    assert histogram.counts[0] == 1 and histogram.sum == 0.0


def test_cumulative_buckets_end_with_inf() -> None:
    """The Prometheus form: cumulative counts per bound, the last one +Inf with the total."""
    histogram = Histogram((0.1, 1.0))
    histogram.observe_all([0.05, 0.5, 0.5, 5.0])
    assert histogram.cumulative() == [(0.1, 1), (1.0, 3), (math.inf, 4)]
    assert len(Histogram().cumulative()) == len(BOUNDS_S) + 1


def test_minus_gives_the_observations_since_a_copy() -> None:
    """A copy taken earlier, subtracted, leaves what was observed since."""
    histogram = Histogram()
    histogram.observe_all([0.002] * 10)
    earlier = histogram.copy()
    histogram.observe_all([3.0] * 5)
    recent = histogram.minus(earlier)
    assert recent.count == 5 and recent.percentile(50) == 5.0
    assert math.isclose(recent.sum, 15.0)
    assert earlier.count == 10  # the copy is independent
