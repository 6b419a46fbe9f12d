"""The application factory, its lifespan, and the uvicorn server that drains before it stops.

``create_app(config)`` is the one place where every layer meets. The lifespan opens the store,
settles the keys, starts the pipeline and the retention task, and yields the
:class:`~rtserver.engine.pipeline.Runtime` to every request. :class:`Server` is uvicorn's
server with one change: on shutdown it first drains the ingest (final commit, acks, close 1001),
because uvicorn closes WebSockets itself (1012) before the lifespan's shutdown runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from rtserver.config.schema import Config
from rtserver.dashboard import metrics, routes as dashboard
from rtserver.dashboard.alerts import Alerts
from rtserver.dashboard.auth import RequireLogin, resolve_auth
from rtserver.dashboard.board import Board
from rtserver.dashboard.hub import Changed, Hub
from rtserver.dashboard.latency import Histogram
from rtserver.engine.engine import Engine
from rtserver.engine.pipeline import Clock, Keys, Pipeline, Runtime
from rtserver.engine.timers import run_timer_driver
from rtserver.errors import StoreError
from rtserver.hooks.sender import Courier
from rtserver.hooks.signatures import new_secret
from rtserver.ingest import snippet, webhooks
from rtserver.ingest.segment import receive
from rtserver.ingest.websocket import Ingest
from rtserver.mail import links
from rtserver.mail.sender import Sender
from rtserver.mail.tokens import Tokens
from rtserver.mail.transport import mail_transport
from rtserver.runtime import load_rules, make_mailer
from rtserver.store.changes import Changes, Prepared
from rtserver.store.database import Store
from rtserver.tools import demo

__all__ = [
    "Server",
    "build_server",
    "create_app",
    "purge_old_events",
    "resolve_keys",
    "server_config",
]

logger = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


def _new_webhook_secret() -> str:
    return new_secret(secrets.token_bytes(32))


async def resolve_keys(config: Config, store: Store, now: float) -> Keys:
    """The keys in force: configured ones, else generated once and kept in the store."""
    keys = config.keys
    write = keys.write.reveal() if keys.write else None
    identity = keys.identity_secret.reveal() if keys.identity_secret else None
    webhook = keys.webhook_secret.reveal() if keys.webhook_secret else None
    previous = keys.webhook_secret_previous
    return Keys(
        public=keys.public,
        write=write
        or await store.secret("write_key", lambda: "wk_" + secrets.token_urlsafe(32), now),
        identity_secret=identity
        or await store.secret("identity_secret", lambda: secrets.token_urlsafe(32), now),
        link_secret=await store.secret("link_secret", lambda: secrets.token_urlsafe(32), now),
        webhook_secrets=(
            webhook
            or await store.secret(
                "webhook_secret", lambda: new_secret(secrets.token_bytes(32)), now
            ),
            *([previous.reveal()] if previous else []),
        ),
        hooks_secret=keys.hooks_secret.reveal()
        if keys.hooks_secret
        else await store.secret("hooks_secret", _new_webhook_secret, now),
    )


def check_public_url(config: Config) -> str | None:
    """A warning when mail links would go out over plain http to a non-loopback host."""
    url = urllib.parse.urlsplit(config.server.public_url)
    if url.scheme == "https" or url.hostname in ("localhost", "127.0.0.1", "::1"):
        return None
    return (
        f"server.public_url = {config.server.public_url!r} is not https: mail links "
        "(clicks, one-click unsubscribe, RFC 8058) should use https outside loopback"
    )


async def purge_old_events(store: Store, clock: Clock, retention_days: int) -> int:
    """One retention round: delete raw events older than ``retention_days``, and webhook
    deliveries that ended before then; return how many events.

    Failures are logged, not raised: the next round tries again.
    """
    before = clock() - retention_days * 86400.0
    try:
        purged = await store.purge_events(before)
        ended = await store.deliveries.purge(before)
    except Exception:  # the task boundary: log and try again next round
        logger.exception("retention purge failed")
        return 0
    if purged or ended:
        logger.info(
            "retention: purged %d events and %d ended webhook deliveries older than %d days",
            purged, ended, retention_days,
        )  # fmt: skip
    return purged


async def _purge_forever(
    store: Store,
    clock: Clock,
    retention_days: int,
    stop: asyncio.Event,
    interval_s: float = RETENTION_INTERVAL_S,
) -> None:
    """Purge every ``interval_s`` until ``stop`` is set (the lifespan already purged once)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        await purge_old_events(store, clock, retention_days)


def _record_latency(latency: Histogram, clock: Clock) -> Callable[[Prepared, Changes], None]:
    """A pipeline listener: event received → its decision committed, for every new event."""

    def listener(prepared: Prepared, changes: Changes) -> None:
        if prepared.received_at:
            now = clock()
            latency.observe_all(now - at for at in prepared.received_at)

    return listener


async def _watch_progress(progress: asyncio.Condition, hub: Hub) -> None:
    """Tell the hub whenever the sender or the courier made progress (outcomes change the
    outbox or the deliveries)."""
    while True:
        async with progress:
            await progress.wait()
        hub.touch(mail=True)


async def _not_started(changed: Changed | None) -> dict[str, Any]:
    raise RuntimeError("the dashboard starts with the lifespan")


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
    """``GET /readyz``: 200 once the lifespan has started and the store answers, else 503."""
    runtime: Runtime | None = getattr(request.state, "runtime", None)
    ingest: Ingest = request.app.state.ingest
    if runtime is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    if ingest.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        await runtime.store.ping()
    except StoreError as exc:
        return JSONResponse({"status": "store unavailable", "error": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "version": __version__})


def create_app(
    config: Config, *, clock: Clock = time.time, monotonic: Callable[[], float] = time.monotonic
) -> Starlette:
    """Build the ASGI application for ``config``; ``clock`` is injected for tests and simulation.

    Raises:
        ConfigError: a workflow is invalid (checked here, before anything starts).
    """
    ingest = Ingest(config, monotonic)
    viewing = config.dashboard
    hub = Hub(
        _not_started,
        interval_s=1.0 / viewing.updates_per_s,
        max_queue=viewing.viewer_queue,
        history=viewing.replay,
        max_subscribers=viewing.max_viewers,
        monotonic=monotonic,
    )
    rules, warnings = load_rules(config)
    for warning in filter(None, (*warnings, check_public_url(config))):
        logger.warning("config: %s", warning)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = await Store.open(config.store.path)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        stack = contextlib.AsyncExitStack()
        try:
            keys = await resolve_keys(config, store, clock())
            engine = Engine(rules, store, confirmations_per_ip=config.mail.confirmations_per_ip)
            restored = await engine.restore(clock())
            if restored:
                logger.info("timer wheel: %d armed from the store (run timers, sweeps)", restored)
            pipeline = Pipeline(
                store,
                max_queue=config.ingest.max_queue,
                max_group_events=config.store.max_group_events,
                queue_timeout_s=config.ingest.queue_timeout_s,
                engine=engine,
                clock=clock,
            )
            tokens = Tokens(keys.link_secret, clock)
            relay = await stack.enter_async_context(mail_transport(config, store, clock))
            sender = Sender(store, make_mailer(config, tokens), relay, config.mail, clock)
            pipeline.listeners.append(lambda _, changes: sender.wake() if changes.outbox else None)
            courier = Courier(store, config.hooks, keys.hooks_secret, clock)
            pipeline.listeners.append(
                lambda _, changes: courier.wake() if changes.deliveries else None
            )
            latency = Histogram()
            pipeline.listeners.append(_record_latency(latency, clock))
            pipeline.listeners.append(hub.on_commit)
            runtime = Runtime(
                config=config,
                store=store,
                pipeline=pipeline,
                keys=keys,
                clock=clock,
                engine=engine,
                tokens=tokens,
                sender=sender,
                hub=hub,
                courier=courier,
            )
            alerts = Alerts(config.dashboard)
            board = Board(
                runtime,
                websockets=lambda: len(ingest.sessions),
                latency=latency,
                alerts=alerts,
                monotonic=monotonic,
            )
            hub.compose = board.compose
            auth = await resolve_auth(config, store, clock(), clock)
            collector = metrics.Metrics(
                runtime, websockets=board.websockets, latency=latency, alerts=alerts
            )
            # One purge before serving: a server that restarts often still enforces retention,
            # and the hourly task below never has to race the first requests.
            await purge_old_events(store, clock, config.store.retention_days)
            tasks.append(asyncio.create_task(pipeline.run(), name="pipeline"))
            tasks.append(
                asyncio.create_task(
                    run_timer_driver(engine.wheel, clock, engine.wake, pipeline.fire, stop=stop),
                    name="timer-driver",
                )
            )
            tasks.append(
                asyncio.create_task(
                    _purge_forever(store, clock, config.store.retention_days, stop),
                    name="retention",
                )
            )
            tasks.append(asyncio.create_task(sender.run(stop), name="sender"))
            tasks.append(asyncio.create_task(courier.run(stop), name="courier"))
            tasks.append(asyncio.create_task(hub.run(stop), name="dashboard-hub"))
            tasks.append(
                asyncio.create_task(_watch_progress(sender.progress, hub), name="dashboard-mail")
            )
            tasks.append(
                asyncio.create_task(_watch_progress(courier.progress, hub), name="dashboard-hooks")
            )
            tasks.append(asyncio.create_task(board.watch(stop), name="alerts"))
            yield {"runtime": runtime, "board": board, "auth": auth, "metrics": collector}
            try:
                async with asyncio.timeout(config.server.shutdown_timeout_s):
                    await ingest.drain()  # a no-op when the Server already drained
                    await pipeline.drain()
            except TimeoutError:
                logger.error(
                    "shutdown: %d batches still uncommitted after %.1fs; their clients will resend",
                    pipeline.queue.qsize(),
                    config.server.shutdown_timeout_s,
                )
        finally:
            hub.close()
            stop.set()
            for task in tasks:
                task.cancel(msg="rtserver shutting down")
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await stack.aclose()
            finally:
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
        Route("/readyz", readyz),
        Route("/metrics", metrics.endpoint),
        Route("/rt.js", snippet.script),
        Route("/demo", demo.shop),
        *links.routes,
        *dashboard.routes,
        Mount(
            "/v1",
            routes=[
                WebSocketRoute("/ws", ingest.endpoint),
                Route("/batch", receive, methods=["POST"]),
                Route("/webhooks/{source}", webhooks.receive, methods=["POST"]),
                Route("/{kind}", receive, methods=["POST"]),
            ],
            middleware=[cors],
        ),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(RequireLogin)])
    # No "add or strip the slash" redirects: a link path never answers with a 3xx that its
    # signed token did not ask for (RELIABILITY.md G15).
    app.router.redirect_slashes = False
    app.state.ingest = ingest
    app.state.hub = hub
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
    wait for HTTP requests in flight, then the lifespan's shutdown).
    """

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
    hub: Hub = app.state.hub

    async def drain() -> None:
        hub.close()
        await ingest.drain()

    return Server(
        server_config(app, config, **overrides),
        drain,
        config.server.shutdown_timeout_s,
        on_ready,
    )
