"""Alert rules over samples: raised and resolved once, rates over the window, the webhook."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rtserver.config.durations import Duration
from rtserver.config.schema import DashboardConfig
from rtserver.dashboard.alerts import Alerts, Sample
from rtserver.dashboard.latency import Histogram
from rtserver.hooks import post_json
from tests.support.server import TIMEOUT_UNIT

WINDOW = 900.0


def sample(at: float, latency: Histogram | None = None, **values: int) -> Sample:
    fields: dict[str, Any] = {
        "failed_commits": 0,
        "smtp_attempts": 0,
        "smtp_failures": 0,
        "queue_depth": 0,
        "outbox_backlog": 0,
        **values,
    }
    return Sample(at=at, latency=(latency or Histogram()).copy(), **fields)


def names(changes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["alert"], c["state"]) for c in changes]


def test_each_rule_raises_and_resolves_once() -> None:
    """Over a threshold: raised once (not again while it stays over); back under: resolved."""
    alerts = Alerts(DashboardConfig(alert_queue_depth=10, alert_outbox_backlog=5))
    assert alerts.check(sample(0.0)) == []
    raised = alerts.check(sample(1.0, queue_depth=11, outbox_backlog=6))
    assert names(raised) == [("queue_depth", "raised"), ("outbox_backlog", "raised")]
    assert alerts.check(sample(2.0, queue_depth=50, outbox_backlog=6)) == []
    assert alerts.active["queue_depth"].value == 50 and alerts.active["queue_depth"].since == 1.0
    assert names(alerts.check(sample(3.0, outbox_backlog=6))) == [("queue_depth", "resolved")]
    view = alerts.view()
    assert [a["alert"] for a in view["active"]] == ["outbox_backlog"]
    assert names(view["history"]) == [
        ("queue_depth", "resolved"),
        ("outbox_backlog", "raised"),
        ("queue_depth", "raised"),
    ]


def test_rates_are_over_the_window() -> None:
    """Failed commits count within the window; older samples leave it."""
    alerts = Alerts(DashboardConfig(alert_trigger_failures=2, alert_window=Duration("15m")))
    alerts.check(sample(0.0))
    assert alerts.check(sample(60.0, failed_commits=1)) == []
    assert names(alerts.check(sample(120.0, failed_commits=2))) == [("trigger_failures", "raised")]
    assert alerts.check(sample(50.0 + WINDOW, failed_commits=2)) == []  # 0 is the baseline
    changes = alerts.check(sample(100.0 + WINDOW, failed_commits=2))  # the first left it
    assert names(changes) == [("trigger_failures", "resolved")]
    assert [s.at for s in alerts.samples] == [60.0, 120.0, 50.0 + WINDOW, 100.0 + WINDOW]


def test_smtp_failure_rate_needs_enough_attempts() -> None:
    """A failure rate counts once there were ``alert_smtp_min_attempts`` attempts."""
    config = DashboardConfig(alert_smtp_failure_rate=0.5, alert_smtp_min_attempts=10)
    alerts = Alerts(config)
    alerts.check(sample(0.0))
    assert alerts.check(sample(1.0, smtp_attempts=4, smtp_failures=4)) == []
    changes = alerts.check(sample(2.0, smtp_attempts=10, smtp_failures=6))
    assert names(changes) == [("smtp_failure_rate", "raised")]
    assert changes[0]["value"] == 0.6 and "60% of 10" in changes[0]["message"]


def test_latency_rule_uses_the_p99_of_the_window() -> None:
    """The p99 of event -> decision observed within the window, against the threshold."""
    latency = Histogram()
    alerts = Alerts(DashboardConfig(alert_latency_ms=100.0))
    alerts.check(sample(0.0, latency))
    latency.observe_all([0.001] * 50)
    assert alerts.check(sample(1.0, latency)) == []
    latency.observe_all([2.0] * 50)
    (change,) = alerts.check(sample(2.0, latency))
    assert change["alert"] == "ingest_latency" and change["value"] == 2500.0


async def test_notify_posts_each_change_and_survives_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each change is POSTed; a failing webhook is logged and counted, the next one tried."""
    posted: list[tuple[str, dict[str, Any]]] = []

    async def post(url: str, payload: dict[str, Any]) -> None:
        if payload["state"] == "resolved":
            raise OSError("connection refused")
        posted.append((url, payload))

    alerts = Alerts(DashboardConfig(alert_webhook="http://hooks.test/x", alert_queue_depth=1), post)
    await alerts.notify(alerts.check(sample(0.0, queue_depth=2)))
    await alerts.notify(alerts.check(sample(1.0)))
    assert [(u, p["alert"], p["state"]) for u, p in posted] == [
        ("http://hooks.test/x", "queue_depth", "raised")
    ]
    assert alerts.posted == 1 and alerts.post_failures == 1
    assert "alert webhook failed" in caplog.text


async def test_notify_without_a_webhook_posts_nothing() -> None:
    """No ``alert_webhook``: the alerts are only shown."""

    async def post(url: str, payload: dict[str, Any]) -> None:
        raise AssertionError("no webhook configured")  # pragma: no cover

    alerts = Alerts(DashboardConfig(alert_queue_depth=1), post)
    await alerts.notify(alerts.check(sample(0.0, queue_depth=2)))
    assert alerts.posted == 0


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, asyncio.Queue[dict[str, Any]]]]:
    """A real HTTP endpoint on a port-0 socket that queues what is POSTed to it."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: Request) -> JSONResponse:
        await received.put(await request.json())
        return JSONResponse({"ok": True})

    sock = socket.create_server(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook", received
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 4 * TIMEOUT_UNIT)
        sock.close()


async def test_webhook_gets_the_json_over_http() -> None:
    """The guarded poster the server uses sends the change as JSON to a real endpoint (on
    loopback here, so with private addresses allowed)."""
    post = functools.partial(post_json, allow_private=True, timeout_s=TIMEOUT_UNIT)
    async with webhook_receiver() as (url, received):
        alerts = Alerts(DashboardConfig(alert_webhook=url, alert_outbox_backlog=3), post)
        await alerts.notify(alerts.check(sample(5.0, outbox_backlog=4)))
        payload = await asyncio.wait_for(received.get(), TIMEOUT_UNIT)
    assert payload["alert"] == "outbox_backlog" and payload["state"] == "raised"
    assert payload["value"] == 4 and payload["threshold"] == 3 and payload["at"] == 5.0
    assert alerts.posted == 1
