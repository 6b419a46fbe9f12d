"""The engine end to end: events over a real WebSocket, decisions committed with them, timers
armed in the wheel and fired by the driver under a fake clock. No sleeps: the test moves the
clock, wakes the driver and waits for the commit that follows."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rtserver.config.schema import IngestConfig, MailConfig, load_config
from rtserver.engine.definitions import policy_from
from rtserver.engine.engine import HISTORY_WINDOW_S, MAX_EMIT_DEPTH, Engine, emitted_event
from rtserver.engine.memory import PERSON_BYTES
from rtserver.engine.pipeline import Pipeline
from rtserver.errors import ConfigError
from rtserver.model.actions import EmitEvent
from rtserver.model.events import parse_event, sign_identity
from rtserver.runtime import load_rules
from rtserver.store import writer
from rtserver.store.changes import Changes, Prepared
from rtserver.store.database import Store
from tests.support.events import event
from tests.support.server import (
    IDENTITY_SECRET,
    TIMEOUT_UNIT,
    FakeClock,
    LiveServer,
    make_config,
    run_server,
    send_batch,
)
from tests.support.workflows import CART_WORKFLOW


class Commits:
    """Collects what the pipeline commits; tests wait for a condition on it."""

    def __init__(self, live: LiveServer):
        self.steps: list[tuple[Any, ...]] = []
        self.changed = asyncio.Event()
        live.runtime.pipeline.listeners.append(self.record)

    def record(self, prepared: Prepared, changes: Changes | None) -> None:
        if changes is not None:
            self.steps.extend(changes.steps)
        self.changed.set()

    async def wait_for_step(self, action: str, count: int = 1) -> list[tuple[Any, ...]]:
        async with asyncio.timeout(TIMEOUT_UNIT):
            while len(found := [s for s in self.steps if s[4] == action]) < count:
                self.changed.clear()
                await self.changed.wait()
        return found


def identify(user: str, email: str) -> dict[str, Any]:
    """A browser identify verified by the shop's hashes."""
    return event(
        "identify",
        userId=user,
        traits={"email": email, "consent": "confirmed_opt_in"},
        context={
            "userHash": sign_identity(IDENTITY_SECRET, user),
            "emailHash": sign_identity(IDENTITY_SECRET, email),
        },
    )


def added(user: str, cart: str) -> dict[str, Any]:
    hashes = {"userHash": sign_identity(IDENTITY_SECRET, user)}
    return event(
        "track",
        event="Product Added",
        userId=user,
        context=hashes,
        properties={"cart_id": cart, "product_id": "p1", "price": 20},
    )


async def advance(live: LiveServer, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    assert live.runtime.engine is not None
    live.runtime.engine.wake.set()


async def test_cart_reminder_fires_after_30_minutes_of_inactivity(tmp_path: Path) -> None:
    """Product Added, then 30 min without activity: one cart_reminder is decided, at +30 min."""
    clock = FakeClock()
    config = make_config(tmp_path, workflow=[CART_WORKFLOW])
    async with run_server(config, clock=clock) as live:
        commits = Commits(live)
        async with live.ws() as ws:
            await send_batch(ws, [identify("u1", "u1@shop.test"), added("u1", "c1")])
        start = clock.now
        await advance(live, clock, 1799)
        await advance(live, clock, 1)
        (send,) = await commits.wait_for_step("send")
        assert send[3] == "cart_abandonment" and send[7] == start + 1800
        runs = await live.runtime.store.runs("active")
        assert [r["step"] for r in runs] == [2]
        assert [t["run_id"] for t in await live.runtime.store.timers()] == [runs[0]["id"]]


async def test_purchase_before_the_deadline_sends_nothing(tmp_path: Path) -> None:
    """An Order Completed for the cart ends the run and cancels its timer."""
    clock = FakeClock()
    config = make_config(tmp_path, workflow=[CART_WORKFLOW])
    async with run_server(config, clock=clock) as live:
        async with live.ws() as ws:
            await send_batch(ws, [identify("u1", "u1@shop.test"), added("u1", "c1")])
            order = event(
                "track",
                event="Order Completed",
                userId="u1",
                context={"userHash": sign_identity(IDENTITY_SECRET, "u1")},
                properties={"cart_id": "c1", "revenue": 20},
            )
            await send_batch(ws, [order])
        store = live.runtime.store
        assert await store.timers() == []
        (run,) = await store.runs("ended")
        assert run["end_reason"] == "exit on Order Completed"
        assert live.runtime.engine is not None and len(live.runtime.engine.wheel) == 0


async def test_restart_restores_pending_timers_and_fires_overdue_once(tmp_path: Path) -> None:
    """Timers survive a restart; one overdue at start fires once right away."""
    clock = FakeClock()
    config = make_config(tmp_path, workflow=[CART_WORKFLOW])
    async with run_server(config, clock=clock) as live:
        async with live.ws() as ws:
            await send_batch(ws, [identify("u1", "u1@shop.test"), added("u1", "c1")])
    clock.advance(3600)
    async with run_server(config, clock=clock) as live:
        commits = Commits(live)
        (send,) = await commits.wait_for_step("send")
        assert send[7] == clock.now
        steps = await live.runtime.store.steps()
        assert [s["action"] for s in steps] == ["send"]


def test_policy_from_mail_config() -> None:
    """[mail] frequency_cap, quiet_hours and time_zone become the mail policy."""
    policy = policy_from(
        MailConfig(frequency_cap="off", quiet_hours="21:30-08:00", time_zone="Europe/Paris")
    )
    assert policy.frequency_cap_s == 0 and policy.quiet_hours == (1290, 480)
    assert policy_from(MailConfig()).frequency_cap_s == 16 * 3600


@pytest.mark.parametrize(
    ("mail", "message"),
    [
        ({"frequency_cap": "soon"}, "mail.frequency_cap: expected a duration"),
        ({"quiet_hours": "9pm-8am"}, "mail.quiet_hours: expected 'HH:MM-HH:MM'"),
        ({"quiet_hours": "08:00-08:00"}, "mail.quiet_hours: empty window"),
        ({"time_zone": "Mars/Olympus"}, "mail.time_zone: unknown time zone, got 'Mars/Olympus'"),
    ],
)
def test_bad_mail_policy_names_the_key(mail: dict[str, str], message: str) -> None:
    """A bad policy value fails with the dotted key and the value."""
    with pytest.raises(ConfigError, match=message):
        policy_from(MailConfig(**mail))


def test_load_rules_compiles_the_config_workflows(tmp_path: Path) -> None:
    """load_rules compiles [[workflow]] under the [mail] policy."""
    config = make_config(tmp_path, workflow=[CART_WORKFLOW])
    rules, warnings = load_rules(config)
    assert [w.name for w in rules.items] == ["cart_abandonment"] and warnings == []


def test_emitted_event_has_a_message_id_per_run_and_step() -> None:
    """An emit step's event is a server track event keyed by its run and step."""
    user = emitted_event(EmitEvent("r1", 2, "u:42", "Cart Abandoned", {"cart_id": "c1"}))
    anon = emitted_event(EmitEvent("r2", 0, "a:x", "Browse Abandoned", {}))
    assert user.message_id == "rt-emit-r1-2" and user.user_id == "42"
    assert anon.anonymous_id == "x" and anon.user_id is None


class Harness:
    """A store, an engine and a pipeline on a temp file, driven in the test's task."""

    def __init__(
        self,
        store: Store,
        workflows: list[dict[str, Any]],
        clock: FakeClock,
        **sections: Any,
    ):
        config = make_config(
            Path(store.path).parent,
            workflow=workflows,
            mail={"frequency_cap": "off"},
            hooks={"allow": ["https://crm.example/"]},
            **sections,
        )
        self.engine = Engine(
            load_rules(config)[0],
            store,
            click_window_s=config.dashboard.click_window,
            open_window_s=config.dashboard.open_window,
        )
        self.pipeline = Pipeline(
            store,
            max_queue=4,
            max_group_events=100,
            queue_timeout_s=1,
            engine=self.engine,
            clock=clock,
        )
        self.store = store
        self.clock = clock

    async def send(self, *raws: dict[str, Any]) -> None:
        events = [parse_event(raw, IngestConfig()) for raw in raws]
        await self.pipeline.commit_now(events, self.clock())


def server_event(name: str, **properties: Any) -> dict[str, Any]:
    return event("track", event=name, userId="u1", anonymousId=None, properties=properties)


async def test_emit_feeds_other_workflows_in_the_same_commit(store: Store) -> None:
    """An emitted event is stored and triggers the workflows waiting for it, in one commit."""
    flows = [
        {"name": "a", "trigger": "Product Added", "step": [{"emit": "Cart Started"}]},
        {"name": "b", "trigger": "Cart Started", "step": [{"send": "welcome"}]},
    ]
    harness = Harness(store, flows, FakeClock())
    await harness.send(identify_server("u1"), server_event("Product Added", cart_id="c1"))
    steps = await store.steps()
    assert sorted((s["workflow"], s["action"]) for s in steps) == [("a", "emit"), ("b", "send")]
    assert any(m.startswith("rt-emit-") for m in await store.stored_message_ids())


async def test_emit_chains_are_bounded(store: Store) -> None:
    """A workflow that re-triggers itself by emitting stops after a few generations."""
    flows = [{"name": "loop", "trigger": "Ping", "step": [{"emit": "Ping"}]}]
    harness = Harness(store, flows, FakeClock())
    await harness.send(server_event("Ping"))
    emitted = [m for m in await store.stored_message_ids() if m.startswith("rt-emit-")]
    assert len(emitted) == MAX_EMIT_DEPTH


async def test_webhook_step_is_recorded(store: Store) -> None:
    """A webhook step is a recorded decision with its URL and payload, and a delivery queued
    in the same commit: the Standard Webhooks envelope with the person."""
    flows = [
        {
            "name": "crm",
            "trigger": "Order Completed",
            "step": [{"webhook": "https://crm.example/hook", "properties": {"tier": "gold"}}],
        }
    ]
    harness = Harness(store, flows, FakeClock())
    await harness.send(server_event("Order Completed", revenue=10))
    (step,) = await store.steps()
    assert step["action"] == "webhook"
    assert step["detail"]["url"] == "https://crm.example/hook"
    assert step["detail"]["payload"]["tier"] == "gold"
    (delivery,) = await store.deliveries.recent()
    assert delivery["id"] == f"{step['run_id']}-{step['step']}" and delivery["state"] == "queued"
    queued = await store.deliveries.get(delivery["id"])
    assert queued is not None and queued["url"] == "https://crm.example/hook"
    payload = queued["payload"]
    assert payload["type"] == "workflow.webhook" and payload["timestamp"].endswith("Z")
    assert payload["data"]["tier"] == "gold" and payload["data"]["workflow"] == "crm"
    assert payload["data"]["person"]["id"] == step["person_id"]


async def test_a_timer_re_armed_for_later_does_not_fire_early(store: Store) -> None:
    """A fired key whose run was re-armed since (activity) is skipped, not decided."""
    clock = FakeClock()
    harness = Harness(store, [CART_WORKFLOW], clock)
    await harness.send(identify_server("u1"), server_event("Product Added", cart_id="c1"))
    (run,) = await store.runs("active")
    clock.advance(1800)
    await harness.pipeline.commit_now(received_at=clock(), fired=[run["id"]])
    assert [s["action"] for s in await store.steps()] == ["send"]
    clock.advance(10)
    (run,) = await store.runs("active")
    await harness.pipeline.commit_now(received_at=clock(), fired=[run["id"]])  # due in 24 h
    assert [s["action"] for s in await store.steps()] == ["send"]


async def test_failed_fire_is_armed_again(store: Store) -> None:
    """When the commit of fired timers fails, they are armed again for a retry."""
    clock = FakeClock()
    harness = Harness(store, [CART_WORKFLOW], clock)
    await harness.send(identify_server("u1"), server_event("Product Added", cart_id="c1"))
    (run,) = await store.runs("active")
    harness.engine.wheel.cancel(run["id"])
    task = asyncio.create_task(harness.pipeline.run())
    try:
        await store._db.execute("PRAGMA query_only = 1")  # every write now fails
        clock.advance(1800)
        await harness.pipeline.fire([run["id"]])
        assert harness.engine.wheel.deadline(run["id"]) == harness.engine.tick(clock() + 5)
    finally:
        await store._db.execute("PRAGMA query_only = 0")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def identify_server(user: str) -> dict[str, Any]:
    traits = {"email": f"{user}@shop.test", "consent": "confirmed_opt_in"}
    return event("identify", userId=user, anonymousId=None, traits=traits)


async def test_arming_a_deadline_already_passed_fires_at_the_next_tick(store: Store) -> None:
    """A timer armed for a tick the wheel has passed goes to the next tick, not lost."""
    harness = Harness(store, [CART_WORKFLOW], FakeClock())
    wheel = harness.engine.wheel
    wheel.poll(1000)
    harness.engine.arm("r1", 10.0)
    assert wheel.deadline("r1") == 1001


def test_config_warnings_are_logged_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Names outside the documented condition names are logged as warnings by create_app."""
    from rtserver.app import create_app

    flow = {"name": "w", "trigger": "X", "where": "person.orderz > 1", "step": [{"send": "test"}]}
    create_app(make_config(tmp_path, workflow=[flow]))
    assert "person.orderz" in caplog.text


WIN_BACK: dict[str, Any] = {
    "name": "win_back",
    "schedule": "1d",
    "where": "person.orders_count > 0",
    "reentry": "30d",
    "step": [{"send": "win_back"}],
}


async def sweep(harness: Harness) -> None:
    """Fire what is due, chunk after chunk, a tick apart, like the driver would."""
    while True:
        due = harness.engine.wheel.poll(harness.engine.tick(harness.clock()))
        if not due:
            return
        await harness.pipeline.commit_now(received_at=harness.clock(), fired=due)
        harness.clock.advance(1)


async def test_scheduled_workflow_sweeps_the_segment(store: Store) -> None:
    """A scheduled workflow starts a run for each mailable person whose `where` holds."""
    clock = FakeClock()
    harness = Harness(store, [WIN_BACK], clock)
    await harness.engine.restore(clock())
    buyer = event("track", event="Order Completed", userId="u1", anonymousId=None)
    await harness.send(identify_server("u1"), identify_server("u2"), buyer)
    await sweep(harness)
    assert await store.steps() == []  # the first sweep is one interval after the start
    clock.advance(86400)
    await sweep(harness)
    assert [(s["person_id"], s["action"]) for s in await store.steps()] == [("u:u1", "send")]
    clock.advance(86400)
    await sweep(harness)  # reentry: not again within 30 days
    assert len(await store.steps()) == 1


async def test_sweep_goes_in_chunks_and_resumes_after_restart(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep decides a few persons per commit; a restart resumes where it stopped."""
    import rtserver.engine.engine

    monkeypatch.setattr(rtserver.engine.engine, "SWEEP_CHUNK", 2)
    clock = FakeClock()
    flow = {**WIN_BACK, "where": "person.email is not none"}
    harness = Harness(store, [flow], clock)
    await harness.engine.restore(clock())
    await harness.send(*(identify_server(f"u{i}") for i in range(5)))
    first = clock() + 86400
    clock.advance(86400)
    due = harness.engine.wheel.poll(harness.engine.tick(clock()))
    await harness.pipeline.commit_now(received_at=clock(), fired=due)
    assert len(await store.steps()) == 2
    restarted = Harness(store, [flow], clock)
    await restarted.engine.restore(clock())
    await sweep(restarted)
    assert len(await store.steps()) == 5
    assert restarted.engine.sweeps["win_back"] == (first + 86400, None)


BROWSE: dict[str, Any] = {
    "name": "browse",
    "trigger": "Product Viewed",
    "where": "person.events_since('Product Viewed', now - 86400) >= 2",
    "step": [{"send": "browse_reminder"}],
}


async def test_recent_events_carry_over_between_groups(store: Store) -> None:
    """events_since sees earlier groups' events, from the store or the engine's memory."""
    clock = FakeClock()
    harness = Harness(store, [BROWSE], clock)
    harness.engine.memory.budget = PERSON_BYTES * 3 // 2  # room for one person
    await harness.send(identify_server("u1"), identify_server("u2"))
    await harness.send(server_event("Product Viewed"))  # u1, first view
    assert await store.steps() == []
    await harness.send(server_event("Product Viewed"))  # u1 again: from memory
    assert [s["person_id"] for s in await store.steps()] == ["u:u1"]
    assert list(harness.engine.history) == ["u:u1"]
    other = event("track", event="Product Viewed", userId="u2", anonymousId=None)
    await harness.send(other)  # u2 evicts u1 (one person kept)
    assert list(harness.engine.history) == ["u:u2"]
    restarted = Harness(store, [BROWSE], clock)  # empty memory: read from the store
    await restarted.send(other | {"messageId": "again"})
    assert sorted(s["person_id"] for s in await store.steps()) == ["u:u1", "u:u2"]


async def test_merged_persons_are_read_again(store: Store) -> None:
    """After an anonymous history is merged into a user, the user's events are re-read."""
    clock = FakeClock()
    harness = Harness(store, [BROWSE], clock)
    await harness.send(event("track", event="Product Viewed", userId="u1", anonymousId=None))
    assert "u:u1" in harness.engine.history
    await harness.send(event("track", event="Product Viewed", anonymousId="anon-9"))
    await harness.send(event("identify", userId="u1", anonymousId="anon-9"))
    assert "u:u1" not in harness.engine.history
    await harness.send(event("track", event="Cart Viewed", userId="u1", anonymousId=None))
    names = [name for name, _ in harness.engine.history["u:u1"]]
    assert names.count("Product Viewed") == 2


def test_load_rules_renders_every_template_at_start(tmp_path: Path) -> None:
    """A broken template a workflow sends stops the start with its name and line; a broken one
    nobody sends is a warning; an unknown one is named with the step."""
    folder = tmp_path / "templates"
    (folder / "email").mkdir(parents=True)
    (folder / "email" / "broken.html").write_text("<p>{% if %}</p>")
    (folder / "email" / "broken.txt").write_text("hi")
    flow = {"name": "w", "trigger": "X", "step": [{"send": "broken"}]}
    config = make_config(tmp_path, mail={"templates": str(folder)}, workflow=[flow])
    with pytest.raises(ConfigError, match=r"mail templates: .*broken\.html"):
        load_rules(config)
    fine = make_config(
        tmp_path, mail={"templates": str(folder)}, workflow=[{**flow, "step": [{"send": "test"}]}]
    )
    _, warnings = load_rules(fine)
    assert any("broken" in w and "not sent by any workflow" in w for w in warnings)
    unknown = make_config(tmp_path, workflow=[{**flow, "step": [{"send": "nope"}]}])
    with pytest.raises(ConfigError, match="workflow 'w' step 1: unknown template 'nope'"):
        load_rules(unknown)


# --- the engine's memory of facts --------------------------------------------------------------

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config.toml"
MEMORY_SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
"""Memory-backed where there is one: the comparison below makes hundreds of commits."""


class Twin:
    """A store, an engine and a pipeline on the shipped workflows; what each commit decided."""

    def __init__(self, store: Store, clock: FakeClock, *, remember: bool):
        config = load_config(SHIPPED_CONFIG, env={}, overrides={"store": {"path": store.path}})
        self.engine = Engine(
            load_rules(config)[0],
            store,
            click_window_s=config.dashboard.click_window,
            open_window_s=config.dashboard.open_window,
        )
        if not remember:
            self.engine.memory.budget = 0  # every group reads every person from the store
        self.pipeline = Pipeline(
            store, max_queue=4, max_group_events=100, queue_timeout_s=1, engine=self.engine,
            clock=clock,
        )  # fmt: skip
        self.store = store
        self.decided: list[tuple[Any, ...]] = []
        self.pipeline.listeners.append(self.record)

    def record(self, prepared: Prepared, changes: Changes) -> None:
        self.decided.append(
            (
                [e.message_id for e in prepared.fresh], list(changes.runs.items()),
                list(changes.timers.items()), changes.steps, changes.outbox,
                list(changes.people.items()), changes.schedules, changes.confirmations,
            )
        )  # fmt: skip

    def remembered_as_stored(self, now: float) -> int:
        """Every person the engine remembers has the facts the store holds; how many."""
        since = now - HISTORY_WINDOW_S if self.engine.needs_history else None
        entries = self.engine.memory.entries
        found, _ = self.engine.memory.recall(list(entries), since)
        with contextlib.closing(sqlite3.connect(self.store.path)) as conn:
            stored = writer.facts(conn, list(entries), since)
        for person_id, (known, oldest) in found.items():
            assert known == stored[person_id], person_id
            assert all(at >= oldest for _, at in known.person.history)
        return len(found)


def shop_script(seed: int, steps: int) -> list[tuple[str, Any]]:
    """A random but repeatable mix: shoppers browsing, buying, signing in (merges), mail
    engagement, traits, duplicates, time passing (backwards too), erasures and another
    process writing the store."""
    rnd = random.Random(seed)
    sent: list[dict[str, Any]] = []
    script: list[tuple[str, Any]] = []
    for _ in range(steps):
        batch = []
        for _ in range(rnd.choice((1, 1, 2, 5))):
            anon, user = f"anon-{rnd.randrange(6)}", f"u{rnd.randrange(3)}"
            cart = f"cart-{anon}-{rnd.randrange(2)}"
            page = {"url": "https://shop.test/pricing", "referrer": "https://www.google.com/"}
            who: dict[str, Any] = rnd.choice(
                ({"anonymousId": anon}, {"userId": user, "anonymousId": None})
            )
            raw = rnd.choice(
                (
                    event("page", name="Pricing", context={"page": page}, **who),
                    event("track", event="Product Viewed", **who),
                    event("track", event="Product Viewed", context={"timezone": "Asia/Tokyo"}),
                    event("track", event="Product Added", properties={"cart_id": cart}, **who),
                    event(
                        "track",
                        event="Order Completed",
                        **who,
                        properties={
                            "cart_id": cart,
                            "order_id": f"o{rnd.randrange(9)}",
                            "revenue": rnd.choice((20, 250)),
                        },
                    ),  # fmt: skip
                    event("track", event="Signed Up", userId=user, anonymousId=None),
                    event("track", event="Email Opened", userId=user, anonymousId=None),
                    event("track", event="Email Clicked", userId=user, anonymousId=None),
                    event("track", event="Product Viewed", traits={"plan": "pro"}, **who),
                    event(
                        "identify",
                        userId=user,
                        anonymousId=anon,
                        traits={
                            "email": f"{user}@shop.test",
                            "consent": "confirmed_opt_in",
                        },
                    ),  # fmt: skip
                    event("alias", userId=user, anonymousId=None, previousId=anon),
                )
            )
            batch.append(rnd.choice(sent) if sent and rnd.random() < 0.05 else raw)
            sent.append(raw)
        script.append(("send", batch))
        roll = rnd.random()
        if roll < 0.3:
            script.append(("advance", rnd.choice((1, 60, 1801, 3 * 3600, 86400, 3 * 86400, -90))))
        elif roll < 0.33:
            script.append(("forget", f"u{rnd.randrange(3)}@shop.test"))
        elif roll < 0.36:
            script.append(("outside", f"u:u{rnd.randrange(3)}"))
    return script


async def play(twin: Twin, clock: FakeClock, step: tuple[str, Any]) -> None:
    kind, value = step
    if kind == "send":
        events = [parse_event(raw, IngestConfig()) for raw in value]
        await twin.pipeline.commit_now(events, clock())
    elif kind == "forget":
        await twin.store.mail.forget(value, clock())
    elif kind == "outside":  # another process writes a profile
        with contextlib.closing(sqlite3.connect(twin.store.path)) as conn, conn:
            conn.execute("UPDATE profiles SET opens = opens + 1 WHERE person_id = ?", (value,))
    wheel = twin.engine.wheel
    while (deadline := wheel.next_deadline()) is not None and deadline <= twin.engine.tick(clock()):
        due = wheel.poll(deadline)
        if due:
            await twin.pipeline.commit_now(received_at=clock(), fired=due)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_remembered_facts_decide_as_the_store_would(seed: int) -> None:
    """The engine's memory of facts changes no decision: the same script through an engine that
    reads every person from the store decides the same, commit by commit, and every remembered
    person's facts equal what the store holds."""
    script = shop_script(seed, 160)
    with tempfile.TemporaryDirectory(dir=MEMORY_SCRATCH) as folder:
        clocks = FakeClock(), FakeClock()
        stores = [await Store.open(Path(folder) / f"{n}.db") for n in ("memory", "store")]
        try:
            twins = [
                Twin(stores[0], clocks[0], remember=True),
                Twin(stores[1], clocks[1], remember=False),
            ]
            remembered = 0
            for step in script:
                for twin, clock in zip(twins, clocks, strict=True):
                    if step[0] == "advance":
                        clock.advance(step[1])
                    await play(twin, clock, step)
                assert twins[0].decided == twins[1].decided
                if step[0] == "send":  # a group was just decided: the memory is trusted again
                    remembered = max(remembered, twins[0].remembered_as_stored(clocks[0]()))
            assert len(twins[0].decided) > len(script) // 2 and remembered > 3
            assert not twins[1].engine.memory.entries
        finally:
            for store in stores:
                await store.close()


PING: dict[str, Any] = {
    "name": "ping",
    "trigger": "Product Added",
    "reentry": "always",
    "step": [{"send": "cart_reminder"}],
}
HOLD: dict[str, Any] = {
    "name": "hold",
    "trigger": "Cart Viewed",
    "run_key": "properties.cart_id",
    "step": [{"send": "cart_reminder"}, {"wait": "1d"}],
}


async def test_a_clock_gone_back_makes_the_person_read_again(store: Store) -> None:
    """An end or a send decided at a time before the person's last one is not remembered: the
    store keeps the latest of each, so the person is read from it next time."""
    clock = FakeClock()
    harness = Harness(store, [PING, HOLD], clock)
    anonymous = event("track", event="Product Added", anonymousId="anon-7")
    await harness.send(anonymous)  # starts, skips the send (no email), ends
    ended = clock()
    assert harness.engine.memory.entries["a:anon-7"][0].last_ended == {("ping", ""): ended}
    await harness.send(identify_server("u1"))
    await harness.send(server_event("Cart Viewed", cart_id="c1"))  # sends, then waits
    sent = clock()
    assert harness.engine.memory.entries["u:u1"][0].last_sent == sent
    clock.advance(-100)
    await harness.send(anonymous | {"messageId": "again"})  # ends before the last end
    await harness.send(server_event("Cart Viewed", cart_id="c2"))  # sends before the last send
    assert len(await store.steps()) == 4 and not harness.engine.memory.entries
    viewed = event("track", event="Product Viewed", anonymousId="anon-7")
    await harness.send(viewed, server_event("Product Viewed"))
    assert harness.engine.memory.entries["a:anon-7"][0].last_ended == {("ping", ""): ended}
    assert harness.engine.memory.entries["u:u1"][0].last_sent == sent


FACT_WRITES = re.compile(
    r"\b(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE)\s+(?:main\.)?"
    r"(?:profiles|runs|steps)\b|\b(?:UPSERT_RUN|UPSERT_PROFILE|UPDATE_PROFILE_FACTS|"
    r"MERGE_PROFILE\w*|INSERT_STEP|END_CONFLICTING_RUNS)\b",
    re.IGNORECASE,
)


def test_only_the_group_commit_writes_facts() -> None:
    """Profiles, runs and steps are inserted and updated by the group commit alone
    (rtserver/store/writer.py): the engine remembers what it wrote. Deletes elsewhere (forget,
    retention) are counted by the writer's triggers; another writer would need the same (see
    generation)."""
    package = Path(__file__).resolve().parents[2] / "rtserver"
    allowed = {"store/writer.py", "store/schema.py"}
    scanned = [p for p in package.rglob("*.py") if p.relative_to(package).as_posix() not in allowed]
    assert len(scanned) > 50
    writers = sorted(str(path) for path in scanned if FACT_WRITES.search(path.read_text()))
    assert writers == []


# --- send time ------------------------------------------------------------------------------

OPTIMAL_FLOW = {
    "name": "welcome",
    "trigger": "Signed Up",
    "exit_on": ["Order Completed"],
    "step": [{"send": "welcome", "send_time": "optimal", "within": "24h"}],
}
NO_DRAWS = {"exploration": 0.0, "control": 0.0}
DAY = 86400.0


def timed(store: Store, clock: FakeClock) -> Harness:
    return Harness(store, [OPTIMAL_FLOW], clock, send_time=NO_DRAWS)


async def reads_at_19(harness: Harness, days: int = 10) -> float:
    """Opens by u1 at 19:00 UTC on ``days`` days; returns the next midnight."""
    clock = harness.clock
    midnight = clock.now - clock.now % DAY
    await harness.send(identify_server("u1"))
    for day in range(days):
        clock.now = midnight + day * DAY + 19 * 3600
        opened = server_event("Email Opened")
        await harness.send(opened)
    return midnight + days * DAY


async def fire_until(harness: Harness, at: float) -> None:
    """Move the clock to ``at`` and fire what is due then, as the driver would."""
    harness.clock.now = at
    due = harness.engine.wheel.poll(harness.engine.tick(at))
    if due:
        await harness.pipeline.commit_now(received_at=at, fired=due)


async def test_optimal_send_fires_at_the_chosen_hour(store: Store) -> None:
    """Signed up at 10:00 by a person who reads at 19:00: the mail is decided at 19:00, its
    choice and reason in the step's detail; the engagement is kept in the profile."""
    clock = FakeClock()
    harness = timed(store, clock)
    midnight = await reads_at_19(harness)
    clock.now = midnight + 10 * 3600
    await harness.send(server_event("Signed Up"))
    assert await store.steps() == []
    (timer,) = await store.timers()
    assert timer["due"] == midnight + 19 * 3600
    await fire_until(harness, midnight + 19 * 3600 - 1)
    assert await store.steps() == []
    await fire_until(harness, midnight + 19 * 3600)
    (send,) = await store.steps()
    assert send["action"] == "send" and send["at"] == midnight + 19 * 3600
    timing = send["detail"]["send_time"]
    assert timing["arm"] == "optimal" and timing["at"] == send["at"]
    assert timing["hour"].endswith("19:00") and timing["history"] > 5
    (mail,) = await store.mail.outbox()
    assert mail["created_at"] == send["at"]  # mail.max_age measures from the decision


async def test_exit_before_the_chosen_hour_cancels_the_send(store: Store) -> None:
    """An order while the send waits ends the run and drops its timer."""
    clock = FakeClock()
    harness = timed(store, clock)
    midnight = await reads_at_19(harness)
    clock.now = midnight + 10 * 3600
    await harness.send(server_event("Signed Up"))
    clock.now += 3600
    await harness.send(server_event("Order Completed"))
    assert await store.timers() == [] and len(harness.engine.wheel) == 0
    await fire_until(harness, midnight + 19 * 3600)
    assert await store.steps() == []


async def test_restart_keeps_the_chosen_hour_and_the_engagement(store: Store) -> None:
    """A new engine on the same store restores the timer and sends at the chosen hour; the
    person's and the shop's engagement come back from the store."""
    clock = FakeClock()
    first = timed(store, clock)
    midnight = await reads_at_19(first)
    clock.now = midnight + 10 * 3600
    await first.send(server_event("Signed Up"))
    shop = first.engine.shop
    assert shop is not None and shop.bins
    again = timed(store, clock)
    await again.engine.restore(clock.now)
    await fire_until(again, midnight + 19 * 3600)
    (send,) = await store.steps()
    assert send["at"] == midnight + 19 * 3600 and send["detail"]["send_time"]["arm"] == "optimal"
    assert again.engine.shop == shop
    (known, _) = again.engine.memory.entries["u:u1"]
    assert known.person.engagement == first.engine.memory.entries["u:u1"][0].person.engagement


async def test_a_replay_chooses_the_same_hour(tmp_path: Path) -> None:
    """The same events on a fresh store choose the same moment with the same reason."""
    chosen = []
    for name in ("a", "b"):
        store = await Store.open(tmp_path / f"{name}.db")
        try:
            clock = FakeClock()
            harness = Harness(
                store,
                [OPTIMAL_FLOW],
                clock,  # a prior this strong keeps the draws' share near 1 despite the history
                send_time={"exploration": 1.0, "control": 0.0, "prior_strength": 1000.0},
            )
            midnight = await reads_at_19(harness, days=2)
            clock.now = midnight + 10 * 3600
            await harness.send(server_event("Signed Up") | {"messageId": "signed-up"})
            (run,) = await store.runs("active")
            chosen.append((run["due"], run["timing"]))
        finally:
            await store.close()
    assert chosen[0] == chosen[1] and '"how":"sampled"' in chosen[0][1]


# --- bandit ---------------------------------------------------------------------------------

BANDIT_FLOW = {
    "name": "welcome",
    "trigger": "Signed Up",
    "step": [
        {
            "variant": [{"send": "welcome", "name": "plain"}, {"send": "cart_reminder"}],
            "selection": "bandit",
            "floor": 0.05,
        }
    ],
}
CLICK_RATES = {"welcome": 0.05, "cart_reminder": 0.4}


def person_event(user: str, name: str, **properties: Any) -> dict[str, Any]:
    return event("track", event=name, userId=user, anonymousId=None, properties=properties)


def clicked(user: str, mail: dict[str, Any], machine: bool = False) -> dict[str, Any]:
    """The click event the click redirect records for ``mail``."""
    return person_event(
        user, "Email Clicked", mail_id=mail["id"], run_id=mail["run_id"],
        workflow=mail["workflow"], template=mail["template"], machine=machine,
    )  # fmt: skip


async def bandit_day(harness: Harness, day: int, people: int, rng: random.Random) -> Counter[str]:
    """``people`` sign up; each mail is clicked at its template's rate; the variants sent."""
    users = [f"d{day}p{i}" for i in range(people)]
    await harness.send(*(identify_server(u) for u in users))
    await harness.send(*(person_event(u, "Signed Up") for u in users))
    mails = [
        m for m in await harness.store.mail.outbox(limit=10_000) if m["person_id"][2:] in users
    ]
    harness.clock.advance(3600)
    clicks = [
        clicked(m["person_id"][2:], m) for m in mails if rng.random() < CLICK_RATES[m["template"]]
    ]
    if clicks:
        await harness.send(*clicks)
    harness.clock.advance(DAY - 3600)
    return Counter(m["variant"] for m in mails)


async def test_bandit_moves_traffic_to_the_better_variant(store: Store) -> None:
    """A variant clicked 40% against 5%: on the first day the split is about even, by the
    fifth nearly all but the floor get the better one; the counts come back after a restart."""
    clock = FakeClock()
    harness = Harness(store, [BANDIT_FLOW], clock)
    rng = random.Random(7)
    days = [await bandit_day(harness, day, 60, rng) for day in range(5)]
    assert 18 < days[0]["B"] < 42
    assert days[-1]["B"] > 52
    tallies = harness.engine.tallies
    assert tallies is not None and sum(n for n, _ in tallies.values()) == 300
    assert tallies == await store.bandit_tallies()
    again = Harness(store, [BANDIT_FLOW], clock)
    await again.engine.restore(clock.now)
    assert again.engine.tallies == tallies


async def test_bandit_counts_a_mail_once_and_no_machine_click(store: Store) -> None:
    """A scanner's click is no success; a mail clicked twice counts once; clicks of other
    workflows' mails are not looked up."""
    clock = FakeClock()
    harness = Harness(
        store, [BANDIT_FLOW, {**OPTIMAL_FLOW, "name": "other", "trigger": "X"}], clock
    )
    await harness.send(identify_server("u1"), person_event("u1", "Signed Up"))
    (mail,) = await store.mail.outbox()
    await harness.send(clicked("u1", mail, machine=True))
    assert sum(s for _, s in (await store.bandit_tallies()).values()) == 0
    await harness.send(clicked("u1", mail), clicked("u1", mail))
    await harness.send(clicked("u1", mail))
    await harness.send(clicked("u1", {**mail, "workflow": "other", "id": "x-0"}))
    await harness.send(clicked("u1", {**mail, "id": "unknown-0"}))
    await harness.send(person_event("u1", "Order Completed", revenue=5))
    ((sends, successes),) = (await store.bandit_tallies()).values()
    assert (sends, successes) == (1, 1)


async def test_bandit_with_goal_ordered_counts_attributed_orders(store: Store) -> None:
    """goal = "ordered": an order within the click window of the mail's click is a success,
    a click alone is not, nor an order after the window."""
    clock = FakeClock()
    flow = {**BANDIT_FLOW, "step": [{**BANDIT_FLOW["step"][0], "goal": "ordered"}]}
    harness = Harness(store, [flow], clock, dashboard={"click_window": "1d"})
    users = ("u1", "u2", "u3")
    await harness.send(*(identify_server(u) for u in users))
    await harness.send(*(person_event(u, "Signed Up") for u in users))
    mails = {m["person_id"][2:]: m for m in await store.mail.outbox()}
    clock.advance(60)
    await harness.send(*(clicked(u, mails[u]) for u in users))
    clock.advance(3600)
    await harness.send(person_event("u1", "Order Completed", revenue=5))
    clock.advance(2 * DAY)
    await harness.send(person_event("u2", "Order Completed", revenue=5))
    tallies = await store.bandit_tallies()
    assert sum(n for n, _ in tallies.values()) == 3
    assert sum(s for _, s in tallies.values()) == 1
    assert harness.engine.tallies == tallies
    await harness.send(person_event("u1", "Order Completed", revenue=7))
    assert await store.bandit_tallies() == tallies  # rewarded once
