"""Segment HTTP API: ``POST /v1/batch`` events/s over N keep-alive connections, rtserver against
a bare Starlette endpoint that only reads and decodes the body.

Each connection sends one request at a time (HTTP/1.1 without pipelining, as SDKs do), each a
batch of ``--batch`` events with the write key as HTTP Basic user. rtserver answers 200 only after
the SQLite commit (``synchronous=FULL``); the bare endpoint answers right after decoding. Both run
on uvicorn with the same settings, in the same run. The ratio's goal: ≥ 0.4×.

    python -m bench.http_batch --connections 100 --events 200000 --batch 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from typing import Any

import orjson

from bench._common import (
    BATCH_PATH,
    THROUGHPUT_COLUMNS,
    ClosedLoop,
    Column,
    CpuMeter,
    ServerSpec,
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
from rtserver.tools.wire import HttpConn, http_request, open_http

GOAL = 0.4
BASELINE = "bare-starlette"
COLUMNS = [
    *THROUGHPUT_COLUMNS[:3],
    Column("requests_per_s", "requests/s", "{:,.0f}"),
    *THROUGHPUT_COLUMNS[3:],
]


def _loop_for(
    conn: HttpConn, client: int, spec: ServerSpec, args: argparse.Namespace
) -> ClosedLoop:
    run = run_id()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{spec.write_key}:".encode()).decode()}
    requests = [
        http_request(BATCH_PATH, make_batch(run, client, i * args.batch, args.batch).body, auth)
        for i in range(args.requests_per_connection)
    ]
    loop = ClosedLoop(conn.send, requests, window=1)

    def on_response(status: int, body: bytes) -> None:
        if status == 200 and orjson.loads(body).get("success") is True:
            loop.reply()
        else:
            loop.fail(f"connection {client}: HTTP {status} {body[:200]!r}")

    conn.on_response = on_response
    conn.closed.add_done_callback(lambda _: loop.fail(f"connection {client} closed by the server"))
    return loop


async def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with workdir() as tmp:
        spec = server_spec(name, tmp)
        async with running(spec, args.loop, tmp) as server:
            conns = await asyncio.gather(*(open_http(server.port) for _ in range(args.connections)))
            loops = [_loop_for(conn, i, spec, args) for i, conn in enumerate(conns)]
            meter = CpuMeter(server.process.pid)
            complete = await run_closed_loops(loops, args.duration)
            usage = meter.read()
            for conn in conns:
                conn.close()
    requests = sum(loop.answered for loop in loops)
    return throughput_result(
        name,
        requests * args.batch,
        usage,
        complete,
        requests=requests,
        requests_per_s=requests / usage["elapsed_s"],
    )


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    summary, verdict = throughput_summary(results, BASELINE, GOAL)
    lines = [
        f"HTTP POST {BATCH_PATH}: {args.connections} connections, {args.batch} events/request, "
        f"servers on {args.loop}",
        format_table(results, COLUMNS),
        *verdict,
    ]
    return document("http_batch", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, ["rtserver", BASELINE])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--events", type=int, default=200_000, help="events in all (bound)")
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most (bound)")
    args = parser.parse_args()
    args.requests_per_connection = max(1, args.events // (args.connections * args.batch))
    return args


async def main() -> int:
    args = parse_args()
    results = [await measure(name, args) for name in args.servers]
    emit(*report(args, results), args.json)
    return 0


if __name__ == "__main__":
    bench_main(main)
