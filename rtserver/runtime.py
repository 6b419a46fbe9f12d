"""The one wiring point: the running server's parts, built in order, started and stopped in order.

:func:`start` opens the store, settles the keys, restores the timer wheel and builds the
pipeline, the mail and webhook senders, the dashboard's board and then its hub, each handed only
what it uses; then it starts the long-running tasks by name (:class:`Supervisor`) and yields the
:class:`Runtime`. On exit it stops them in an order that loses nothing: the timer driver first
(no new decisions), then the pipeline, once every queued batch is committed, then the senders
(they give back what they had not tried), the rest, and the hub last. A task that dies logs why
and stops the server, which then exits non-zero.

Everything a workflow refers to is checked here too (:func:`load_rules`), at start and by
``check-config``, never first when a step runs: each template is compiled and rendered against
sample data, and each webhook step's destination is held against ``hooks.allow`` and the address
rules of :mod:`rtserver.hooks.destinations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rtserver.catalog import Feeds, Triggers
from rtserver.clock import Clock, Monotonic
from rtserver.config import Config, Keys, MailConfig
from rtserver.dashboard import (
    Alerts,
    Auth,
    Board,
    Flow,
    FlowStep,
    Histogram,
    Hub,
    Readings,
    resolve_auth,
)
from rtserver.engine import (
    Engine,
    Pipeline,
    Workflows,
    compile_workflows,
    policy_from,
    run_timer_driver,
    sent_templates,
    webhook_steps,
)
from rtserver.errors import ConfigError, StoreError
from rtserver.hooks import (
    Courier,
    Resolve,
    check_steps,
    check_url,
    new_secret,
    post_json,
    resolve_host,
)
from rtserver.mail import Mailer, Sender, Tokens, mail_transport
from rtserver.model import Submit
from rtserver.sources import Cycle, Poller, Pollers, PollSource, compile_sources
from rtserver.store import Changes, Prepared, Store, purge_forever, purge_old_events

__all__ = [
    "SYSTEM_TEMPLATES",
    "Runtime",
    "Supervisor",
    "check_public_url",
    "load_rules",
    "load_sources",
    "make_mailer",
    "poll_once",
    "resolve_keys",
    "start",
]

logger = logging.getLogger(__name__)

ALERT_WEBHOOK_TIMEOUT_S = 5.0
"""The longest one POST of an alert to ``dashboard.alert_webhook`` may take."""

SUMMARY_EVERY_S = 60.0
"""How often the WebSocket summary is logged (when anything happened)."""
PROBE_EVERY_S = 5.0
"""While commits fail, how often a probe write checks whether the store takes writes again."""

STOP_ORDER = (
    "timer-driver",
    "pollers",
    "catalog-feeds",
    "catalog-triggers",
    "pipeline",
    "sender",
    "courier",
    "store-probe",
    "ingest-summary",
    "retention",
    "alerts",
    "dashboard-mail",
    "dashboard-hooks",
    "dashboard-close",
    "dashboard-hub",
)
"""The order the long-running tasks stop in: no new decisions (timers), no new events from the
polling sources or the catalog, then the pipeline (the lifespan has drained it), the senders
(they give back what they had not tried), the rest, and the dashboard last."""


SYSTEM_TEMPLATES = ("confirm", "test")
"""Templates rtserver sends by itself: the double opt-in confirmation and the test mail."""


def _flows(rules: Workflows) -> list[Flow]:
    """Each compiled workflow as the dashboard's Flows tab draws it (the dashboard may not
    import the engine)."""

    def source(condition: Any) -> str | None:
        return None if condition is None else str(condition.source)

    return [
        Flow(
            name=workflow.name,
            trigger=workflow.trigger,
            steps=tuple(
                FlowStep(
                    kind=step.kind,
                    arms=tuple((v.name, v.weight, v.value) for v in step.variants),
                    when=source(step.when),
                    exit_if=source(step.exit_if),
                    where=source(step.where),
                    timeout=step.timeout,
                    send_time=step.send_time,
                    selection=step.selection,
                )
                for step in workflow.steps
            ),
            where=source(workflow.where),
            run_key=workflow.run_key,
            exit_on=tuple(sorted(workflow.exit_on)),
            holdout=workflow.holdout,
            paused=workflow.paused,
            transactional=workflow.transactional,
        )
        for workflow in rules.items
    ]


def _make_engine(config: Config, rules: Workflows, store: Store) -> Engine:
    """The engine for ``config``: its caps, memory budget and attribution windows."""
    return Engine(
        rules,
        store,
        confirmations_per_ip=config.mail.confirmations_per_ip,
        memory_mb=config.engine.memory_mb,
        click_window_s=config.dashboard.click_window,
        open_window_s=config.dashboard.open_window,
    )


def _make_pipeline(config: Config, store: Store, engine: Engine, clock: Clock) -> Pipeline:
    """The pipeline for ``config``: its queue and group limits, deciding with ``engine``."""
    return Pipeline(
        store,
        max_queue=config.ingest.max_queue,
        max_group_events=config.store.max_group_events,
        queue_timeout_s=config.ingest.queue_timeout_s,
        engine=engine,
        clock=clock,
    )


def make_mailer(config: Config, tokens: Tokens) -> Mailer:
    """The mailer for ``config``: the shipped templates, overridden by ``mail.templates``."""
    folder = Path(config.mail.templates) if config.mail.templates else None
    return Mailer(config.mail, config.server.public_url, tokens, template_dir=folder)


@functools.lru_cache(maxsize=32)
def _template_check(mail: MailConfig, public_url: str) -> dict[str, tuple[str, ...]]:
    """Each template there is, with the problems of rendering it against sample data
    (cached: tests and the simulator load the same rules many times)."""
    folder = Path(mail.templates) if mail.templates else None
    mailer = Mailer(mail, public_url, Tokens(secrets.token_urlsafe(32)), template_dir=folder)
    return {name: tuple(mailer.check([name])) for name in mailer.names()}


def load_sources(
    config: Config, resolve: Resolve = resolve_host, env: Mapping[str, str] | None = None
) -> tuple[tuple[PollSource, ...], list[str]]:
    """Compile the config's polling sources (``[[poll]]``); them and the warnings.

    Each expression is compiled, each secret read from its environment variable (``env``,
    else the process's), each URL held against the address rules.

    Raises:
        ConfigError: ``poll[i].field`` and the problem.
    """
    sources, warnings = compile_sources(config.poll, os.environ if env is None else env)
    for source in sources:
        where = f"{source.where}.url {source.url!r}"
        warnings += check_url(where, source.url, source.allow_private, resolve)
    return sources, warnings


def load_rules(
    config: Config, resolve: Resolve = resolve_host, env: Mapping[str, str] | None = None
) -> tuple[Workflows, list[str]]:
    """Compile the config's workflows under its mail policy; returns them and the warnings.

    Every template is compiled and rendered against sample data here, at start and by
    ``check-config``, never first at send time.

    Raises:
        ConfigError: the workflow, the step and the problem; a template's problem; a
            webhook step outside ``hooks.allow`` or on a refused address (``resolve``); a
            polling source's problem (:func:`load_sources`, with ``env``).
    """
    checked = _template_check(config.mail, config.server.public_url)
    rules, warnings = compile_workflows(
        config.workflow,
        templates=frozenset(checked),
        policy=policy_from(config.mail, config.send_time),
    )
    used = sent_templates(rules) | set(SYSTEM_TEMPLATES)
    bad = [p for name in sorted(used) for p in checked.get(name, (f"email/{name}: missing",))]
    if bad:
        raise ConfigError("mail templates: " + "; ".join(bad))
    for name in sorted(set(checked) - used):
        warnings.extend(f"{p} (template not sent by any workflow)" for p in checked[name])
    hooks = config.hooks
    warnings += check_steps(webhook_steps(rules), hooks.allow, hooks.allow_private, resolve)
    if config.dashboard.alert_webhook:
        where = f"dashboard.alert_webhook {config.dashboard.alert_webhook!r}"
        warnings += check_url(where, config.dashboard.alert_webhook, hooks.allow_private, resolve)
    for i, feed in enumerate(config.catalog.feed):
        where = f"catalog.feed[{i}] {feed.url!r}"
        warnings += check_url(where, feed.url, feed.allow_private, resolve)
    warnings += load_sources(config, resolve, env)[1]
    return rules, warnings


def make_pollers(
    config: Config, sources: tuple[PollSource, ...], store: Store, submit: Submit, clock: Clock
) -> Pollers:
    """A poller per source, submitting to ``submit``, checked against ``ingest``'s limits."""
    return Pollers(
        [Poller(source, store, submit, config.ingest, clock) for source in sources], clock
    )


async def poll_once(config: Config, name: str, clock: Clock) -> Cycle:
    """One cycle of the polling source ``name`` against the configured store, now (whatever
    its schedule), its events decided by the workflows as the server would.

    Raises:
        ConfigError: no such source, or the config does not compile.
        StoreError: the store cannot be opened.
    """
    rules, _ = load_rules(config)
    sources = {s.name: s for s in load_sources(config)[0]}
    if name not in sources:
        known = ", ".join(sorted(sources)) or "none configured"
        raise ConfigError(f"poll: no source named {name!r} ({known})")
    store = await Store.open(config.store.path)
    try:
        engine = _make_engine(config, rules, store)
        pipeline = _make_pipeline(config, store, engine, clock)
        task = asyncio.create_task(pipeline.run(), name="pipeline")
        try:
            pollers = make_pollers(config, (sources[name],), store, pipeline.submit, clock)
            return await pollers.pollers[0].cycle(force=True)
        finally:
            task.cancel()
            await asyncio.wait([task])
    finally:
        await store.close()


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
            webhook or await store.secret("webhook_secret", _new_webhook_secret, now),
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


class Supervisor:
    """The long-running tasks: started by name, stopped in :data:`STOP_ORDER`, and watched.

    A task that ends by itself while the server runs is a fault: it is logged with its cause,
    :attr:`failure` says which, and the server (which polls it) stops and exits non-zero,
    instead of serving on with a part missing.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.failure: str | None = None
        """Why the server must stop: the task that died, and how."""
        self.draining = asyncio.Event()
        """Set when the server starts draining: the dashboard's streams end then."""
        self.stopping = asyncio.Event()
        """Set when the tasks are told to stop (their loops end at their next check)."""

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as the task ``name``."""
        if not self.tasks:  # a new lifespan of the same app
            self.failure = None
            self.draining.clear()
            self.stopping.clear()
        task = asyncio.create_task(work, name=name)
        self.tasks[name] = task
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self.stopping.is_set() or self.failure is not None:
            return
        if task.cancelled():
            self.failure = f"task {task.get_name()} was cancelled"
            logger.error("%s; stopping the server", self.failure)
            return
        exc = task.exception()
        self.failure = f"task {task.get_name()} " + (f"died: {exc!r}" if exc else "ended")
        logger.error("%s; stopping the server", self.failure, exc_info=exc)

    async def stop(self, order: tuple[str, ...] = STOP_ORDER) -> None:
        """Tell every task to stop, then cancel them one by one in ``order`` (then any other),
        waiting for each before the next."""
        self.stopping.set()
        names = [n for n in order if n in self.tasks]
        names += [n for n in self.tasks if n not in names]
        for name in names:
            task = self.tasks.pop(name)
            if task.done():  # it ended before: already reported
                continue
            task.cancel(msg="rtserver shutting down")
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                logger.error("task %s failed while stopping", name, exc_info=task.exception())


@dataclass(frozen=True, slots=True)
class Runtime:
    """The running server's parts, as :func:`start` built them.

    ``create_app`` hands each route module its own slice of these (``request.state``); no part
    receives this object. Tests read the parts here.
    """

    config: Config
    store: Store
    keys: Keys
    clock: Clock
    engine: Engine
    pipeline: Pipeline
    tokens: Tokens
    mailer: Mailer
    triggers: Triggers
    feeds: Feeds
    """The configured product feeds, read on their schedule."""
    pollers: Pollers
    """The polling sources, each read on its schedule."""
    """Back in Stock and Price Dropped events for the people a catalog change concerns."""
    """Renders mail; its ``hosts`` say where links from data may point."""
    sender: Sender
    courier: Courier
    latency: Histogram
    """Event received → its decision committed, for every new event."""
    board: Board
    hub: Hub
    auth: Auth
    """The dashboard's login: password hash and session key."""
    supervisor: Supervisor


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


async def _probe_while_failing(
    pipeline: Pipeline, store: Store, clock: Clock, stop: asyncio.Event
) -> None:
    """While commits fail, write a probe every ``PROBE_EVERY_S``: readiness comes back as soon
    as the store takes writes again, even when no event arrives to prove it."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)
        if stop.is_set() or pipeline.healthy.is_set():
            continue
        try:
            await store.probe(clock())
        except StoreError as exc:
            logger.info("store still refuses writes: %s", exc)
            continue
        logger.info("store takes writes again")
        pipeline.healthy.set()


async def _summarize(summary: Callable[[], str | None], stop: asyncio.Event) -> None:
    """Log ``summary()`` every ``SUMMARY_EVERY_S`` when it has something to say."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SUMMARY_EVERY_S)
        line = summary()
        if line is not None:
            logger.info("%s", line)


async def _close_on(supervisor: Supervisor, hub: Hub) -> None:
    """End the dashboard's streams once the server drains (uvicorn waits for open responses),
    or when stopped."""
    try:
        await supervisor.draining.wait()
        hub.close()
        await supervisor.stopping.wait()
    finally:
        hub.close()


@contextlib.asynccontextmanager
async def start(
    config: Config,
    rules: Workflows,
    supervisor: Supervisor,
    *,
    websockets: Callable[[], int],
    summary: Callable[[], str | None] = lambda: None,
    disk_low: Callable[[], bool] = lambda: False,
    clock: Clock,
    monotonic: Monotonic,
) -> AsyncIterator[Runtime]:
    """Build the parts for ``config`` and ``rules``, run their tasks, and stop them in order."""
    store = await Store.open(config.store.path)
    stop = supervisor.stopping
    stack = contextlib.AsyncExitStack()
    try:
        keys = await resolve_keys(config, store, clock())
        engine = _make_engine(config, rules, store)
        restored = await engine.restore(clock())
        if restored:
            logger.info(
                "timer wheel: %d armed from the store (run timers due soon, sweeps)", restored
            )
        pipeline = _make_pipeline(config, store, engine, clock)
        tokens = Tokens(keys.link_secret, clock)
        relay = await stack.enter_async_context(mail_transport(config, store, clock))
        mailer = make_mailer(config, tokens)
        triggers = Triggers(store, pipeline.submit, config.catalog, clock)
        feeds = Feeds(
            store,
            config.catalog.feed,
            currency=config.mail.brand.currency,
            clock=clock,
            changed=triggers.wake,
        )
        sources, _ = load_sources(config)
        pollers = make_pollers(config, sources, store, pipeline.submit, clock)
        sender = Sender(store, mailer, relay, config.mail, clock)
        courier = Courier(store, config.hooks, keys.hooks_secret, clock)
        latency = Histogram()
        viewing = config.dashboard
        # The hub composes its updates with the board, so the board comes first (nothing is
        # patched in later); the board reads the hub's viewers through these two callables.
        readings = Readings(
            commits=lambda: asdict(pipeline.stats),
            queue_depth=pipeline.queue.qsize,
            websockets=websockets,
            timers_armed=lambda: len(engine.wheel),
            viewers=lambda: len(hub.subscribers),
            dropped_viewers=lambda: hub.dropped,
            mails=lambda: asdict(sender.stats),
            mail_sender=lambda: sender.waiting or "sending",
            webhooks=lambda: asdict(courier.stats),
            disk_low=disk_low,
            polls=pollers.status,
        )
        board = Board(
            store,
            readings,
            latency=latency,
            alerts=Alerts(
                viewing,
                functools.partial(
                    post_json,
                    allow_private=config.hooks.allow_private,
                    timeout_s=ALERT_WEBHOOK_TIMEOUT_S,
                ),
            ),
            dashboard=viewing,
            sink=config.mail.transport == "sink",
            clock=clock,
            monotonic=monotonic,
            bandits={
                key: (tuple(v.name for v in step.variants), step.goal)
                for key, step in rules.bandits.items()
            },
            flows=_flows(rules),
        )
        hub = Hub(
            board.compose,
            interval_s=1.0 / viewing.updates_per_s,
            max_queue=viewing.viewer_queue,
            history=viewing.replay,
            max_subscribers=viewing.max_viewers,
            monotonic=monotonic,
        )
        pipeline.listeners.append(lambda _, changes: sender.wake() if changes.outbox else None)
        pipeline.listeners.append(lambda _, changes: courier.wake() if changes.deliveries else None)
        pipeline.listeners.append(_record_latency(latency, clock))
        pipeline.listeners.append(hub.on_commit)
        auth = await resolve_auth(config, store, clock(), clock)
        # One purge before serving: a server that restarts often still enforces retention,
        # and the hourly task below never has to race the first requests.
        await purge_old_events(store, clock, config.store.retention_days)
        supervisor.start("pipeline", pipeline.run())
        supervisor.start(
            "timer-driver",
            run_timer_driver(
                engine.wheel, clock, engine.wake, pipeline.fire, stop=stop, refill=engine
            ),
        )
        supervisor.start(
            "retention", purge_forever(store, clock, config.store.retention_days, stop)
        )
        supervisor.start("store-probe", _probe_while_failing(pipeline, store, clock, stop))
        supervisor.start("ingest-summary", _summarize(summary, stop))
        supervisor.start("catalog-triggers", triggers.run())
        supervisor.start("catalog-feeds", feeds.run(stop))
        supervisor.start("pollers", pollers.run(stop))
        supervisor.start("sender", sender.run(stop))
        supervisor.start("courier", courier.run(stop))
        supervisor.start("dashboard-hub", hub.run(stop))
        supervisor.start("dashboard-close", _close_on(supervisor, hub))
        supervisor.start("dashboard-mail", _watch_progress(sender.progress, hub))
        supervisor.start("dashboard-hooks", _watch_progress(courier.progress, hub))
        supervisor.start("alerts", board.watch(stop))
        yield Runtime(
            config=config,
            store=store,
            keys=keys,
            clock=clock,
            engine=engine,
            pipeline=pipeline,
            tokens=tokens,
            mailer=mailer,
            triggers=triggers,
            feeds=feeds,
            pollers=pollers,
            sender=sender,
            courier=courier,
            latency=latency,
            board=board,
            hub=hub,
            auth=auth,
            supervisor=supervisor,
        )
    finally:
        await supervisor.stop()
        try:
            await stack.aclose()
        finally:
            await store.close()
