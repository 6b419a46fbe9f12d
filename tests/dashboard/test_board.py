"""What the dashboard shows, composed from a real store and server: snapshots with every panel,
updates with only what changed, the events/s points, the funnel from real runs, mails, opens,
clicks and orders, and the alert sampling task."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from rtserver.dashboard.alerts import Alerts
from rtserver.dashboard.board import DELIVERY_STATES, OUTBOX_STATES, Board, _amount
from rtserver.dashboard.hub import Changed
from rtserver.dashboard.latency import Histogram
from rtserver.dashboard.readings import Readings
from rtserver.errors import StoreError
from rtserver.model.events import person_event
from rtserver.runtime import Runtime
from tests.support.dashboard import (
    CART,
    StopAfter,
    dashboard_config,
)
from tests.support.events import shopper, tracked
from tests.support.server import (
    ORIGIN,
    FakeClock,
    LiveServer,
    advance,
    run_server,
    send_batch,
    sent,
)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def board_of(runtime: Runtime, ticks: Ticks | None = None, **alerts: Any) -> Board:
    config = dataclasses.replace(runtime.config.dashboard, **alerts)
    return Board(
        runtime.store,
        dataclasses.replace(runtime.board.readings, websockets=lambda: 7),
        latency=Histogram(),
        alerts=Alerts(config),
        dashboard=config,
        sink=runtime.config.mail.transport == "sink",
        clock=runtime.clock,
        monotonic=ticks or Ticks(),
    )


async def record(live: LiveServer, person: str, name: str, **properties: Any) -> None:
    """Commit a trusted event for ``person`` (as the link routes and the Segment API do)."""
    event = person_event(person, f"t-{name}-{len(properties)}-{id(properties)}", name, properties)
    await (await live.runtime.pipeline.submit([event], live.runtime.clock()))


async def cart_mailed(live: LiveServer, clock: FakeClock, user: str = "u1") -> dict[str, Any]:
    """A shopper's cart left 30 minutes: its reminder sent through the sink; the outbox row."""
    async with live.ws(origin=ORIGIN) as ws:
        await send_batch(ws, [shopper(user, f"{user}@example.com")])
        await send_batch(ws, [tracked(user, "Product Added", cart_id=f"c-{user}", price=20)])
    await advance(live, clock, 1800)
    (row,) = [r for r in await sent(live) if r["person_id"] == f"u:{user}"]
    return row


async def test_snapshot_has_every_panel(tmp_path: Path) -> None:
    """A snapshot holds counters, the chart, events, timers (with person and cart), runs,
    mail by every state, the sink, latency, funnel and alerts."""
    clock = FakeClock()
    async with run_server(dashboard_config(tmp_path), clock=clock) as live:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "ann@example.com")])
            await send_batch(ws, [tracked("u1", "Product Added", cart_id="c1", note="<b>")])
        board = board_of(live.runtime)
        data = await board.compose(None)
    counters = data["counters"]
    assert counters["stored"] == 2 and counters["websockets"] == 7
    assert counters["timers_armed"] == 1 and counters["sender"] == "nothing queued"
    assert [e["name"] for e in data["events"]] == ["Product Added", "Identify"]
    assert data["events"][0]["props"] == '{"cart_id":"c1","note":"<b>"}'
    assert data["events"][1]["props"].startswith('{"consent"')  # an identify shows its traits
    (timer,) = data["timers"]
    assert (timer["workflow"], timer["person_id"], timer["key"]) == ("cart", "u:u1", "c1")
    assert timer["due_in_s"] == 1800.0
    assert data["runs"]["active"] == {"cart": 1} and data["runs"]["rows"][0]["key"] == "c1"
    assert list(data["mail"]["counts"]) == list(OUTBOX_STATES)
    assert data["mail"]["sink"] == [] and data["rates"] == []
    assert data["latency"]["decision"]["count"] == 0
    assert data["latency"]["due_to_sent"] == {
        "count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None
    }  # fmt: skip
    assert [(f["workflow"], f["arm"], f["entered"]) for f in data["funnel"]] == [("cart", "all", 1)]
    assert data["alerts"] == {"active": [], "history": []}


async def test_update_reads_only_what_changed(tmp_path: Path) -> None:
    """An update carries the counters, one chart point and the noted events always; timers,
    runs and mail only when flagged; latency and funnel only after a change, at most every
    few seconds (the funnel every half minute, or at once when the outbox changed)."""
    async with run_server(dashboard_config(tmp_path)) as live:
        ticks = Ticks()
        board = board_of(live.runtime, ticks)
        first = await board.compose(Changed())
        assert {"latency", "funnel"} <= set(first)
        quiet = await board.compose(Changed())
        assert set(quiet) == {"at", "counters", "alerts", "rates", "events"}
        assert quiet["events"] == [] and len(quiet["rates"]) == 1
        flagged = await board.compose(Changed(timers=True, runs=True, mail=True))
        assert {"timers", "runs", "mail", "funnel"} <= set(flagged)  # the funnel follows mail
        assert "latency" not in flagged  # changed, but composed a moment ago
        ticks.now += 5.0
        later = await board.compose(Changed(runs=True))
        assert "latency" in later and "funnel" not in later
        ticks.now += 30.0
        assert "funnel" in await board.compose(Changed())
        assert "funnel" not in await board.compose(Changed())  # nothing changed since
        assert "funnel" in await board.compose(None)  # a snapshot has everything


async def test_chart_points_are_events_per_second(tmp_path: Path) -> None:
    """Each update adds a point: events stored since the last one over the time between."""
    async with run_server(dashboard_config(tmp_path)) as live:
        ticks = Ticks()
        board = board_of(live.runtime, ticks)
        live.runtime.pipeline.stats.stored += 30
        ticks.now += 2.0
        data = await board.compose(Changed())
        assert data["rates"][0][1] == 15.0
        snapshot = await board.compose(None)
    assert snapshot["rates"] == [tuple(data["rates"][0])] or snapshot["rates"] == data["rates"]


async def test_funnel_follows_a_mail_to_a_purchase(tmp_path: Path) -> None:
    """A cart's mail, opened, clicked, then an order within the click window: one purchase,
    its verified revenue, and the times to click and to order."""
    clock = FakeClock()
    async with run_server(dashboard_config(tmp_path), clock=clock) as live:
        mail = await cart_mailed(live, clock)
        await record(live, "u:u1", "Email Opened", run_id=mail["run_id"], machine=True)
        clock.advance(60)
        await record(live, "u:u1", "Email Opened", run_id=mail["run_id"], machine=False)
        clock.advance(60)
        await record(live, "u:u1", "Email Clicked", run_id=mail["run_id"], machine=False)
        clock.advance(3600)
        await record(live, "u:u1", "Order Completed", order_id="o1", revenue=49.5)
        rows = await board_of(live.runtime).funnel()
        data = await board_of(live.runtime).latencies()
    (row,) = rows
    assert [row[k] for k in ("entered", "mailed", "opened", "clicked", "purchased")] == [1] * 5
    assert row["revenue"] == 49.5 and row["verified_revenue"] == 49.5
    assert row["median_click_s"] == 120.0 and row["median_order_s"] == 3720.0
    assert data["due_to_sent"]["count"] == 1 and data["due_to_sent"]["p50_ms"] == 0.0


def test_order_amounts() -> None:
    """The first number of revenue, total, value; 0 otherwise."""
    assert _amount('{"revenue": 12.5, "total": 99}') == 12.5
    assert _amount('{"revenue": "12", "total": 8}') == 8.0
    assert _amount('{"value": true}') == 0.0
    assert _amount("[1, 2]") == 0.0
    assert _amount(None) == 0.0


async def test_person_view_of_an_unknown_person_is_none(tmp_path: Path) -> None:
    """No profile and no events: nothing to show."""
    async with run_server(dashboard_config(tmp_path)) as live:
        assert await board_of(live.runtime).person("u:nobody", 10) is None


async def test_without_sender_hub_or_engine(tmp_path: Path) -> None:
    """Counters and samples still work when the board reads no sender, hub or engine, and an
    SMTP transport shows no sink inbox."""
    config = dashboard_config(tmp_path, mail={"transport": "smtp"}, workflow=[CART])
    async with run_server(config) as live:
        readings = Readings(
            commits=live.runtime.board.readings.commits,
            queue_depth=lambda: 0,
            websockets=lambda: 0,
            timers_armed=lambda: 0,
            viewers=lambda: 0,
            dropped_viewers=lambda: 0,
        )
        board = Board(
            live.runtime.store,
            readings,
            latency=Histogram(),
            alerts=Alerts(config.dashboard),
            dashboard=config.dashboard,
            sink=False,
            clock=live.runtime.clock,
        )
        counters = board.counters()
        assert counters["viewers"] == 0 and counters["timers_armed"] == 0
        assert counters["sender"] == "off" and counters["mails"] == {}
        sample = await board.sample()
        assert sample.smtp_attempts == 0
        assert (await board.mail())["sink"] == []


async def test_alerts_are_checked_by_the_watch_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch task samples and raises alerts; a store failure is logged and it goes on."""
    async with run_server(dashboard_config(tmp_path)) as live:
        board = board_of(live.runtime, alert_trigger_failures=1)
        await board.check_alerts()
        live.runtime.pipeline.stats.failed_commits += 1
        await board.check_alerts()
        assert list(board.alerts.active) == ["trigger_failures"]
        data = await board.compose(Changed())
        assert data["alerts"]["active"][0]["alert"] == "trigger_failures"

        async def broken() -> dict[str, int]:
            raise StoreError("store failed: disk I/O error")

        live.runtime.store.mail.counts = broken  # type: ignore[method-assign]
        caplog.set_level(logging.WARNING, "rtserver.dashboard.board")
        await asyncio.wait_for(board.watch(StopAfter(3), every_s=0.001), 5)
    assert "alerts: the store failed" in caplog.text


async def test_a_broken_run_or_timer_raises_the_data_inconsistency_alert(tmp_path: Path) -> None:
    """A run waiting without its timer, or a timer of an ended run, raises
    data_inconsistency (the invariants are read at most once a minute); fixed, it resolves."""
    clock = FakeClock()
    async with run_server(dashboard_config(tmp_path, workflow=[CART]), clock=clock) as live:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "u1@example.com")])
            await send_batch(ws, [tracked("u1", "Product Added", cart_id="c1", price=20)])
        board = board_of(live.runtime)
        await board.check_alerts()
        assert board.alerts.active == {}
        db = live.runtime.store._db
        (timer,) = await db.execute_fetchall("SELECT run_id, step, due, person_id FROM timers")
        await db.execute("DELETE FROM timers")
        await db.execute("INSERT INTO timers VALUES ('gone', 1, 5.0, 'u:nobody')")
        clock.advance(30)
        await board.check_alerts()
        assert board.alerts.active == {}  # not read again within the minute
        clock.advance(30)
        await board.check_alerts()
        (alert,) = board.alerts.active.values()
        assert alert.name == "data_inconsistency" and alert.value == 2
        assert alert.message == "1 runs waiting without a timer; 1 timers of no active run"
        await db.execute("DELETE FROM timers")
        await db.execute("INSERT INTO timers VALUES (?, ?, ?, ?)", tuple(timer))
        clock.advance(60)
        await board.check_alerts()
        assert board.alerts.active == {}
        assert [c["state"] for c in board.alerts.history] == ["resolved", "raised"]


async def test_webhook_deliveries_are_on_the_mail_panel(tmp_path: Path) -> None:
    """A webhook step's delivery shows with its state, tries and last answer; counts cover
    every state."""
    crm = {
        "name": "crm",
        "trigger": "Signed Up",
        "step": [{"webhook": "https://crm.example/hooks/signup"}],
    }
    config = dashboard_config(tmp_path, workflow=[crm], hooks={"allow": ["https://crm.example/"]})
    async with run_server(config) as live:
        courier = live.runtime.courier
        assert courier is not None
        async with courier.progress:
            async with live.ws(origin=ORIGIN) as ws:
                await send_batch(ws, [shopper("u1", "ann@example.com")])
                await send_batch(ws, [tracked("u1", "Signed Up")])
            await asyncio.wait_for(courier.progress.wait(), 4)  # crm.example never resolves
        hooks = (await board_of(live.runtime).mail())["hooks"]
    assert list(hooks["counts"]) == list(DELIVERY_STATES)
    assert hooks["counts"]["retry_wait"] == 1
    (row,) = hooks["recent"]
    assert (row["workflow"], row["person_id"], row["state"]) == ("crm", "u:u1", "retry_wait")
    assert row["url"] == "https://crm.example/hooks/signup" and row["attempts"] == 1
    assert "cannot resolve crm.example" in row["last_error"]
    assert hooks["disabled"] == []


async def test_the_funnel_follows_the_outbox_at_once_and_says_when(tmp_path: Path) -> None:
    """A change of the outbox recomposes the funnel in the same update, even right after it
    was composed (so "mailed" never lags "sent"), and every funnel comes with its time."""
    clock = FakeClock()
    async with run_server(dashboard_config(tmp_path), clock=clock) as live:
        ticks = Ticks()
        board = board_of(live.runtime, ticks)
        first = await board.compose(Changed())
        assert first["funnel_at"] == clock()
        await cart_mailed(live, clock)
        clock.advance(5)
        update = await board.compose(Changed(mail=True))
        (row,) = update["funnel"]
        assert row["mailed"] == 1 and update["funnel_at"] == clock()
        assert update["mail"]["counts"]["sent"] == 1
        assert "funnel" not in await board.compose(Changed(runs=True))  # throttled as before
        assert (await board.compose(None))["funnel_at"] == clock()
