"""Ack latency (send → ack received) at a fixed event rate over many WebSockets.

Open loop: one event per frame, sent on schedule (``--rate`` events/s spread round-robin over
``--connections``) whether or not earlier acks came back, so a slow server shows up as latency
instead of slowing the sender down. Latency is taken from just before the frame is written to the
ack's arrival; how late the sender itself was against its schedule is printed as well (if that is
large, the client was the bottleneck). The first ``--warmup-s`` seconds are not counted.
The goal is p99 < 10 ms at 5,000 events/s over 1,000 connections.

With ``--workflows CONFIG`` rtserver decides every event against that config's workflows before
it acks it (the decisions are committed with the event, in the same transaction), so send → ack
bounds event → decision from above (goal: p99 < 50 ms at 5,000 events/s). ``--mix shop`` sends
what a shopper does (page views, product views, add to cart, orders) so that runs start, re-arm
and end, instead of product views only; the rtserver row then counts the runs and timers left.

    python -m bench.ws_latency --connections 1000 --rate 5000 --events 50000
    python -m bench.ws_latency --workflows config.toml --mix shop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from bench._common import (
    ORIGIN,
    WS_PATH,
    BenchError,
    Column,
    CpuMeter,
    base_parser,
    bench_main,
    document,
    emit,
    format_table,
    make_batch,
    percentile,
    ratio,
    run_id,
    running,
    server_spec,
    workdir,
    workflows_of,
)
from rtserver.tools.loadgen import shop_frames
from rtserver.tools.wire import WsConn, client_frame, close_all, open_ws_many

GOAL_P99_MS = 10.0
GOAL_DECISION_P99_MS = 50.0
BASELINE = "bare-websockets"
DRAIN_S = 10.0
TICK_S = 0.001
COLUMNS = [
    Column("server", "server"),
    Column("acked", "acked", "{:,}"),
    Column("rate", "events/s", "{:,.0f}"),
    Column("p50_ms", "p50 ms", "{:.2f}"),
    Column("p90_ms", "p90 ms", "{:.2f}"),
    Column("p99_ms", "p99 ms", "{:.2f}"),
    Column("p999_ms", "p99.9 ms", "{:.2f}"),
    Column("max_ms", "max ms", "{:.1f}"),
    Column("send_lag_p99_ms", "send lag p99 ms", "{:.2f}"),
    Column("server_cpu_pct", "server CPU %", "{:.0f}"),
    Column("client_cpu_pct", "client CPU %", "{:.0f}"),
]


MIXES = ("viewed", "shop")


def decisions_in(store: str) -> dict[str, Any]:
    """What the engine decided, read from the stopped server's store: runs by workflow and
    state, timers pending, steps decided."""
    with contextlib.closing(sqlite3.connect(store)) as conn:
        runs = conn.execute("SELECT workflow, state, count(*) FROM runs GROUP BY 1, 2").fetchall()
        (timers,) = conn.execute("SELECT count(*) FROM timers").fetchone()
        (steps,) = conn.execute("SELECT count(*) FROM steps").fetchone()
    return {
        "runs": {f"{workflow} {state}": n for workflow, state, n in sorted(runs)},
        "timers_pending": timers,
        "steps": steps,
    }


class Timings:
    """Send times waiting for their ack, per connection (acks come back in order; one ack may
    cover several frames)."""

    def __init__(self, conns: list[WsConn], warmup: int):
        self.pending: list[deque[tuple[float, str, int]]] = [deque() for _ in conns]
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.acked = 0
        self.warmup = warmup
        self.finished = False
        """Set before the client closes its connections: closes are no failure then."""
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for i, conn in enumerate(conns):
            conn.on_text = self._receiver(i)
            conn.closed.add_done_callback(self._closed(i, conn))

    def _receiver(self, client: int) -> Callable[[bytes], None]:
        pending = self.pending[client]

        def on_text(payload: bytes) -> None:
            now = time.perf_counter()
            acked = orjson.loads(payload).get("ack")
            if not isinstance(acked, list) or len(acked) > len(pending):
                self._fail(f"connection {client}: unexpected reply {payload[:200]!r}")
                return
            for acked_id in acked:  # one ack may cover several frames, in the order sent
                sent, message_id, index = pending.popleft()
                if acked_id != message_id:
                    self._fail(f"connection {client}: unexpected reply {payload[:200]!r}")
                    return
                self.acked += 1
                if index >= self.warmup:
                    self.latencies.append(now - sent)

        return on_text

    def _closed(self, client: int, conn: WsConn) -> Callable[[object], None]:
        return lambda _: self._fail(f"connection {client} closed by the server ({conn.close_code})")

    def _fail(self, why: str) -> None:
        if not self.finished and not self.failure.done():
            self.failure.set_exception(BenchError(why))

    def check(self) -> None:
        if self.failure.done():
            self.failure.result()


async def send_on_schedule(
    conns: list[WsConn],
    frames: list[tuple[bytes, str]],
    timings: Timings,
    rate: float,
    until: float,
) -> int:
    """Write frame i at ``start + i / rate`` (round-robin over connections); return how many."""
    start = time.perf_counter()
    sent = 0
    while sent < len(frames):
        now = time.perf_counter()
        if now >= until:
            break
        due = min(len(frames), int((now - start) * rate) + 1)
        while sent < due:
            client = sent % len(conns)
            frame, message_id = frames[sent]
            at = time.perf_counter()
            timings.pending[client].append((at, message_id, sent))
            conns[client].send(frame)
            if sent >= timings.warmup:
                timings.lags.append(at - (start + sent / rate))
            sent += 1
        timings.check()
        # Never less than a tick: a shorter sleep spins the loop (its timers have 1 ms steps).
        await asyncio.sleep(max(TICK_S, start + due / rate - time.perf_counter()))
    return sent


async def wait_for_acks(timings: Timings, sent: int) -> None:
    deadline = time.monotonic() + DRAIN_S
    while timings.acked < sent and time.monotonic() < deadline:
        timings.check()
        await asyncio.sleep(0.01)
    if timings.acked < sent:
        raise BenchError(f"{sent - timings.acked} of {sent} events not acked {DRAIN_S:g}s after")


async def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    run = run_id()
    if args.mix == "shop":
        frames = shop_frames(run, args.connections, args.events)
    else:
        batches = [make_batch(run, i % args.connections, i, 1) for i in range(args.events)]
        frames = [(client_frame(b.body), b.ids[0]) for b in batches]
    warmup = min(int(args.rate * args.warmup_s), args.events // 10)
    with workdir() as tmp:
        spec = server_spec(name, tmp, extra_config=workflows_of(args.workflows))
        async with running(spec, args.loop, tmp) as server:
            conns = await open_ws_many(args.connections, server.port, path=WS_PATH, origin=ORIGIN)
            timings = Timings(conns, warmup)
            meter = CpuMeter(server.process.pid)
            sent = await send_on_schedule(
                conns, frames, timings, args.rate, time.perf_counter() + args.duration
            )
            usage = meter.read()
            await wait_for_acks(timings, sent)
            timings.finished = True
            await close_all(conns)
        extra: dict[str, Any] = {}
        if name == "rtserver" and args.workflows:  # the server has stopped: its store is whole
            extra["decisions"] = decisions_in(spec.args[2].removesuffix(".toml") + ".db")
    latencies = sorted(timings.latencies)
    lags = sorted(timings.lags)

    def ms(values: list[float], q: float) -> float:
        return 1000.0 * percentile(values, q)

    return {
        "server": name,
        "sent": sent,
        "acked": timings.acked,
        "samples": len(latencies),
        "rate": sent / usage["elapsed_s"],
        "p50_ms": ms(latencies, 50),
        "p90_ms": ms(latencies, 90),
        "p99_ms": ms(latencies, 99),
        "p999_ms": ms(latencies, 99.9),
        "max_ms": ms(latencies, 100),
        "send_lag_p99_ms": ms(lags, 99),
        **usage,
        **extra,
    }


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    by_name = {r["server"]: r for r in results}
    deciding = f", rtserver deciding the workflows of {args.workflows}" if args.workflows else ""
    lines = [
        f"WebSocket ack latency: {args.connections} connections, {args.rate:g} events/s "
        f"(1 event/frame, mix {args.mix}), servers on {args.loop}{deciding}",
        format_table(results, COLUMNS),
    ]
    if "decisions" in by_name.get("rtserver", {}):
        decided = by_name["rtserver"]["decisions"]
        runs = ", ".join(f"{key} {n:,}" for key, n in decided["runs"].items()) or "none"
        lines.append(
            f"rtserver decided: runs {runs}; {decided['timers_pending']:,} timers pending, "
            f"{decided['steps']:,} steps"
        )
    summary: dict[str, Any] = {}
    if "rtserver" in by_name:
        p99 = by_name["rtserver"]["p99_ms"]
        goal = GOAL_DECISION_P99_MS if args.workflows else GOAL_P99_MS
        summary["goal_met"] = p99 < goal
        verdict = "met" if summary["goal_met"] else "MISSED"
        what = "event -> decision (send -> ack) " if args.workflows else ""
        line = f"rtserver {what}p99 {p99:.2f} ms (goal < {goal:g} ms: {verdict})"
        if BASELINE in by_name:
            summary["ratio"] = ratio(p99, by_name[BASELINE]["p99_ms"])
            line += f"; ratio rtserver / {BASELINE}: {summary['ratio']:.2f} (of p99)"
        lines.append(line)
    return document("ws_latency", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, ["rtserver", BASELINE])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second in all")
    parser.add_argument("--events", type=int, default=50_000, help="events in all (bound)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most (bound)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="first seconds not counted")
    parser.add_argument(
        "--workflows",
        metavar="CONFIG",
        help="run rtserver with the [[workflow]] tables of this config (the ack comes after the "
        "event's decisions are committed, so this measures event -> decision; goal p99 < "
        f"{GOAL_DECISION_P99_MS:g} ms)",
    )
    parser.add_argument(
        "--mix",
        choices=MIXES,
        default="viewed",
        help="events sent: Product Viewed only, or a shopper's page views, product views, adds "
        "to cart and orders (runs start, re-arm and end)",
    )
    return parser.parse_args()


async def main() -> int:
    args = parse_args()
    results = [await measure(name, args) for name in args.servers]
    emit(*report(args, results), args.json)
    return 0


if __name__ == "__main__":
    bench_main(main)
