"""The send-time and bandit panels: heatmaps, optimal against control, each bandit arm's share
and chance of being best. Pure: it reads rows the store returns, nothing else.

- A heatmap is an engagement histogram as shares of its total, 7 weekdays by 24 hours (the
  weights of one histogram share their decay, so their shares need none).
- Optimal against control: sends, open and click rates with 95 % Wilson intervals.
- A bandit arm's chance of being best is estimated by Monte Carlo from the arms' Beta
  posteriors (Beta(1 + successes, 1 + failures), as the engine draws them), with a fixed seed
  so a page shows the same numbers until the counts move.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["bandit_panels", "chance_best", "heatmap", "timed_comparison", "wilson"]

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
Z_95 = 1.959964
DRAWS = 4000
SEED = 20261207


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes / trials`` (None without trials)."""
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def heatmap(bins: Mapping[int, float]) -> dict[str, Any]:
    """7 rows (Monday first) of 24 cells: each hour's share of the total and its shade (the
    share against the busiest hour's, 0 to 1); the busiest hours first in ``top``."""
    total = sum(bins.values())
    peak = max(bins.values(), default=0.0)
    rows = []
    for day, name in enumerate(DAYS):
        cells = []
        for hour in range(24):
            weight = bins.get(day * 24 + hour, 0.0)
            cells.append(
                {
                    "hour": hour,
                    "share": weight / total if total else 0.0,
                    "shade": round(weight / peak, 3) if peak else 0.0,
                }
            )
        rows.append({"day": name, "cells": cells})
    top = sorted((h for h in bins if bins[h] > 0), key=lambda h: -bins[h])[:3]
    return {
        "rows": rows,
        "empty": total == 0,
        "top": [f"{DAYS[h // 24]} {h % 24:02d}:00" for h in top],
    }


def _rate(successes: int, trials: int) -> dict[str, Any]:
    interval = wilson(successes, trials)
    return {
        "count": successes,
        "rate": successes / trials if trials else None,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
    }


def timed_comparison(rows: Iterable[tuple[str, bool, bool]]) -> list[dict[str, Any]]:
    """Per arm (``optimal``, then ``control``): sends, opens and clicks with their rates and
    95 % intervals, from (arm, opened, clicked) per send."""
    counts: dict[str, list[int]] = {"optimal": [0, 0, 0], "control": [0, 0, 0]}
    for arm, opened, clicked in rows:
        tally = counts.setdefault(arm, [0, 0, 0])
        tally[0] += 1
        tally[1] += opened
        tally[2] += clicked
    return [
        {"arm": arm, "sends": n, "opened": _rate(o, n), "clicked": _rate(c, n)}
        for arm, (n, o, c) in counts.items()
    ]


def chance_best(
    tallies: Sequence[tuple[int, int]], draws: int = DRAWS, seed: int = SEED
) -> list[float]:
    """Each arm's probability of having the highest success rate, from ``draws`` joint draws
    of the Beta posteriors of its (sends, successes); ties go to the first."""
    if not tallies:
        return []
    rng = random.Random(seed)
    wins = [0] * len(tallies)
    shape = [(1 + s, 1 + max(0, n - s)) for n, s in tallies]
    for _ in range(draws):
        values = [rng.betavariate(a, b) for a, b in shape]
        wins[values.index(max(values))] += 1
    return [w / draws for w in wins]


def bandit_panels(
    steps: Mapping[tuple[str, int], Sequence[str]],
    tallies: Mapping[tuple[str, int, str], tuple[int, int]],
    days: Iterable[tuple[str, int, str, int, int]],
) -> list[dict[str, Any]]:
    """One panel per bandit step (``steps``: (workflow, step index) → its variant names):
    each arm's sends, successes, posterior mean and chance of being best; and per day, each
    arm's share of that day's sends (``days``: (workflow, step, variant, day, mails))."""
    by_day: dict[tuple[str, int], dict[int, dict[str, int]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for workflow, step, variant, day, mails in days:
        by_day[(workflow, step)][day][variant] = mails
    panels = []
    for (workflow, step), names in sorted(steps.items()):
        counts = [tallies.get((workflow, step, name), (0, 0)) for name in names]
        chances = chance_best(counts)
        arms = [
            {
                "name": name,
                "sends": n,
                "successes": s,
                "mean": (1 + s) / (2 + n),
                "interval": wilson(s, n),
                "chance_best": chance,
            }
            for name, (n, s), chance in zip(names, counts, chances, strict=True)
        ]
        timeline = []
        for day, sent in sorted(by_day[(workflow, step)].items()):
            total = sum(sent.values())
            shares = [sent.get(name, 0) / total for name in names]
            timeline.append({"day": day * 86400.0, "sends": total, "shares": shares})
        panels.append({"workflow": workflow, "step": step + 1, "arms": arms, "days": timeline})
    return panels
