"""Event → mail accepted by an SMTP server, for an immediate workflow (goal: p99 < 1 s).

A real ``rtserver serve`` (its own process) runs one transactional workflow, ``Signed Up`` →
``send = "welcome"``, with ``mail.transport = "smtp"`` pointed at an aiosmtpd server in this
process. Shoppers sign up over WebSockets on a fixed schedule (open loop), each a new verified
address; the time from sending the event to the SMTP server receiving the end of that mail's
DATA is taken per address, on this process's clock.

    python -m bench.mail_latency                  # 500 sign-ups at 25/s
    python -m bench.mail_latency --quick          # the smoke run of tests/test_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

from websockets.asyncio.client import connect

from bench._common import (
    HOST,
    ORIGIN,
    WS_PATH,
    BenchError,
    Column,
    base_parser,
    bench_main,
    document,
    emit,
    format_table,
    free_port,
    percentile,
    running,
    server_spec,
    workdir,
)

GOAL_P99_S = 1.0
IDENTITY_SECRET = "bench-identity-secret-" + "x" * 24
COLUMNS = [
    Column("server", "server"),
    Column("mails", "mails", "{:,}"),
    Column("rate", "sign-ups/s", "{:g}"),
    Column("p50_ms", "p50 ms", "{:.1f}"),
    Column("p99_ms", "p99 ms", "{:.1f}"),
    Column("max_ms", "max ms", "{:.1f}"),
]


class Arrivals:
    """aiosmtpd handler: when each recipient's mail arrived (this process's monotonic clock)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        for rcpt in envelope.rcpt_tos:
            self.at.setdefault(rcpt, now)
        self.changed.set()
        return "250 2.0.0 OK"


def config_extra(smtp_port: int) -> str:
    return f"""
[mail]
transport = "smtp"
rate_per_s = 1000.0
frequency_cap = "off"
  [mail.smtp]
  host = "{HOST}"
  port = {smtp_port}

[[workflow]]
name = "signup_welcome"
trigger = "Signed Up"
transactional = true
  [[workflow.step]]
  send = "welcome"
"""


def sign(value: str) -> str:
    return hmac.new(IDENTITY_SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()


def signup(n: int, run: str) -> tuple[str, bytes]:
    """A verified identify and a Signed Up of a new user, in one frame; the user's address."""
    user, email = f"{run}-{n}", f"u{n}.{run}@example.com"
    context = {"userHash": sign(user), "emailHash": sign(email)}
    base = {"userId": user, "anonymousId": f"anon-{user}", "context": context}
    batch = [
        {**base, "type": "identify", "messageId": str(uuid.uuid4()), "traits": {"email": email}},
        {**base, "type": "track", "event": "Signed Up", "messageId": str(uuid.uuid4())},
    ]
    return email, json.dumps({"batch": batch}).encode()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    arrivals = Arrivals()
    smtp_port = free_port()
    sink = await loop.create_server(
        lambda: SMTP(arrivals, hostname="bench-sink", loop=loop), HOST, smtp_port
    )
    sent: dict[str, float] = {}
    run = uuid.uuid4().hex[:8]
    try:
        with workdir() as folder:
            spec = server_spec("rtserver", folder, extra_config=config_extra(smtp_port))
            config = next(folder.glob("rtserver-*.toml"))
            # The clients sign their identities, so the server gets a secret they know.
            text = re.sub(r'(?m)^identity_secret = ".*"$', "", config.read_text())
            config.write_text(
                text.replace("[keys]\n", f'[keys]\nidentity_secret = "{IDENTITY_SECRET}"\n')
            )
            async with running(spec, args.loop, folder):
                url = f"ws://{HOST}:{spec.port}{WS_PATH}"
                async with connect(url, additional_headers={"Origin": ORIGIN}) as ws:
                    start = time.monotonic()
                    for n in range(args.mails):
                        await asyncio.sleep(max(0.0, start + n / args.rate - time.monotonic()))
                        email, frame = signup(n, run)
                        sent[email] = time.monotonic()
                        await ws.send(frame.decode())
                    async with asyncio.timeout(args.mails / args.rate + 30):
                        while len(arrivals.at.keys() & sent.keys()) < len(sent):
                            arrivals.changed.clear()
                            await arrivals.changed.wait()
    except TimeoutError:
        got = len(arrivals.at.keys() & sent.keys())
        raise BenchError(f"only {got} of {len(sent)} mails arrived") from None
    finally:
        sink.close()
    latencies = sorted(arrivals.at[e] - t for e, t in sent.items())
    return {
        "server": "rtserver",
        "mails": len(latencies),
        "rate": args.rate,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * latencies[-1],
    }


async def main_async(args: argparse.Namespace) -> int:
    result = await measure(args)
    goal_met = result["p99_ms"] < GOAL_P99_S * 1000
    verdict = "met" if goal_met else "MISSED"
    text = format_table([result], COLUMNS) + (
        f"\nevent -> mail accepted p99: {result['p99_ms']:.1f} ms (goal < 1,000 ms: {verdict})"
    )
    report = document("mail_latency", args, [result], {"goal_met": goal_met})
    emit(report, text, args.json)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, ["rtserver"])
    parser.add_argument("--mails", type=int, default=500, help="sign-ups (one mail each)")
    parser.add_argument("--rate", type=float, default=25.0, help="sign-ups per second")
    parser.add_argument("--quick", action="store_true", help="20 sign-ups (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.mails, args.rate = 20, 50.0
    bench_main(lambda: main_async(args))


if __name__ == "__main__":
    main()
