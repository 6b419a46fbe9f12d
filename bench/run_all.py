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


BEGIN = "<!-- bench.run_all --write: begin -->"
END = "<!-- bench.run_all --write: end -->"
HEADLINE: dict[str, str] = {
    "ws_ingest": "durable acked WebSocket ingest, 100 connections",
    "ws_latency": "send → ack latency, 5,000 events/s over 1,000 connections",
    "ws_idle_memory": "memory per idle WebSocket, 10,000 open",
    "http_batch": "Segment `POST /v1/batch`, 10 events a request",
    "recommend": "recommendations offline, hit-rate@4 of the held-out purchase",
}
SHOWN: dict[str, list[Column]] = {
    "ws_ingest": [METRICS["ws_ingest"][0], METRICS["ws_ingest"][1]],
    "ws_latency": [METRICS["ws_latency"][1]],
    "http_batch": [METRICS["http_batch"][1], METRICS["http_batch"][2]],
}
"""The figures each benchmark's row shows (default: its first metric): the ingest rows add the
server's CPU per event, the steadiest figure on a shared machine; the latency row its p99."""


def _figures(runs: list[dict[str, Any]], columns: list[Column]) -> dict[str, str]:
    """Per server (deflate rows left out), its figures as medians over the runs."""
    values: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for result in run["results"]:
            if result.get("deflate"):
                continue
            for column in columns:
                if column.key in result:
                    found = values.setdefault(row_name(result), {})
                    found.setdefault(column.key, []).append(result[column.key])
    return {
        name: ", ".join(
            f"{column.fmt.format(median(by_key[column.key]))} {column.header}"
            for column in columns
            if column.key in by_key
        )
        for name, by_key in values.items()
    }


def ratio_table(reports: dict[str, list[dict[str, Any]]], started: str, where: str) -> str:
    """The generated table: per benchmark, rtserver's and the baseline's headline figures
    (medians over runs), the median ratio of the runs and, for the ingest benchmarks, the
    median ratio of CPU per event (bare / ours: 1 is as cheap as the bare server)."""
    loads = [
        run["machine"]["load_avg_1m"]
        for runs in reports.values()
        for run in runs
        if "load_avg_1m" in run.get("machine", {})
    ]
    load = f", load average {min(loads):.1f}–{max(loads):.1f} during the runs" if loads else ""
    lines = [
        f"Generated by `python -m bench.run_all --write` ({started}, {where}{load}; medians of "
        "the runs, each ratio taken within its run):",
        "",
        "| what | rtserver | bare baseline, same run | ratio | CPU per event, bare / ours |",
        "|---|---|---|---|---|",
    ]
    for bench, runs in reports.items():
        shown = _figures(runs, SHOWN.get(bench, METRICS[bench][:1]))
        ours = [name for name in shown if name.startswith(("rtserver", "ours"))]
        others = [name for name in shown if name not in ours]
        ratios = [run["ratio"] for run in runs if "ratio" in run]
        ratio = f"{median(ratios):.2f}×" if ratios else ""
        cpu = [run["cpu_ratio"] for run in runs if "cpu_ratio" in run]
        cpu_ratio = f"{median(cpu):.2f}" if cpu else ""
        lines.append(
            f"| {HEADLINE.get(bench, bench)} | {shown[ours[0]] if ours else ''} | "
            f"{', '.join(f'{name}: {shown[name]}' for name in others)} | {ratio} | {cpu_ratio} |"
        )
    return "\n".join(lines)


def write_between_markers(path: Path, table: str) -> bool:
    """Replace what lies between the markers in ``path``; whether they were there."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    path.write_text(text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:], "utf-8")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop")
    parser.add_argument(
        "--only", default=",".join(FULL_SIZES), help="comma-separated benchmarks to run"
    )
    parser.add_argument("--save", type=Path, help="write every run's JSON report here")
    parser.add_argument(
        "--from",
        dest="load",
        type=Path,
        help="no runs: summarize (and --write) the reports a --save wrote",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="put the ratio table into bench/RESULTS.md and README.md (between their markers)",
    )
    args = parser.parse_args()
    benches = [name for name in args.only.split(",") if name]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    reports: dict[str, list[dict[str, Any]]] = {}
    if args.load:
        saved = json.loads(args.load.read_text(encoding="utf-8"))
        started, reports = saved["started"], saved["reports"]
    for _ in range(0 if args.load else args.repeat):  # interleaved: a busy spell hits them all
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
    if args.write:
        about = machine()
        where = f"servers on {args.loop}, {about['nproc']} cores"
        table = ratio_table(reports, started, where)
        for path in (ROOT / "bench" / "RESULTS.md", ROOT / "README.md"):
            if write_between_markers(path, table):
                print(f"wrote the ratio table into {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
