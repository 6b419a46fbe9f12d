"""The funnel, revenue attribution and the holdout z-test (pure)."""

from __future__ import annotations

import math

import pytest

from rtserver.dashboard.funnel import Order, RunRow, funnel, z_test

DAY = 86400.0
CLICK, OPEN = 5 * DAY, 1 * DAY


def rows_by_arm(rows: list[dict[str, object]]) -> dict[tuple[object, object], dict[str, object]]:
    return {(r["workflow"], r["arm"]): r for r in rows}


def test_steps_count_each_run_once() -> None:
    """Entered → mailed → opened → clicked → purchased, per workflow and variant."""
    runs = [
        RunRow("r1", "cart", "1:A", False, "p1", 0.0, sent=10.0, opened=20.0, clicked=30.0),
        RunRow("r2", "cart", "1:A", False, "p2", 0.0, sent=10.0, opened=20.0),
        RunRow("r3", "cart", "1:B", False, "p3", 0.0, sent=10.0),
        RunRow("r4", "cart", "1:B", False, "p4", 0.0),
        RunRow("r5", "welcome", "", False, "p5", 0.0, sent=5.0, clicked=65.0),
    ]
    orders = [Order("p1", 100.0, 40.0, True), Order("p2", 200.0, 10.0, False)]
    rows = rows_by_arm(funnel(runs, orders, CLICK, OPEN))
    a, b, welcome = rows[("cart", "1:A")], rows[("cart", "1:B")], rows[("welcome", "all")]
    assert [a[k] for k in ("entered", "mailed", "opened", "clicked", "purchased")] == [
        2,
        2,
        2,
        1,
        2,
    ]
    assert a["revenue"] == 50.0 and a["verified_revenue"] == 40.0
    assert [b[k] for k in ("entered", "mailed", "opened", "clicked", "purchased")] == [
        2,
        1,
        0,
        0,
        0,
    ]
    assert welcome["opened"] == 1  # a click implies the mail was opened
    assert welcome["median_click_s"] == 60.0 and a["median_order_s"] == 90.0
    assert a["conversion"] == 1.0 and b["conversion"] == 0.0
    assert ("cart", "lift") not in rows  # no holdout, no comparison


def test_orders_outside_the_windows_are_not_attributed() -> None:
    """An order more than 5 days after the click (and 1 day after the open) is not the mail's."""
    runs = [RunRow("r1", "cart", "", False, "p1", 0.0, sent=1.0, opened=2.0, clicked=3.0)]
    late = [Order("p1", 3.0 + CLICK + 1, 99.0, True)]
    (row,) = funnel(runs, late, CLICK, OPEN)
    assert row["purchased"] == 0 and row["revenue"] == 0.0
    opened_only = [RunRow("r1", "cart", "", False, "p1", 0.0, sent=1.0, opened=2.0)]
    (row,) = funnel(opened_only, [Order("p1", 2.0 + OPEN + 1, 5.0, True)], CLICK, OPEN)
    assert row["purchased"] == 0
    (row,) = funnel(opened_only, [Order("p1", 2.0 + OPEN - 1, 5.0, True)], CLICK, OPEN)
    assert row["purchased"] == 1 and row["revenue"] == 5.0


def test_an_order_goes_to_the_last_touched_run_only() -> None:
    """Two mails touched before one order: the later touch gets it; revenue is not doubled."""
    runs = [
        RunRow("old", "cart", "", False, "p1", 0.0, sent=1.0, clicked=10.0),
        RunRow("new", "browse", "", False, "p1", 0.0, sent=1.0, opened=50.0),
    ]
    rows = rows_by_arm(funnel(runs, [Order("p1", 60.0, 30.0, True)], CLICK, OPEN))
    assert rows[("browse", "all")]["revenue"] == 30.0
    assert rows[("cart", "all")]["revenue"] == 0.0


def test_holdout_is_compared_with_a_z_test() -> None:
    """Holdout runs get their own row, counted by conversion; the lift row has the z-test."""
    runs = [RunRow(f"t{i}", "cart", "", False, f"t{i}", 0.0, sent=1.0) for i in range(200)]
    runs += [RunRow(f"h{i}", "cart", "", True, f"h{i}", 0.0) for i in range(200)]
    orders = [Order(f"t{i}", DAY, 10.0, True) for i in range(60)]
    orders += [Order(f"h{i}", DAY, 10.0, True) for i in range(20)]
    orders += [Order("h0", 10 * DAY, 10.0, True)]  # after the window: no conversion
    rows = funnel(runs, orders, CLICK, OPEN)
    assert [r["arm"] for r in rows] == ["all", "holdout", "lift"]
    treated, holdout, lift = rows
    assert holdout["converted"] == 20 and holdout["mailed"] == 0
    assert treated["converted"] == 60 and treated["purchased"] == 0  # no touch, no attribution
    assert lift["rate"] == 0.3 and lift["holdout_rate"] == 0.1
    assert lift["verdict"] == "significant" and lift["p"] < 0.001 and lift["z"] > 4


def test_z_test_edges() -> None:
    """Empty groups, no variance and small samples give no verdict; a known value checks out."""
    assert z_test(0, 0, 1, 10)["verdict"] == "too few runs"
    assert z_test(0, 10, 0, 10)["z"] is None
    small = z_test(2, 10, 1, 10)
    assert small["verdict"] == "too few runs" and small["p"] is not None
    same = z_test(50, 100, 50, 100)
    assert same["z"] == 0 and same["p"] == 1.0 and same["verdict"] == "not significant"
    known = z_test(120, 1000, 100, 1000)
    pooled = 0.11
    z = (0.12 - 0.10) / math.sqrt(pooled * (1 - pooled) * 2 / 1000)
    assert known["z"] == pytest.approx(z, abs=1e-3)
