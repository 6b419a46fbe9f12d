"""Across ``kill -9``, abandonment timers are durable and each step is decided exactly once.

A real ``rtserver serve`` child on the real wall clock (a fake clock cannot cross processes), so
the workflow uses the shortest waits: ``wait 1s; send; wait 1s; send; wait 1s; send``. Jepsen
style, as in ``test_durability.py``: a shop backend posts carts of identified users over the
Segment HTTP API (write key, trusted) and purchases some of them at random moments, retrying
every batch with the same messageIds until it gets its 200; a nemesis ``kill -9``s the server
while timers fire (see :class:`Nemesis`) and restarts it, once after a long outage that spans
many due times. A monitor follows the SQLite file with its own read-only connection. The
checker then reads the database: every step is decided once, and only as its run's history
allows.

Sizes scale with ``RTSERVER_KILL9_CARTS`` / ``RTSERVER_KILL9_TIMER_KILLS`` /
``RTSERVER_KILL9_SEED`` (./scripts/faults runs them larger).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from rtserver.engine.engine import Engine
from rtserver.runtime import load_rules
from rtserver.store.database import Store
from tests.support.server import (
    IDENTITY_SECRET,
    TIMEOUT_UNIT,
    WRITE_KEY,
    FakeClock,
    make_config,
    run_server,
)
from tests.support.server_process import ServerProcess, free_port, kill_points, write_config

KILL9_CARTS = int(os.environ.get("RTSERVER_KILL9_CARTS", "600"))
KILL9_KILLS = int(os.environ.get("RTSERVER_KILL9_TIMER_KILLS", "12"))
KILL9_SEED = int(os.environ.get("RTSERVER_KILL9_SEED", "20261126"))
USERS = 60
PURCHASED = 0.3  # share of carts bought
ADD_WINDOW_S = 12.0  # carts are added over this long
PURCHASE_DELAY_S = (0.0, 8.0)  # after the cart's ack: before, between or after the sends
LONG_OUTAGE_S = 3.0  # one outage spans three due ticks
WAIT_S = 1.0
SENDS = {1: "cart_reminder", 3: "cart_reminder_2", 5: "re_engagement"}  # step index -> template
EXIT_REASON = "exit on Order Completed"
POLL_S = 0.01  # the monitor's poll interval
MAX_FAILED_POSTS = 500  # in a row, per batch: the harness gives up instead of spinning
FLUSHERS = 4  # batches the shop keeps in flight
MAX_BATCH = 50
BACKOFF_S = (0.02, 0.25)  # first and longest wait before a batch is resent

WORKFLOW = """
[[workflow]]
name = "cart_abandonment"
trigger = "Product Added"
run_key = "properties.cart_id"
exit_on = ["Order Completed"]
  [[workflow.step]]
  wait = "1s"
  [[workflow.step]]
  send = "cart_reminder"
  [[workflow.step]]
  wait = "1s"
  [[workflow.step]]
  send = "cart_reminder_2"
  [[workflow.step]]
  wait = "1s"
  [[workflow.step]]
  send = "re_engagement"
"""


def server_config(tmp_path: Path, port: int) -> Path:
    path = write_config(
        tmp_path / "config.toml",
        {
            "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 10.0},
            "store": {"path": str(tmp_path / "rtserver.db")},
            "keys": {"write": WRITE_KEY, "identity_secret": IDENTITY_SECRET},
            "mail": {"frequency_cap": "off"},
        },
    )
    with path.open("a", encoding="utf-8") as config:
        config.write(WORKFLOW)
    return path


class Monitor:
    """Reads the live database with its own read-only connection (never the server's)."""

    def __init__(self, db: Path):
        self.uri = db.resolve().as_uri() + "?mode=ro"
        self.con: sqlite3.Connection | None = None
        self.errors = 0

    def _query(self, sql: str) -> list[Any]:
        for _ in range(50):
            try:
                if self.con is None:
                    self.con = sqlite3.connect(self.uri, uri=True, timeout=1.0)
                return self.con.execute(sql).fetchall()
            except sqlite3.OperationalError:  # e.g. busy while a restart recovers the WAL
                self.errors += 1
                self.close()
                time.sleep(POLL_S)
        raise AssertionError(f"the monitor cannot read {self.uri}")

    def steps(self) -> int:
        return int(self._query("SELECT count(*) FROM steps")[0][0])

    def pending(self) -> int:
        return int(self._query("SELECT count(*) FROM timers")[0][0])

    def timers(self) -> dict[str, tuple[int, float]]:
        """Pending timers: run id -> (step, due)."""
        return {r: (s, d) for r, s, d in self._query("SELECT run_id, step, due FROM timers")}

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


@dataclass
class Op:
    """One event of the shop's history: when it was first sent and when it was acked (200)."""

    raw: dict[str, Any]
    first_sent: float | None = None
    acked_at: float | None = None


@dataclass
class Cart:
    id: str
    user: str
    add_at: float  # seconds after the shop opens
    purchase_delay: float | None  # after the add's ack; None: never bought
    add: Op
    purchase: Op | None = None


def track(name: str, user: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "messageId": str(uuid.uuid4()),
        "userId": user,
        "timestamp": "2026-11-26T10:00:00Z",
        "properties": properties,
    }


def identify(user: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": str(uuid.uuid4()),
        "userId": user,
        "timestamp": "2026-11-26T10:00:00Z",
        "traits": {"email": f"{user}@shop.example", "consent": "confirmed_opt_in"},
    }


class Shop:
    """The shop's backend, like a Segment library: events queue up, a few flushers post them
    in batches with the write key, and a batch is resent, same messageIds, with exponential
    backoff until it gets its 200."""

    def __init__(self, url: str, rng: random.Random):
        self.url = url
        self.rng = rng
        self.ops: list[Op] = []
        self.queue: list[Op] = []
        self.queued = asyncio.Event()
        self.closed = False
        self.posts = 0
        self.failed_posts = 0
        self.added = 0  # carts acked
        self.errors: list[str] = []

    def op(self, raw: dict[str, Any]) -> Op:
        op = Op(raw)
        self.ops.append(op)
        return op

    def enqueue(self, ops: list[Op]) -> None:
        self.queue.extend(ops)
        self.queued.set()

    async def post(self, client: httpx.AsyncClient, ops: list[Op]) -> None:
        """POST one batch, again and again with the same messageIds, until it gets a 200."""
        body = orjson.dumps({"batch": [op.raw for op in ops]})
        sent = time.time()
        for op in ops:
            op.first_sent = sent
        backoff = BACKOFF_S[0]
        for _ in range(MAX_FAILED_POSTS):
            self.posts += 1
            try:
                reply = await client.post(
                    "/v1/batch", content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError:  # refused, reset or cut off by a kill: outcome unknown
                reply = None
            if reply is not None and reply.status_code == 200:
                acked = time.time()
                for op in ops:
                    op.acked_at = acked
                self.added += sum(op.raw.get("event") == "Product Added" for op in ops)
                return
            if reply is not None and reply.status_code != 503:
                self.errors.append(f"{reply.status_code} {reply.text} for {body[:200]!r}")
                raise AssertionError(self.errors[-1])
            self.failed_posts += 1
            await asyncio.sleep(self.rng.uniform(backoff / 2, backoff))
            backoff = min(2 * backoff, BACKOFF_S[1])
        raise AssertionError(f"no 200 after {MAX_FAILED_POSTS} posts of one batch")

    async def flush(self, client: httpx.AsyncClient) -> None:
        while self.queue or not self.closed:
            if not self.queue:
                self.queued.clear()
                await self.queued.wait()
                continue
            batch, self.queue[:MAX_BATCH] = self.queue[:MAX_BATCH], []
            await self.post(client, batch)

    async def run(self, users: list[str], carts: list[Cart]) -> None:
        auth = httpx.BasicAuth(WRITE_KEY, "")
        async with httpx.AsyncClient(base_url=self.url, auth=auth, timeout=TIMEOUT_UNIT) as client:
            # Identified first: a send needs the person's verified email.
            await self.post(client, [self.op(identify(user)) for user in users])
            async with asyncio.TaskGroup() as flushers:
                for i in range(FLUSHERS):
                    flushers.create_task(self.flush(client), name=f"flusher-{i}")
                await self.shop(carts)
                self.closed = True
                self.queued.set()

    async def shop(self, carts: list[Cart]) -> None:
        """Add the carts on their schedule; buy some, each a while after its add was acked."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        to_add = sorted(carts, key=lambda c: c.add_at)
        to_buy = [c for c in carts if c.purchase_delay is not None]
        while to_add or to_buy:
            now = loop.time()
            while to_add and to_add[0].add_at <= now - opened:
                self.enqueue([to_add.pop(0).add])
            for cart in list(to_buy):
                added = cart.add.acked_at  # bought only after its add was acked, as in a shop
                assert cart.purchase_delay is not None
                if added is not None and time.time() >= added + cart.purchase_delay:
                    raw = track("Order Completed", cart.user, cart_id=cart.id, revenue=20)
                    cart.purchase = self.op(raw)
                    self.enqueue([cart.purchase])
                    to_buy.remove(cart)
            await asyncio.sleep(self.rng.uniform(0.005, 0.015))


@dataclass
class Incarnation:
    """One life of the server: the timers overdue when it was spawned, and what became of
    them (caught up: all fired, seconds after the spawn; fired: how many before its end)."""

    spawned: float
    overdue: dict[str, int]  # run id -> step
    ready: float | None = None  # None: killed before its ready banner
    caught_up_s: float | None = None
    ended: float | None = None
    fired: int = 0
    killed_while_pending: bool = False
    owed_at_kill: int = 0  # timers whose tick had come, not yet decided when the kill came


def still_pending(overdue: dict[str, int], timers: dict[str, tuple[int, float]]) -> int:
    return sum(1 for run, step in overdue.items() if timers.get(run, (None,))[0] == step)


class Nemesis:
    """Kills the server while its timers fire, and restarts it. Modes (when to kill a life):
    ``catch-up``: right after it rebuilt its wheel, while it fires the timers that became
    overdue during the outage (before it is even ready); ``tick``: within a few ms of the next
    whole second at which pending timers come due (the wheel fires on whole seconds);
    ``progress``: right after a few more steps were committed. Kill points follow the shop's
    progress, so that timers are pending at every kill."""

    MODES = ("catch-up", "tick", "progress")
    SHARES = (0.45, 0.35, 0.2)

    def __init__(self, server: ServerProcess, monitor: Monitor, rng: random.Random):
        self.server = server
        self.monitor = monitor
        self.rng = rng
        self.lives: list[Incarnation] = []
        self.modes: list[str] = []
        self._starting: asyncio.Task[str] | None = None
        self._log_mark = 0

    def spawn(self) -> None:
        """Start a life; its ready banner is awaited by :meth:`ready`."""
        before = self.monitor.timers() if self.lives else {}
        spawned = time.time()
        overdue = {run: step for run, (step, due) in before.items() if math.ceil(due) <= spawned}
        self.lives.append(Incarnation(spawned, overdue, caught_up_s=None if overdue else 0.0))
        self._log_mark = len(self.server.log)
        self._starting = asyncio.create_task(self.server.start(), name="server-start")

    async def ready(self) -> None:
        assert self._starting is not None
        await self._starting
        if self.lives[-1].ready is None:
            self.lives[-1].ready = time.time()

    def observe(self) -> tuple[int, int]:
        """One poll: the steps decided and the timers pending; notes the catch-up."""
        life = self.lives[-1]
        if life.caught_up_s is None and not still_pending(life.overdue, self.monitor.timers()):
            life.caught_up_s = time.time() - life.spawned
        return self.monitor.steps(), self.monitor.pending()

    async def watch(self, seconds: float, steps_more: int = 0) -> None:
        """Poll for ``seconds``, then until ``steps_more`` more steps are decided (bounded)."""
        deadline = time.time() + seconds
        start = self.observe()[0]
        while time.time() < deadline:
            self.observe()
            await asyncio.sleep(POLL_S)
        limit = time.time() + 2.0
        while self.observe()[0] < start + steps_more and time.time() < limit:
            await asyncio.sleep(POLL_S)

    async def restored(self) -> None:
        """Wait until the starting server rebuilt its wheel (it fires the overdue at once)."""
        assert self._starting is not None
        while not self._starting.done() and not any(
            "pending restored from the store" in line for line in self.server.log[self._log_mark :]
        ):
            await asyncio.sleep(0.001)

    async def kill(self) -> None:
        life = self.lives[-1]
        assert self.server.proc is not None and self._starting is not None
        if life.ready is not None:
            life.killed_while_pending = bool(self.observe()[1])
        at = time.time()
        self.server.proc.kill()
        with contextlib.suppress(RuntimeError):  # "server exited before it was ready"
            await self._starting
        await self.server.kill()  # reap
        life.ended = time.time()
        timers = self.monitor.timers()
        life.killed_while_pending |= bool(timers)
        life.fired = len(life.overdue) - still_pending(life.overdue, timers)
        life.owed_at_kill = sum(1 for _, due in timers.values() if math.ceil(due) <= at)

    def owed(self) -> int:
        """Pending timers whose tick has come: a life spawned now fires them at once."""
        now = time.time()
        return sum(1 for _, due in self.monitor.timers().values() if math.ceil(due) <= now)

    def next_due_tick(self) -> int:
        """The next second boundary where pending timers come due (else simply the next)."""
        now = time.time()
        ticks = [math.ceil(due) for _, due in self.monitor.timers().values()]
        return min((tick for tick in ticks if tick > now), default=int(now) + 1)

    async def run(self, points: list[int], progress: Callable[[], int]) -> None:
        """One kill per point: once the shop's progress reached it, in the life's mode."""
        kills = len(points)
        await self.ready()
        while self.monitor.steps() == 0:  # the first timers fire
            await asyncio.sleep(POLL_S)
        long_outage = self.rng.randrange(kills // 3, 2 * kills // 3)
        shares = [round(share * (kills - 1)) for share in self.SHARES]
        modes = [mode for mode, n in zip(self.MODES, shares, strict=True) for _ in range(n)]
        modes += ["tick"] * (kills - 1 - len(modes))
        self.rng.shuffle(modes)
        modes.insert(0, "tick")  # the first life has nothing overdue to catch up with
        for k, mode in enumerate(modes):
            self.modes.append(mode)
            if mode == "catch-up":
                await self.restored()
                await asyncio.sleep(self.rng.uniform(0, 0.01))
            else:
                await self.ready()
                while progress() < points[k]:
                    await self.watch(POLL_S)
                if mode == "tick":
                    await self.watch(
                        self.next_due_tick() + self.rng.uniform(-0.005, 0.01) - time.time()
                    )
                else:
                    await self.watch(self.rng.uniform(0.1, 0.4), self.rng.randint(1, 10))
            await self.kill()
            if k == long_outage:
                await asyncio.sleep(LONG_OUTAGE_S)
            elif k + 1 < kills and modes[k + 1] == "catch-up":
                # Spawned once a pending timer's tick has come, the next life has overdue
                # timers to fire (bounded: the shop may have nothing pending just now).
                limit = time.time() + 3.0
                while not self.owed() and time.time() < limit:
                    await asyncio.sleep(POLL_S)
            self.spawn()
        await self.ready()
        limit = time.time() + 2 * TIMEOUT_UNIT
        while self.lives[-1].caught_up_s is None and time.time() < limit:
            await self.watch(POLL_S)  # the last life's catch-up, while the shop goes on

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until no timer is pending, then end the last life."""
        async with asyncio.timeout(timeout_s):
            while self.observe()[1]:
                await asyncio.sleep(0.05)
        self.lives[-1].ended = time.time()
        self.lives[-1].fired = len(self.lives[-1].overdue)


def read_outcome(db: Path) -> dict[str, Any]:
    con = sqlite3.connect(db)
    try:
        runs = con.execute(
            "SELECT id, person_id, key, started, state, end_reason, ended_at, sends, workflow "
            "FROM runs"
        ).fetchall()
        steps = con.execute(
            "SELECT run_id, step, action, detail, decided_at FROM steps ORDER BY run_id, step"
        ).fetchall()
        events = con.execute("SELECT message_id, count(*) FROM events GROUP BY message_id")
        outcome = {
            "runs": runs,
            "steps": steps,
            "events": dict(events.fetchall()),
            "event_rows": con.execute("SELECT count(*) FROM events").fetchone()[0],
            "timers": con.execute("SELECT count(*) FROM timers").fetchone()[0],
            "integrity": con.execute("PRAGMA integrity_check").fetchall(),
        }
    finally:
        con.close()
    return outcome


def check_runs(outcome: dict[str, Any], carts: list[Cart]) -> list[str]:
    """Every way a run's recorded steps can disagree with its history, one line each."""
    problems: list[str] = []
    by_key: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for run in outcome["runs"]:
        by_key[run[2]].append(run)
    steps: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in outcome["steps"]:
        steps[row[0]].append(row)
    if len(outcome["runs"]) != len(carts):
        problems.append(f"{len(outcome['runs'])} runs for {len(carts)} carts")
    for cart in carts:
        found = by_key.get(cart.id, [])
        if len(found) != 1:
            problems.append(f"{cart.id}: {len(found)} runs")
            continue
        run_id, person, _, started, state, reason, ended_at, sends, workflow = found[0]
        rows = steps.get(run_id, [])
        decided = [r[1] for r in rows]
        at = [r[4] for r in rows]
        where = f"{cart.id} (run {run_id}, {state}, {reason!r}, steps {decided})"
        if person != f"u:{cart.user}" or workflow != "cart_abandonment":
            problems.append(f"{where}: person {person}, workflow {workflow}")
        if state != "ended" or reason not in ("completed", EXIT_REASON):
            problems.append(f"{where}: not ended")
        if decided != list(SENDS)[: len(decided)]:
            problems.append(f"{where}: the steps are not a prefix of {list(SENDS)}")
        for _, step, action, detail, _ in rows:
            if action != "send" or orjson.loads(detail)["template"] != SENDS.get(step):
                problems.append(f"{where}: step {step} is {action} {detail}")
        if sends != len(rows):
            problems.append(f"{where}: runs.sends = {sends}")
        if reason == "completed" and len(rows) != len(SENDS):
            problems.append(f"{where}: completed without every send")
        # Never early: each send at least one wait after the previous decision.
        for before, after in zip([started, *at], at, strict=False):
            if after < before + WAIT_S - 1e-6:
                problems.append(f"{where}: a send {after - before:.3f}s after the last decision")
        assert cart.add.first_sent is not None and cart.add.acked_at is not None
        if not cart.add.first_sent <= started <= cart.add.acked_at:
            problems.append(f"{where}: started outside its add's post and ack")
        bought = cart.purchase
        if bought is None:
            if reason != "completed":
                problems.append(f"{where}: never bought, yet ended by {reason!r}")
            continue
        assert bought.first_sent is not None and bought.acked_at is not None
        # Nothing is decided after the purchase was committed (at the latest, when acked).
        late = [t for t in at if t > bought.acked_at]
        if late:
            problems.append(f"{where}: {len(late)} send(s) after the purchase was acked")
        if reason == EXIT_REASON and not bought.first_sent <= ended_at <= bought.acked_at:
            problems.append(f"{where}: ended outside its purchase's post and ack")
    return problems


@pytest.mark.slow
async def test_each_step_is_decided_exactly_once_across_kill_9_while_timers_fire(
    tmp_path: Path,
) -> None:
    """Carts, purchases and a nemesis that kills the server mid-firing; the checker finds
    one run per cart, each step decided once and only as the run's history allows."""
    began = time.monotonic()
    began_at = time.time()
    rng = random.Random(KILL9_SEED)
    port = free_port()
    db = tmp_path / "rtserver.db"
    server = ServerProcess(server_config(tmp_path, port))
    monitor = Monitor(db)
    shop = Shop(f"http://127.0.0.1:{port}", random.Random(rng.random()))
    nemesis = Nemesis(server, monitor, random.Random(rng.random()))
    users = [f"user{i:03d}" for i in range(USERS)]
    carts: list[Cart] = []
    for i in range(KILL9_CARTS):
        user = rng.choice(users)
        cart_id = f"cart{i:04d}"
        add = shop.op(track("Product Added", user, cart_id=cart_id, product_id="p1", price=20))
        delay = rng.uniform(*PURCHASE_DELAY_S) if rng.random() < PURCHASED else None
        carts.append(Cart(cart_id, user, rng.uniform(0, ADD_WINDOW_S), delay, add))

    try:
        async with asyncio.timeout(24 * TIMEOUT_UNIT):
            nemesis.spawn()
            async with asyncio.TaskGroup() as group:
                # Kill points over the first 3/4 of the carts: the last ones keep timers firing.
                points = kill_points(rng, len(carts) * 3 // 4, KILL9_KILLS)
                group.create_task(nemesis.run(points, lambda: shop.added), name="nemesis")
                group.create_task(shop.run(users, carts), name="shop")
            await nemesis.drain(12 * TIMEOUT_UNIT)
            code = await server.terminate(10.0)
    except BaseException:
        print("\nserver log:\n" + server.tail())
        raise
    finally:
        await server.kill()
        monitor.close()
    assert code == 0, server.tail()
    assert not shop.errors, shop.errors[:5]

    outcome = read_outcome(db)
    lives = nemesis.lives
    restarts = lives[1:]
    overdue = sum(len(life.overdue) for life in restarts)
    fired = sum(life.fired for life in restarts)
    caught_up = [life.caught_up_s for life in restarts if life.caught_up_s is not None]
    bought = [c for c in carts if c.purchase is not None]
    exited = [r for r in outcome["runs"] if r[5] == EXIT_REASON]
    print(
        f"\ntimers across kill -9: {len(carts)} carts of {len(users)} users, {len(bought)} bought, "
        f"{len(lives) - 1} kills ({sum(life.killed_while_pending for life in lives)} "
        f"with timers pending, {sum(life.owed_at_kill > 0 for life in lives)} with "
        f"{sum(life.owed_at_kill for life in lives)} due timers undecided; "
        f"modes {Counter(nemesis.modes)}), {len(outcome['runs'])} runs "
        f"({len(exited)} ended by a purchase), {len(outcome['steps'])} sends; "
        f"{overdue} timers overdue at restarts, {fired} fired after them "
        f"(all caught up in {max(caught_up, default=0):.3f}s at most, "
        f"{len(restarts) - len(caught_up)} lives killed before), "
        f"{shop.posts} posts ({shop.failed_posts} failed), monitor retries {monitor.errors}, "
        f"{time.monotonic() - began:.1f}s"
    )

    for life, mode in zip(lives, [*nemesis.modes, "drain"], strict=False):
        print(
            f"  life +{life.spawned - began_at:5.2f}s ready "
            f"{'-' if life.ready is None else f'+{life.ready - life.spawned:.2f}s'} "
            f"end +{(life.ended or 0) - life.spawned:5.2f}s {mode:8} overdue {len(life.overdue):3} "
            f"fired {life.fired:3} caught up {life.caught_up_s} owed at kill {life.owed_at_kill}"
        )
    assert outcome["integrity"] == [("ok",)]
    assert outcome["timers"] == 0
    acked = {op.raw["messageId"] for op in shop.ops if op.acked_at is not None}
    assert len(acked) == len(shop.ops) == len(users) + len(carts) + len(bought)
    assert set(outcome["events"]) == acked  # every acked event stored, nothing else
    assert outcome["event_rows"] == len(acked) and set(outcome["events"].values()) == {1}
    problems = check_runs(outcome, carts)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])

    assert len(lives) - 1 == KILL9_KILLS
    assert sum(life.killed_while_pending for life in lives) >= min(KILL9_KILLS, 10)
    assert sum(life.owed_at_kill > 0 for life in lives) >= KILL9_KILLS // 4  # mid-firing
    assert overdue > 0 and fired > 0
    for life in restarts:
        # Overdue timers fire within 5 s of the restart (unless killed again before).
        assert life.ended is not None
        if life.ended - life.spawned >= TIMEOUT_UNIT:
            assert life.caught_up_s is not None
        assert life.caught_up_s is None or life.caught_up_s <= TIMEOUT_UNIT
    # The histories covered every case: bought before the first send, between, after the last.
    sends_of = Counter(row[0] for row in outcome["steps"])
    counts = {sends_of[run[0]] for run in exited}
    assert counts >= {0, 1}, counts
    assert len(exited) < len(bought)  # some were bought after their run completed


async def test_overdue_timers_fire_at_the_first_poll_after_a_restart(tmp_path: Path) -> None:
    """Restarted half a second past a whole second, the wheel the engine rebuilds hands the
    overdue timer to the driver's first poll (``restore``: "overdue timers fire at the
    driver's first poll"), not a second later."""
    clock = FakeClock()
    config = make_config(
        tmp_path,
        workflow=[
            {
                "name": "w",
                "trigger": "Product Added",
                "step": [{"wait": "1s"}, {"send": "cart_reminder"}],
            }
        ],
    )
    async with run_server(config, clock=clock) as live, live.http() as http:
        batch = {"batch": [identify("user1"), track("Product Added", "user1", cart_id="c1")]}
        reply = await http.post("/v1/batch", json=batch, auth=(WRITE_KEY, ""))
        assert reply.status_code == 200, reply.text
    clock.advance(10.5)  # down across the deadline; back half a second past a whole second
    store = await Store.open(config.store.path)
    try:
        engine = Engine(load_rules(config)[0], store)
        assert await engine.restore(clock()) == 1
        (run,) = await store.runs("active")
        assert engine.wheel.poll(int(clock() // engine.tick_s)) == [run["id"]]
    finally:
        await store.close()
