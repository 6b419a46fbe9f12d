"""Pending timers at scale: rtserver's TimerWheel against ``loop.call_at`` on asyncio and uvloop.

    python -m bench.timers                       # 1M pending timers, median of 3 runs
    python -m bench.timers --n 100000 --repeat 1 --json

Per timer, in ns (median over ``--repeat`` runs, implementations interleaved; the garbage
collector stays on, as in production; deadlines spread over 48 h at a 1 s tick):

- schedule: arm n new timers.
- re-arm: move every timer 1 s to 30 min later (a sliding "inactive for 30 min"), in random
  order; for call_at that is ``handle.cancel()`` and a new ``call_at``.
- cancel: cancel every timer, in random order. asyncio, like the wheel, only marks a cancelled
  timer and cleans up later; uvloop removes it from libuv's heap at once.
- expire: every timer overdue at once (a restart after downtime), each key handed to the same
  callback: ``wheel.poll(now)`` against the loop running its n overdue handles. The wheel's
  tick-by-tick expiry across the 48 h (the driver's normal pattern) is reported for the wheel
  alone: a loop cannot be made to pass 48 h without waiting for them.
- bytes/timer: tracemalloc after scheduling n timers, and again after re-arming them all;
  keys and deadlines are made beforehand and not counted.
- restart: insert n (key, deadline) rows from a list into a fresh wheel (the SQL is measured
  elsewhere).

Baselines: "call_at" keeps its handles in a list, the least any caller keeps; "call_at+dict"
keeps a dict key → handle, which cancelling by key needs (the wheel cancels by key). Goals:
schedule and re-arm ≥ 2×, cancel ≥ 1.2× faster, memory ≤ 0.35×, checked against
every baseline; the server runs on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import uvloop

from rtserver.engine.timers import TimerWheel

BASE_TICK = 1_800_000_000
HORIZON_TICKS = 48 * 3600
SLIDE_TICKS = 30 * 60
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
IMPLS = ["wheel"] + [f"{loop} call_at{kind}" for loop in LOOPS for kind in ("", "+dict")]
GOALS = {"schedule": 2.0, "rearm": 2.0, "cancel": 1.2}
MEMORY_GOAL = 0.35
OPS = ("schedule", "rearm", "cancel", "expire")


@dataclass(frozen=True)
class Workload:
    """Keys and deadlines, made once before anything is measured."""

    keys: list[str]
    deadlines: list[int]
    order: list[int]  # a random permutation: re-arms and cancels come in no particular order
    rearm: list[tuple[str, int]]  # (key, later deadline) in `order`
    cancel: list[str]  # keys in `order`

    @classmethod
    def make(cls, n: int, seed: int) -> Workload:
        rnd = random.Random(seed)
        keys = [f"{run}:{rnd.randrange(8)}" for run in range(10**9, 10**9 + n)]
        deadlines = [BASE_TICK + 1 + rnd.randrange(HORIZON_TICKS) for _ in range(n)]
        order = list(range(n))
        rnd.shuffle(order)
        rearm = [(keys[i], deadlines[i] + 1 + rnd.randrange(SLIDE_TICKS)) for i in order]
        return cls(keys, deadlines, order, rearm, [keys[i] for i in order])


class Counter:
    """The callback every timer fires into; resolves ``done`` after the last one."""

    def __init__(self, n: int, done: asyncio.Future[None] | None = None) -> None:
        self.left = n
        self.done = done

    def __call__(self, key: str) -> None:
        self.left -= 1
        if not self.left and self.done is not None:
            self.done.set_result(None)


def _ns_per_op(start: int, n: int) -> float:
    return (time.perf_counter_ns() - start) / n


def _noop(key: str) -> None:
    pass


# --- the wheel -----------------------------------------------------------------------------


def _filled_wheel(w: Workload) -> TimerWheel[str]:
    wheel: TimerWheel[str] = TimerWheel(BASE_TICK)
    insert = wheel.insert
    for key, deadline in zip(w.keys, w.deadlines, strict=True):
        insert(key, deadline)
    return wheel


def measure_wheel(w: Workload) -> dict[str, float]:
    """ns per timer to schedule, re-arm, cancel and expire (all overdue) on the wheel."""
    n = len(w.keys)
    out: dict[str, float] = {}
    gc.collect()
    wheel: TimerWheel[str] = TimerWheel(BASE_TICK)
    insert = wheel.insert
    start = time.perf_counter_ns()
    for key, deadline in zip(w.keys, w.deadlines, strict=True):
        insert(key, deadline)
    out["schedule"] = _ns_per_op(start, n)
    start = time.perf_counter_ns()
    for key, deadline in w.rearm:
        insert(key, deadline)
    out["rearm"] = _ns_per_op(start, n)
    cancel = wheel.cancel
    start = time.perf_counter_ns()
    for key in w.cancel:
        cancel(key)
    out["cancel"] = _ns_per_op(start, n)
    del wheel
    wheel = _filled_wheel(w)
    fire = Counter(n)
    gc.collect()
    start = time.perf_counter_ns()
    for key in wheel.poll(BASE_TICK + HORIZON_TICKS):
        fire(key)
    out["expire"] = _ns_per_op(start, n)
    assert not fire.left and not wheel
    return out


def measure_wheel_alone(w: Workload) -> dict[str, float]:
    """What only the wheel can show: tick-by-tick expiry over 48 h, and a restart."""
    n = len(w.keys)
    wheel = _filled_wheel(w)
    fire = Counter(n)
    poll = wheel.poll
    gc.collect()
    start = time.perf_counter_ns()
    for tick in range(BASE_TICK + 1, BASE_TICK + HORIZON_TICKS + 1):
        for key in poll(tick):
            fire(key)
    expire_ticks = _ns_per_op(start, n)
    assert not fire.left and not wheel
    rows = list(zip(w.keys, w.deadlines, strict=True))
    gc.collect()
    start = time.perf_counter_ns()
    wheel = TimerWheel(BASE_TICK)
    insert = wheel.insert
    for key, deadline in rows:
        insert(key, deadline)
    restart_s = (time.perf_counter_ns() - start) / 1e9
    return {"expire_ticks": expire_ticks, "restart_s": restart_s}


# --- loop.call_at --------------------------------------------------------------------------


def measure_call_at(loop_name: str, keyed: bool, w: Workload) -> dict[str, float]:
    """ns per timer to schedule, re-arm, cancel and expire (all overdue) with call_at."""
    n = len(w.keys)
    out: dict[str, float] = {}
    loop = LOOPS[loop_name]()
    try:
        origin = loop.time() + 3600.0 - BASE_TICK
        whens = [origin + deadline for deadline in w.deadlines]
        rewhens = [(key, origin + deadline) for key, deadline in w.rearm]
        call_at = loop.call_at
        gc.collect()
        if keyed:
            by_key: dict[str, asyncio.TimerHandle] = {}
            start = time.perf_counter_ns()
            for key, when in zip(w.keys, whens, strict=True):
                by_key[key] = call_at(when, _noop, key)
            out["schedule"] = _ns_per_op(start, n)
            start = time.perf_counter_ns()
            for key, when in rewhens:
                by_key[key].cancel()
                by_key[key] = call_at(when, _noop, key)
            out["rearm"] = _ns_per_op(start, n)
            start = time.perf_counter_ns()
            for key in w.cancel:
                by_key.pop(key).cancel()
            out["cancel"] = _ns_per_op(start, n)
        else:
            handles: list[asyncio.TimerHandle] = []
            append = handles.append
            start = time.perf_counter_ns()
            for key, when in zip(w.keys, whens, strict=True):
                append(call_at(when, _noop, key))
            out["schedule"] = _ns_per_op(start, n)
            start = time.perf_counter_ns()
            for i, (key, when) in zip(w.order, rewhens, strict=True):
                handles[i].cancel()
                handles[i] = call_at(when, _noop, key)
            out["rearm"] = _ns_per_op(start, n)
            start = time.perf_counter_ns()
            for i in w.order:
                handles[i].cancel()
            out["cancel"] = _ns_per_op(start, n)
    finally:
        loop.close()
    out["expire"] = _expire_call_at(loop_name, w)
    return out


def _expire_call_at(loop_name: str, w: Workload) -> float:
    """ns per timer for a loop to run n overdue handles into the counting callback."""
    n = len(w.keys)
    loop = LOOPS[loop_name]()
    try:
        done: asyncio.Future[None] = loop.create_future()
        fire = Counter(n, done)
        origin = loop.time() - HORIZON_TICKS - 1.0 - BASE_TICK  # every deadline is past
        for key, deadline in zip(w.keys, w.deadlines, strict=True):
            loop.call_at(origin + deadline, fire, key)
        gc.collect()
        start = time.perf_counter_ns()
        loop.run_until_complete(done)
        return _ns_per_op(start, n)
    finally:
        loop.close()


# --- memory --------------------------------------------------------------------------------


def memory(impl: str, w: Workload) -> tuple[float, float]:
    """Bytes per timer traced after scheduling n timers, then after re-arming them all."""
    n = len(w.keys)
    loop = None if impl == "wheel" else LOOPS[impl.split()[0]]()
    keyed = impl.endswith("+dict")
    gc.collect()
    try:
        if loop is None:
            tracemalloc.start()
            wheel: TimerWheel[str] = TimerWheel(BASE_TICK)
            for key, deadline in zip(w.keys, w.deadlines, strict=True):
                wheel.insert(key, deadline)
            scheduled = tracemalloc.get_traced_memory()[0]
            for key, deadline in w.rearm:
                wheel.insert(key, deadline)
            rearmed = tracemalloc.get_traced_memory()[0]
        else:
            origin = loop.time() + 3600.0 - BASE_TICK
            whens = [origin + deadline for deadline in w.deadlines]
            rewhens = [(key, origin + deadline) for key, deadline in w.rearm]
            tracemalloc.start()
            if keyed:
                by_key = {
                    key: loop.call_at(when, _noop, key)
                    for key, when in zip(w.keys, whens, strict=True)
                }
                scheduled = tracemalloc.get_traced_memory()[0]
                for key, when in rewhens:
                    by_key[key].cancel()
                    by_key[key] = loop.call_at(when, _noop, key)
            else:
                handles = [
                    loop.call_at(when, _noop, key) for key, when in zip(w.keys, whens, strict=True)
                ]
                scheduled = tracemalloc.get_traced_memory()[0]
                for i, (key, when) in zip(w.order, rewhens, strict=True):
                    handles[i].cancel()
                    handles[i] = loop.call_at(when, _noop, key)
            rearmed = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        if loop is not None:
            loop.close()
    return scheduled / n, rearmed / n


# --- the run and the report ----------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    w = Workload.make(args.n, args.seed)
    runs: dict[str, list[dict[str, float]]] = {impl: [] for impl in IMPLS}
    alone: list[dict[str, float]] = []
    for repeat in range(args.repeat):
        shift = repeat % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:  # rotate, so no one always goes first
            print(f"# run {repeat + 1}/{args.repeat}: {impl}", file=sys.stderr, flush=True)
            if impl == "wheel":
                runs[impl].append(measure_wheel(w))
            else:
                loop_name, kind = impl.split()
                runs[impl].append(measure_call_at(loop_name, kind.endswith("+dict"), w))
        alone.append(measure_wheel_alone(w))
    results = []
    for impl in IMPLS:
        print(f"# memory: {impl}", file=sys.stderr, flush=True)
        scheduled, rearmed = memory(impl, w)
        row: dict[str, Any] = {"impl": impl}
        for op in OPS:
            values = [r[op] for r in runs[impl]]
            row[f"{op}_ns"] = statistics.median(values)
            row[f"{op}_ns_range"] = [min(values), max(values)]
        row["bytes_per_timer"] = scheduled
        row["bytes_per_timer_rearmed"] = rearmed
        results.append(row)
    wheel_alone = {
        "expire_ticks_ns": statistics.median(a["expire_ticks"] for a in alone),
        "restart_s": statistics.median(a["restart_s"] for a in alone),
    }
    return {
        "bench": "timers",
        "params": {"n": args.n, "repeat": args.repeat, "seed": args.seed, "gc": gc.isenabled()},
        "machine": {
            "nproc": os.cpu_count(),
            "python": sys.version.split()[0],
            "uvloop": version("uvloop"),
            "load_avg_1m": os.getloadavg()[0],
        },
        "results": results,
        "wheel_alone": wheel_alone,
        "goals": goals(results),
    }


def goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wheel against each baseline: speed-ups (baseline ns / wheel ns) and memory ratio."""
    wheel = results[0]
    verdicts = []
    for base in results[1:]:
        verdict: dict[str, Any] = {"baseline": base["impl"]}
        for op in OPS:
            ratio = base[f"{op}_ns"] / wheel[f"{op}_ns"]
            goal = GOALS.get(op)
            verdict[op] = {
                "speedup": ratio,
                "goal": goal,
                "met": None if goal is None else ratio >= goal,
            }
        ratio = wheel["bytes_per_timer"] / base["bytes_per_timer"]
        verdict["memory"] = {"ratio": ratio, "goal": MEMORY_GOAL, "met": ratio <= MEMORY_GOAL}
        verdicts.append(verdict)
    return verdicts


def render(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        f"{p['n']:,} pending timers, deadlines over 48 h at 1 s ticks; median of {p['repeat']}; "
        f"gc {'on' if p['gc'] else 'off'}; load {report['machine']['load_avg_1m']:.2f}",
        "",
        f"{'ns per timer':<22}{'schedule':>10}{'re-arm':>10}{'cancel':>10}{'expire':>10}"
        f"{'B/timer':>10}{'B re-armed':>12}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['impl']:<22}{r['schedule_ns']:>10.0f}{r['rearm_ns']:>10.0f}{r['cancel_ns']:>10.0f}"
            f"{r['expire_ns']:>10.0f}{r['bytes_per_timer']:>10.1f}{r['bytes_per_timer_rearmed']:>12.1f}"
        )
    lines += [
        "",
        "wheel vs baseline      schedule ≥2×    re-arm ≥2×     cancel ≥1.2×   memory ≤0.35×  "
        "expire",
    ]
    for v in report["goals"]:
        cells = [f"{v[op]['speedup']:.2f}× {'yes' if v[op]['met'] else 'NO ':<3}" for op in GOALS]
        memory_cell = f"{v['memory']['ratio']:.2f}× {'yes' if v['memory']['met'] else 'NO'}"
        lines.append(
            f"{v['baseline']:<22}" + "".join(f"{c:<15}" for c in cells) + f"{memory_cell:<15}"
            f"{v['expire']['speedup']:.2f}×"
        )
    alone = report["wheel_alone"]
    n = p["n"]
    lines += [
        "",
        f"wheel alone: expire tick by tick over 48 h {alone['expire_ticks_ns']:.0f} ns/timer; "
        f"restart: {n:,} rows into a fresh wheel in {alone['restart_s']:.2f} s "
        f"({alone['restart_s'] * 1e9 / n:.0f} ns/row)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="pending timers")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.no_gc:
        gc.disable()
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else render(report))


if __name__ == "__main__":
    main()
