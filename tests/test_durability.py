"""Durability across crashes and restarts, on a real ``rtserver serve`` child process.

Every acked event is stored exactly once, checked Jepsen style: browsers with Segment-like retry
queues stream events over WebSockets while a nemesis ``kill -9``s the server at random points of
the history and restarts it; a checker then reads the database. And SIGTERM under load drains,
acks, closes 1001, exits 0.

Sizes scale with ``RTSERVER_KILL9_EVENTS`` / ``RTSERVER_KILL9_INGEST_KILLS`` /
``RTSERVER_KILL9_SEED`` (./scripts/faults runs them larger).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from tests.support.server import ORIGIN, TIMEOUT_UNIT
from tests.support.server_process import ServerProcess, free_port, kill_points, write_config

KILL9_EVENTS = int(os.environ.get("RTSERVER_KILL9_EVENTS", "10000"))
KILL9_KILLS = int(os.environ.get("RTSERVER_KILL9_INGEST_KILLS", "20"))
KILL9_SEED = int(os.environ.get("RTSERVER_KILL9_SEED", "20261125"))
CLIENTS = 20
WINDOW = 4  # batches a client keeps in flight on one connection
MAX_BATCH = 12
RESEND_ACKED = 0.01  # share of events followed by a deliberate re-send of an acked one
MAX_FAILED_CONNECTS = 400  # in a row, per client: the harness gives up instead of spinning


def server_config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path / "config.toml",
        {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "allowed_origins": [ORIGIN],
                "shutdown_timeout_s": 10.0,
            },
            "store": {"path": str(tmp_path / "rtserver.db")},
            "ingest": {
                "max_connections_per_ip": 1000,
                "events_per_s": 100000.0,
                "burst_events": 100000,
                "budget_exempt": ["127.0.0.0/8"],
            },
        },
    )


def stored_rows(db: Path) -> tuple[list[tuple[str, int]], int, list[tuple[Any, ...]]]:
    """(messageId, row count) per stored id, the total row count, and the integrity check."""
    con = sqlite3.connect(db)
    try:
        per_id = con.execute("SELECT message_id, count(*) FROM events GROUP BY message_id")
        rows = [(str(m), int(c)) for m, c in per_id.fetchall()]
        total = int(con.execute("SELECT count(*) FROM events").fetchone()[0])
        integrity = con.execute("PRAGMA integrity_check").fetchall()
    finally:
        con.close()
    return rows, total, integrity


class History:
    """What the clients saw, shared with the nemesis (which triggers on ack counts)."""

    def __init__(self) -> None:
        self.acked = 0
        self.finished = False
        self.errors: list[str] = []
        self.changed = asyncio.Condition()

    async def note_acks(self, n: int) -> None:
        async with self.changed:
            self.acked += n
            self.changed.notify_all()

    async def finish(self) -> None:
        async with self.changed:
            self.finished = True
            self.changed.notify_all()

    async def reach(self, acks: int) -> bool:
        """Wait until ``acks`` events were acked; False if the clients finished first."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.acked >= acks or self.finished)
            return self.acked >= acks


@dataclass
class Browser:
    """A browser with a Segment-like retry queue: an event stays queued until acked, and every
    unacked event is resent with the same messageId after a reconnect."""

    index: int
    total: int
    url: str
    history: History
    rng: random.Random
    unacked: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)
    made: int = 0
    resent_unacked: int = 0
    resent_acked: int = 0
    reconnects: int = 0
    nacks: int = 0
    close_codes: list[int | None] = field(default_factory=list)

    def new_event(self) -> dict[str, Any]:
        self.made += 1
        raw: dict[str, Any] = {
            "type": "track",
            "event": "Product Viewed",
            "messageId": f"b{self.index:02d}-{self.made:06d}",
            "anonymousId": f"anon-{self.index}",
            "timestamp": "2026-11-25T10:00:00Z",
            "properties": {"product_id": f"p{self.rng.randrange(50)}", "price": 12.5},
        }
        self.unacked[raw["messageId"]] = raw
        self.sent.add(raw["messageId"])
        return raw

    def next_batch(self, resend: deque[str]) -> list[dict[str, Any]]:
        size = self.rng.randint(1, MAX_BATCH)
        batch: list[dict[str, Any]] = []
        while resend and len(batch) < size:
            mid = resend.popleft()
            if mid in self.unacked:  # acked meanwhile on this connection: nothing to resend
                batch.append(self.unacked[mid])
                self.resent_unacked += 1
        while len(batch) < size and self.made < self.total:
            batch.append(self.new_event())
            if self.acked and self.rng.random() < RESEND_ACKED:
                mid = self.rng.choice(list(self.acked))  # O(n), but only ~1% of the time
                batch.append(self.acked[mid])
                self.resent_acked += 1
        return batch

    @property
    def done(self) -> bool:
        return self.made >= self.total and not self.unacked

    async def run(self) -> None:
        failed = 0
        while not self.done:
            try:
                async with connect(
                    self.url,
                    additional_headers={"Origin": ORIGIN},
                    open_timeout=TIMEOUT_UNIT,
                    close_timeout=TIMEOUT_UNIT,
                    ping_interval=None,
                ) as ws:
                    failed = 0
                    await self.stream(ws)
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, TimeoutError, WebSocketException):
                failed += 1
                if failed > MAX_FAILED_CONNECTS:
                    raise
            if not self.done:
                self.reconnects += 1
                await asyncio.sleep(self.rng.uniform(0.005, 0.03))  # reconnect backoff

    async def stream(self, ws: ClientConnection) -> None:
        resend = deque(self.unacked)  # everything unacked goes again, same messageIds
        in_flight: deque[list[str]] = deque()
        closed: ConnectionClosed | None = None
        while True:
            try:
                while closed is None and len(in_flight) < WINDOW:
                    batch = self.next_batch(resend)
                    if not batch:
                        break
                    await ws.send(orjson.dumps({"batch": batch}).decode())
                    in_flight.append([e["messageId"] for e in batch])
            except ConnectionClosed as exc:
                closed = exc  # the replies that arrived before the close are still readable
            if not in_flight:
                if closed is not None:
                    raise closed
                return
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), 4 * TIMEOUT_UNIT))
            ids = in_flight.popleft()  # replies come in the order of the batches
            # One ack may cover several batches in a row (committed together).
            while "ack" in reply and len(ids) < len(reply["ack"]) and in_flight:
                ids = ids + in_flight.popleft()
            if "ack" in reply and reply["ack"] == ids:
                fresh = 0
                for mid in ids:
                    event = self.unacked.pop(mid, None)
                    if event is not None:
                        self.acked[mid] = event
                        fresh += 1
                await self.history.note_acks(fresh)
            elif "nack" in reply:
                self.nacks += 1
                resend.extend(ids)
            else:
                self.history.errors.append(f"browser {self.index}: {reply!r} for {ids!r}")
                raise AssertionError(f"unexpected reply {reply!r}")


@pytest.mark.slow
async def test_every_acked_event_is_stored_exactly_once_across_kill_9(tmp_path: Path) -> None:
    """20 browsers, a nemesis SIGKILLs and restarts the server; nothing acked is lost."""
    rng = random.Random(KILL9_SEED)
    port = free_port()
    server = ServerProcess(server_config(tmp_path, port))
    history = History()
    url = f"ws://127.0.0.1:{port}/v1/ws?key=pk_dev"
    share, extra = divmod(KILL9_EVENTS, CLIENTS)
    browsers = [
        Browser(i, share + (i < extra), url, history, random.Random(rng.random()))
        for i in range(CLIENTS)
    ]
    points = kill_points(rng, KILL9_EVENTS, KILL9_KILLS)
    kills = 0

    async def nemesis() -> None:
        nonlocal kills
        for point in points:
            if not await history.reach(point):
                return
            await server.kill()
            kills += 1
            await server.start()

    async def browse() -> None:
        await asyncio.gather(*(b.run() for b in browsers))
        await history.finish()

    try:
        async with asyncio.timeout(60 * TIMEOUT_UNIT):
            await server.start()
            async with asyncio.TaskGroup() as group:
                group.create_task(nemesis(), name="nemesis")
                group.create_task(browse(), name="browsers")
            code = await server.terminate(10.0)
    finally:
        await server.kill()
    assert code == 0, server.tail()

    sent = set().union(*(b.sent for b in browsers))
    acked = set().union(*(b.acked for b in browsers))
    rows, total, integrity = stored_rows(tmp_path / "rtserver.db")
    stored = {mid for mid, _ in rows}
    duplicates = [mid for mid, count in rows if count != 1]
    print(
        f"\nacked events across kill -9: {len(sent)} events, {kills} kills, {len(acked)} acked, "
        f"{len(stored)} stored "
        f"({total} rows), {len(duplicates)} duplicates, "
        f"{sum(b.resent_unacked for b in browsers)} resent unacked, "
        f"{sum(b.resent_acked for b in browsers)} resent acked, "
        f"{sum(b.reconnects for b in browsers)} reconnects, {sum(b.nacks for b in browsers)} nacks"
    )
    assert not history.errors
    assert kills >= min(KILL9_KILLS, 10)
    assert len(sent) == KILL9_EVENTS
    assert integrity == [("ok",)]
    assert not duplicates and total == len(stored)
    assert not acked - stored, sorted(acked - stored)[:10]
    assert stored == sent
    assert sum(b.resent_acked for b in browsers) > 0


async def test_sigterm_drains_acks_closes_1001_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM under load: every event the server took is acked, then 1001, exit 0."""
    port = free_port()
    server = ServerProcess(server_config(tmp_path, port))
    history = History()
    url = f"ws://127.0.0.1:{port}/v1/ws?key=pk_dev"
    browsers = [
        Browser(i, 10**9, url, history, random.Random(i)) for i in range(5)
    ]  # endless streams: they stop only when the server closes

    async def stream(browser: Browser) -> None:
        async with connect(url, additional_headers={"Origin": ORIGIN}, ping_interval=None) as ws:
            try:
                await browser.stream(ws)
            except ConnectionClosed as exc:
                browser.close_codes.append(exc.rcvd.code if exc.rcvd else None)

    try:
        async with asyncio.timeout(12 * TIMEOUT_UNIT):
            await server.start()
            streams = [asyncio.create_task(stream(b)) for b in browsers]
            await history.reach(500)
            code = await server.terminate(10.0)  # server.shutdown_timeout_s
            await asyncio.gather(*streams)
    finally:
        await server.kill()

    assert code == 0, server.tail()
    assert [b.close_codes for b in browsers] == [[1001]] * len(browsers)
    acked = set().union(*(b.acked for b in browsers))
    rows, total, integrity = stored_rows(tmp_path / "rtserver.db")
    assert integrity == [("ok",)]
    assert total == len(rows)
    # Everything the server accepted was committed and acked; nothing beyond that was stored.
    assert {mid for mid, _ in rows} == acked
    assert any("draining 5 websocket(s)" in line for line in server.log), server.tail()
