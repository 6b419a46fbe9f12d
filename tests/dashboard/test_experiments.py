"""The send-time and bandit panels' numbers: Wilson intervals, heatmaps, optimal against
control, and each bandit arm's chance of being best."""

from __future__ import annotations

import pytest

from rtserver.dashboard.experiments import (
    bandit_panels,
    chance_best,
    heatmap,
    timed_comparison,
    wilson,
)


def test_wilson_interval_matches_the_textbook() -> None:
    """10 of 100: 5.5 %-17.4 %; none of 20 starts at 0; no trials, no interval."""
    low, high = wilson(10, 100) or (0.0, 0.0)
    assert low == pytest.approx(0.0552, abs=1e-4) and high == pytest.approx(0.1744, abs=1e-4)
    zero = wilson(0, 20)
    assert zero is not None and zero[0] == 0.0 and 0.15 < zero[1] < 0.17
    assert wilson(0, 0) is None


def test_heatmap_is_seven_days_of_24_hours_as_shares() -> None:
    """Monday first; each hour's share of the total and its shade against the busiest hour."""
    view = heatmap({8: 3.0, 5 * 24 + 10: 1.0})
    assert [row["day"] for row in view["rows"]][:2] == ["Mon", "Tue"]
    assert all(len(row["cells"]) == 24 for row in view["rows"]) and len(view["rows"]) == 7
    monday_8 = view["rows"][0]["cells"][8]
    saturday_10 = view["rows"][5]["cells"][10]
    assert monday_8 == {"hour": 8, "share": 0.75, "shade": 1.0}
    assert saturday_10["share"] == 0.25 and saturday_10["shade"] == pytest.approx(1 / 3, 1e-3)
    assert view["top"] == ["Mon 08:00", "Sat 10:00"] and not view["empty"]
    assert heatmap({})["empty"]


def test_timed_comparison_counts_each_arm_with_intervals() -> None:
    """Optimal then control, with their open and click rates; an arm without sends has none."""
    rows = [("optimal", True, True), ("optimal", True, False), ("optimal", False, False)]
    optimal, control = timed_comparison(rows)
    assert optimal["arm"] == "optimal" and optimal["sends"] == 3
    assert optimal["opened"]["count"] == 2 and optimal["opened"]["rate"] == pytest.approx(2 / 3)
    assert optimal["clicked"]["low"] < 1 / 3 < optimal["clicked"]["high"]
    assert control == {
        "arm": "control",
        "sends": 0,
        "opened": {"count": 0, "rate": None, "low": None, "high": None},
        "clicked": {"count": 0, "rate": None, "low": None, "high": None},
    }


def test_chance_best_is_seeded_and_follows_the_evidence() -> None:
    """The same counts give the same chances; a clear winner gets nearly all; no data, even."""
    assert chance_best([(1000, 40), (1000, 60)]) == chance_best([(1000, 40), (1000, 60)])
    worse, better = chance_best([(1000, 40), (1000, 60)])
    assert better > 0.95 and worse + better == pytest.approx(1.0)
    even = chance_best([(0, 0), (0, 0)])
    assert 0.45 < even[0] < 0.55
    assert chance_best([]) == []


def test_bandit_panels_show_arms_and_daily_shares() -> None:
    """One panel per step: the arms' counts and chances, and each day's shares in variant
    order (an arm without sends that day has 0)."""
    steps = {("welcome", 0): ("A", "B")}
    tallies = {("welcome", 0, "A"): (30, 3), ("welcome", 0, "B"): (10, 2)}
    days = [("welcome", 0, "A", 20000, 20), ("welcome", 0, "B", 20000, 5),
            ("welcome", 0, "A", 20001, 10), ("welcome", 0, "B", 20001, 5)]  # fmt: skip
    (panel,) = bandit_panels(steps, tallies, days)
    assert (panel["workflow"], panel["step"]) == ("welcome", 1)
    a, b = panel["arms"]
    assert (a["name"], a["sends"], a["successes"]) == ("A", 30, 3)
    assert a["mean"] == pytest.approx(4 / 32) and b["interval"] is not None
    assert a["chance_best"] + b["chance_best"] == pytest.approx(1.0)
    assert [d["shares"] for d in panel["days"]] == [[0.8, 0.2], [2 / 3, 1 / 3]]
    assert panel["days"][0] == {"day": 20000 * 86400.0, "sends": 25, "shares": [0.8, 0.2]}
    (empty,) = bandit_panels({("x", 1): ("A", "B")}, {}, [])
    assert empty["days"] == [] and [arm["sends"] for arm in empty["arms"]] == [0, 0]
