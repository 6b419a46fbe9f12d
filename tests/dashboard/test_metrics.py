"""``GET /metrics`` (Prometheus exposition, parsed back with prometheus_client's parser), with
its own registry per app, and the readiness probe ``GET /readyz``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from rtserver.app import create_app
from rtserver.dashboard.board import OUTBOX_STATES
from rtserver.errors import StoreError
from tests.support.dashboard import (
    dashboard_config,
)
from tests.support.events import event, shopper, tracked
from tests.support.server import ORIGIN, LiveServer, run_server, send_batch, sent


async def scrape(live: LiveServer) -> dict[str, Any]:
    """Metric name → family, from a real scrape."""
    async with live.http() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name]
    (match,) = [s for s in family.samples if s.labels == labels and s.name == family.name + "_total"
                or (s.labels == labels and s.name == family.name)]  # fmt: skip
    return float(match.value)


async def test_metrics_parse_and_count(tmp_path: Path) -> None:
    """Counters from the pipeline and sender, gauges, the outbox by state and the latency
    histogram, in a valid exposition."""
    async with run_server(dashboard_config(tmp_path)) as live:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "ann@example.com")])
            await send_batch(ws, [tracked("u1", "Signed Up")])
            await send_batch(ws, [event()])
            families = await scrape(live)
            assert value(families, "rtserver_websockets") == 1
        await sent(live)
        families = await scrape(live)
    assert value(families, "rtserver_events_stored") == 3
    assert value(families, "rtserver_commits") >= 3
    assert value(families, "rtserver_commits_failed") == 0
    assert value(families, "rtserver_mail_outcomes", outcome="sent") == 1
    assert value(families, "rtserver_webhook_outcomes", outcome="delivered") == 0
    assert value(families, "rtserver_outbox_mails", state="sent") == 1
    states = {s.labels["state"] for s in families["rtserver_outbox_mails"].samples}
    assert states == set(OUTBOX_STATES)
    assert value(families, "rtserver_ingest_queue_depth") == 0
    assert value(families, "rtserver_dashboard_viewers") == 0
    assert value(families, "rtserver_timers_armed") == 0
    histogram = families["rtserver_event_decision_seconds"]
    assert histogram.type == "histogram"
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 3
    assert families["rtserver_build_info"].samples[0].labels["version"]


async def test_metrics_show_raised_alerts_and_survive_a_store_failure(tmp_path: Path) -> None:
    """A raised alert is a labelled gauge; when the store fails the outbox family is left
    out, the rest still served."""
    async with run_server(dashboard_config(tmp_path)) as live:
        board = live.runtime.board
        await board.check_alerts()
        live.runtime.pipeline.stats.failed_commits += 1
        await board.check_alerts()
        families = await scrape(live)
        assert value(families, "rtserver_alerts_active", alert="trigger_failures") == 1

        async def broken() -> dict[str, int]:
            raise StoreError("store failed: disk I/O error")

        live.runtime.store.mail.counts = broken  # type: ignore[method-assign]
        families = await scrape(live)
    assert "rtserver_outbox_mails" not in families and "rtserver_events_stored" in families


async def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    """Two servers in one process keep separate counts; the global registry is untouched."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with run_server(dashboard_config(tmp_path / "a")) as one:
        async with run_server(dashboard_config(tmp_path / "b")) as two:
            async with one.ws() as ws:
                await send_batch(ws, [event()])
            assert value(await scrape(one), "rtserver_events_stored") == 1
            assert value(await scrape(two), "rtserver_events_stored") == 0
    assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("rtserver_")]


async def test_readyz_once_started_and_while_the_store_answers(tmp_path: Path) -> None:
    """200 when serving; 503 when the store fails and while draining."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        store = live.runtime.store

        async def broken() -> None:
            raise StoreError("store failed: disk I/O error")

        original, store.ping = store.ping, broken  # type: ignore[method-assign]
        failing = await client.get("/readyz")
        assert failing.status_code == 503 and failing.json()["status"] == "store unavailable"
        store.ping = original  # type: ignore[method-assign]
        await live.ingest.drain()
        draining = await client.get("/readyz")
        assert draining.status_code == 503 and draining.json()["status"] == "draining"


async def test_readyz_before_the_lifespan(tmp_path: Path) -> None:
    """An app whose lifespan has not run is not ready."""
    (tmp_path / "a").mkdir()
    app = create_app(dashboard_config(tmp_path / "a"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "starting"
