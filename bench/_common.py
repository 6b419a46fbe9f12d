"""What every benchmark shares: server subprocesses, configs, ports, /proc readings, statistics,
the event payload, command-line flags and the report (a table, or JSON with ``--json``).

Each server runs in its own process, started through :mod:`bench._launch` so that rtserver and
the baselines run on the same event loop. The load generator is the benchmark process itself, on
uvloop, with the cheap clients of :mod:`bench._wire`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import resource
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rtserver.tools.wire import WireError

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ORIGIN = "http://bench.local"
PUBLIC_KEY = "pk_dev"
WS_PATH = f"/v1/ws?key={PUBLIC_KEY}"
BATCH_PATH = "/v1/batch"
LOOPS = ("asyncio", "uvloop")
SERVERS = ("rtserver", "bare-websockets", "bare-starlette")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIN_CPU_S = 0.1
"""Less server CPU time than this (a few clock ticks) is too coarse to divide by events."""

T = TypeVar("T")


class BenchError(Exception):
    """The benchmark could not run, or what it measured is invalid (error replies, lost acks)."""


# --- servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: ``python -m bench._launch LOOP <module> <args>``."""

    name: str
    port: int
    module: str
    args: tuple[str, ...]
    write_key: str = ""
    """HTTP Basic user for rtserver's Segment API (the baselines accept anything)."""


def free_port() -> int:
    """A TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def write_rtserver_config(
    path: Path, port: int, write_key: str, *, deflate: bool, extra: str = ""
) -> Path:
    """A config for benchmarking: fresh store next to it, our Origin allowed, limits out of the
    way (per-connection rate, connections per address, idle timeout)."""
    store = path.with_suffix(".db")
    path.write_text(
        f"""\
[server]
host = "{HOST}"
port = {port}
allowed_origins = ["{ORIGIN}"]
log_level = "warning"
shutdown_timeout_s = 10.0

[store]
path = {json.dumps(str(store))}

[keys]
public = "{PUBLIC_KEY}"
write = "{write_key}"
identity_secret = "{secrets.token_urlsafe(32)}"

[ingest]
events_per_s = 10000000.0
burst_events = 10000000
max_connections_per_ip = 1000000
budget_exempt = ["127.0.0.0/8"]  # the load comes from one address: not a browser's budget
idle_timeout_s = 3600.0
permessage_deflate = {"true" if deflate else "false"}
{extra}""",
        encoding="utf-8",
    )
    return path


def server_spec(
    name: str, workdir: Path, *, deflate: bool = False, extra_config: str = ""
) -> ServerSpec:
    """The spec of ``rtserver``, ``bare-websockets`` or ``bare-starlette`` on a free port;
    ``extra_config`` is TOML appended to rtserver's config (``[[workflow]]`` tables)."""
    port = free_port()
    if name == "rtserver":
        write_key = "wk_bench_" + secrets.token_urlsafe(24)
        config = write_rtserver_config(
            workdir / f"rtserver-{port}.toml", port, write_key, deflate=deflate, extra=extra_config
        )
        args = ("serve", "--config", str(config), "--port", str(port))
        return ServerSpec(name, port, "rtserver", args, write_key)
    if name not in SERVERS:
        raise BenchError(f"unknown server {name!r} (expected one of {', '.join(SERVERS)})")
    kind = name.removeprefix("bare-")
    flags = ("--deflate",) if deflate else ()
    return ServerSpec(name, port, "bench.baseline", (kind, "--port", str(port), *flags))


def workflows_of(path: str | None) -> str:
    """The ``[[workflow]]`` tables of a config file (for ``--workflows``), or nothing."""
    if not path:
        return ""
    text = Path(path).read_text(encoding="utf-8")
    start = text.find("[[workflow]]")
    return "" if start < 0 else text[start:]


def rss_kib(pid: int) -> int:
    """Resident set size of a process (``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of all its threads)."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def tree_rss_kib(pid: int) -> int:
    """The largest resident set of a process and its descendants, in KiB (a one-file binary
    runs in a child of its bootloader)."""
    return max([rss_kib(pid), *map(tree_rss_kib, children(pid))])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants."""
    return cpu_seconds(pid) + sum(map(tree_cpu_seconds, children(pid)))


def loop_of(pid: int) -> str:
    """``uvloop`` if the process has uvloop's extension mapped, else ``asyncio``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


async def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """One ``GET`` on a fresh connection: status and body."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@dataclass
class ServerProcess:
    """A started server: its process, readings from /proc, and its log for post-mortems."""

    spec: ServerSpec
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def port(self) -> int:
        return self.spec.port

    def rss_kib(self) -> int:
        return rss_kib(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"    | {line}" for line in text)

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise BenchError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    async def wait_ready(self) -> None:
        """Poll ``GET /healthz`` until it answers 200 (bounded by ``READY_TIMEOUT_S``)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self.check_alive()
            with contextlib.suppress(OSError, TimeoutError, IndexError, ValueError):
                status, _ = await http_get(self.port, "/healthz", timeout_s=1.0)
                if status == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready after {READY_TIMEOUT_S:g}s")
            await asyncio.sleep(0.05)

    async def health(self) -> dict[str, Any]:
        """rtserver's ``/healthz`` body (it counts open WebSockets)."""
        _, body = await http_get(self.port, "/healthz")
        result: dict[str, Any] = json.loads(body)
        return result

    async def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it takes over ``STOP_TIMEOUT_S``."""
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def running(spec: ServerSpec, loop: str, workdir: Path) -> AsyncIterator[ServerProcess]:
    """Start the server, wait until it is ready, stop it on the way out."""
    log_path = workdir / f"{spec.name}-{spec.port}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._launch",
            loop,
            spec.module,
            *spec.args,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = ServerProcess(spec, process, log_path)
    try:
        await server.wait_ready()
        actual = loop_of(process.pid)
        if actual != loop:
            raise BenchError(f"{spec.name} runs on {actual}, not {loop}")
        yield server
        server.check_alive()
    finally:
        await server.stop()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory for configs, stores and server logs."""
    with tempfile.TemporaryDirectory(prefix="rtserver-bench-") as path:
        yield Path(path)


def raise_nofile(wanted: int) -> int:
    """Raise the open-file soft limit towards ``wanted`` (server subprocesses inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# --- load ----------------------------------------------------------------------------------

EVENT_TEMPLATE = (
    '{"type":"track","event":"Product Viewed","messageId":"%s","anonymousId":"%s",'
    '"timestamp":"2026-11-25T10:00:00.000Z","properties":{"product_id":"sku-%d",'
    '"name":"Bench product","price":12.5,"currency":"EUR","category":"bench"},'
    '"context":{"page":{"path":"/p/%d","url":"http://bench.local/p/%d","title":"Bench product",'
    '"referrer":""},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) bench",'
    '"library":{"name":"rt.js","version":"0.1.0"}}}'
)
"""A browser-like ``Product Viewed`` (about 450 bytes)."""


@dataclass(frozen=True)
class Batch:
    """One ``{"batch": [...]}`` body and the messageIds it carries."""

    body: bytes
    ids: list[str]


def make_batch(run: str, client: int, first: int, size: int) -> Batch:
    """``size`` events of one browser (``client``), numbered from ``first``; ids unique per run."""
    ids = [f"{run}-{client}-{first + i}" for i in range(size)]
    anonymous_id = f"anon-{run}-{client}"
    events = [
        EVENT_TEMPLATE % (mid, anonymous_id, first + i, first + i, first + i)
        for i, mid in enumerate(ids)
    ]
    return Batch(('{"batch":[' + ",".join(events) + "]}").encode(), ids)


def run_id() -> str:
    return secrets.token_hex(4)


@dataclass(eq=False)
class ClosedLoop:
    """Keeps up to ``window`` requests in flight on one connection until all are answered.

    Replies come in request order (both transports answer in order), so the caller checks a
    reply against ``requests[answered]`` and calls :meth:`reply`. Everything runs in protocol
    callbacks: no task and no await per request, so the client stays cheap.
    """

    send: Callable[[bytes], None]
    requests: Sequence[bytes]
    window: int
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    sent: int = 0
    answered: int = 0
    stopped: bool = False
    """Set when the measurement ends: a connection closing after that is no failure."""

    def start(self) -> None:
        if not self.requests:
            self.done.set_result(None)
        while self.sent < min(self.window, len(self.requests)):
            self._send_next()

    def _send_next(self) -> None:
        self.send(self.requests[self.sent])
        self.sent += 1

    def reply(self) -> None:
        """The reply to ``requests[answered]`` arrived and was right."""
        self.answered += 1
        if self.sent < len(self.requests):
            self._send_next()
        elif self.answered == len(self.requests) and not self.done.done():
            self.done.set_result(None)

    def fail(self, why: str) -> None:
        if not self.stopped and not self.done.done():
            self.done.set_exception(BenchError(why))


async def run_closed_loops(loops: Sequence[ClosedLoop], duration_s: float) -> bool:
    """Start every loop and wait until all are done or ``duration_s`` passed; True if done.

    Raises:
        BenchError: a connection failed (the first failure).
    """
    for loop in loops:
        loop.start()
    try:
        async with asyncio.timeout(duration_s):
            await asyncio.gather(*(loop.done for loop in loops))
    except TimeoutError:
        return False
    finally:
        for loop in loops:
            loop.stopped = True
    return True


@dataclass
class CpuMeter:
    """CPU used by a server process and by this (client) process over a wall-clock interval."""

    pid: int
    wall: float = field(init=False)
    server: float = field(init=False)
    client: float = field(init=False)

    def __post_init__(self) -> None:
        self.wall = time.perf_counter()
        self.server = cpu_seconds(self.pid)
        self.client = time.process_time()

    def read(self) -> dict[str, float]:
        """``elapsed_s``, ``server_cpu_s``, ``server_cpu_pct``, ``client_cpu_pct`` so far."""
        elapsed = time.perf_counter() - self.wall
        server = cpu_seconds(self.pid) - self.server
        client = time.process_time() - self.client
        return {
            "elapsed_s": elapsed,
            "server_cpu_s": server,
            "server_cpu_pct": 100.0 * server / elapsed,
            "client_cpu_pct": 100.0 * client / elapsed,
        }


# --- statistics and reports ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class Column:
    """One column of a result table: the row key, its header and its format."""

    key: str
    header: str
    fmt: str = "{}"


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[c.header for c in columns]]
    for row in rows:
        cells.append([c.fmt.format(row[c.key]) if c.key in row else "-" for c in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        parts = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def base_parser(doc: str | None, servers: Sequence[str]) -> argparse.ArgumentParser:
    """Flags every benchmark has: ``--servers``, ``--loop``, ``--json``; ``doc`` is the
    script's docstring (its first line describes it in ``--help``)."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--servers",
        default=",".join(servers),
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help=f"comma-separated, measured in this order; known: {', '.join(SERVERS)}",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="uvloop",
        help="event loop of every server (`rtserver serve` takes uvloop when installed)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_avg_1m": os.getloadavg()[0],
    }


def rtserver_digest() -> str:
    """A digest of the rtserver sources measured (``rtserver/*.py`` next to this directory)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "rtserver").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def document(
    bench: str, args: argparse.Namespace, results: list[dict[str, Any]], summary: dict[str, Any]
) -> dict[str, Any]:
    """The JSON report: parameters, machine, rtserver sources, one result per server, summary."""
    params = {k: v for k, v in vars(args).items() if k != "json"}
    return {
        "bench": bench,
        "params": params,
        "machine": machine(),
        "rtserver_digest": rtserver_digest(),
        "results": results,
        **summary,
    }


def emit(report: dict[str, Any], text: str, as_json: bool) -> None:
    """Print the report: the text (table and verdicts), or the JSON document."""
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(text)


# --- throughput (WebSocket and HTTP ingest) ------------------------------------------------

THROUGHPUT_COLUMNS = [
    Column("server", "server"),
    Column("events", "events", "{:,}"),
    Column("elapsed_s", "seconds", "{:.2f}"),
    Column("events_per_s", "events/s", "{:,.0f}"),
    Column("server_cpu_pct", "server CPU %", "{:.0f}"),
    Column("cpu_us_per_event", "server CPU µs/event", "{:.1f}"),
    Column("client_cpu_pct", "client CPU %", "{:.0f}"),
    Column("complete", "complete"),
]


def throughput_result(
    name: str, events: int, usage: dict[str, float], complete: bool, **extra: Any
) -> dict[str, Any]:
    """One server's row: events acked, rate, server CPU per event, and ``usage``."""
    measurable = events and usage["server_cpu_s"] >= MIN_CPU_S
    return {
        "server": name,
        "events": events,
        "events_per_s": events / usage["elapsed_s"],
        "cpu_us_per_event": 1e6 * usage["server_cpu_s"] / events if measurable else math.nan,
        "complete": complete,
        **usage,
        **extra,
    }


def throughput_summary(
    results: list[dict[str, Any]], baseline: str, goal: float
) -> tuple[dict[str, Any], list[str]]:
    """rtserver's rate over the baseline's (the goal), and over CPU time (robust to a busy
    machine): summary fields and the verdict line."""
    by_name = {r["server"]: r for r in results}
    if "rtserver" not in by_name or baseline not in by_name:
        return {}, []
    rt, base = by_name["rtserver"], by_name[baseline]
    summary: dict[str, Any] = {
        "ratio": ratio(rt["events_per_s"], base["events_per_s"]),
        "cpu_ratio": ratio(base["cpu_us_per_event"], rt["cpu_us_per_event"]),
    }
    summary["goal_met"] = summary["ratio"] >= goal
    verdict = "met" if summary["goal_met"] else "MISSED"
    line = (
        f"ratio rtserver / {baseline}: {summary['ratio']:.2f} events/s "
        f"(goal >= {goal:g}: {verdict}); per server CPU second: {summary['cpu_ratio']:.2f}"
    )
    return summary, [line]


@contextlib.asynccontextmanager
async def helper_process(
    module: str,
    flag: str,
    loop_name: str,
    workdir: Path,
    ready: Callable[[int], Coroutine[Any, Any, bool]],
    timeout_s: float = READY_TIMEOUT_S,
) -> AsyncIterator[tuple[int, int]]:
    """Start ``python -m bench._launch <loop> <module> <flag> --port P`` (a bench's sink or
    receiver, in its own process on ``loop_name``), wait until ``ready(port)`` is true, and
    stop it with SIGTERM at the end: its port and pid."""
    port = free_port()
    name = flag.removeprefix("--serve-")
    log = (workdir / f"{name}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._launch", loop_name, module, flag, "--port", str(port),
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.returncode is not None:
                raise BenchError(f"{name} exited with {process.returncode}")
            with contextlib.suppress(OSError, TimeoutError, IndexError, ValueError):
                if await ready(port):
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready after {timeout_s:g}s")
            await asyncio.sleep(0.05)
        yield port, process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def alternating(
    names: Sequence[str],
    repeat: int,
    measure: Callable[[str, int], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """``measure(name, repeat)`` for each name, ``repeat`` times, the order reversed on every
    other round (so neither client always runs on a warmer machine); the runs by name."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in names if round_ % 2 == 0 else names[::-1]:
            print(f"# run {round_ + 1}/{repeat}: {name}", file=sys.stderr, flush=True)
            runs[name].append(await measure(name, round_))
    return runs


def client_summary(name: str, runs: list[dict[str, Any]], units: str, unit: str) -> dict[str, Any]:
    """One client's row over its runs (each ``{units, elapsed_s, cpu_s}``): the median rate
    and its range, the client's CPU per ``unit`` and its share of a core."""
    rates = [r[units] / r["elapsed_s"] for r in runs]
    count = runs[0][units]
    cpu = statistics.median(r["cpu_s"] for r in runs)
    elapsed = statistics.median(r["elapsed_s"] for r in runs)
    return {
        "server": name,
        units: count,
        f"{units}_per_s": statistics.median(rates),
        f"{units}_per_s_range": f"{min(rates):,.0f}-{max(rates):,.0f}",
        f"client_cpu_us_per_{unit}": 1e6 * cpu / count,
        "client_cpu_pct": 100.0 * cpu / elapsed,
        "runs": runs,
    }


def client_ratios(
    ours: Mapping[str, Any], bare: Mapping[str, Any], units: str, unit: str, goal: float
) -> dict[str, Any]:
    """Our rate over the bare client's (against ``goal``), and their CPU per ``unit``."""
    summary: dict[str, Any] = {
        "ratio": ratio(ours[f"{units}_per_s"], bare[f"{units}_per_s"]),
        "cpu_ratio": ratio(bare[f"client_cpu_us_per_{unit}"], ours[f"client_cpu_us_per_{unit}"]),
    }
    summary["goal_met"] = bool(math.isfinite(summary["ratio"]) and summary["ratio"] >= goal)
    return summary


def run_client(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the load generator (this process) on uvloop, whatever the servers run on."""
    import uvloop  # here, not at the top: the baselines import this module with uvloop blocked

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def bench_main(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Exit with ``main``'s status; a :class:`BenchError` prints its reason and exits 1."""
    try:
        code = run_client(main)
    except (BenchError, WireError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
