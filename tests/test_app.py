"""The application factory, lifespan, health and graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from rtserver import __version__
from rtserver.app import Server, _sigterm_absorbed, build_server, create_app, server_config
from rtserver.config.keys import Keys
from rtserver.config.schema import IngestConfig, KeysConfig
from rtserver.model.events import parse_event
from rtserver.runtime import check_public_url, resolve_keys
from rtserver.store.database import Store
from rtserver.store.retention import purge_forever, purge_old_events
from tests.support.events import event
from tests.support.server import (
    IDENTITY_SECRET,
    ORIGIN,
    TIMEOUT_UNIT,
    WEBHOOK_SECRET,
    WRITE_KEY,
    FakeClock,
    LiveServer,
    make_config,
    recv_json,
    run_server,
    send_batch,
)

DAY = 86400.0
NOW = FakeClock().now


async def _store_events(store: Store, events: list[tuple[dict[str, Any], float]]) -> None:
    """Commit raw events with the given receive times, as the pipeline would."""
    parsed = [parse_event(raw, IngestConfig(), source="server") for raw, _ in events]
    prepared = await store.prepare(parsed, [at for _, at in events])
    await store.commit_batch(prepared)


async def test_healthz_reports_ok(live: LiveServer) -> None:
    """GET /healthz answers 200 with the version while serving."""
    async with live.http() as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_ws_batch_is_acked_after_commit(live: LiveServer) -> None:
    """A batch sent over the WebSocket is acked by messageId."""
    raw = event()
    async with live.ws() as ws:
        reply = await send_batch(ws, [raw])
    assert reply == {"ack": [raw["messageId"]]}


async def test_runtime_is_reachable_from_tests(live: LiveServer) -> None:
    """The live server exposes the lifespan's runtime (store, keys) for assertions."""
    raw = event()
    async with live.ws() as ws:
        await send_batch(ws, [raw])
    assert await live.runtime.store.stored_message_ids() == [raw["messageId"]]


async def test_healthz_says_draining_once_the_ingest_drains(live: LiveServer) -> None:
    """Once the drain starts, /healthz answers 503 so a load balancer stops sending."""
    async with live.http() as client:
        assert (await client.get("/healthz")).status_code == 200
        app = cast(Starlette, live.server.config.app)
        await app.state.ingest.drain()
        response = await client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "draining" and body["version"] == __version__
    assert body["websockets"] == 0 and body["queue"] == 0


async def test_retention_purges_old_events_at_startup(tmp_path: Path) -> None:
    """Events older than store.retention_days go at the next start, newer ones stay."""
    config = make_config(tmp_path, store={"retention_days": 3})
    clock = FakeClock()
    old, recent = event(), event()
    async with run_server(config, clock=clock) as live:
        async with live.ws() as ws:
            assert await send_batch(ws, [old]) == {"ack": [old["messageId"]]}
            clock.advance(2 * DAY)
            assert await send_batch(ws, [recent]) == {"ack": [recent["messageId"]]}
    clock.advance(DAY + 1)  # `old` is now 3 days and 1 s old, `recent` 1 day and 1 s
    async with run_server(config, clock=clock) as live:
        async with live.http() as client:  # answered only after the startup (and its purge)
            assert (await client.get("/healthz")).status_code == 200
        assert await live.runtime.store.stored_message_ids() == [recent["messageId"]]


async def test_retention_task_purges_every_interval(tmp_path: Path) -> None:
    """The background task purges on each round and stops when told to."""
    store = await Store.open(tmp_path / "purge.db")
    stop = asyncio.Event()
    rounds: list[float] = []

    def clock() -> float:  # the last round: the task stops after this purge
        rounds.append(NOW)
        if len(rounds) == 2:
            stop.set()
        return NOW

    try:
        await _store_events(store, [(event(), NOW - 2 * DAY), (event(), NOW)])
        await purge_forever(store, clock, 1, stop, interval_s=0)
        assert len(rounds) == 2
        assert await store.count_events() == 1
    finally:
        await store.close()


async def test_retention_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing purge is logged; the task keeps running (the next round tries again)."""
    store = await Store.open(tmp_path / "closed.db")
    await store.close()
    assert await purge_old_events(store, FakeClock(), 90) == 0
    assert "retention purge failed" in caplog.text


async def test_resolve_keys_generates_once_and_prefers_configured_secrets(
    tmp_path: Path,
) -> None:
    """Absent secrets are generated and kept; configured ones win over the stored ones."""
    configured = make_config(tmp_path)
    bare = dataclasses.replace(configured, keys=KeysConfig(public="pk_bare"))
    store = await Store.open(configured.store.path)
    try:
        generated = await resolve_keys(bare, store, NOW)
        assert generated.public == "pk_bare"
        assert generated.write.startswith("wk_") and generated.identity_secret
        assert await resolve_keys(bare, store, NOW + 1) == generated
        keys = await resolve_keys(configured, store, NOW)
    finally:
        await store.close()
    assert keys == Keys(
        public="pk_dev",
        write=WRITE_KEY,
        identity_secret=IDENTITY_SECRET,
        link_secret=generated.link_secret,  # always generated: nobody needs to know it
        webhook_secrets=(WEBHOOK_SECRET,),
        hooks_secret=generated.hooks_secret,
    )
    assert len(generated.link_secret) >= 32
    assert generated.webhook_secrets[0].startswith("whsec_")


def test_server_config_trusts_forwarded_headers_only_from_configured_proxies(
    tmp_path: Path,
) -> None:
    """trusted_proxies becomes uvicorn's forwarded_allow_ips; none means no proxy headers."""
    proxied = make_config(tmp_path, server={"trusted_proxies": ["127.0.0.1", "10.1.0.0/16"]})
    app = create_app(proxied)
    options = server_config(app, proxied)
    assert options.proxy_headers is True
    assert options.forwarded_allow_ips == ["127.0.0.1", "10.1.0.0/16"]
    direct = make_config(tmp_path, server={"shutdown_timeout_s": 2.5})
    options = server_config(create_app(direct), direct, port=1234)
    assert options.proxy_headers is False
    assert options.port == 1234  # overrides win
    assert options.timeout_graceful_shutdown == 3  # rounded up, never 0
    assert options.lifespan == "on"


def _connect_as(live: LiveServer, address: str) -> Any:
    """A WebSocket client whose (proxy-added) X-Forwarded-For says ``address``."""
    headers = {"Origin": ORIGIN, "X-Forwarded-For": address}
    return connect(live.ws_url, additional_headers=headers, open_timeout=TIMEOUT_UNIT)


async def test_per_ip_limit_uses_x_forwarded_for_from_a_trusted_proxy(tmp_path: Path) -> None:
    """Behind a trusted proxy each forwarded client address has its own connection budget."""
    config = make_config(
        tmp_path,
        server={"trusted_proxies": ["127.0.0.1"]},
        ingest={"max_connections_per_ip": 1},
    )
    async with run_server(config) as live:
        async with _connect_as(live, "203.0.113.1") as first:
            async with _connect_as(live, "203.0.113.2") as second:
                for ws in (first, second):
                    raw = event()
                    assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
                async with _connect_as(live, "203.0.113.1") as third:
                    with pytest.raises(ConnectionClosedError) as closed:
                        await recv_json(third)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_x_forwarded_for_is_ignored_without_trusted_proxies(tmp_path: Path) -> None:
    """Without trusted proxies the header is the client's word: the peer address counts."""
    config = make_config(tmp_path, ingest={"max_connections_per_ip": 1})
    async with run_server(config) as live:
        async with _connect_as(live, "203.0.113.1") as first:
            raw = event()
            assert await send_batch(first, [raw]) == {"ack": [raw["messageId"]]}
            async with _connect_as(live, "203.0.113.2") as second:
                with pytest.raises(ConnectionClosedError) as closed:
                    await recv_json(second)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_server_announces_the_bound_port(tmp_path: Path) -> None:
    """on_ready gets the address actually bound, also with port 0."""
    config = make_config(tmp_path)
    ready: list[tuple[str, int]] = []
    server = build_server(create_app(config), config, lambda h, p: ready.append((h, p)))
    sock = socket.create_server(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_UNIT) as client:
            port = sock.getsockname()[1]
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        assert ready == [("127.0.0.1", port)] and server.port == port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 4 * TIMEOUT_UNIT)
        sock.close()


async def test_shutdown_stops_accepting_before_the_drain_and_bounds_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Listeners close first; a drain that overruns shutdown_timeout_s is cut short."""
    config = make_config(tmp_path)
    app = create_app(config)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    refused = asyncio.Event()

    async def stuck_drain() -> None:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        refused.set()
        await asyncio.Event().wait()  # never finishes: the timeout must end it

    server = Server(server_config(app, config), stuck_drain, 0.05)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_UNIT) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        server.should_exit = True
        await asyncio.wait_for(task, 4 * TIMEOUT_UNIT)
    finally:
        sock.close()
    assert refused.is_set()
    assert "drain took over 0.05s; closing the remaining sockets" in caplog.text


def test_sigterm_guard_is_a_no_op_outside_the_main_thread() -> None:
    """Signal handlers belong to the main thread; a server run in a thread leaves them alone."""
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            with _sigterm_absorbed():
                pass
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert errors == []


async def test_shutdown_gives_up_on_a_stuck_store_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit that never finishes cannot hold shutdown past server.shutdown_timeout_s."""
    config = make_config(tmp_path, server={"shutdown_timeout_s": 0.2})
    async with run_server(config) as live:
        async with live.ws() as ws:
            store = live.runtime.store
            await store._write_lock.acquire()  # the writer is stuck from now on
            try:
                await ws.send(orjson.dumps({"batch": [event()]}).decode())
                # A ping round trip: the frame was read; the batch now waits on the writer.
                await (await ws.ping())
                await live.stop()
            finally:
                store._write_lock.release()
    assert "still uncommitted" in caplog.text


def test_public_url_over_plain_http_outside_loopback_is_warned(tmp_path: Path) -> None:
    """RFC 8058 and link tracking want https; loopback (the demo) is fine."""
    assert check_public_url(make_config(tmp_path)) is None
    https = make_config(tmp_path, server={"public_url": "https://mail.shop.example"})
    assert check_public_url(https) is None
    plain = make_config(tmp_path, server={"public_url": "http://shop.example"})
    assert "is not https" in (check_public_url(plain) or "")


async def test_readyz_turns_503_while_commits_fail_and_recovers_without_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (here: the store capped with max_page_count) makes commits fail: /readyz
    answers 503 from the first failed commit on; once space is back, the store probe written
    while degraded brings it back to 200 with no event sent."""
    # One probe per TIMEOUT_UNIT: a probe between the nack and the next request could succeed
    # (it needs no new page) and make the check below see a store already healthy again.
    monkeypatch.setattr("rtserver.runtime.PROBE_EVERY_S", TIMEOUT_UNIT)
    async with run_server(make_config(tmp_path)) as live, live.http() as http:
        assert (await http.get("/readyz")).status_code == 200
        store = live.runtime.store
        (pages,) = await store._read("PRAGMA page_count", ())
        await store._db.execute(f"PRAGMA max_page_count = {pages[0]}")
        async with live.ws() as ws:
            batch = [event(properties={"blob": "x" * 3000}) for _ in range(20)]
            reply = await send_batch(ws, batch)
        assert "nack" in reply
        degraded = await http.get("/readyz")
        assert degraded.status_code == 503 and degraded.json()["status"] == "degraded"
        await store._db.execute("PRAGMA max_page_count = 1073741823")
        await asyncio.wait_for(live.runtime.pipeline.healthy.wait(), 2 * TIMEOUT_UNIT)
        assert (await http.get("/readyz")).status_code == 200
