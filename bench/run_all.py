"""Run every benchmark at the issue's sizes, ``--repeat`` times, and print the medians.

Each repeat of a benchmark is one subprocess that measures rtserver and its baseline in the same
run; the ratio is taken within each run, and the median over runs is reported (with the range).

    python -m bench.run_all --repeat 3 --save bench-results.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import LOOPS, ROOT, Column, format_table, machine, median

FULL_SIZES: dict[str, list[str]] = {
    "ws_ingest": ["--connections", "100", "--events", "200000"],
    "ws_latency": ["--connections", "1000", "--rate", "5000", "--events", "50000"],
    "ws_idle_memory": ["--connections", "10000"],
    "http_batch": ["--connections", "100", "--events", "200000", "--batch", "10"],
    "recommend": [],
}
NO_SERVER = {"recommend"}
"""Benchmarks that run no server (so take no ``--loop``)."""
METRICS: dict[str, list[Column]] = {
    "ws_ingest": [
        Column("events_per_s", "events/s", "{:,.0f}"),
        Column("cpu_us_per_event", "CPU µs/event", "{:.1f}"),
    ],
    "ws_latency": [
        Column("p50_ms", "p50 ms", "{:.2f}"),
        Column("p99_ms", "p99 ms", "{:.2f}"),
        Column("p999_ms", "p99.9 ms", "{:.2f}"),
        Column("server_cpu_pct", "server CPU %", "{:.0f}"),
    ],
    "ws_idle_memory": [Column("kib_per_socket", "KiB/socket", "{:.1f}")],
    "http_batch": [
        Column("requests_per_s", "requests/s", "{:,.0f}"),
        Column("events_per_s", "events/s", "{:,.0f}"),
        Column("cpu_us_per_event", "CPU µs/event", "{:.1f}"),
    ],
    "recommend": [
        Column("hit_rate", "hit-rate@4", "{:.3f}"),
        Column("latency_mean_us", "mean µs", "{:.0f}"),
        Column("latency_p99_us", "p99 µs", "{:.0f}"),
    ],
}
SUMMARY_KEYS = ("ratio", "ratio_deflate", "cpu_ratio")
RUN_TIMEOUT_S = 900.0


def run_once(bench: str, flags: Sequence[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", f"bench.{bench}", *flags, "--json"]
    print("$", " ".join(["python", *command[1:]]), file=sys.stderr, flush=True)
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench.{bench} failed ({done.returncode}):\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    report["command"] = " ".join(["python", *command[1:]])
    return report


def row_name(result: dict[str, Any]) -> str:
    return str(result["server"]) + (" (deflate)" if result.get("deflate") else "")


def summarize(bench: str, runs: list[dict[str, Any]]) -> str:
    """Medians per server over runs, then the median ratio with its range."""
    names = [row_name(r) for r in runs[0]["results"]]
    rows = []
    for name in names:
        row: dict[str, Any] = {"server": name}
        for column in METRICS[bench]:
            values = [
                r[column.key]
                for run in runs
                for r in run["results"]
                if row_name(r) == name and column.key in r
            ]
            if values:  # a metric only some rows have (the ranking's latency) is left blank
                row[column.key] = median(values)
        rows.append(row)
    lines = [
        f"## {bench} (medians of {len(runs)})",
        format_table(rows, [Column("server", "server"), *METRICS[bench]]),
    ]
    for key in SUMMARY_KEYS:
        values = [run[key] for run in runs if key in run]
        if values:
            each = ", ".join(f"{v:.2f}" for v in values)
            lines.append(f"{key}: median {median(values):.2f} (runs: {each})")
    met = [run.get("goal_met") for run in runs]
    lines.append(f"goal met in {sum(bool(m) for m in met)} of {len(met)} runs")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop")
    parser.add_argument(
        "--only", default=",".join(FULL_SIZES), help="comma-separated benchmarks to run"
    )
    parser.add_argument("--save", type=Path, help="write every run's JSON report here")
    args = parser.parse_args()
    benches = [name for name in args.only.split(",") if name]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    reports: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):  # interleaved, so a busy spell of the machine hits all of them
        for bench in benches:
            reports.setdefault(bench, []).append(
                run_once(
                    bench, FULL_SIZES[bench] + ([] if bench in NO_SERVER else ["--loop", args.loop])
                )
            )
    print(f"# rtserver benchmarks, {started}, servers on {args.loop}, machine {machine()}\n")
    print("\n\n".join(summarize(bench, runs) for bench, runs in reports.items()))
    if args.save:
        args.save.write_text(json.dumps({"started": started, "reports": reports}, indent=2))


if __name__ == "__main__":
    main()
