"""Restart with N pending timers: how long until the wheel is rebuilt and the server is ready.

Builds a store holding N open runs with their timers (due over the next 48 h), then measures,
in this process, the bare baseline of reading every timer from SQLite and arming each in a wheel
(what ``Engine.restore`` did before it read only the first ``LOAD_BATCH``), ``Engine.restore``
itself and the ratio of the two, and, end to end, a real ``rtserver serve`` from spawn to its
first ``/healthz`` 200, against the same on a store without timers (the floor: start-up's
imports, templates and server). Goal: ready in < 1.5 s with 1,000,000 timers.

``--server CMD`` times that server command instead of this Python's ``-m rtserver`` (the
binary, say: ``--server "taskset -c 0 dist/rtserver"``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import free_port, machine, tree_rss_kib
from rtserver.config.schema import load_config
from rtserver.engine.engine import LOAD_BATCH, Engine
from rtserver.engine.timers import TimerWheel
from rtserver.runtime import load_rules
from rtserver.store.database import Store

GOAL_S = 1.5
ROOT = Path(__file__).resolve().parent.parent
NOW = float(int(time.time()))
"""The timers are due over the 48 h after the bench starts, for the server as for the process."""


async def build(path: Path, timers: int) -> None:
    """A store with ``timers`` open runs of ``cart_abandonment`` and one timer each."""
    store = await Store.open(path)  # creates the schema
    await store.close()
    rnd = random.Random(1)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO runs (id, workflow, person_id, key, started, step, step_kind, variant, "
            "holdout, wait_met, sends, due, state, ended_at, end_reason, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (f"r{i:09d}", "cart_abandonment", f"u:{i // 3}", f"c{i}", NOW, 0,
                 "wait_inactive", "", 0, 0, 0, NOW + rnd.uniform(1, 172800), "active", None,
                 None, NOW)
                for i in range(timers)
            ),
        )  # fmt: skip
        conn.execute("INSERT INTO timers SELECT id, step, due, person_id FROM runs")


async def restore(path: Path) -> dict[str, float]:
    """Seconds to read every timer and to insert them all in a wheel (the baseline), and for
    ``Engine.restore``, which reads and arms only the ``LOAD_BATCH`` due first, in this
    process."""
    config = load_config(ROOT / "config.toml", env={}, overrides={"store": {"path": str(path)}})
    rules, _ = load_rules(config)
    store = await Store.open(path)
    try:
        tick_s = Engine(rules, store).tick_s
        started = time.perf_counter()
        async with store._write_lock:  # the read Engine.restore made before
            rows = await store._db.execute_fetchall(
                "SELECT run_id, CAST(due / ?1 AS INTEGER) + (due / ?1 > CAST(due / ?1 AS INTEGER))"
                " FROM timers",
                (tick_s,),
            )
        timers = len(rows)
        read = time.perf_counter() - started
        wheel_of: TimerWheel[str] = TimerWheel(int(NOW // tick_s) - 1)  # as restore starts it
        started = time.perf_counter()
        for run_id, tick in rows:
            wheel_of.insert(run_id, tick)
        wheel = time.perf_counter() - started
        del wheel_of  # the restore below builds its own
        rows.clear()
        started = time.perf_counter()
        armed = await Engine(rules, store).restore(NOW)
        total = time.perf_counter() - started
    finally:
        await store.close()
    return {
        "timers": timers,
        "armed": armed,
        "read_s": read,
        "wheel_s": wheel,
        "restore_s": total,
        "speedup": (read + wheel) / total,
    }


def serve_ready(path: Path, folder: Path, command: list[str]) -> dict[str, float]:
    """Spawn ``command serve`` on the store; seconds until /healthz answers, and its RSS
    (the largest of the process and its children: a one-file binary runs in a child)."""
    port = free_port()
    config = folder / "restart.toml"
    workflows = (ROOT / "config.toml").read_text(encoding="utf-8")
    config.write_text(
        f'[server]\nport = {port}\nlog_level = "warning"\n'
        f"[store]\npath = {json.dumps(str(path))}\n" + workflows[workflows.index("[[workflow]]") :],
        encoding="utf-8",
    )
    started = time.perf_counter()
    server = subprocess.Popen([*command, "serve", "--config", str(config)], cwd=folder)
    try:
        deadline = started + 60.0
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return {
                            "ready_s": time.perf_counter() - started,
                            "rss_mib": tree_rss_kib(server.pid) / 1024,
                        }
            except OSError:
                time.sleep(0.02)  # polling a process we started: bounded by the deadline
        raise RuntimeError("the server did not become ready within 60 s")
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--server", default="", help="the server command (default: -m rtserver)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtserver-restart-") as name:
        folder = Path(name)
        path = folder / "restart.db"
        asyncio.run(build(path, args.timers))
        result: dict[str, Any] = {"timers": args.timers, **asyncio.run(restore(path))}
        command = shlex.split(args.server) or [sys.executable, "-m", "rtserver"]
        result.update(serve_ready(path, folder, command))
        empty = folder / "empty.db"
        asyncio.run(build(empty, 0))
        result["floor_s"] = serve_ready(empty, folder, command)["ready_s"]
    result["goal_met"] = result["ready_s"] < GOAL_S
    result["machine"] = machine()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"restart with {args.timers:,} pending timers")
    print(f"  read every timer       {result['read_s']:.2f} s (baseline: one SELECT of them all)")
    print(f"  insert them in a wheel {result['wheel_s']:.2f} s (baseline: TimerWheel.insert each)")
    print(
        f"  Engine.restore         {result['restore_s']:.2f} s ({result['armed']:,} armed: "
        f"the first {LOAD_BATCH:,}), {result['speedup']:.1f}x the baseline"
    )
    print(f"  spawn -> /healthz 200  {result['ready_s']:.2f} s, RSS {result['rss_mib']:.0f} MiB")
    print(
        f"  ... without timers     {result['floor_s']:.2f} s "
        f"(the floor: {result['ready_s'] / result['floor_s']:.2f}x)"
    )
    verdict = "met" if result["goal_met"] else "MISSED"
    print(f"goal: ready in < {GOAL_S:g} s: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
