"""The application factory, its lifespan, and the uvicorn server that drains before it stops.

``create_app(config)`` is where the routes meet the parts. Its lifespan builds the running
server with :func:`rtserver.runtime.start` and hands each route module only what it uses, as
typed lifespan state (:class:`State`): the ingest routes an :class:`~rtserver.ingest.intake.Intake`,
the mail links their :class:`~rtserver.mail.links.Links`, the dashboard its
:class:`~rtserver.dashboard.routes.Dashboard`. :class:`Server` is uvicorn's server with two
changes: on shutdown it first drains the ingest (final commit, acks, close 1001), because uvicorn
closes WebSockets itself (1012) before the lifespan's shutdown runs; and it stops, so that the
process exits non-zero, when one of the server's tasks died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from rtserver import __version__
from rtserver.clock import Clock, Monotonic
from rtserver.config import Config
from rtserver.dashboard import Auth, Dashboard, Metrics, RequireLogin, metrics, routes as dashboard
from rtserver.errors import MailError, StoreError
from rtserver.ingest import (
    CORS_OPTIONS,
    Budgets,
    Ingest,
    IngestMount,
    Intake,
    guarded_fetch,
    recommendations,
    sdk_routes,
    segment_routes,
    shopify,
    snippet,
    unknown_type,
    webhooks,
    woocommerce,
)
from rtserver.mail import SAMPLE, Fetch, Links, Mailer, Sns, click_target, links
from rtserver.model import Product
from rtserver.runtime import Runtime, Supervisor, check_public_url, load_rules, start
from rtserver.tools import Shop, demo

__all__ = ["Server", "State", "build_server", "create_app", "server_config"]

logger = logging.getLogger(__name__)


class State(TypedDict):
    """What the lifespan hands the routes (``request.state``): each takes its own part."""

    runtime: Runtime
    """The parts themselves: for the health routes here, and for tests."""
    intake: Intake
    links: Links
    dashboard: Dashboard
    auth: Auth
    """Also read by :class:`~rtserver.dashboard.auth.RequireLogin`."""
    metrics: Metrics
    shop: Shop


def sample_preview(mailer: Mailer, template: str) -> str | None:
    """A template's HTML rendered with the sample data ``rtserver check`` renders it with, for
    the dashboard's Messages tab; None when there is no such template or it fails to render."""
    if template not in mailer.names():
        return None
    try:
        part = mailer.render_mail(template, SAMPLE).get_body(("html",))
    except MailError as exc:
        logger.warning("dashboard: the preview of %s failed: %s", template, exc)
        return None
    assert part is not None  # every template has its .html (the mailer renders both parts)
    return str(part.get_content())


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


async def readyz(request: Request) -> JSONResponse:
    """``GET /readyz``: 200 once the lifespan has started, the store answers and commits
    succeed; else 503 (starting, draining, degraded while commits fail, store unavailable)."""
    runtime: Runtime | None = getattr(request.state, "runtime", None)
    ingest: Ingest = request.app.state.ingest
    if runtime is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    if ingest.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not runtime.pipeline.healthy.is_set():
        failing = {"status": "degraded", "error": "commits fail: the store takes no writes"}
        return JSONResponse(failing, status_code=503)
    try:
        await runtime.store.ping()
    except StoreError as exc:
        return JSONResponse({"status": "store unavailable", "error": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "version": __version__})


def create_app(
    config: Config,
    *,
    clock: Clock = time.time,
    monotonic: Monotonic = time.monotonic,
    stock: Sequence[Product] = (),
    sns_fetch: Fetch | None = None,
) -> Starlette:
    """Build the ASGI application for ``config``; ``clock`` is injected for tests and simulation.
    ``stock`` is written to the catalog at start (the demo's own products). ``sns_fetch`` gets
    SNS's certificates and confirms subscriptions (default: a GET through the outbound guard).

    Raises:
        ConfigError: a workflow is invalid (checked here, before anything starts).
    """
    ingest = Ingest(config, monotonic)
    budgets = Budgets(config, monotonic)
    supervisor = Supervisor()
    rules, warnings = load_rules(config)
    sns = Sns(sns_fetch or guarded_fetch())
    for warning in filter(None, (*warnings, check_public_url(config))):
        logger.warning("config: %s", warning)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with start(
            config,
            rules,
            supervisor,
            websockets=lambda: len(ingest.sessions),
            summary=ingest.summary,
            disk_low=budgets.disk_low,
            clock=clock,
            monotonic=monotonic,
        ) as runtime:
            store, keys, auth = runtime.store, runtime.keys, runtime.auth
            if stock:
                await store.catalog.upsert(stock, "demo", clock())
            yield State(
                runtime=runtime,
                intake=Intake(
                    config,
                    keys,
                    runtime.pipeline.submit,
                    store,
                    clock,
                    budgets,
                    sns,
                    catalog_changed=runtime.triggers.wake,
                    recommend=runtime.sender.contexts.recommendations,
                ),
                links=Links(
                    store,
                    runtime.tokens,
                    runtime.pipeline.submit,
                    config.mail,
                    clock,
                    runtime.mailer.hosts,
                ),
                dashboard=Dashboard(
                    store,
                    runtime.board,
                    auth,
                    runtime.hub,
                    config.server.public_url,
                    clock,
                    functools.partial(click_target, runtime.tokens, runtime.mailer.hosts),
                    config.mail.brand.currency,
                    functools.partial(sample_preview, runtime.mailer),
                    runtime.mailer.names,
                ),
                auth=auth,
                metrics=Metrics(
                    store,
                    runtime.board.readings,
                    latency=runtime.latency,
                    alerts=runtime.board.alerts,
                ),
                shop=Shop(config.mail.brand, keys.public),
            )
            try:
                async with asyncio.timeout(config.server.shutdown_timeout_s):
                    await ingest.drain()  # a no-op when the Server already drained
                    await runtime.pipeline.drain()
            except TimeoutError:
                logger.error(
                    "shutdown: %d batches still uncommitted after %.1fs; their clients will resend",
                    runtime.pipeline.queue.qsize(),
                    config.server.shutdown_timeout_s,
                )

    cors = Middleware(
        CORSMiddleware, allow_origins=list(config.server.allowed_origins), **CORS_OPTIONS
    )
    routes = [
        # The hot path first: plain ASGI endpoints, with the same CORS answers as the mount.
        *segment_routes(config),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics.endpoint),
        Route("/rt.js", snippet.script),
        *demo.routes,
        *links.routes,
        *dashboard.routes,
        Mount(
            "/v1",
            routes=[
                # The platforms' own routes before the generic one, which would take their paths.
                Route("/webhooks/shopify", shopify.receive, methods=["POST"]),
                Route("/webhooks/woocommerce", woocommerce.receive, methods=["POST"]),
                *sdk_routes,  # analytics.js's settings document
                Route("/webhooks/{source}", webhooks.receive, methods=["POST"]),
                # Before /{kind}, which would otherwise answer this path's GET with a 405.
                Route("/recommendations", recommendations, methods=["GET"]),
                # Any other type: the known ones are among the segment routes above.
                Route("/{kind}", unknown_type, methods=["POST"]),
            ],
            middleware=[cors],
        ),
    ]
    # The WebSocket ingest ahead of the router and the other middleware: its frames pass
    # uvicorn's receive and send to the endpoint with nothing in between (see IngestMount).
    middleware = [Middleware(IngestMount, ingest=ingest, path="/v1/ws"), Middleware(RequireLogin)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    # No "add or strip the slash" redirects: a link path never answers with a 3xx that its
    # signed token did not ask for.
    app.router.redirect_slashes = False
    app.state.ingest = ingest
    app.state.supervisor = supervisor
    return app


@contextlib.contextmanager
def _sigterm_absorbed() -> Iterator[None]:
    """Ignore a SIGTERM re-raised once uvicorn has finished a graceful stop.

    uvicorn captures SIGINT and SIGTERM while it serves, then raises the captured signal again
    with the previous handler restored, so that the process still ends "by" that signal. For
    SIGTERM this turns a clean drain into a death by signal (exit status 143); a service manager
    asked for a stop and the stop succeeded, so rtserver exits 0. SIGINT keeps uvicorn's behaviour
    (KeyboardInterrupt, exit status 130).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread's handlers
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Server(uvicorn.Server):
    """uvicorn's server, draining the ingest before uvicorn closes the sockets.

    Shutdown order: stop accepting connections, drain the ingest (stop reading, commit, final
    acks, close 1001) within ``timeout_s``, then uvicorn's own shutdown (close what is left,
    wait for HTTP requests in flight, then the lifespan's shutdown, which stops the tasks).
    A task of the server that died (``supervisor.failure``) stops the server the same way.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Callable[[], Awaitable[None]],
        timeout_s: float,
        on_ready: Callable[[str, int], None] | None = None,
        supervisor: Supervisor | None = None,
    ):
        super().__init__(config)
        self._drain = drain
        self._drain_timeout_s = timeout_s
        self._on_ready = on_ready
        self._supervisor = supervisor

    @property
    def failure(self) -> str | None:
        """Why the server stopped by itself (a task died), or None."""
        return self._supervisor.failure if self._supervisor is not None else None

    async def on_tick(self, counter: int) -> bool:
        if self.failure is not None:
            return True
        return await super().on_tick(counter)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self.servers[0].sockets[0].getsockname()[1])

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with _sigterm_absorbed():
            await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_ready(host, port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first: a client reconnecting during the drain is refused at once
        # (and retries elsewhere or later) instead of being accepted only to be sent away.
        for server in self.servers:
            server.close()
        try:
            await asyncio.wait_for(self._drain(), self._drain_timeout_s)
        except TimeoutError:
            logger.error(
                "drain took over %gs; closing the remaining sockets", self._drain_timeout_s
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
        lifespan="on",  # a failing startup is an error, not "lifespan unsupported"
        timeout_graceful_shutdown=max(1, math.ceil(config.server.shutdown_timeout_s)),
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
    """The uvicorn server for ``app``, wired to end its dashboard streams and drain its ingest
    first (uvicorn waits for open responses, and a stream never ends by itself)."""
    ingest: Ingest = app.state.ingest
    supervisor: Supervisor = app.state.supervisor

    async def drain() -> None:
        supervisor.draining.set()
        await ingest.drain()

    return Server(
        server_config(app, config, **overrides),
        drain,
        config.server.shutdown_timeout_s,
        on_ready,
        supervisor,
    )
