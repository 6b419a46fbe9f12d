"""Memory per idle WebSocket: server RSS before and after opening N connections that stay idle.

For each server and each permessage-deflate setting, a few connections are opened and closed
first (so lazily imported code and first-use caches are not counted), then ``VmRSS`` of the server
process is read, N connections are opened (offering permessage-deflate as browsers do when it is
on), and ``VmRSS`` is read again after ``--settle-s``. rtserver's ``/healthz`` must then count N
open sockets. The goal is 10,000 sockets per process at ≤ 30 KiB each.

The open-file limit is raised for this process and its server subprocesses; if the hard limit
is too low for N, N is lowered to what fits and the report says so.

    python -m bench.ws_idle_memory --connections 10000
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench._common import (
    ORIGIN,
    WS_PATH,
    BenchError,
    Column,
    base_parser,
    bench_main,
    document,
    emit,
    format_table,
    raise_nofile,
    ratio,
    running,
    server_spec,
    workdir,
)
from rtserver.tools.wire import close_all, open_ws_many

GOAL_KIB = 30.0
BASELINE = "bare-websockets"
SPARE_FDS = 200
"""File descriptors kept for everything but the sockets (logs, the store, the loop)."""
COLUMNS = [
    Column("server", "server"),
    Column("deflate", "deflate"),
    Column("connections", "sockets", "{:,}"),
    Column("rss_before_mib", "RSS before MiB", "{:.1f}"),
    Column("rss_after_mib", "RSS after MiB", "{:.1f}"),
    Column("kib_per_socket", "KiB/socket", "{:.1f}"),
]


async def measure(name: str, deflate: bool, n: int, args: argparse.Namespace) -> dict[str, Any]:
    with workdir() as tmp:
        async with running(server_spec(name, tmp, deflate=deflate), args.loop, tmp) as server:
            await close_all(
                await open_ws_many(
                    args.warmup, server.port, path=WS_PATH, origin=ORIGIN, deflate=deflate
                )
            )
            await asyncio.sleep(args.settle_s)
            before = server.rss_kib()
            conns = await open_ws_many(
                n,
                server.port,
                path=WS_PATH,
                origin=ORIGIN,
                deflate=deflate,
                concurrency=args.concurrency,
            )
            try:
                if any(conn.deflate != deflate for conn in conns):
                    raise BenchError(f"{name}: permessage-deflate was not negotiated as asked")
                await asyncio.sleep(args.settle_s)
                after = server.rss_kib()
                if name == "rtserver":
                    open_now = (await server.health())["websockets"]
                    if open_now != n:
                        raise BenchError(f"rtserver counts {open_now} open websockets, not {n}")
                if any(conn.closed.done() for conn in conns):
                    raise BenchError(f"{name} closed idle connections")
            finally:
                await close_all(conns)
    return {
        "server": name,
        "deflate": deflate,
        "connections": n,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_socket": (after - before) / n,
    }


def report(
    args: argparse.Namespace, n: int, results: list[dict[str, Any]]
) -> tuple[dict[str, Any], str]:
    lines = [f"Idle WebSockets: {n:,} per server, servers on {args.loop}"]
    if n < args.connections:
        lines.append(f"NOTE: the open-file limit allows {n:,} sockets, not {args.connections:,}")
    lines.append(format_table(results, COLUMNS))
    summary: dict[str, Any] = {"connections_reached": n}
    for deflate in args.deflate:
        rows = {r["server"]: r for r in results if r["deflate"] == deflate}
        if "rtserver" not in rows:
            continue
        kib = rows["rtserver"]["kib_per_socket"]
        mode = "deflate" if deflate else "plain"
        summary[f"rtserver_kib_{mode}"] = kib
        line = f"rtserver, deflate {'on' if deflate else 'off'}: {kib:.1f} KiB/socket"
        if not deflate:
            summary["goal_met"] = kib <= GOAL_KIB and n >= args.connections
            line += f" (goal <= {GOAL_KIB:g} KiB: {'met' if summary['goal_met'] else 'MISSED'})"
        if BASELINE in rows:
            key = "ratio_deflate" if deflate else "ratio"
            summary[key] = ratio(kib, rows[BASELINE]["kib_per_socket"])
            line += f"; ratio rtserver / {BASELINE}: {summary[key]:.2f}"
        lines.append(line)
    return document("ws_idle_memory", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, ["rtserver", BASELINE])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument(
        "--deflate",
        choices=["off", "on", "both"],
        default="both",
        help="permessage-deflate setting(s) to measure",
    )
    parser.add_argument("--warmup", type=int, default=50, help="sockets opened and closed first")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes at a time")
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait before reading RSS")
    args = parser.parse_args()
    args.deflate = {"off": [False], "on": [True], "both": [False, True]}[args.deflate]
    return args


async def main() -> int:
    args = parse_args()
    limit = raise_nofile(args.connections + SPARE_FDS)
    n = max(1, min(args.connections, limit - SPARE_FDS))
    results = [
        await measure(name, deflate, n, args) for deflate in args.deflate for name in args.servers
    ]
    emit(*report(args, n, results), args.json)
    return 0


if __name__ == "__main__":
    bench_main(main)
