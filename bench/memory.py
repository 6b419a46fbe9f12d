"""Facts memory: what the engine's memory of recently decided persons costs, per person and in RSS.

The engine keeps the facts of the persons it decided lately (:class:`rtserver.engine.memory.Memory`)
so a group reads from the store only the persons it has not seen. This builds realistic facts: a
person with an id, a verified email, a few traits, a time zone, two orders, one open run, one
ended run, a last mail, and a recent history of ``E`` events of the shop mix whose names are
decoded from JSON (each its own string, as a parsed event's name is); then

* ``tracemalloc``: bytes per person of ``--persons`` persons' entries, for each ``E`` of
  ``--events`` and for no events (the fixed part), as the memory holds them;
* RSS: a fresh process (``--rss-persons`` persons, ``E`` = the largest of ``--events``) reads its
  ``VmRSS`` before and after building the facts and keeping them all in a ``Memory``; with
  ``--budget-mb`` (the ``engine.memory_mb`` setting) it keeps what that budget allows instead,
  and reports how many persons that is.

It measures the tree it runs in, so the same script run in a checkout of an older commit measures
that commit's representation (a tuple of ``(name, time)`` tuples there).

    python -m bench.memory                      # 2,000 persons traced, 50,000 in RSS
    python -m bench.memory --budget-mb 128      # ... and what the default budget keeps
    python -m bench.memory --quick --json       # the smoke run of tests/test_bench.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from bench._common import ROOT, Column, document, emit, format_table, rss_kib
from rtserver.engine.memory import Memory
from rtserver.model import Facts, Person, Run

MIX = (
    "Page Viewed", "Product Viewed", "Product Viewed", "Product Added", "Product Viewed",
    "Product Added", "Page Viewed", "Checkout Started", "Order Completed", "Email Opened",
)  # fmt: skip
"""Names of a shopper's events, in turn."""
START = 1_800_000_000.0
COLUMNS = [
    Column("measure", "measure"),
    Column("events", "events/person", "{:,}"),
    Column("persons", "persons", "{:,}"),
    Column("bytes_per_person", "bytes/person", "{:,.0f}"),
    Column("rss_mib", "RSS MiB (held)", "{:,.1f}"),
    Column("kept", "kept", "{:,}"),
]


def history_maker() -> Callable[[Iterable[tuple[str, float]]], Any]:
    """How this tree stores a history: its ``History`` class, or a tuple (before it)."""
    import rtserver.model

    maker: Callable[[Iterable[tuple[str, float]]], Any] = getattr(rtserver.model, "History", tuple)
    return maker


def entry(i: int, events: int, history: Callable[[Iterable[tuple[str, float]]], Any]) -> Any:
    """One person's memory entry, ``(facts, oldest)``, with ``events`` recent events."""
    raw = orjson.dumps([MIX[(i + k) % len(MIX)] for k in range(events)])
    names: list[str] = orjson.loads(raw)  # each its own string, as parsed events' names are
    times = [START + i + 60.0 * k for k in range(events)]
    person_id = f"u:shopper-{i:06d}"
    person = Person(
        id=person_id,
        email=f"shopper-{i}@shop.example",
        traits={"name": f"Shopper {i}", "plan": "pro", "newsletter": True},
        consent="confirmed_opt_in",
        first_seen=START,
        last_seen=START + 60.0 * events,
        orders_count=2,
        total_spent=123.45,
        last_order_at=START + 30.0,
        time_zone="Europe/Berlin",
        order_times=(START + 10.0, START + 30.0),
        history=history(zip(names, times, strict=True)),
    )
    run = Run(
        id=f"{i:032x}",
        workflow="cart_abandonment",
        person_id=person_id,
        key=f"cart-{i}",
        started=START,
        step=1,
        step_kind="wait",
        due=START + 3600.0,
    )
    facts = Facts(
        person=person,
        runs=(run,),
        last_ended={("browse_abandonment", ""): START - 86400.0},
        last_sent=START - 86400.0,
    )
    return facts, START


def fill(memory: Memory, persons: int, events: int) -> None:
    """Keep ``persons`` entries in ``memory``, a thousand at a time (as groups would)."""
    history = history_maker()
    for first in range(0, persons, 1000):
        memory.keep(
            {
                f"u:shopper-{i:06d}": entry(i, events, history)
                for i in range(first, min(persons, first + 1000))
            }
        )


def unbounded() -> Memory:
    """A memory that keeps everything built here (its limit, in persons before and in bytes
    now, is far above it)."""
    return Memory(10**15)


def traced(persons: int, events: int) -> dict[str, Any]:
    """Bytes per person of ``persons`` entries in a ``Memory``, as tracemalloc counts them."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    memory = unbounded()
    fill(memory, persons, events)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del memory
    return {
        "measure": "tracemalloc",
        "events": events,
        "persons": persons,
        "bytes_per_person": (after - before) / persons,
    }


def held(persons: int, events: int, budget_mb: int | None) -> dict[str, Any]:
    """RSS growth of this process holding ``persons`` entries in a ``Memory``."""
    gc.collect()
    before = rss_kib(os.getpid())
    memory = unbounded() if budget_mb is None else Memory(budget_mb * 1024 * 1024)
    fill(memory, persons, events)
    gc.collect()
    after = rss_kib(os.getpid())
    return {
        "measure": "RSS" if budget_mb is None else f"RSS, budget {budget_mb} MiB",
        "events": events,
        "persons": persons,
        "bytes_per_person": (after - before) * 1024 / len(memory.entries),
        "rss_mib": (after - before) / 1024,
        "kept": len(memory.entries),
    }


def in_child(persons: int, events: int, budget_mb: int | None) -> dict[str, Any]:
    """:func:`held` in a fresh process, so nothing measured before counts."""
    flags = ["--child", str(persons), str(events)]
    if budget_mb is not None:
        flags += ["--budget-mb", str(budget_mb)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--persons", type=int, default=2000, help="persons traced")
    parser.add_argument(
        "--events",
        default="20,200",
        type=lambda text: [int(n) for n in text.split(",")],
        help="recent events per person, comma-separated (the largest for RSS)",
    )
    parser.add_argument("--rss-persons", type=int, default=50_000, help="persons held for RSS")
    parser.add_argument(
        "--budget-mb", type=int, default=None, help="also hold them in a Memory of this budget"
    )
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.quick:
        args.persons, args.rss_persons, args.events = 50, 200, [5, 20]
    return args


def main() -> int:
    args = parse_args()
    if args.child:
        persons, events = args.child
        print(json.dumps(held(persons, events, args.budget_mb)))
        return 0
    results = [traced(args.persons, events) for events in (0, *args.events)]
    results.append(in_child(args.rss_persons, max(args.events), None))
    if args.budget_mb is not None:
        results.append(in_child(args.rss_persons, max(args.events), args.budget_mb))
    report = document("memory", args, results, {})
    emit(report, format_table(results, COLUMNS), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
