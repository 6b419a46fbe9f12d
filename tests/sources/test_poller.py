"""A polling source against a real local orders API (port 0), a real store and a real pipeline,
on a fake clock: pagination by cursor, by Link header and by time over several pages; backoff
on 500 and on 429 with Retry-After (no request before it expires); the same id stored once;
the rate limit; the outbound guard; items that cannot be mapped; the run loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
from collections.abc import AsyncIterator
from typing import Any

import pytest
from werkzeug import Response

from rtserver.config.schema import IngestConfig
from rtserver.engine import Pipeline
from rtserver.sources import PollSource, compile_sources
from rtserver.sources.backoff import backoff_s
from rtserver.sources.poller import Poller, Pollers
from rtserver.store import PollState, Store
from tests.support.orders_api import EPOCH, OrdersApi, failing
from tests.support.receiver import Receiver
from tests.support.server import TIMEOUT_UNIT, FakeClock

ORDER = {
    "name": "orders",
    "every": "5m",
    "id": "item.id",
    "event": "'Order Completed'",
    "user_id": "item.customer.id",
    "timestamp": "item.created",
    "properties": {"order_id": "item.id", "total": "item.total", "email": "item.customer.email"},
    "allow_private": True,
}
MODES: dict[str, dict[str, Any]] = {
    "cursor": {"path": "/orders", "pagination": "cursor", "cursor_param": "cursor",
               "cursor": "response.next", "items": "response.orders"},
    "link": {"path": "/orders", "pagination": "link", "items": "response"},
    "since": {"path": "/orders", "pagination": "since", "cursor_param": "since",
              "cursor": "item.created", "items": "response.data"},
}  # fmt: skip


def source_of(receiver: Receiver, env: dict[str, str] | None = None, **table: Any) -> PollSource:
    path = table.pop("path", "/orders")
    (source,), _ = compile_sources([{**ORDER, "url": receiver.url_for(path), **table}], env or {})
    return source


@contextlib.asynccontextmanager
async def pipeline_on(store: Store, clock: FakeClock) -> AsyncIterator[Pipeline]:
    pipeline = Pipeline(store, max_queue=100, max_group_events=1000, queue_timeout_s=5.0,
                        clock=clock)  # fmt: skip
    task = asyncio.create_task(pipeline.run())
    try:
        yield pipeline
    finally:
        task.cancel()
        await asyncio.wait([task])


def serve(receiver: Receiver, api: OrdersApi, mode: str) -> None:
    handler = {"cursor": api.by_cursor, "link": api.by_link, "since": api.by_time}[mode]
    receiver.expect_request("/orders").respond_with_handler(handler)


async def stored_ids(store: Store) -> list[str]:
    return [m for m in await store.stored_message_ids() if m.startswith("poll-")]


@pytest.mark.parametrize("mode", ["cursor", "link", "since"])
async def test_pages_are_read_to_the_end_and_resumed_from_the_cursor(
    store: Store, mode: str
) -> None:
    """7 orders, 2 a page: 4 pages (5 requests by time: the last one is empty), every order
    stored once with its mapping; after more orders come, the next cycle goes on from the
    saved cursor (the last page read again, its orders dropped as duplicates)."""
    clock, api = FakeClock(), OrdersApi(7)
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, mode)
        table = {k: v for k, v in MODES[mode].items()}
        poller = Poller(source_of(receiver, **table), store, pipeline.submit, IngestConfig(), clock)
        cycle = await poller.cycle()
        assert cycle.caught_up and cycle.error is None and cycle.skipped == []
        expected = {
            "cursor": ["", "cursor=2", "cursor=4", "cursor=6"],
            "link": ["", "page=2", "page=3", "page=4"],
            "since": ["", *(f"since={EPOCH + 60 * n}" for n in (1, 3, 5, 6))],
        }[mode]
        assert api.seen == expected
        assert await stored_ids(store) == [f"poll-orders-{1000 + n}" for n in range(7)]
        first = cycle.mapped[0]
        assert (first.event, first.user_id, first.stored) == ("Order Completed", "c0", True)
        assert first.properties == {"order_id": 1000, "total": 10.0, "email": "c0@shop.example"}
        (body,) = [
            e for e in await store.events_of("u:c0", 1) if e["messageId"] == "poll-orders-1006"
        ]
        assert body["timestamp"] == "2026-01-01T00:06:00+00:00"
        state = await store.polls.state("orders")
        assert state is not None and state.caught_up_at == clock.now
        assert state.next_run == clock.now + 300 and state.failures == 0

        api.add(3)
        clock.advance(299)
        assert (await poller.cycle()).due is False  # not before `every`
        clock.advance(1)
        again = await poller.cycle()
        assert again.caught_up
        assert await stored_ids(store) == [f"poll-orders-{1000 + n}" for n in range(10)]
        fresh = {m.message_id for m in again.mapped if m.stored}
        assert fresh == {f"poll-orders-{1000 + n}" for n in (7, 8, 9)}
        assert poller.events == 10
        resumed = api.seen[len(expected)]
        assert (
            resumed
            == {"cursor": "cursor=6", "link": "page=4", "since": f"since={EPOCH + 360}"}[mode]
        )


async def test_a_restart_resumes_from_the_saved_cursor(store: Store) -> None:
    """A new poller (a restarted server) reads the cursor from the store, not from the start."""
    clock, api = FakeClock(), OrdersApi(5)
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, "cursor")
        source = source_of(receiver, **MODES["cursor"])
        await store.polls.save(PollState("orders", cursor=4), clock.now)
        poller = Poller(source, store, pipeline.submit, IngestConfig(), clock)
        await poller.cycle()
        assert api.seen == ["cursor=4"]
        assert await stored_ids(store) == ["poll-orders-1004"]


async def test_a_500_backs_off_and_the_cursor_stays(store: Store) -> None:
    """A failed page: nothing asked again before the backoff, the cursor where the last good
    page left it, the error shown; then the source goes on from there."""
    clock, api = FakeClock(), OrdersApi(6)
    api.script[("cursor=2", 1)] = failing(500)
    api.script[("cursor=2", 2)] = failing(503)
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, "cursor")
        poller = Poller(source_of(receiver, **MODES["cursor"]), store, pipeline.submit,
                        IngestConfig(), clock)  # fmt: skip
        cycle = await poller.cycle()
        assert cycle.error == "500 INTERNAL SERVER ERROR" and not cycle.caught_up
        state = await store.polls.state("orders")
        assert state is not None and state.cursor == 2 and state.failures == 1
        assert state.last_error == "500 INTERNAL SERVER ERROR"
        first_wait = backoff_s("orders", 1)
        assert state.next_run == clock.now + first_wait and 5.0 <= first_wait <= 10.0
        clock.advance(first_wait - 0.01)
        assert (await poller.cycle()).due is False
        assert api.seen == ["", "cursor=2"]
        clock.advance(0.01)
        assert (await poller.cycle()).error == "503 SERVICE UNAVAILABLE"
        second = await store.polls.state("orders")
        assert second is not None and second.failures == 2
        assert second.next_run == clock.now + backoff_s("orders", 2)
        assert backoff_s("orders", 2) >= 10.0
        clock.advance(backoff_s("orders", 2))
        last = await poller.cycle()
        assert last.caught_up and api.seen == ["", "cursor=2", "cursor=2", "cursor=2", "cursor=4"]
        assert len(await stored_ids(store)) == 6
        status = poller.status(clock.now)
        assert status["failures"] == 0 and status["last_error"] is None and status["errors"] == 2


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_a_429_waits_for_retry_after(store: Store, form: str) -> None:
    """Retry-After (seconds or an HTTP date) holds every request until it expires, even when
    it is longer than the backoff, and even for a new poller (a restart)."""
    clock, api = FakeClock(), OrdersApi(4)
    retry = "120" if form == "seconds" else email.utils.formatdate(clock.now + 120, usegmt=True)
    api.script[("cursor=2", 1)] = failing(429, **{"Retry-After": retry})
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, "cursor")
        source = source_of(receiver, **MODES["cursor"])
        poller = Poller(source, store, pipeline.submit, IngestConfig(), clock)
        assert (await poller.cycle()).error == "429 TOO MANY REQUESTS"
        assert api.seen == ["", "cursor=2"]
        for step in (10.0, 60.0, 49.0):
            clock.advance(step)
            assert (await poller.cycle()).due is False
            restarted = Poller(source, store, pipeline.submit, IngestConfig(), clock)
            assert (await restarted.cycle()).due is False
        assert api.seen == ["", "cursor=2"]  # nothing before Retry-After expired
        clock.advance(1.0)
        assert (await poller.cycle()).caught_up
        assert api.seen == ["", "cursor=2", "cursor=2"]
        assert len(await stored_ids(store)) == 4


async def test_the_same_id_is_stored_once(store: Store) -> None:
    """An order listed twice on a page and again on a re-read page is one event."""
    clock = FakeClock()
    page = [{"id": 7, "customer": {"id": "c1"}}, {"id": 7, "customer": {"id": "c1"}},
            {"id": 8.0, "customer": {"id": "c2"}}]  # fmt: skip
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        receiver.expect_request("/orders").respond_with_json(page)
        source = source_of(receiver, items="response", timestamp="", properties={})
        poller = Poller(source, store, pipeline.submit, IngestConfig(), clock)
        cycle = await poller.cycle()
        assert [(m.message_id, m.stored) for m in cycle.mapped] == [
            ("poll-orders-7", True), ("poll-orders-7", False), ("poll-orders-8", True),
        ]  # fmt: skip
        clock.advance(300)
        again = await poller.cycle()
        assert [m.stored for m in again.mapped] == [False, False, False]
        assert await stored_ids(store) == ["poll-orders-7", "poll-orders-8"]
        assert poller.events == 2


async def test_the_rate_limit_spreads_the_pages(store: Store) -> None:
    """rate_per_minute = 2: two requests, then one every 30 s, none sooner."""
    clock, api = FakeClock(), OrdersApi(7)
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, "cursor")
        source = source_of(receiver, rate_per_minute=2, **MODES["cursor"])
        poller = Poller(source, store, pipeline.submit, IngestConfig(), clock)
        cycle = await poller.cycle()
        assert cycle.requests == 2 and not cycle.caught_up and cycle.error is None
        state = await store.polls.state("orders")
        assert state is not None and state.next_run == clock.now + 30.0 and state.cursor == 4
        clock.advance(29.9)
        assert (await poller.cycle()).due is False and len(api.seen) == 2
        clock.advance(0.1)
        assert (await poller.cycle()).requests == 1 and len(api.seen) == 3
        clock.advance(30.0)
        assert (await poller.cycle()).caught_up and len(api.seen) == 4
        assert len(await stored_ids(store)) == 7


async def test_a_private_address_is_refused_without_allow_private(store: Store) -> None:
    """The outbound guard: a source on 127.0.0.1 is never asked unless allow_private."""
    clock = FakeClock()
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        receiver.expect_request("/orders").respond_with_json([])
        source = source_of(receiver, allow_private=False, items="response")
        poller = Poller(source, store, pipeline.submit, IngestConfig(), clock)
        cycle = await poller.cycle()
        assert cycle.error == "destination refused: 127.0.0.1 is a loopback address"
        assert receiver.arrived == []
        state = await store.polls.state("orders")
        assert state is not None and state.last_error == cycle.error and state.failures == 1


async def test_a_next_link_to_another_host_is_refused(store: Store) -> None:
    """The credentials go with the next page: a Link to another host stops the cycle."""
    clock = FakeClock()
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        receiver.expect_request("/orders").respond_with_json(
            [], headers={"Link": '<http://elsewhere.example/orders?page=2>; rel="next"'}
        )
        source = source_of(receiver, **MODES["link"])
        poller = Poller(source, store, pipeline.submit, IngestConfig(), clock)
        cycle = await poller.cycle()
        assert cycle.error is not None and "is not on the source's host" in cycle.error
        assert len(receiver.arrived) == 1


async def test_auth_headers_are_sent(store: Store) -> None:
    """A header from its environment variable; basic auth from user:password."""
    clock, api = FakeClock(), OrdersApi(1)
    env = {"SHOP_TOKEN": "Bearer s3cret", "SHOP_LOGIN": "shop:pa55"}
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, "cursor")
        for table in (
            {"auth": "header", "auth_header": "X-Api-Key", "secret_env": "SHOP_TOKEN"},
            {"auth": "basic", "secret_env": "SHOP_LOGIN"},
        ):
            source = source_of(receiver, env, **table, **MODES["cursor"])
            await Poller(source, store, pipeline.submit, IngestConfig(), clock).cycle(force=True)
        assert api.headers[0]["X-Api-Key"] == "Bearer s3cret"
        assert api.headers[1]["Authorization"] == "Basic " + base64.b64encode(b"shop:pa55").decode()


async def test_items_that_cannot_be_mapped_are_skipped_with_a_reason(store: Store) -> None:
    """An item without id, user or a good event name is reported; the others are stored."""
    clock = FakeClock()
    page = {"orders": [
        {"id": 1, "customer": {"id": "c1"}, "name": "Order Completed"},
        {"customer": {"id": "c2"}, "name": "Order Completed"},
        {"id": 3, "customer": {}, "name": "Order Completed"},
        {"id": 4, "customer": {"id": "c4"}, "name": 5},
        {"id": 5, "customer": {"id": "c5"}, "name": "Order Completed", "total": "x" * 1000},
    ]}  # fmt: skip
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        receiver.expect_request("/orders").respond_with_json(page)
        source = source_of(receiver, items="response.orders", event="item.name", timestamp="",
                           properties={"big": "(item.total or '') * 200"})  # fmt: skip
        cycle = await Poller(source, store, pipeline.submit, IngestConfig(), clock).cycle()
        assert cycle.caught_up and [m.message_id for m in cycle.mapped] == ["poll-orders-1"]
        reasons = "\n".join(cycle.skipped)
        assert "item 1 of page 1: id must be a non-empty string or integer, got None" in reasons
        assert "item 2 of page 1: anonymousId or userId is required" in reasons
        assert "item 3 of page 1: event must be a string, got 5" in reasons
        assert "item 4 of page 1: \"(item.total or '') * 200\" failed: sequence longer" in reasons


@pytest.mark.parametrize(
    ("body", "table", "error"),
    [
        (b"not json", {"items": "response"}, "the page is not JSON"),
        (b'{"orders": 5}', {"items": "response.orders"}, "items: expected a list, got int"),
        (b'{"orders": "x"}', {"items": "response.orders * 200000"}, "items: 'response.orders"),
        (b'{"data": [{"id": 1, "customer": {"id": "a"}, "created": 1}, '
         b'{"id": 2, "customer": {"id": "a"}, "created": "x"}]}', MODES["since"], "cursor: "),
        (b'{"orders": [], "next": "x"}', {**MODES["cursor"], "cursor": "response.next * 200000"},
         "cursor: "),
    ],
)  # fmt: skip
async def test_a_page_that_does_not_fit_backs_off(
    store: Store, body: bytes, table: dict[str, Any], error: str
) -> None:
    clock = FakeClock()
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        receiver.expect_request("/orders").respond_with_data(body)
        source = source_of(receiver, **{k: v for k, v in table.items() if k != "path"})
        cycle = await Poller(source, store, pipeline.submit, IngestConfig(), clock).cycle()
        assert cycle.error is not None and cycle.error.startswith(error), cycle.error
        state = await store.polls.state("orders")
        assert state is not None and state.failures == 1 and state.cursor is None


async def test_a_single_request_source_and_a_304(store: Store) -> None:
    """pagination = '': one request a cycle; an empty answer is no items; a 304 is an error."""
    clock = FakeClock()
    answers = [Response("null", content_type="application/json"), Response(status=304)]
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        receiver.expect_request("/orders").respond_with_handler(lambda r: answers.pop(0))
        poller = Poller(source_of(receiver, items="response"), store, pipeline.submit,
                        IngestConfig(), clock)  # fmt: skip
        assert (await poller.cycle()).caught_up
        clock.advance(300)
        assert (await poller.cycle()).error == "304 Not Modified to a request without validators"


async def test_the_run_loop_polls_each_source_when_due(store: Store) -> None:
    """Pollers.run: each source's cycle, status for the dashboard, a failing cycle logged and
    held back, stopped by the stop event."""
    clock, api = FakeClock(), OrdersApi(3)
    stop = asyncio.Event()
    async with Receiver.running() as receiver, pipeline_on(store, clock) as pipeline:
        serve(receiver, api, "cursor")
        good = Poller(source_of(receiver, **MODES["cursor"]), store, pipeline.submit,
                      IngestConfig(), clock)  # fmt: skip
        broken = Poller(source_of(receiver, name="broken", **MODES["cursor"]), store,
                        pipeline.submit, None, clock)  # type: ignore[arg-type]  # fmt: skip
        pollers = Pollers([good, broken], clock)
        task = asyncio.create_task(pollers.run(stop))
        async with asyncio.timeout(TIMEOUT_UNIT), pollers.progress:
            await pollers.progress.wait_for(lambda: pollers.cycles >= 2)
        stop.set()
        await task
        first, second = pollers.status()
        assert first["name"] == "orders" and first["events"] == 3 and first["lag_s"] == 0.0
        assert first["next_run"] == clock.now + 300 and first["last_error"] is None
        assert second["name"] == "broken" and second["next_run"] is not None
        assert second["next_run"] > clock.now
