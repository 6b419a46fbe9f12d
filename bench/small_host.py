"""Sizing on a small host: one server command, its memory and its latency under the shop mix.

    python -m bench.small_host --server "taskset -c 0 dist/rtserver"
    python -m bench.small_host --server "taskset -c 0 dist/rtserver" \\
        --cgroup /sys/fs/cgroup/memory/rtserver          # run it under a memory limit
    python -m bench.small_host --quick                    # the smoke run of tests/test_bench.py

The server (default: this Python's ``-m rtserver``) serves the shipped workflows on a fresh
store with ``synchronous=FULL``; the load comes from this process (``rtserver loadgen``'s
code), so pin the server to one core and leave this one the other. In order:

1. idle: the resident set once ``/healthz`` answers and a few sockets came and went;
2. the shop mix: 1,000 shoppers at each of ``--rates`` events a second for ``--seconds``:
   what was acked and decided, and the send → ack percentiles;
3. active shoppers: ``--active`` distinct shoppers, 1,000 connections at a time, each sending
   half a round of the shop mix (a landing, views and adds: carts left open, so every one of
   them has open runs and a timer): the resident set as their facts fill the engine's memory;
4. idle browsers: ``--browsers`` WebSockets opened and left idle, the resident set with them
   (last: the allocator keeps much of what so many sockets took after they close).

The resident set is the largest of the process and its children (a one-file binary runs in a
child). With ``--cgroup DIR``, the server is started inside that (existing) cgroup, so its
memory limit applies; the report gives the cgroup's peak (which counts the page cache: the
store's pages, reclaimed at the limit) and whether the limit killed anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench._common import (
    HOST,
    ORIGIN,
    PUBLIC_KEY,
    BenchError,
    ServerProcess,
    ServerSpec,
    bench_main,
    document,
    emit,
    free_port,
    machine,
    raise_nofile,
    tree_rss_kib,
    workdir,
    workflows_of,
    write_rtserver_config,
)
from rtserver.tools.loadgen import loadgen
from rtserver.tools.wire import close_all, open_ws_many

ROOT = Path(__file__).resolve().parent.parent
WS_PATH = f"/v1/ws?key={PUBLIC_KEY}"
SHOPPERS = 1000
HALF_ROUND = 5
"""Events per active shopper: a landing, two views, an add and a view (SHOP_CYCLE's start)."""


def cgroup_reading(cgroup: str) -> dict[str, int]:
    """A cgroup's memory limit, peak (page cache included), and the processes its limit
    killed (cgroup v2's files, or v1's)."""
    folder = Path(cgroup)

    def read(v2: str, v1: str) -> str:
        for name in (v2, v1):
            if (folder / name).exists():
                return (folder / name).read_text()
        return "0"

    limit = read("memory.max", "memory.limit_in_bytes").strip()
    events = read("memory.events", "memory.oom_control")  # both have an "oom_kill N" line
    fields = dict(line.split()[:2] for line in events.splitlines() if line.strip())
    return {
        "limit": 0 if limit == "max" else int(limit),
        "peak": int(read("memory.peak", "memory.max_usage_in_bytes").strip()),
        "oom_kills": int(fields.get("oom_kill", "0")),
    }


@contextlib.asynccontextmanager
async def server(args: argparse.Namespace, folder: Path) -> AsyncIterator[ServerProcess]:
    """The server command on the shipped workflows, optionally inside ``--cgroup``."""
    port = free_port()
    config = write_rtserver_config(
        folder / "small-host.toml",
        port,
        "wk_bench_small_host_0123456789abcdef",
        deflate=False,
        extra=workflows_of(str(ROOT / "config.toml")),
    )
    command = shlex.split(args.server) or [sys.executable, "-m", "rtserver"]
    command += ["serve", "--config", str(config)]
    if args.cgroup:  # join the cgroup first, so that the server and its children are in it
        procs = Path(args.cgroup) / "cgroup.procs"
        command = ["sh", "-c", f'echo $$ > {shlex.quote(str(procs))} && exec "$@"', "-", *command]
    log_path = folder / "small-host.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=folder, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
    running = ServerProcess(ServerSpec("rtserver", port, "rtserver", ()), process, log_path)
    try:
        await running.wait_ready()
        yield running
        running.check_alive()
    finally:
        await running.stop()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(max(args.browsers) + 2 * SHOPPERS + 1000)
    url = f"http://{HOST}"
    result: dict[str, Any] = {"server": args.server or "python -m rtserver", "browsers": {}}
    with workdir() as folder:
        async with server(args, folder) as running:
            url = f"http://{HOST}:{running.port}"
            await close_all(await open_ws_many(10, running.port, path=WS_PATH, origin=ORIGIN))
            result["idle_mib"] = tree_rss_kib(running.process.pid) / 1024
            result["rates"] = []
            for rate in args.rates:
                report = await loadgen(url, key=PUBLIC_KEY, origin=ORIGIN, shoppers=min(
                    SHOPPERS, int(rate)), events=int(rate * args.seconds), rate=rate)  # fmt: skip
                row = {
                    "rate": rate,
                    "shoppers": report.shoppers,
                    "acked": report.acked,
                    "sent": report.sent,
                    "decided": report.decided,
                    "p50_ms": 1000 * report.percentile(0.5),
                    "p99_ms": 1000 * report.percentile(0.99),
                    "rss_mib": tree_rss_kib(running.process.pid) / 1024,
                }
                result["rates"].append(row)
                print(f"# {rate:,.0f} events/s: ack p99 {row['p99_ms']:.1f} ms", file=sys.stderr)
            result["active"] = []
            shoppers = 0
            started = time.perf_counter()
            while shoppers < args.active:
                batch = min(SHOPPERS, args.active - shoppers)
                await loadgen(url, key=PUBLIC_KEY, origin=ORIGIN, shoppers=batch,
                              events=batch * HALF_ROUND)  # fmt: skip
                shoppers += batch
                rss = tree_rss_kib(running.process.pid) / 1024
                result["active"].append({"shoppers": shoppers, "rss_mib": rss})
                print(f"# {shoppers:,} active shoppers: {rss:.0f} MiB", file=sys.stderr)
            result["active_s"] = time.perf_counter() - started
            for count in args.browsers:
                conns = await open_ws_many(count, running.port, path=WS_PATH, origin=ORIGIN)
                rss = tree_rss_kib(running.process.pid) / 1024
                result["browsers"][count] = rss
                await close_all(conns)
                print(f"# {count:,} idle browsers: {rss:.0f} MiB", file=sys.stderr)
    if args.cgroup:
        result["cgroup"] = cgroup_reading(args.cgroup)
    return result


def text_of(result: dict[str, Any]) -> str:
    lines = [f"`{result['server']} serve`, the shipped workflows, synchronous=FULL", ""]
    lines.append("| measured | figure |")
    lines.append("|---|---|")
    lines.append(f"| idle, serving | {result['idle_mib']:.0f} MiB RSS |")
    for row in result["rates"]:
        decided = "n/a" if row["decided"] is None else f"{row['decided']:,}"
        lines.append(
            f"| {row['shoppers']:,} shoppers, {row['rate']:,.0f} events/s | "
            f"ack p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms; "
            f"acked {row['acked']:,} of {row['sent']:,}, "
            f"decided {decided} |"
        )
    if result["active"]:
        last = result["active"][-1]
        steps = ", ".join(f"{a['rss_mib']:.0f}" for a in result["active"][9::10])
        lines.append(
            f"| {last['shoppers']:,} active shoppers (open carts and timers) | "
            f"{last['rss_mib']:.0f} MiB" + (f" (every 10,000: {steps})" if steps else "") + " |"
        )
    base = result["active"][-1]["rss_mib"] if result["active"] else result["idle_mib"]
    for count, rss in result["browsers"].items():
        per = 1024 * (rss - base) / count
        lines.append(
            f"| {count:,} idle browsers connected, after that | {rss:.0f} MiB "
            f"({per:.0f} KiB each) |"
        )
    if "cgroup" in result:
        group = result["cgroup"]
        lines.append(
            f"| under a {group['limit'] / 2**20:.0f} MiB cgroup limit | peak "
            f"{group['peak'] / 2**20:.0f} MiB with the page cache, "
            f"{group['oom_kills']} processes killed |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    result = await measure(args)
    acked = all(row["acked"] == row["sent"] for row in result["rates"])
    summary = {"all_acked": acked, "machine": machine()}
    emit(document("small_host", args, [result], summary), text_of(result), args.json)
    if not acked:
        raise BenchError("some events were not acked")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--server", default="", help="server command (default: -m rtserver)")
    parser.add_argument("--cgroup", default="", help="start the server in this cgroup folder")
    parser.add_argument("--browsers", default="1000,10000", help="idle WebSockets to hold")
    parser.add_argument("--rates", default="1000,2000,3000", help="shop-mix events/s to try")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds at each rate")
    parser.add_argument("--active", type=int, default=50_000, help="distinct active shoppers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.browsers, args.rates, args.seconds, args.active = "20", "200", 1.0, 300
    args.browsers = [int(n) for n in str(args.browsers).split(",") if n]
    args.rates = [float(n) for n in str(args.rates).split(",") if n]
    bench_main(lambda: run(args))


if __name__ == "__main__":
    main()
