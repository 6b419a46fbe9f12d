"""Mail throughput to a local SMTP sink: rtserver's Sender against a bare aiosmtplib send loop.

    python -m bench.mail                          # 2,000 mails each, median of 3 runs
    python -m bench.mail --mails 500 --repeat 1 --json
    python -m bench.mail --quick                  # the smoke run of tests/test_bench.py
    python -m bench.mail --cold                   # co-viewed products read for every mail
    python -m bench.mail --server "taskset -c 0 dist/rtserver"   # a whole server's outbox

Both clients run in this process, on uvloop, one after the other (the order alternates between
repeats), and send to the same sink: a bare aiosmtpd server whose handler only counts, in its
own process started through ``bench/_launch.py`` on uvloop, so the sink's CPU is not the
client's.

- ``rtserver``: ``--mails`` outbox rows queued in a fresh store (``synchronous=FULL``) for a
  person with a verified email, marketing consent, product views and a cart, so each mail reads
  the cart, the co-viewed (through the product-view index) and the (cached) popular
  products. ``Sender.run`` claims them in batches, renders each with the shipped template
  (Jinja2 sandbox, signed links, pixel, List-Unsubscribe) straight to its wire bytes
  (``Mailer.render_bytes``), hands them to ``Relay`` (one long-lived aiosmtplib connection)
  and records each outcome. Timed from the task's start until the last outcome is committed.
- ``bare-aiosmtplib``: one long-lived ``aiosmtplib.SMTP``, ``send_message`` of one prebuilt
  ``EmailMessage`` (the same template rendered once by ``Mailer.render_mail``, same size)
  ``--mails`` times; aiosmtplib flattens it for each send.

Reported: mails/s of each (median over ``--repeat``), client CPU per mail, and their ratio.
Goal: rtserver ≥ 0.8× the bare loop.

``--server CMD`` measures a whole server instead (the binary, say, pinned to one core): the
same store of ``--mails`` queued mails, then ``CMD serve`` on it with ``mail.transport =
"smtp"`` to the sink. Reported: mails/s from its first sent mail to its last (read from the
store, which the server writes as each outcome is recorded), and its CPU per mail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib

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
    free_port,
    helper_process,
    tree_cpu_seconds,
)

GOAL = 0.8
SEND_TIMEOUT_S = 300.0
PUBLIC_URL = "http://bench.local"
PRODUCTS = 40
OTHER_VIEWERS = 50
COLUMNS = [
    Column("server", "client"),
    Column("mails", "mails", "{:,}"),
    Column("mails_per_s", "mails/s", "{:,.0f}"),
    Column("mails_per_s_range", "range", "{}"),
    Column("client_cpu_us_per_mail", "client CPU µs/mail", "{:,.0f}"),
    Column("client_cpu_pct", "client CPU %", "{:.0f}"),
]


# --- the sink (its own process) ------------------------------------------------------------


class _Counter:
    """aiosmtpd handler: accept and count, nothing else."""

    def __init__(self) -> None:
        self.mails = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails += 1
        return "250 2.0.0 OK"


async def serve_sink(port: int) -> None:
    """A bare aiosmtpd server on ``port`` until SIGTERM or SIGINT."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = _Counter()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-sink", loop=loop), HOST, port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(f"sink received {handler.mails} mails", flush=True)


async def _greets(port: int) -> bool:
    reader, writer = await asyncio.open_connection(HOST, port)
    greeting = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return greeting.startswith(b"220")


@contextlib.asynccontextmanager
async def sink_process(loop_name: str, workdir: Path) -> AsyncIterator[int]:
    """Start the sink in its own process; its port once it greets."""
    async with helper_process("bench.mail", "--serve-sink", loop_name, workdir, _greets) as (
        port,
        _,
    ):
        yield port


# --- the clients ---------------------------------------------------------------------------


def product(n: int) -> dict[str, Any]:
    return {
        "product_id": f"sku-{n}",
        "name": f"Bench product {n}",
        "price": 10.0 + n,
        "currency": "EUR",
        "category": f"cat-{n % 5}",
        "image_url": f"https://bench.local/i/{n}.jpg",
        "url": f"https://bench.local/p/{n}",
    }


async def shop_store(path: Path, mails: int, template: str, now: float) -> Any:
    """A store holding a consenting person with views and a cart, and ``mails`` queued mails."""
    from rtserver.config.schema import IngestConfig
    from rtserver.engine.definitions import compile_workflows
    from rtserver.engine.engine import Engine
    from rtserver.model.events import parse_event
    from rtserver.model.products import product_from
    from rtserver.store.database import Store

    store = await Store.open(path)
    engine = Engine(compile_workflows(())[0], store)
    raws: list[dict[str, Any]] = [
        {"type": "identify", "userId": "ann", "messageId": "id-ann",
         "traits": {"email": "ann@bench.example", "consent": "confirmed_opt_in",
                    "first_name": "Ann"}},
    ]  # fmt: skip
    for n in range(20):
        raws.append(track("ann", "Product Viewed", product(n), f"v-ann-{n}"))
    for n in (3, 7):
        raws.append(track("ann", "Product Added", {**product(n), "cart_id": "c1"}, f"a-{n}"))
    for viewer in range(OTHER_VIEWERS):
        for n in range(viewer % PRODUCTS, viewer % PRODUCTS + 6):
            raws.append(track(f"u{viewer}", "Product Viewed", product(n), f"v{viewer}-{n}"))
    events = [parse_event(raw, IngestConfig(), source="server") for raw in raws]
    await store.group_commit(events, [now] * len(events), engine.plan([], now))
    # What mail shows of a product comes from the catalog, as the shop's feed would fill it.
    catalog = [product_from(product(n)) for n in range(PRODUCTS + 10)]
    await store.catalog.upsert(catalog, "import", now)
    await store.mail.queue(
        [(f"mail-{n:06d}", None, None, "u:ann", "bench", template, "", True, None, now, now,
          now, "{}") for n in range(mails)]
    )  # fmt: skip
    return store


def track(user: str, name: str, properties: dict[str, Any], message_id: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "userId": user,
        "messageId": message_id,
        "properties": properties,
    }


def mail_config(template: str) -> Any:
    from rtserver.config.schema import load_config

    config = load_config(
        None,
        env={},
        overrides={
            "mail": {
                "rate_per_s": 1e9,
                "daily_limit": 10**9,
                "frequency_cap": "off",
                "link_hosts": ["bench.local"],
                "image_hosts": ["bench.local"],
            }
        },
    )
    return config.mail


def mailer(config: Any, clock: Any) -> Any:
    from rtserver.mail.render import Mailer
    from rtserver.mail.tokens import Tokens

    return Mailer(config, PUBLIC_URL, Tokens("bench-secret-" + "x" * 32, clock))


async def measure_rtserver(
    port: int, mails: int, template: str, workdir: Path, run: int, cold: bool = False
) -> dict[str, Any]:
    """Mails/s through Sender → Relay, from the task's start to the last recorded outcome;
    ``cold``: co-viewed products read for every mail (none kept), as if each mail were for
    a different shopper."""
    import rtserver.mail.contexts
    from rtserver.mail.sender import Sender
    from rtserver.mail.smtp import Relay

    kept = rtserver.mail.contexts.CO_VIEWED_SETS
    if cold:  # the bench's own process: set back below
        rtserver.mail.contexts.CO_VIEWED_SETS = 0
    config = mail_config(template)
    store = await shop_store(workdir / f"mail-{run}.db", mails, template, time.time())
    relay = Relay(HOST, port, timeout_s=30.0)
    sender = Sender(store, mailer(config, time.time), relay, config, time.time)
    stop = asyncio.Event()

    def done() -> bool:
        stats = sender.stats
        return stats.sent + stats.failed + stats.retried + stats.ambiguous + stats.dropped >= mails

    try:
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(sender.run(stop))
        async with sender.progress:
            await asyncio.wait_for(sender.progress.wait_for(done), SEND_TIMEOUT_S)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        stop.set()
        await task
        counts = await store.mail.counts()
    finally:
        await relay.close()
        await store.close()
        rtserver.mail.contexts.CO_VIEWED_SETS = kept
    if counts != {"sent": mails}:
        raise BenchError(f"rtserver: outbox not all sent: {counts}")
    return {"mails": mails, "elapsed_s": elapsed, "cpu_s": cpu}


def prebuilt(template: str) -> Any:
    """The template rendered once, for a context like the rtserver run's (cart, picks), as
    an ``EmailMessage`` built in memory (as rtserver built its mail before it wrote the bytes
    directly): the bare loop's message is the same from run to run of this script."""
    from email.message import EmailMessage
    from email.utils import formatdate

    from rtserver.mail.mime import POLICY
    from rtserver.mail.recommend import Product
    from rtserver.mail.render import MailContext

    config = mail_config(template)
    now = time.time()
    products = [
        Product(p["product_id"], p["name"], p["price"], p["currency"], p["image_url"], p["url"],
                p["category"])
        for p in (product(n) for n in (3, 7, 21, 22, 23))
    ]  # fmt: skip
    context = MailContext(
        mail_id="mail-prebuilt",
        to="ann@bench.example",
        now=now,
        person={"id": "u:ann", "email": "ann@bench.example", "traits": {"first_name": "Ann"}},
        run={},
        cart=tuple(p for p in products[:2] if p is not None),
        recommendations=tuple(p for p in products[2:] if p is not None),
        marketing=True,
    )
    rendered = mailer(config, time.time)
    subject, text, html, unsubscribe = rendered._content(rendered._env, template, context)
    message = EmailMessage(policy=POLICY)
    message["From"] = config.from_
    message["To"] = context.to
    message["Subject"] = subject
    message["Date"] = formatdate(now, usegmt=True)
    message["Message-ID"] = f"<{context.mail_id}@example.com>"
    message["X-RT-Mail-ID"] = context.mail_id
    message.set_raw("List-Unsubscribe", f"<{unsubscribe}>")
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message


async def measure_bare(port: int, mails: int, message: Any) -> dict[str, Any]:
    """Mails/s of ``send_message`` of one prebuilt message on one long-lived connection."""
    smtp = aiosmtplib.SMTP(hostname=HOST, port=port, timeout=30.0)
    await smtp.connect()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(mails):
            errors, _ = await smtp.send_message(message)
            if errors:
                raise BenchError(f"bare: refused {errors}")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await smtp.quit()
    return {"mails": mails, "elapsed_s": elapsed, "cpu_s": cpu}


def server_config(path: Path, store: Path, sink_port: int) -> int:
    """A config for ``CMD serve`` that sends the store's outbox to the sink; its HTTP port."""
    port = free_port()
    path.write_text(
        f'''[server]
port = {port}
log_level = "warning"
public_url = "{PUBLIC_URL}"
[store]
path = "{store}"
min_free_mb = 1
[mail]
transport = "smtp"
rate_per_s = 1e9
daily_limit = 1000000000
frequency_cap = "off"
link_hosts = ["bench.local"]
image_hosts = ["bench.local"]
[mail.smtp]
host = "{HOST}"
port = {sink_port}
''',
        encoding="utf-8",
    )
    return port


async def measure_server(
    command: list[str], port: int, mails: int, template: str, workdir: Path, run: int
) -> dict[str, Any]:
    """A whole server draining ``mails`` queued mails to the sink: mails/s from the first
    sent mail to the last, as the store records them, and the server's CPU over that time."""
    path = workdir / f"server-{run}.db"
    store = await shop_store(path, mails, template, time.time())
    await store.close()
    config = workdir / f"server-{run}.toml"
    server_config(config, path, port)
    log = (workdir / f"server-{run}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *command, "serve", "--config", str(config), cwd=workdir, stdout=log, stderr=log
    )
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        first: tuple[float, int, float] | None = None
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while True:
            if process.returncode is not None:
                log.flush()
                tail = (workdir / f"server-{run}.log").read_text(errors="replace")[-2000:]
                raise BenchError(f"{command[-1]} exited with {process.returncode}:\n{tail}")
            sent = reader.execute("SELECT count(*) FROM outbox WHERE state = 'sent'").fetchone()[0]
            now = time.perf_counter()
            if first is None and sent:
                first = (now, sent, tree_cpu_seconds(process.pid))
            if sent >= mails and first is not None:
                cpu = tree_cpu_seconds(process.pid) - first[2]
                return {"mails": mails - first[1], "elapsed_s": now - first[0], "cpu_s": cpu}
            if time.monotonic() > deadline:
                raise BenchError(f"{command[-1]}: {sent} of {mails} sent in {SEND_TIMEOUT_S:g} s")
            await asyncio.sleep(0.01)  # polling a process we started: bounded by the deadline
    finally:
        reader.close()
        if process.returncode is None:
            process.terminate()
            await process.wait()
        log.close()


async def run_server(args: argparse.Namespace) -> int:
    command = shlex.split(args.server)
    with tempfile.TemporaryDirectory(prefix="rtserver-bench-mail-") as folder:
        workdir = Path(folder)
        async with sink_process(args.loop, workdir) as port:
            items = [
                await measure_server(command, port, args.mails, args.template, workdir, n)
                for n in range(args.repeat)
            ]
    result = client_summary(args.server, items, "mails", "mail")
    text = "\n".join(
        [
            f"{args.mails:,} queued mails ({args.template}) drained by `{args.server} serve`, "
            f"median of {args.repeat}; sink: bare aiosmtpd on {args.loop}, own process",
            "",
            format_table([result], COLUMNS),
        ]
    )
    emit(document("mail", args, [result], {}), text, args.json)
    return 0


# --- the run and the report ----------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    message = prebuilt(args.template)
    size = len(bytes(message))
    with tempfile.TemporaryDirectory(prefix="rtserver-bench-mail-") as folder:
        workdir = Path(folder)
        async with sink_process(args.loop, workdir) as port:
            await measure_bare(port, min(50, args.mails), message)  # warm the sink up

            async def measure(name: str, repeat: int) -> dict[str, Any]:
                if name == "rtserver":
                    return await measure_rtserver(
                        port, args.mails, args.template, workdir, repeat, args.cold
                    )
                return await measure_bare(port, args.mails, message)

            runs = await alternating(["rtserver", "bare-aiosmtplib"], args.repeat, measure)
    results = [client_summary(name, items, "mails", "mail") for name, items in runs.items()]
    rt, bare = results
    summary: dict[str, Any] = {
        "message_bytes": size,
        **client_ratios(rt, bare, "mails", "mail", GOAL),
    }
    verdict = "met" if summary["goal_met"] else "MISSED"
    text = "\n".join(
        [
            f"{args.mails:,} mails of {size:,} bytes ({args.template}) each, median of "
            f"{args.repeat}; sink: bare aiosmtpd on {args.loop}, own process"
            + ("; co-viewed read for every mail (--cold)" if args.cold else ""),
            "",
            format_table(results, COLUMNS),
            "",
            f"ratio rtserver / bare-aiosmtplib: {summary['ratio']:.2f} mails/s "
            f"(goal >= {GOAL:g}: {verdict}); client CPU per mail: {summary['cpu_ratio']:.2f}",
        ]
    )
    emit(document("mail", args, results, summary), text, args.json)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--mails", type=int, default=2000, help="mails per run and client")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--template", default="cart_reminder", help="shipped template to send")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="uvloop", help="sink's loop"
    )
    parser.add_argument("--quick", action="store_true", help="100 mails, one run (smoke test)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="read the co-viewed products for every mail (no cache), as for distinct shoppers",
    )
    parser.add_argument(
        "--server", default="", help="measure this server command's outbox drain instead"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sink:
        asyncio.run(serve_sink(args.port))
        return
    if args.quick:
        args.mails, args.repeat = 100, 1
    bench_main(lambda: run_server(args) if args.server else run(args))


if __name__ == "__main__":
    main()
