"""Where the WebSocket ingest is mounted: ahead of starlette's router, with the router's own
path rules (a ``root_path`` set behind a proxy is not part of the route)."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from rtserver.app import build_server, create_app
from rtserver.config.schema import Config
from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT, LiveServer, bound_socket, send_batch


async def test_a_root_path_is_not_part_of_the_route(config: Config) -> None:
    """Behind a proxy that strips ``/rt``, uvicorn puts it in the scope's path and root_path:
    the socket is still the ingest's, and other WebSocket paths still get the router's 403."""
    sock = bound_socket(config.server.host)
    app = create_app(config)
    ready = asyncio.Event()
    server = build_server(app, config, on_ready=lambda host, port: ready.set(), root_path="/rt")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    live = LiveServer(server, config, sock.getsockname()[1], task)
    try:
        await asyncio.wait_for(ready.wait(), 4 * TIMEOUT_UNIT)
        raw = event()
        async with live.ws() as ws:
            assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
        with pytest.raises(InvalidStatus) as refused:
            async with live.ws(url=live.ws_url.replace("/v1/ws", "/v1/other")):
                pass  # pragma: no cover - the handshake is refused
        assert refused.value.response.status_code == 403
    finally:
        await live.stop()
        sock.close()
