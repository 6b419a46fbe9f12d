"""``rtserver loadgen URL``: shoppers for a staging server, over real WebSockets.

N simulated shoppers (one connection and one anonymousId each) browse, cart and buy in the
shop mix below, at a given total rate (or as fast as acks come back), against any rtserver's
plain ``http://`` or ``ws://`` address. A progress line shows what was sent and acked; at the
end it prints what was sent, acked, refused and decided (read from the server's ``/metrics``),
and the percentiles of the time from a frame's send to its ack.

It uses the benchmarks' cheap clients (:mod:`rtserver.tools.wire`), so one core of load
generator drives much more than one core of server. Point it at a staging server, never at a
shop's production: the shoppers are real events there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from rtserver.tools.wire import WireError, WsConn, client_frame, close_all, open_ws_many

__all__ = [
    "SHOP_CYCLE",
    "SHOP_EVENTS",
    "SHOP_TAIL",
    "Report",
    "add_command",
    "loadgen",
    "shop_frames",
]

SHOP_CYCLE = (
    "landing", "viewed", "viewed", "added", "viewed", "added", "checkout", "viewed", "order",
    "viewed",
)  # fmt: skip
"""What one shopper (one connection, one anonymousId) sends, over and over: each round is a new
cart and a new order, so every round starts runs, re-arms their timers and ends them."""
BROWSER = '"userAgent":"Mozilla/5.0 (X11; Linux x86_64) bench","library":{"name":"rt.js"}'
ON_PRODUCT = '"context":{"page":{"path":"/p/1","url":"http://bench.local/p/1"},' + BROWSER + "}"
ON_CHECKOUT = (
    '"context":{"page":{"path":"/checkout","url":"http://bench.local/checkout"},' + BROWSER + "}"
)
FROM_GOOGLE = (
    '"context":{"page":{"path":"/pricing","url":"http://bench.local/pricing",'
    '"referrer":"https://www.google.com/"},' + BROWSER + "}"
)
SHOP_EVENTS = {
    "landing": '{"type":"page","name":"Pricing",' + FROM_GOOGLE,
    "checkout": '{"type":"page","name":"Checkout",' + ON_CHECKOUT,
    "viewed": '{"type":"track","event":"Product Viewed","properties":{"product_id":"sku-%(n)d",'
    '"name":"Bench product","price":12.5,"currency":"EUR","category":"bench"},' + ON_PRODUCT,
    "added": '{"type":"track","event":"Product Added","properties":{"cart_id":"%(cart)s",'
    '"product_id":"sku-%(n)d","price":12.5,"quantity":1,"currency":"EUR"},' + ON_PRODUCT,
    "order": '{"type":"track","event":"Order Completed","properties":{"order_id":"o-%(cart)s",'
    '"cart_id":"%(cart)s","revenue":25.0,"currency":"EUR"},' + ON_CHECKOUT,
}
SHOP_TAIL = (
    ',"messageId":"%(mid)s","anonymousId":"%(anon)s","timestamp":"2026-11-25T10:00:00.000Z"}'
)


def shop_frames(run: str, connections: int, events: int) -> list[tuple[bytes, str]]:
    """Event i goes to connection ``i % connections``, the shopper's next event in SHOP_CYCLE."""
    frames = []
    for i in range(events):
        client, seq = i % connections, i // connections
        kind = SHOP_CYCLE[seq % len(SHOP_CYCLE)]
        message_id = f"{run}-{client}-{i}"
        values = {
            "n": i,
            "cart": f"{run}-{client}-{seq // len(SHOP_CYCLE)}",
            "mid": message_id,
            "anon": f"anon-{run}-{client}",
        }
        event = (SHOP_EVENTS[kind] + SHOP_TAIL) % values
        frames.append((client_frame(b'{"batch":[' + event.encode() + b"]}"), message_id))
    return frames


_METRIC = re.compile(rb"^(rtserver_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.M)
PROGRESS_EVERY_S = 1.0


@dataclass
class Report:
    """What a load run sent and got back."""

    shoppers: int
    sent: int = 0
    acked: int = 0
    refused: int = 0
    """Events nacked or rejected (the reply says why; a nack is retried by real clients)."""
    decided: int | None = None
    """Events the server decided during the run (None: its /metrics could not be read)."""
    elapsed_s: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        rate = self.acked / self.elapsed_s if self.elapsed_s else 0.0
        decided = "n/a" if self.decided is None else f"{self.decided:,}"
        lines = [
            f"shoppers {self.shoppers:,}, {self.elapsed_s:.1f} s: sent {self.sent:,}, "
            f"acked {self.acked:,} ({rate:,.0f}/s), refused {self.refused:,}, "
            f"decided {decided}",
            "ack latency ms: "
            + ", ".join(
                f"p{label} {1000 * self.percentile(q):.2f}"
                for label, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99.9", 0.999))
            )
            + f", max {1000 * max(self.latencies, default=0.0):.2f}",
        ]
        return "\n".join(lines)


def _address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "ws") or not parts.hostname:
        raise ValueError(f"expected an http:// or ws:// address (no TLS), got {url!r}")
    return parts.hostname, parts.port or 80


async def _decided(host: str, port: int) -> int | None:
    """Events decided so far, from the server's /metrics (None when it cannot be read)."""
    try:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            answer = await http.get(f"http://{host}:{port}/metrics")
    except httpx.HTTPError:
        return None
    found = dict(_METRIC.findall(answer.content)) if answer.status_code == 200 else {}
    count = found.get(b"rtserver_event_decision_seconds_count")
    return None if count is None else int(float(count))


class _Tracker:
    """Send times waiting for their replies, per connection (replies come back in order; one
    ack may answer several frames)."""

    def __init__(self, conns: list[WsConn], report: Report, clock: Callable[[], float]):
        self.report = report
        self.clock = clock
        self.pending: list[deque[tuple[float, str]]] = [deque() for _ in conns]
        self.idle = [asyncio.Event() for _ in conns]
        for i, conn in enumerate(conns):
            conn.on_text = self._receiver(i)
            self.idle[i].set()

    def sent(self, client: int, message_id: str) -> None:
        self.pending[client].append((self.clock(), message_id))
        self.idle[client].clear()

    def _receiver(self, client: int) -> Callable[[bytes], None]:
        pending = self.pending[client]

        def on_text(payload: bytes) -> None:
            reply: dict[str, Any] = orjson.loads(payload)
            acked = reply.get("ack")
            if acked is None:  # a reject or a nack, of one frame
                pending.popleft()
                self.report.refused += 1
            else:  # one ack may cover several frames (one event each), in the order sent
                now = self.clock()
                for _ in acked:
                    sent, _message_id = pending.popleft()
                    self.report.acked += 1
                    self.report.latencies.append(now - sent)
            if not pending:
                self.idle[client].set()

        return on_text


async def loadgen(
    url: str,
    *,
    key: str,
    origin: str,
    shoppers: int,
    events: int,
    rate: float = 0.0,
    progress: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.perf_counter,
) -> Report:
    """Send ``events`` of the shop mix from ``shoppers`` connections to ``url``: at ``rate``
    events a second in all, or (``rate`` 0) each shopper's next event once the last is acked.

    Raises:
        ValueError: not a plain http/ws address.
        WireError: the connections could not be opened, or the server closed one.
    """
    host, port = _address(url)
    report = Report(shoppers)
    frames = shop_frames(f"lg{secrets.token_hex(4)}", shoppers, events)
    before = await _decided(host, port)
    path = f"/v1/ws?key={urllib.parse.quote(key)}"
    conns = await open_ws_many(shoppers, port, path=path, origin=origin, host=host)
    tracker = _Tracker(conns, report, clock)
    start = clock()
    next_progress = start + PROGRESS_EVERY_S

    def show(now: float) -> None:
        nonlocal next_progress
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY_S
            progress(f"sent {report.sent:,}  acked {report.acked:,}  refused {report.refused:,}")

    try:
        for index, (frame, message_id) in enumerate(frames):
            client = index % shoppers
            conn = conns[client]
            if conn.closed.done():
                raise WireError(f"the server closed shopper {client}'s connection "
                                f"({conn.close_code})")  # fmt: skip
            if rate > 0:
                delay = start + index / rate - clock()
                if delay > 0:
                    await asyncio.sleep(delay)  # the schedule of the requested rate
            else:
                await tracker.idle[client].wait()
            tracker.sent(client, message_id)
            conn.send(frame)
            report.sent += 1
            show(clock())
        async with asyncio.timeout(30.0):
            for idle in tracker.idle:
                await idle.wait()
    finally:
        report.elapsed_s = clock() - start
        await close_all(conns)
    after = await _decided(host, port)
    report.decided = None if before is None or after is None else after - before
    return report


def _run(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        print(f"\r{line}", end="", file=sys.stderr, flush=True)

    try:
        report = asyncio.run(
            loadgen(
                args.url,
                key=args.key,
                origin=args.origin,
                shoppers=args.shoppers,
                events=args.events,
                rate=args.rate,
                progress=progress,
            )
        )
    except (ValueError, WireError, OSError, TimeoutError) as exc:
        print(f"\nrtserver: loadgen: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(OSError):
        print(file=sys.stderr)
    print(report.summary())
    return 0


def add_command(sub: Any) -> None:  # argparse's subparsers type is private
    """Add ``loadgen`` to the ``rtserver`` parser."""
    command = sub.add_parser(
        "loadgen",
        help="simulated shoppers against a (staging) rtserver, over real WebSockets",
        description="Send the shop mix (views, carts, checkouts, orders) from N shoppers to "
        "URL and print what was sent, acked and decided, and the ack latency percentiles. "
        "The events are real on that server: use a staging one.",
    )
    command.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (no TLS)")
    command.add_argument("--shoppers", type=int, default=100, help="connections (default 100)")
    command.add_argument(
        "--events", type=int, default=10_000, help="events in all (default 10,000)"
    )
    command.add_argument("--rate", type=float, default=0.0,
                         help="events a second in all (default 0: each shopper's next event "
                         "as soon as the last is acked)")  # fmt: skip
    command.add_argument("--key", default="pk_dev", help="the server's public key (keys.public)")
    command.add_argument("--origin", default="http://localhost:8000",
                         help="an origin in the server's server.allowed_origins")  # fmt: skip
    command.set_defaults(func=_run)
