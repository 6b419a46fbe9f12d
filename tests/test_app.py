"""The application factory, lifespan, health and graceful shutdown."""

from __future__ import annotations

from tests.conftest import LiveServer, event, send_batch


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
