"""Decision CPU per event: the engine deciding a shopper's events, in process, no sockets.

What ``bench.ws_latency --workflows config.toml --mix shop`` measures end to end (and where rtserver
is CPU-bound at 5,000 events/s), reduced to the part that saturates: a real
:class:`~rtserver.store.database.Store` on a temporary file (``synchronous=FULL``, as shipped) and
the real :class:`~rtserver.engine.engine.Engine`, fed groups of ``--group`` events of the shop mix
(each shopper: pricing page from Google, product view ×2, add to cart, product view, add to cart,
checkout page, product view, order, product view; a new cart and order each round), each group
committed with ``store.group_commit(events, times, engine.plan((), now))`` and then
``engine.committed(...)``, as the pipeline does. The clock is virtual: a group every ``group /
rate`` seconds, so timers never fire.

Reported: CPU µs per event of the store's writer thread (prepare, facts, decisions, SQL: all of
a group commit runs there) and of the whole process, with no workflows (the ingest baseline) and
with the workflows of ``--workflows`` (default: the shipped ``config.toml``); the difference is
what deciding costs. CPU time, not wall time, so a busy machine changes the figures little. A
separate pass with timers around each phase splits the writer's CPU into prepare, facts load,
observe + decide, fold (actions into changes) and the SQL write; its total is a little higher
(the timers cost too).

    python -m bench.decide                  # 50,000 events, 1,000 shoppers, median of 3
    python -m bench.decide --quick --json   # the smoke run of tests/test_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from bench._common import Column, document, emit, format_table
from rtserver.config.schema import IngestConfig, load_config
from rtserver.engine.definitions import Workflows
from rtserver.engine.engine import Engine
from rtserver.model.events import Event, parse_event
from rtserver.runtime import load_rules
from rtserver.store import writer
from rtserver.store.changes import Changes, Prepared
from rtserver.store.database import Store
from rtserver.store.writer import Source
from rtserver.tools.loadgen import SHOP_CYCLE, SHOP_EVENTS, SHOP_TAIL

ROOT = Path(__file__).resolve().parent.parent
START = 1_800_000_000.0
PHASES = ("prepare", "facts", "decide", "fold", "write")
PHASE_NAMES = {
    "prepare": "prepare (dedup, persons)",
    "facts": "facts load",
    "decide": "observe + decide",
    "fold": "fold (actions → changes)",
    "write": "SQL write + commit",
}
COLUMNS = [
    Column("workflows", "workflows"),
    Column("events", "events", "{:,}"),
    Column("writer_us", "writer CPU µs/event", "{:.1f}"),
    Column("process_us", "process CPU µs/event", "{:.1f}"),
    Column("wall_us", "wall µs/event", "{:.1f}"),
    Column("runs", "runs written", "{:,}"),
    Column("timers", "timer rows", "{:,}"),
]


def shop_events(run: str, shoppers: int, events: int) -> list[Event]:
    """The shop mix of ``bench.ws_latency``: event i is shopper ``i % shoppers``'s next one."""
    limits = IngestConfig()
    found = []
    for i in range(events):
        client, seq = i % shoppers, i // shoppers
        kind = SHOP_CYCLE[seq % len(SHOP_CYCLE)]
        values = {
            "n": i,
            "cart": f"{run}-{client}-{seq // len(SHOP_CYCLE)}",
            "mid": f"{run}-{client}-{i}",
            "anon": f"anon-{run}-{client}",
        }
        raw = orjson.loads((SHOP_EVENTS[kind] + SHOP_TAIL) % values)
        found.append(parse_event(raw, limits, source="browser", client_ip="127.0.0.1"))
    return found


def thread_cpu(ident: int) -> float:
    """CPU seconds of the thread ``ident`` so far."""
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


class Phases:
    """CPU seconds per phase of the writer's work, from timers wrapped around each function."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.nested = 0.0

    def timed(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.thread_time() - started

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap prepare, commit, the engine's facts, its fold and the whole plan."""
        originals = {
            (writer, "prepare"): writer.prepare,
            (writer, "commit"): writer.commit,
            (Engine, "_facts"): Engine._facts,
            (Engine, "_fold"): Engine._fold,
            (Engine, "decide"): Engine.decide,
        }
        phases = {
            "prepare": "prepare",
            "commit": "write",
            "_facts": "facts",
            "_fold": "fold",
            "decide": "decide",
        }
        try:
            for (owner, name), function in originals.items():
                setattr(owner, name, self.timed(phases[name], function))
            yield
        finally:
            for (owner, name), function in originals.items():
                setattr(owner, name, function)

    def split(self) -> dict[str, float]:
        """Seconds per phase; "decide" is the plan less the facts and the fold inside it."""
        split = dict(self.seconds)
        split["decide"] -= split["facts"] + split["fold"]
        return split


async def decide_all(
    rules: Workflows, events: list[Event], group: int, rate: float, phases: Phases | None
) -> dict[str, Any]:
    """Commit ``events`` in groups through a fresh store and engine; CPU and wall time."""
    with tempfile.TemporaryDirectory(prefix="rtserver-decide-") as folder:
        store = await Store.open(Path(folder) / "decide.db")
        try:
            engine = Engine(rules, store)
            await engine.restore(START)
            writer: list[int] = []

            def name_thread(prepared: Prepared, source: Source) -> Changes:
                writer.append(threading.get_ident())  # the store's writer thread
                return Changes()

            await store.group_commit([], [], name_thread)  # an empty group: nothing written
            runs = timers = 0
            with phases.installed() if phases is not None else contextlib.nullcontext():
                wall, process = time.perf_counter(), time.process_time()
                writer_cpu = 0.0
                for n, first in enumerate(range(0, len(events), group)):
                    now = START + n * group / rate
                    chunk = events[first : first + group]
                    before = thread_cpu(writer[0])
                    prepared, changes = await store.group_commit(
                        chunk, [now] * len(chunk), engine.plan((), now)
                    )
                    writer_cpu += thread_cpu(writer[0]) - before
                    engine.committed(changes, [k.person_id for k in prepared.links if k.merge_from])
                    runs += len(changes.runs)
                    timers += len(changes.timers)
                wall, process = time.perf_counter() - wall, time.process_time() - process
        finally:
            await store.close()
    count = len(events)
    return {
        "events": count,
        "writer_us": 1e6 * writer_cpu / count,
        "process_us": 1e6 * process / count,
        "wall_us": 1e6 * wall / count,
        "runs": runs,
        "timers": timers,
    }


def measure(
    label: str, rules: Workflows, events: list[Event], args: argparse.Namespace
) -> dict[str, Any]:
    """Median over ``--repeat`` runs (each on a fresh store), plus one run split by phase."""
    runs = [asyncio.run(decide_all(rules, events, args.group, args.rate, None))]
    for _ in range(args.repeat - 1):
        runs.append(asyncio.run(decide_all(rules, events, args.group, args.rate, None)))
    result: dict[str, Any] = {"workflows": label, "events": len(events)}
    for key in ("writer_us", "process_us", "wall_us"):
        result[key] = statistics.median(r[key] for r in runs)
        result[key + "_runs"] = [r[key] for r in runs]
    result["runs"], result["timers"] = runs[0]["runs"], runs[0]["timers"]
    phases = Phases()
    split = asyncio.run(decide_all(rules, events, args.group, args.rate, phases))
    result["phases_us"] = {k: 1e6 * s / len(events) for k, s in phases.split().items()}
    result["phases_total_us"] = split["writer_us"]
    return result


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    by_label = {r["workflows"]: r for r in results}
    lines = [
        f"Decision CPU: {args.events:,} events of the shop mix, {args.shoppers:,} shoppers, "
        f"groups of {args.group} ({args.rate:g} events/s of virtual time), median of "
        f"{args.repeat}",
        format_table(results, COLUMNS),
        "",
        "writer CPU µs/event by phase (a separate pass with timers around each phase):",
    ]
    phase_rows = [
        {"phase": PHASE_NAMES[p], **{r["workflows"]: r["phases_us"][p] for r in results}}
        for p in PHASES
    ]
    phase_rows.append(
        {"phase": "total (timed pass)", **{r["workflows"]: r["phases_total_us"] for r in results}}
    )
    columns = [Column("phase", "phase")] + [
        Column(r["workflows"], r["workflows"], "{:.1f}") for r in results
    ]
    lines.append(format_table(phase_rows, columns))
    summary: dict[str, Any] = {}
    if "none" in by_label and len(results) > 1:
        shipped = results[-1]
        summary["decide_us_per_event"] = shipped["writer_us"] - by_label["none"]["writer_us"]
        lines.append(
            f"deciding costs {summary['decide_us_per_event']:.1f} µs/event of writer CPU "
            f"over ingest alone ({shipped['writer_us']:.1f} vs "
            f"{by_label['none']['writer_us']:.1f}); at 5,000 events/s the writer would be "
            f"{shipped['writer_us'] * 5000 / 1e4:.0f} % busy"
        )
    return document("decide", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--shoppers", type=int, default=1000)
    parser.add_argument("--group", type=int, default=250, help="events per group commit")
    parser.add_argument(
        "--rate", type=float, default=5000.0, help="events/s of virtual time (spaces the groups)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument(
        "--workflows",
        metavar="CONFIG",
        default=str(ROOT / "config.toml"),
        help="the config whose [[workflow]] tables decide (measured after a run with none)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2,000 events, 100 shoppers, one run (smoke)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.quick:
        args.events, args.shoppers, args.repeat = 2000, 100, 1
    return args


def main() -> int:
    args = parse_args()
    config = load_config(Path(args.workflows), env={}, overrides={"store": {"path": ":memory:"}})
    rules, _ = load_rules(config)
    events = shop_events("bench", args.shoppers, args.events)
    # The events waiting here would otherwise be traversed by every full collection of the
    # garbage collector: a server holds a group at a time, not the whole run.
    gc.freeze()
    results = [
        measure("none", Workflows(policy=rules.policy), events, args),
        measure(Path(args.workflows).name, rules, events, args),
    ]
    emit(*report(args, results), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
