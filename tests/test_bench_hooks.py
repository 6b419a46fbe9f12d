"""Smoke check of bench/hooks.py: the webhook delivery benchmark runs at a tiny size, as a
subprocess (warnings as errors), and reports both clients and their ratio.

It checks that the script works, never how fast anything is (bench/RESULTS.md has the speeds).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.support.bench import run_bench


@pytest.mark.slow
def test_hooks_bench_runs() -> None:
    """bench.hooks --quick delivers every webhook through the Courier and through a bare httpx
    loop to one receiver, and reports both rates, their ratio and the working goal's verdict."""
    report: dict[str, Any] = json.loads(run_bench("hooks", "--quick", "--json"))
    assert report["bench"] == "hooks"
    assert [(r["server"], r["deliveries"]) for r in report["results"]] == [
        ("rtserver", 100),
        ("bare-httpx", 100),
    ]
    assert all(r["deliveries_per_s"] > 0 for r in report["results"])
    assert all(r["client_cpu_us_per_delivery"] > 0 for r in report["results"])
    assert math.isfinite(report["ratio"]) and isinstance(report["goal_met"], bool)
    assert report["payload_bytes"] > 100
