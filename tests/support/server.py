"""The live-server harness: configs on a temporary database, a real uvicorn server on a
port-0 socket, WebSocket clients, a fake clock, and the waits the tests share. No mocks of
rtserver's own parts, no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from rtserver.app import Server, build_server, create_app
from rtserver.config.schema import Config, load_config
from rtserver.ingest.websocket import Ingest
from rtserver.runtime import Runtime

TIMEOUT_UNIT = float(os.environ.get("RTSERVER_TESTS_TIMEOUT_FACTOR", "1")) * 5.0
"""The one unit every unavoidable timeout in the tests is a multiple of."""
ORIGIN = "http://shop.test"
WRITE_KEY = "wk_test_0123456789abcdefghijklmnopqrstuvwxyz"
IDENTITY_SECRET = "idsecret_0123456789abcdefghijklmnopqrstuvwxyz"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """A config on a fresh database in ``tmp_path``; ``sections`` override TOML tables
    (``workflow=[...]`` gives the ``[[workflow]]`` list)."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "allowed_origins": [ORIGIN]},
        "store": {"path": str(tmp_path / "test.db")},
        "keys": {
            "write": WRITE_KEY,
            "identity_secret": IDENTITY_SECRET,
            "webhook_secret": WEBHOOK_SECRET,
        },
        "ingest": {
            "max_connections_per_ip": 1000,
            "events_per_s": 100000.0,
            "burst_events": 100000,
            # Many tests send from 127.0.0.1 faster than a browser would; the budget tests
            # set their own exemptions and use distinct 127.x addresses.
            "budget_exempt": ["127.0.0.0/8"],
        },
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return load_config(None, env={}, overrides=base)


async def leave_mid_body(port: int, head: bytes, part: bytes) -> None:
    """Send a request ``head`` (with ``Expect: 100-continue`` and a longer Content-Length),
    wait for the 100 (uvicorn sends it once the endpoint reads the body), send ``part`` of the
    body and go away."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_UNIT)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(part)
    writer.close()
    await writer.wait_closed()


@dataclass
class LiveServer:
    """A running rtserver: a real uvicorn server on a pre-bound port-0 socket."""

    server: Server
    config: Config
    port: int
    task: asyncio.Task[None]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws?key={self.config.keys.public}"

    @property
    def runtime(self) -> Runtime:
        """What the lifespan built (store, pipeline, keys), for assertions."""
        runtime: Runtime = self.server.lifespan.state["runtime"]
        return runtime

    @property
    def ingest(self) -> Ingest:
        """The app's WebSocket ingest (open sessions, drain state)."""
        ingest: Ingest = self.server.config.app.state.ingest
        return ingest

    def ws(self, origin: str | None = ORIGIN, url: str | None = None, **kw: Any) -> Any:
        """Open a WebSocket client (async context manager)."""
        headers = {"Origin": origin} if origin is not None else {}
        return connect(
            url or self.ws_url, additional_headers=headers, open_timeout=TIMEOUT_UNIT, **kw
        )

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url, timeout=TIMEOUT_UNIT)

    async def stock(self, *products: dict[str, Any]) -> None:
        """Put ``products`` (catalog fields) in the catalog as the shop's backend does: one
        write-key ``Product Updated`` each."""
        batch = [
            {
                "type": "track",
                "event": "Product Updated",
                "userId": "catalog",
                "properties": p,
                "messageId": f"catalog-{p['id']}-{uuid.uuid4().hex}",
            }
            for p in products
        ]
        async with self.http() as http:
            answer = await http.post("/v1/batch", json={"writeKey": WRITE_KEY, "batch": batch})
        assert answer.status_code == 200 and "rejected" not in answer.json(), answer.text

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 4 * TIMEOUT_UNIT)


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port, for :func:`run_server`."""
    return socket.create_server((host, 0))


@contextlib.asynccontextmanager
async def run_server(
    config: Config, *, sock: socket.socket | None = None, **app_kw: Any
) -> AsyncIterator[LiveServer]:
    """Serve ``config`` on a pre-bound socket; the kernel queues connections until uvicorn
    accepts them, so no startup wait is needed. ``sock`` is a socket the test bound itself
    (with :func:`bound_socket`), when the config must name its port (``server.public_url``)."""
    sock = sock or bound_socket(config.server.host)
    port = sock.getsockname()[1]
    app = create_app(config, **app_kw)
    ready = asyncio.Event()
    server = build_server(app, config, on_ready=lambda host, port: ready.set())
    task = asyncio.create_task(server.serve(sockets=[sock]))
    live = LiveServer(server, config, port, task)
    try:
        # The lifespan has run (the runtime exists) once uvicorn reports it started.
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([waiter, task], timeout=4 * TIMEOUT_UNIT, return_when="FIRST_COMPLETED")
        waiter.cancel()
        if task.done():
            task.result()  # startup failed: raise its error here
        assert ready.is_set(), "server did not start"
        yield live
    finally:
        if not task.done():
            await live.stop()
        sock.close()


async def send_batch(ws: ClientConnection, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Send one batch and return the next reply."""
    await ws.send(orjson.dumps({"batch": events}).decode())
    return await recv_json(ws)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    reply = await asyncio.wait_for(ws.recv(), TIMEOUT_UNIT)
    result: dict[str, Any] = orjson.loads(reply)
    return result


async def advance(live: LiveServer, clock: FakeClock, seconds: float) -> None:
    """Move the fake clock and wake the timer driver and the sender."""
    clock.advance(seconds)
    assert live.runtime.engine is not None and live.runtime.sender is not None
    live.runtime.engine.wake.set()
    live.runtime.sender.wake()


async def sent(live: LiveServer, count: int = 1) -> list[dict[str, Any]]:
    """Wait until ``count`` mails are recorded as sent (the sender notifies its progress)."""
    sender = live.runtime.sender
    assert sender is not None
    async with asyncio.timeout(TIMEOUT_UNIT), sender.progress:
        while len(rows := await live.runtime.store.mail.outbox("sent")) < count:
            await sender.progress.wait()
    return rows
