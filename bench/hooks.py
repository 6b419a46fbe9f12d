"""Webhook deliveries to a local receiver: rtserver's Courier against a bare httpx POST loop.

    python -m bench.hooks                              # 2,000 deliveries each, median of 3 runs
    python -m bench.hooks --deliveries 500 --repeat 1 --json
    python -m bench.hooks --quick                      # the smoke run of tests/test_bench_hooks.py

Both clients run in this process, on uvloop, one after the other (the order alternates between
repeats), and POST to the same receiver: a raw asyncio protocol with httptools that answers
``200`` with an empty body to every request and only counts, in its own process started through
``bench/_launch.py`` on uvloop (checked in ``/proc/<pid>/maps``), so the receiver's CPU is not
the client's. After every run the receiver must have counted exactly ``--deliveries`` more POSTs.

- ``rtserver``: ``--deliveries`` rows queued in a fresh store (``synchronous=FULL``, as shipped)
  as a decided ``webhook`` step writes them (``delivery_row`` + ``INSERT_DELIVERY``, one
  transaction, before the clock starts), all to ``http://127.0.0.1:<port>/hook``. ``Courier.run``
  leases them in batches, signs each (Standard Webhooks, ``webhook-timestamp`` of the attempt),
  resolves and checks the host, POSTs with httpx to the checked address (one keep-alive client
  for the destination) and records each outcome in its own transaction. Timed from the task's
  start until the last outcome is recorded (waiting on ``Courier.progress``); every row must
  end ``delivered``.
- ``bare-httpx``: one ``httpx.AsyncClient`` (keep-alive), ``--deliveries`` sequential POSTs of
  the same payload bytes with the same kind of headers (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``, ``content-type``, ``User-Agent``), signed once before the clock starts;
  each answer must be 200.

Reported: deliveries/s of each (median over ``--repeat``), client CPU per delivery (this
process's ``time.process_time``: for rtserver it includes the store's writer thread), and their
ratio. The project sets no target for webhook delivery; ``goal_met`` is checked against our own
working goal, rtserver >= 0.5x the bare loop (one POST on an open connection is all either does
on the wire; the rest is the durable bookkeeping of at-least-once delivery).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx

from bench._common import (
    HOST,
    BenchError,
    Column,
    alternating,
    bench_main,
    client_ratios,
    client_summary,
    document,
    emit,
    format_table,
    helper_process,
    http_get,
    loop_of,
)

GOAL = 0.5
"""Our own working goal (rtserver / bare): the project sets no target for webhook delivery."""
SEND_TIMEOUT_S = 300.0
HOOK_PATH = "/hook"
COUNT_PATH = "/count"
SECRET = "whsec_YmVuY2gtaG9va3Mtc2VjcmV0LTAxMjM0NTY3ODlhYg=="  # base64 of 32 bytes
PAYLOAD = {
    "event": "cart_abandoned",
    "cart_id": "c1",
    "value": 129.9,
    "currency": "EUR",
    "items": [{"product_id": "sku-3", "quantity": 1}, {"product_id": "sku-7", "quantity": 2}],
}
COLUMNS = [
    Column("server", "client"),
    Column("deliveries", "deliveries", "{:,}"),
    Column("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    Column("deliveries_per_s_range", "range", "{}"),
    Column("client_cpu_us_per_delivery", "client CPU µs/delivery", "{:,.0f}"),
    Column("client_cpu_pct", "client CPU %", "{:.0f}"),
]

RESPONSE_200 = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"


# --- the receiver (its own process) --------------------------------------------------------


class _Count:
    posts = 0


class _Receiver(asyncio.Protocol):
    """HTTP/1.1 with httptools: every request answered 200 in its callback; POSTs counted.

    ``GET /count`` answers the count so far (the bench checks it after every run)."""

    def __init__(self, count: _Count) -> None:
        import httptools

        self.count = count
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        url, self.url = self.url, b""
        if self.parser.get_method() == b"POST":
            self.count.posts += 1
        if not self.parser.should_keep_alive() or url == COUNT_PATH.encode():
            body = str(self.count.posts).encode()
            self.transport.write(RESPONSE_CLOSE % (len(body), body))
            self.transport.close()
        else:
            self.transport.write(RESPONSE_200)


async def serve_receiver(port: int) -> None:
    """The bare receiver on ``port`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    count = _Count()
    server = await loop.create_server(lambda: _Receiver(count), HOST, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(f"receiver counted {count.posts} POSTs", flush=True)


async def received(port: int) -> int:
    """POSTs the receiver has counted so far."""
    status, body = await http_get(port, COUNT_PATH)
    if status != 200:
        raise BenchError(f"receiver answered {status} to GET {COUNT_PATH}")
    return int(body)


async def _counts(port: int) -> bool:
    await received(port)
    return True


@contextlib.asynccontextmanager
async def receiver_process(loop_name: str, workdir: Path) -> AsyncIterator[int]:
    """Start the receiver in its own process; its port once it answers."""
    async with helper_process("bench.hooks", "--serve-receiver", loop_name, workdir, _counts) as (
        port,
        pid,
    ):
        if (actual := loop_of(pid)) != loop_name:
            raise BenchError(f"receiver runs on {actual}, not {loop_name}")
        yield port


# --- the clients ---------------------------------------------------------------------------


def hook_url(port: int) -> str:
    return f"http://{HOST}:{port}{HOOK_PATH}"


def rows(url: str, deliveries: int, now: float) -> list[tuple[Any, ...]]:
    """``deliveries`` rows as decided ``webhook`` steps write them, one run each."""
    from rtserver.model.actions import CallWebhook
    from rtserver.model.facts import Person
    from rtserver.store.deliveries import delivery_row

    person = Person("u:ann", "ann@bench.example", {"first_name": "Ann", "tier": "gold"})
    return [
        delivery_row(CallWebhook(f"run-{n:06d}", 2, person.id, url, PAYLOAD), "crm", person, now)
        for n in range(deliveries)
    ]


async def hooks_store(path: Path, url: str, deliveries: int, now: float) -> Any:
    """A fresh store with ``deliveries`` queued, written in one transaction."""
    from rtserver.store.database import Store
    from rtserver.store.outbox import in_transaction
    from rtserver.store.schema import INSERT_DELIVERY

    queued = rows(url, deliveries, now)
    store = await Store.open(path)
    try:
        await store._in_writer(
            lambda conn: in_transaction(conn, lambda: conn.executemany(INSERT_DELIVERY, queued))
        )
    except BaseException:
        await store.close()
        raise
    return store


async def measure_rtserver(port: int, deliveries: int, workdir: Path, run: int) -> dict[str, Any]:
    """Deliveries/s through ``Courier.run``, from the task's start to the last recorded
    outcome."""
    from rtserver.config.schema import HooksConfig
    from rtserver.hooks.sender import Courier

    store = await hooks_store(workdir / f"hooks-{run}.db", hook_url(port), deliveries, time.time())
    config = HooksConfig(allow=(f"http://{HOST}:{port}/",), allow_private=True)
    courier = Courier(store, config, SECRET, time.time)
    stop = asyncio.Event()
    before = await received(port)

    def done() -> bool:
        stats = courier.stats
        return stats.delivered + stats.retried + stats.failed >= deliveries

    try:
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(courier.run(stop))
        async with courier.progress:
            await asyncio.wait_for(courier.progress.wait_for(done), SEND_TIMEOUT_S)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        stop.set()
        await task
        counts = await store.deliveries.counts()
    finally:
        await store.close()
    if counts != {"delivered": deliveries}:
        raise BenchError(f"rtserver: not all delivered: {counts}")
    if (got := await received(port) - before) != deliveries:
        raise BenchError(f"rtserver: the receiver counted {got} POSTs, not {deliveries}")
    return {"deliveries": deliveries, "elapsed_s": elapsed, "cpu_s": cpu}


def bare_request(port: int) -> tuple[bytes, dict[str, str]]:
    """The payload of a queued delivery and its headers, signed once."""
    from rtserver import __version__
    from rtserver.hooks.signatures import sign

    (row,) = rows(hook_url(port), 1, time.time())
    delivery, payload = row[0], row[6]
    headers = {
        **sign(SECRET, delivery, math.floor(time.time()), payload),
        "content-type": "application/json",
        "user-agent": f"rtserver/{__version__}",
    }
    return payload, headers


async def measure_bare(port: int, deliveries: int) -> dict[str, Any]:
    """Deliveries/s of sequential POSTs of one signed payload on one keep-alive client."""
    payload, headers = bare_request(port)
    url = hook_url(port)
    before = await received(port)
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(deliveries):
            response = await client.post(url, content=payload, headers=headers)
            if response.status_code != 200:
                raise BenchError(f"bare: answered {response.status_code}")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if (got := await received(port) - before) != deliveries:
        raise BenchError(f"bare: the receiver counted {got} POSTs, not {deliveries}")
    return {"deliveries": deliveries, "elapsed_s": elapsed, "cpu_s": cpu}


# --- the run and the report ----------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rtserver-bench-hooks-") as folder:
        workdir = Path(folder)
        async with receiver_process(args.loop, workdir) as port:
            size = len(bare_request(port)[0])
            await measure_bare(port, min(50, args.deliveries))  # warm the receiver up

            async def measure(name: str, repeat: int) -> dict[str, Any]:
                if name == "rtserver":
                    return await measure_rtserver(port, args.deliveries, workdir, repeat)
                return await measure_bare(port, args.deliveries)

            runs = await alternating(["rtserver", "bare-httpx"], args.repeat, measure)
    results = [
        client_summary(name, items, "deliveries", "delivery") for name, items in runs.items()
    ]
    rt, bare = results
    summary: dict[str, Any] = {
        "payload_bytes": size,
        **client_ratios(rt, bare, "deliveries", "delivery", GOAL),
        "goal": GOAL,
        "goal_source": "working goal of this benchmark (the project sets none for webhooks)",
    }
    verdict = "met" if summary["goal_met"] else "MISSED"
    text = "\n".join(
        [
            f"{args.deliveries:,} deliveries of {size:,} bytes each, median of {args.repeat}; "
            f"receiver: bare httptools protocol on {args.loop}, own process",
            "",
            format_table(results, COLUMNS),
            "",
            f"ratio rtserver / bare-httpx: {summary['ratio']:.2f} deliveries/s "
            f"(this benchmark's own working goal >= {GOAL:g}: {verdict}); "
            f"client CPU per delivery: {summary['cpu_ratio']:.2f}",
        ]
    )
    emit(document("hooks", args, results, summary), text, args.json)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--deliveries", type=int, default=2000, help="deliveries per run and client"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="uvloop", help="receiver's loop"
    )
    parser.add_argument("--quick", action="store_true", help="100 deliveries, one run (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        asyncio.run(serve_receiver(args.port))
        return
    if args.deliveries < 1 or args.repeat < 1:
        parser.error("--deliveries and --repeat must be at least 1")
    if args.quick:
        args.deliveries, args.repeat = 100, 1
    bench_main(lambda: run(args))


if __name__ == "__main__":
    main()
