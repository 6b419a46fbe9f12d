"""Dashboard fan-out: durable WebSocket ingest with no dashboard viewer and with 100 viewers
following the live SSE stream, in the same run; the ratio of the two ingest rates.

Each measurement starts a fresh rtserver (same config, a dashboard password set), opens the SSE
viewers first (each logged in, each reading its stream as a browser would and counting the
updates it gets), waits until every viewer has its first frame, then runs the closed-loop
WebSocket ingest of ``bench.ws_ingest``. The goal is that 100 viewers do
not slow ingest by more than 10%: ratio ≥ 0.9. Also reported: the updates each viewer got per
second (the batching: a few a second, whatever the event rate) and viewers dropped.

    python -m bench.dashboard --viewers 100 --connections 100 --events 200000
    python -m bench.dashboard --quick          # the smoke run of tests/test_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
from typing import Any, cast

from bench._common import (
    HOST,
    ORIGIN,
    THROUGHPUT_COLUMNS,
    WS_PATH,
    BenchError,
    Column,
    CpuMeter,
    base_parser,
    bench_main,
    document,
    emit,
    format_table,
    http_get,
    ratio,
    run_closed_loops,
    running,
    server_spec,
    throughput_result,
    workdir,
)
from bench.ws_ingest import _loop_for
from rtserver.tools.wire import close_all, open_ws_many

GOAL = 0.9
PASSWORD = "bench dashboard password"
EXTRA_CONFIG = f"""
[dashboard]
password = "{PASSWORD}"
max_viewers = 100000
"""
FRAME_END = b"\r\n\r\n"


class Viewer(asyncio.Protocol):
    """One dashboard viewer: ``GET /dashboard/stream`` with a session cookie; counts frames."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.frames = 0
        self.bytes = 0
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if not self.head:
            self.head = data[:64]
            if not data.startswith(b"HTTP/1.1 200"):
                self.first.set_exception(BenchError(f"stream refused: {data[:80]!r}"))
                return
        # Frames end with an empty line; a frame may span chunks (the chunked encoding's own
        # CRLFs never make a double one inside an SSE frame).
        text = self._tail + data
        self.frames += text.count(b"\ndata: ")
        self._tail = text[-16:]
        if self.frames and not self.first.done():
            self.first.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.first.done():
            self.first.set_exception(BenchError("stream closed before its first frame"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def login(port: int) -> str:
    """Log in once; the session cookie every viewer uses."""
    body = f"password={PASSWORD.replace(' ', '+')}".encode()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(
            (
                f"POST /dashboard/login HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        reply = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()
    found = re.search(rb"set-cookie: (rt_dashboard=[^;]+);", reply, re.IGNORECASE)
    if not reply.startswith(b"HTTP/1.1 303") or found is None:
        raise BenchError(f"dashboard login failed: {reply[:200]!r}")
    return found.group(1).decode()


async def open_viewers(count: int, port: int) -> list[Viewer]:
    """``count`` viewers, each with its first frame (the snapshot) received."""
    cookie = await login(port)
    request = (
        f"GET /dashboard/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\nCookie: {cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    viewers = []
    for _ in range(count):
        _, viewer = await loop.create_connection(lambda: Viewer(request), HOST, port)
        viewers.append(viewer)
    async with asyncio.timeout(30.0):
        await asyncio.gather(*(v.first for v in viewers))
    return viewers


async def metric(port: int, name: str) -> float:
    """One unlabelled sample from ``/metrics``."""
    _, body = await http_get(port, "/metrics")
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    if found is None:
        raise BenchError(f"no {name} in /metrics")
    return float(found.group(1))


async def measure(viewers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Ingest throughput on a fresh server with ``viewers`` following the dashboard."""
    frames = max(1, args.events // (args.connections * args.batch))
    with workdir() as tmp:
        spec = server_spec("rtserver", tmp, extra_config=EXTRA_CONFIG)
        async with running(spec, args.loop, tmp) as server:
            audience = await open_viewers(viewers, server.port)
            before = [v.frames for v in audience]
            watching = await metric(server.port, "rtserver_dashboard_viewers")
            conns = await open_ws_many(args.connections, server.port, path=WS_PATH, origin=ORIGIN)
            loops = [_loop_for(conn, i, frames, args) for i, conn in enumerate(conns)]
            meter = CpuMeter(server.process.pid)
            complete = await run_closed_loops(loops, args.duration)
            usage = meter.read()
            updates = [v.frames - b for v, b in zip(audience, before, strict=True)]
            dropped = await metric(server.port, "rtserver_dashboard_viewers_dropped_total")
            closed = sum(v.closed for v in audience)
            await close_all(conns)
            for viewer in audience:
                viewer.close()
    events = sum(loop.answered for loop in loops) * args.batch
    per_s = [u / usage["elapsed_s"] for u in updates]
    return throughput_result(
        f"rtserver, {viewers} viewers",
        events,
        usage,
        complete,
        viewers=viewers,
        viewers_seen=int(watching),
        updates_per_viewer_s=statistics.median(per_s) if per_s else 0.0,
        viewers_dropped=int(dropped),
        viewers_closed=closed,
    )


COLUMNS = [
    *THROUGHPUT_COLUMNS[:-1],
    Column("updates_per_viewer_s", "updates/s per viewer", "{:.1f}"),
    Column("viewers_dropped", "dropped"),
    Column("complete", "complete"),
]


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Medians per audience over the rounds, and the ratio with / without viewers."""
    rates: dict[int, list[float]] = {}
    for result in results:
        rates.setdefault(result["viewers"], []).append(result["events_per_s"])
    without, with_viewers = (statistics.median(rates.get(n, [0.0])) for n in (0, args.viewers))
    summary: dict[str, Any] = {"ratio": ratio(with_viewers, without)}
    summary["goal_met"] = summary["ratio"] >= GOAL
    verdict = "met" if summary["goal_met"] else "MISSED"
    lines = [
        f"Dashboard fan-out: WebSocket ingest over {args.connections} connections, "
        f"{args.batch} event(s)/frame, window {args.window}, with 0 and {args.viewers} SSE "
        f"viewers, {args.rounds} round(s), server on {args.loop}",
        format_table(results, COLUMNS),
        f"ratio {args.viewers} viewers / 0 viewers: {summary['ratio']:.3f} events/s "
        f"(medians; goal >= {GOAL:g}: {verdict})",
    ]
    return document("dashboard", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__, ["rtserver"])
    parser.add_argument("--viewers", type=int, default=100, help="SSE dashboard viewers")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--events", type=int, default=200_000, help="events per measurement")
    parser.add_argument("--batch", type=int, default=1, help="events per frame")
    parser.add_argument("--window", type=int, default=8, help="unacked frames per connection")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most (bound)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure 0 then N viewers this many times"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.viewers, args.connections, args.events, args.rounds = 10, 5, 500, 1
    return args


async def main() -> int:
    args = parse_args()
    results = []
    for _ in range(args.rounds):
        for viewers in (0, args.viewers):
            results.append(await measure(viewers, args))
    emit(*report(args, results), args.json)
    return 0


if __name__ == "__main__":
    bench_main(main)
