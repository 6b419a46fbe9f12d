"""The application factory, its lifespan, and the uvicorn server that drains before it stops.

``create_app(config)`` is the one place where every layer meets. The lifespan opens the store,
settles the keys, starts the pipeline and the retention task, and yields the
:class:`~rtserver.pipeline.Runtime` to every request. :class:`Server` is uvicorn's server with one
change: on shutdown it first drains the ingest (final commit, acks, close 1001), because uvicorn
closes WebSockets itself (1012) before the lifespan's shutdown runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute

from rtserver import __version__
from rtserver.config import Config
from rtserver.ingest import Ingest
from rtserver.pipeline import Clock, Keys, Pipeline, Runtime
from rtserver.store import Store
from rtserver.tracking import receive

__all__ = ["Server", "create_app", "resolve_keys", "server_config"]

logger = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


async def resolve_keys(config: Config, store: Store, now: float) -> Keys:
    """The keys in force: configured ones, else generated once and kept in the store."""
    keys = config.keys
    write = keys.write.reveal() if keys.write else None
    identity = keys.identity_secret.reveal() if keys.identity_secret else None
    return Keys(
        public=keys.public,
        write=write
        or await store.secret("write_key", lambda: "wk_" + secrets.token_urlsafe(32), now),
        identity_secret=identity
        or await store.secret("identity_secret", lambda: secrets.token_urlsafe(32), now),
    )


async def _purge_forever(
    store: Store, clock: Clock, retention_days: int, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            purged = await store.purge_events(clock() - retention_days * 86400.0)
            if purged:
                logger.info(
                    "retention: purged %d events older than %d days", purged, retention_days
                )
        except Exception:  # the task boundary: log and try again next round
            logger.exception("retention purge failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETENTION_INTERVAL_S)


async def healthz(request: Request) -> JSONResponse:
    """``GET /healthz``: 200 while serving, 503 once draining."""
    runtime: Runtime = request.state.runtime
    ingest: Ingest = request.app.state.ingest
    ok = not ingest.draining
    body = {
        "status": "ok" if ok else "draining",
        "version": __version__,
        "queue": runtime.pipeline.queue.qsize(),
        "websockets": len(ingest.sessions),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def create_app(
    config: Config, *, clock: Clock = time.time, monotonic: Callable[[], float] = time.monotonic
) -> Starlette:
    """Build the ASGI application for ``config``; ``clock`` is injected for tests and simulation."""
    ingest = Ingest(config, monotonic)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = await Store.open(config.store.path)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            keys = await resolve_keys(config, store, clock())
            pipeline = Pipeline(
                store,
                max_queue=config.ingest.max_queue,
                max_group_events=config.store.max_group_events,
                queue_timeout_s=config.ingest.queue_timeout_s,
            )
            runtime = Runtime(config=config, store=store, pipeline=pipeline, keys=keys, clock=clock)
            tasks.append(asyncio.create_task(pipeline.run(), name="pipeline"))
            tasks.append(
                asyncio.create_task(
                    _purge_forever(store, clock, config.store.retention_days, stop),
                    name="retention",
                )
            )
            yield {"runtime": runtime}
            await ingest.drain()  # a no-op when the Server already drained
            await pipeline.drain()
        finally:
            stop.set()
            for task in tasks:
                task.cancel(msg="rtserver shutting down")
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()

    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(config.server.allowed_origins),
        allow_methods=["POST"],
        allow_headers=["Content-Type", "Content-Encoding"],
        max_age=86400,
    )
    routes = [
        Route("/healthz", healthz),
        Mount(
            "/v1",
            routes=[
                WebSocketRoute("/ws", ingest.endpoint),
                Route("/batch", receive, methods=["POST"]),
                Route("/{kind}", receive, methods=["POST"]),
            ],
            middleware=[cors],
        ),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ingest = ingest
    return app


class Server(uvicorn.Server):
    """uvicorn's server, draining the ingest before uvicorn closes the sockets."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Callable[[], Awaitable[None]],
        timeout_s: float,
        on_ready: Callable[[str, int], None] | None = None,
    ):
        super().__init__(config)
        self._drain = drain
        self._drain_timeout_s = timeout_s
        self._on_ready = on_ready

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self.servers[0].sockets[0].getsockname()[1])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_ready(host, port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await asyncio.wait_for(self._drain(), self._drain_timeout_s)
        except TimeoutError:
            logger.error(
                "drain took over %.1fs; closing the remaining sockets", self._drain_timeout_s
            )
        await super().shutdown(sockets)


def server_config(app: Starlette, config: Config, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings for ``app``, from the rtserver config."""
    limits = config.ingest
    proxies = list(config.server.trusted_proxies)
    options: dict[str, Any] = dict(
        host=config.server.host,
        port=config.server.port,
        ws="websockets-sansio",
        ws_max_size=limits.max_frame_bytes,
        ws_ping_interval=limits.ping_interval_s,
        ws_ping_timeout=limits.ping_timeout_s,
        ws_per_message_deflate=limits.permessage_deflate,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        timeout_graceful_shutdown=int(config.server.shutdown_timeout_s) or 1,
        log_config=None,
        access_log=config.server.log_level == "debug",
        server_header=False,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def build_server(
    app: Starlette,
    config: Config,
    on_ready: Callable[[str, int], None] | None = None,
    **overrides: Any,
) -> Server:
    """The uvicorn server for ``app``, wired to drain its ingest first."""
    ingest: Ingest = app.state.ingest
    return Server(
        server_config(app, config, **overrides),
        ingest.drain,
        config.server.shutdown_timeout_s,
        on_ready,
    )
