"""Durable, acked WebSocket ingest: events/s over N connections, rtserver against bare servers.

Every connection is one browser sending ``{"batch": [...]}`` frames with up to ``--window``
frames unacknowledged, and counts ``{"ack": [...]}`` replies (checked id by id). rtserver acks
only after the SQLite commit (``synchronous=FULL``), in one frame for the frames of a connection
committed together; the bare servers ack each frame right after decoding it.
The goal is rtserver ≥ 0.6× the bare ``websockets`` server, measured in the same run.

Also printed: server CPU per event (robust on a shared machine) and the client's CPU share (it
should stay well under the server's, or the client is what is measured).

    python -m bench.ws_ingest --connections 100 --events 200000
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from bench._common import (
    ORIGIN,
    THROUGHPUT_COLUMNS,
    WS_PATH,
    ClosedLoop,
    CpuMeter,
    base_parser,
    bench_main,
    document,
    emit,
    format_table,
    make_batch,
    run_closed_loops,
    run_id,
    running,
    server_spec,
    throughput_result,
    throughput_summary,
    workdir,
)
from rtserver.tools.wire import WsConn, client_frame, close_all, open_ws_many

GOAL = 0.6
BASELINE = "bare-websockets"


def _loop_for(conn: WsConn, client: int, frames: int, args: argparse.Namespace) -> ClosedLoop:
    run = run_id()
    batches = [make_batch(run, client, i * args.batch, args.batch) for i in range(frames)]
    loop = ClosedLoop(conn.send, [client_frame(b.body) for b in batches], args.window)

    def on_text(payload: bytes) -> None:
        # One ack answers one frame or, coalesced, several in a row: their ids in order.
        acked = orjson.loads(payload).get("ack")
        start = 0
        while isinstance(acked, list) and start < len(acked) and loop.answered < len(batches):
            ids = batches[loop.answered].ids
            if acked[start : start + len(ids)] != ids:
                break
            start += len(ids)
            loop.reply()
        if not isinstance(acked, list) or start != len(acked) or not acked:
            loop.fail(f"connection {client}: unexpected reply {payload[:200]!r}")

    conn.on_text = on_text
    conn.closed.add_done_callback(
        lambda _: loop.fail(f"connection {client} closed by the server ({conn.close_code})")
    )
    return loop


async def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    frames = max(1, args.events // (args.connections * args.batch))
    with workdir() as tmp:
        async with running(server_spec(name, tmp), args.loop, tmp) as server:
            conns = await open_ws_many(args.connections, server.port, path=WS_PATH, origin=ORIGIN)
            loops = [_loop_for(conn, i, frames, args) for i, conn in enumerate(conns)]
            meter = CpuMeter(server.process.pid)
            complete = await run_closed_loops(loops, args.duration)
            usage = meter.read()
            await close_all(conns)
    events = sum(loop.answered for loop in loops) * args.batch
    return throughput_result(name, events, usage, complete)


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    summary, verdict = throughput_summary(results, BASELINE, GOAL)
    lines = [
        f"WebSocket ingest: {args.connections} connections, {args.batch} event(s)/frame, "
        f"window {args.window}, servers on {args.loop}",
        format_table(results, THROUGHPUT_COLUMNS),
        *verdict,
    ]
    return document("ws_ingest", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, ["rtserver", BASELINE])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--events", type=int, default=200_000, help="events in all (bound)")
    parser.add_argument("--batch", type=int, default=1, help="events per frame")
    parser.add_argument("--window", type=int, default=8, help="unacked frames per connection")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most (bound)")
    return parser.parse_args()


async def main() -> int:
    args = parse_args()
    results = [await measure(name, args) for name in args.servers]
    emit(*report(args, results), args.json)
    return 0


if __name__ == "__main__":
    bench_main(main)
