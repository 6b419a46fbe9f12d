"""The funnel of each workflow and variant, revenue attribution, and the holdout comparison.
Pure: it reads rows the store returns and the attribution windows, nothing else.

Steps: entered (runs started) → mailed (a mail of the run sent) → opened → clicked (first
engagement with the run's mail; machine opens and clicks never count) → purchased (an order
attributed to the run). An order is attributed to one run only, the one whose mail was touched
last before it: clicked within ``click_window_s`` or opened within ``open_window_s`` (last
touch). Revenue is the attributed orders' amount; *verified* revenue counts only orders from a
trusted source (write key, signed webhook), since a browser can claim any order.

The holdout comparison does not use attribution (holdout runs get no mail to touch): for both
groups a run *converts* when its person orders within ``click_window_s`` of the run's start, and
a two-proportion z-test says whether the difference is more than chance.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rtserver.dashboard.latency import percentile

__all__ = ["Order", "RunRow", "funnel", "z_test"]

SIGNIFICANCE = 0.05
MIN_EXPECTED = 5
"""Each group needs this many expected conversions and non-conversions for the z-test."""


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run with the times of its first mail, open and click (None: not yet)."""

    id: str
    workflow: str
    variant: str
    holdout: bool
    person_id: str
    started: float
    sent: float | None = None
    opened: float | None = None
    clicked: float | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """One ``Order Completed``: whose, when, how much, and whether a trusted source sent it."""

    person_id: str
    at: float
    amount: float
    verified: bool


@dataclass(slots=True)
class _Arm:
    entered: int = 0
    mailed: int = 0
    opened: int = 0
    clicked: int = 0
    purchased: int = 0
    converted: int = 0
    revenue: float = 0.0
    verified_revenue: float = 0.0
    to_click: list[float] = field(default_factory=list)
    to_order: list[float] = field(default_factory=list)

    def row(self, workflow: str, arm: str) -> dict[str, Any]:
        return {
            "workflow": workflow,
            "arm": arm,
            "entered": self.entered,
            "mailed": self.mailed,
            "opened": self.opened,
            "clicked": self.clicked,
            "purchased": self.purchased,
            "converted": self.converted,
            "conversion": self.converted / self.entered if self.entered else None,
            "revenue": round(self.revenue, 2),
            "verified_revenue": round(self.verified_revenue, 2),
            "median_click_s": percentile(self.to_click, 50),
            "median_order_s": percentile(self.to_order, 50),
        }


def z_test(x1: int, n1: int, x2: int, n2: int) -> dict[str, Any]:
    """Two-proportion z-test of ``x1/n1`` against ``x2/n2``: rates, z, two-sided p, verdict."""
    result: dict[str, Any] = {
        "rate": x1 / n1 if n1 else None,
        "holdout_rate": x2 / n2 if n2 else None,
        "z": None,
        "p": None,
        "verdict": "too few runs",
    }
    if not n1 or not n2:
        return result
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return result  # nobody (or everybody) converted in both groups
    z = (x1 / n1 - x2 / n2) / se
    p = math.erfc(abs(z) / math.sqrt(2))
    result.update(z=round(z, 3), p=round(p, 4))
    enough = min(n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled)) >= MIN_EXPECTED
    if enough:
        result["verdict"] = "significant" if p < SIGNIFICANCE else "not significant"
    return result


def _attribute(
    runs: Sequence[RunRow], orders: Iterable[Order], click_window_s: float, open_window_s: float
) -> dict[str, list[Order]]:
    """Run id → the orders attributed to it (each order to the last-touched run)."""
    by_person: dict[str, list[RunRow]] = defaultdict(list)
    for run in runs:
        if not run.holdout and (run.opened is not None or run.clicked is not None):
            by_person[run.person_id].append(run)
    attributed: dict[str, list[Order]] = defaultdict(list)
    for order in orders:
        best: tuple[float, str] | None = None
        for run in by_person.get(order.person_id, ()):
            for touch, window in ((run.clicked, click_window_s), (run.opened, open_window_s)):
                if touch is not None and touch <= order.at <= touch + window:
                    if best is None or touch > best[0]:
                        best = (touch, run.id)
        if best is not None:
            attributed[best[1]].append(order)
    return attributed


def funnel(
    runs: Sequence[RunRow],
    orders: Sequence[Order],
    click_window_s: float,
    open_window_s: float,
) -> list[dict[str, Any]]:
    """One row per workflow and arm (variant, or ``holdout``), each workflow's rows followed by
    its lift: the z-test of its mailed runs' conversion against its holdout's."""
    attributed = _attribute(runs, orders, click_window_s, open_window_s)
    orders_of: dict[str, list[float]] = defaultdict(list)
    for order in orders:
        orders_of[order.person_id].append(order.at)
    arms: dict[str, dict[str, _Arm]] = defaultdict(dict)
    treated: dict[str, _Arm] = defaultdict(_Arm)
    for run in runs:
        name = "holdout" if run.holdout else (run.variant or "all")
        arm = arms[run.workflow].setdefault(name, _Arm())
        converted = any(
            run.started <= at <= run.started + click_window_s for at in orders_of[run.person_id]
        )
        for counted in (arm, treated[run.workflow]) if not run.holdout else (arm,):
            counted.entered += 1
            counted.converted += converted
            counted.mailed += run.sent is not None
            counted.opened += run.opened is not None or run.clicked is not None
            counted.clicked += run.clicked is not None
            if run.sent is not None and run.clicked is not None:
                counted.to_click.append(max(0.0, run.clicked - run.sent))
            bought = attributed.get(run.id, [])
            if bought:
                counted.purchased += 1
                counted.revenue += sum(o.amount for o in bought)
                counted.verified_revenue += sum(o.amount for o in bought if o.verified)
                counted.to_order.append(max(0.0, bought[0].at - (run.sent or run.started)))
    rows: list[dict[str, Any]] = []
    for workflow in sorted(arms):
        for name in sorted(arms[workflow], key=lambda n: (n == "holdout", n)):
            rows.append(arms[workflow][name].row(workflow, name))
        holdout = arms[workflow].get("holdout")
        if holdout is not None:
            mailed = treated[workflow]
            lift = z_test(mailed.converted, mailed.entered, holdout.converted, holdout.entered)
            rows.append({"workflow": workflow, "arm": "lift", **lift})
    return rows
