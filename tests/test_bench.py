"""Smoke checks of the benchmarks in bench/: each script runs at a tiny size, as a subprocess,
against rtserver and its baseline, and reports a ratio.

They check that the scripts work (exit 0, a complete report with a ratio), never how fast
anything is: speed is measured by running the scripts at full size (bench/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest

from tests.support.bench import ROOT, run_bench

TINY: dict[str, list[str]] = {
    "ws_ingest": ["--connections", "5", "--events", "200"],
    "ws_latency": ["--connections", "5", "--events", "200", "--rate", "1000"],
    "ws_idle_memory": ["--connections", "50", "--warmup", "5", "--settle-s", "0.1"],
    "http_batch": ["--connections", "5", "--events", "200"],
}
BASELINES = {
    "ws_ingest": "bare-websockets",
    "ws_latency": "bare-websockets",
    "ws_idle_memory": "bare-websockets",
    "http_batch": "bare-starlette",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_bench_prints_a_table_and_a_ratio(script: str) -> None:
    """Each benchmark, at a tiny size, prints its table and the rtserver / baseline ratio."""
    out = run_bench(script, *TINY[script])
    assert "rtserver" in out and BASELINES[script] in out
    assert f"ratio rtserver / {BASELINES[script]}" in out


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_bench_json_report_is_complete(script: str) -> None:
    """With --json, the report names the bench, has one result per server, and a finite ratio."""
    report: dict[str, Any] = json.loads(run_bench(script, *TINY[script], "--json"))
    assert report["bench"] == script
    assert [r["server"] for r in report["results"]] == ["rtserver", BASELINES[script]] * (
        2 if script == "ws_idle_memory" else 1
    )
    assert math.isfinite(report["ratio"])
    assert isinstance(report["goal_met"], bool)
    assert report["machine"]["nproc"] >= 1


@pytest.mark.slow
def test_bench_measures_every_event() -> None:
    """The throughput benchmarks count every acked event, and finish within their bound."""
    report = json.loads(run_bench("ws_ingest", *TINY["ws_ingest"], "--window", "3", "--json"))
    assert [(r["events"], r["complete"]) for r in report["results"]] == [(200, True)] * 2
    report = json.loads(run_bench("http_batch", *TINY["http_batch"], "--batch", "4", "--json"))
    assert [(r["events"], r["complete"]) for r in report["results"]] == [(200, True)] * 2


@pytest.mark.slow
def test_timer_restart_bench_runs() -> None:
    """bench.timer_restart builds a store, restores its timers and starts a server on it."""
    server = f"{sys.executable} -m rtserver"  # what --server takes: the binary, say
    report = json.loads(run_bench("timer_restart", "--timers", "500", "--server", server, "--json"))
    assert report["timers"] == 500 and report["armed"] >= 500
    assert report["ready_s"] > 0 and isinstance(report["goal_met"], bool)
    assert report["read_s"] >= 0 and report["wheel_s"] >= 0 and report["rss_mib"] > 0


@pytest.mark.slow
def test_mail_bench_measures_a_whole_server() -> None:
    """bench.mail --server: a server command drains a queued outbox to the sink."""
    server = f"{sys.executable} -m rtserver"
    out = run_bench("mail", "--server", server, "--mails", "60", "--repeat", "1", "--json")
    report: dict[str, Any] = json.loads(out)
    [result] = report["results"]
    assert result["server"] == server and 0 < result["mails"] <= 60
    assert result["mails_per_s"] > 0 and result["client_cpu_us_per_mail"] > 0


@pytest.mark.slow
def test_small_host_bench_runs() -> None:
    """bench.small_host --quick: idle and idle-browser memory, the shop mix at a rate with every
    event acked and decided, and distinct active shoppers."""
    report: dict[str, Any] = json.loads(run_bench("small_host", "--quick", "--json"))
    [result] = report["results"]
    assert result["idle_mib"] > 0 and result["browsers"]["20"] >= result["idle_mib"] / 2
    [rate] = result["rates"]
    assert rate["acked"] == rate["sent"] == 200 and rate["decided"] == 200
    assert result["active"][-1]["shoppers"] == 300 and report["all_acked"] is True


@pytest.mark.slow
def test_timer_wheel_bench_runs() -> None:
    """bench.timers measures the wheel against call_at at a tiny size and reports ratios."""
    out = run_bench("timers", "--n", "2000", "--repeat", "1", "--json")
    assert json.loads(out)


@pytest.mark.slow
def test_latency_bench_with_the_shipped_workflows_runs() -> None:
    """bench.ws_latency --workflows runs rtserver with the shipped workflows deciding."""
    out = run_bench(
        "ws_latency", *TINY["ws_latency"], "--workflows", str(ROOT / "config.toml"), "--json"
    )
    assert json.loads(out)


@pytest.mark.slow
def test_latency_bench_with_a_shop_mix_starts_and_ends_runs() -> None:
    """With --mix shop the shipped workflows start runs, arm their timers and end them (the
    report counts them from the store), and the goal is the event -> decision one."""
    out = run_bench(
        "ws_latency",
        *TINY["ws_latency"],
        "--workflows",
        str(ROOT / "config.toml"),
        "--mix",
        "shop",
        "--json",
    )
    report: dict[str, Any] = json.loads(out)
    decided = report["results"][0]["decisions"]
    assert decided["runs"]["cart_abandonment ended"] > 0  # started by adds, ended by orders
    assert decided["runs"]["post_purchase active"] > 0 and decided["timers_pending"] > 0
    assert [r["acked"] for r in report["results"]] == [200, 200]
    assert isinstance(report["goal_met"], bool)


@pytest.mark.slow
def test_mail_bench_runs() -> None:
    """bench.mail --quick sends every mail through the Sender and through a bare aiosmtplib
    loop to one sink, and reports both rates and their ratio."""
    report: dict[str, Any] = json.loads(run_bench("mail", "--quick", "--json"))
    assert report["bench"] == "mail"
    assert [(r["server"], r["mails"]) for r in report["results"]] == [
        ("rtserver", 100),
        ("bare-aiosmtplib", 100),
    ]
    assert all(r["mails_per_s"] > 0 for r in report["results"])
    assert math.isfinite(report["ratio"]) and isinstance(report["goal_met"], bool)
    assert report["message_bytes"] > 1000


@pytest.mark.slow
def test_mail_latency_bench_runs() -> None:
    """bench.mail_latency --quick: every sign-up's welcome mail reaches the SMTP server, and the
    report has its percentiles and verdict."""
    report: dict[str, Any] = json.loads(run_bench("mail_latency", "--quick", "--json"))
    (result,) = report["results"]
    assert result["mails"] == 20 and 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert isinstance(report["goal_met"], bool)


@pytest.mark.slow
def test_dashboard_bench_runs() -> None:
    """bench.dashboard --quick measures ingest with no viewer and with viewers following the
    SSE stream (each got its snapshot and updates), and reports the ratio of the two."""
    report: dict[str, Any] = json.loads(run_bench("dashboard", "--quick", "--json"))
    assert report["bench"] == "dashboard"
    assert [(r["viewers"], r["events"], r["complete"]) for r in report["results"]] == [
        (0, 500, True),
        (10, 500, True),
    ]
    assert report["results"][1]["viewers_seen"] == 10
    assert report["results"][1]["viewers_dropped"] == 0
    assert math.isfinite(report["ratio"]) and isinstance(report["goal_met"], bool)


@pytest.mark.slow
def test_decide_bench_runs() -> None:
    """bench.decide --quick decides the shop mix in process with no workflow and with the
    shipped ones, and reports the writer's CPU per event, split by phase."""
    report: dict[str, Any] = json.loads(run_bench("decide", "--quick", "--json"))
    assert report["bench"] == "decide"
    none, shipped = report["results"]
    assert (none["workflows"], shipped["workflows"]) == ("none", "config.toml")
    assert none["runs"] == 0 and shipped["runs"] > 0 and shipped["timers"] > 0
    for result in report["results"]:
        assert result["events"] == 2000 and 0 < result["writer_us"] <= result["process_us"]
        assert set(result["phases_us"]) == {"prepare", "facts", "decide", "fold", "write"}
    assert math.isfinite(report["decide_us_per_event"])


@pytest.mark.slow
def test_recommend_bench_runs_and_the_ranking_beats_the_baselines() -> None:
    """bench.recommend on a small shop: every method is evaluated on the same people, the
    latency is measured, and the ranking's hit-rate@4 is at least both baselines' (seed 1; at
    200 products, 10 a category, the most popular of the top category is as good: 400 here)."""
    report: dict[str, Any] = json.loads(
        run_bench(
            "recommend",
            *("--people", "300", "--products", "400", "--seed", "1"),
            *("--latency-people", "200", "--latency-products", "2000", "--json"),
        )
    )
    assert report["bench"] == "recommend"
    rates = {r["server"]: r["hit_rate"] for r in report["results"]}
    assert {"ours", "popular", "top category popular"} <= set(rates)
    assert len({r["people"] for r in report["results"]}) == 1
    assert rates["ours"] >= max(rates["popular"], rates["top category popular"])
    assert 0 < report["latency_mean_us"] <= report["latency_p99_us"]


def test_memory_bench_runs() -> None:
    """bench.memory --quick traces the facts memory per person for each history length and
    reads the RSS of a process holding them, bounded by a budget when asked."""
    report: dict[str, Any] = json.loads(
        run_bench("memory", "--quick", "--budget-mb", "1", "--json")
    )
    assert report["bench"] == "memory"
    traced = [r for r in report["results"] if r["measure"] == "tracemalloc"]
    assert [r["events"] for r in traced] == [0, 5, 20]
    per_person = [r["bytes_per_person"] for r in traced]
    assert 0 < per_person[0] < per_person[1] < per_person[2]
    held, budgeted = report["results"][-2:]
    assert held["kept"] == 200 and held["rss_mib"] >= 0
    assert budgeted["measure"] == "RSS, budget 1 MiB" and 0 < budgeted["kept"] <= 200


@pytest.mark.slow
def test_send_time_bench_runs() -> None:
    """bench.send_time --quick simulates the campaign three ways through the real engine:
    every person gets one mail in each arm, the rates have intervals, the recovery table has
    its four history buckets and the model's cost is measured."""
    report: dict[str, Any] = json.loads(run_bench("send_time", "--quick", "--json"))
    assert report["bench"] == "send_time"
    assert [(r["arm"], r["sent"]) for r in report["results"]] == [
        ("immediate", 300),
        ("shop-wide best", 300),
        ("per-person optimal", 300),
    ]
    for result in report["results"]:
        low, high = result["open_interval"]
        assert low <= result["open_rate"] <= high
    assert [r["history"] for r in report["recovery"]] == ["0", "1-4", "5-19", "20+"]
    assert report["model_cost"]["update_us_per_event"] > 0
    assert isinstance(report["goal_met"], bool)


@pytest.mark.slow
def test_bandit_bench_runs() -> None:
    """bench.bandit --quick decides every arrival with the real decide: the fixed split and
    the bandit each have their regret, and the bandit's ratio to the fixed split is reported."""
    report: dict[str, Any] = json.loads(run_bench("bandit", "--quick", "--json"))
    assert report["bench"] == "bandit"
    fixed, bandit = report["results"]
    assert fixed["policy"] == "fixed 50/50" and bandit["policy"] == "bandit, floor 0.1"
    assert 0.45 < fixed["better_share"] < 0.55 and fixed["mean"] > 0
    assert bandit["ratio"] == bandit["mean"] / report["fixed_regret"]
    assert isinstance(report["goal_met"], bool)
