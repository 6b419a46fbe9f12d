"""``GET /metrics``: the server's counters in the Prometheus text format.

Each app has its own ``CollectorRegistry`` (never prometheus-client's global one, so two apps in
one process, as in the tests, do not mix). :class:`Metrics` is a custom collector: the counters
already live on the running parts (pipeline, sender, ingest, hub, timer wheel), so a scrape
reads them rather than keeping a second copy; the outbox counts are read from the store (one
``GROUP BY``) right before the exposition is generated. The event → decision latency is the
histogram every commit feeds (:mod:`rtserver.dashboard.latency`), exposed with its buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from rtserver import __version__
from rtserver.dashboard.alerts import Alerts
from rtserver.dashboard.board import OUTBOX_STATES
from rtserver.dashboard.latency import Histogram
from rtserver.dashboard.readings import Readings
from rtserver.errors import StoreError
from rtserver.store import Store

__all__ = ["Metrics", "endpoint"]

PREFIX = "rtserver_"


class Metrics(Collector):
    """The collector of one app, registered in its own registry."""

    def __init__(
        self, store: Store, readings: Readings, *, latency: Histogram, alerts: Alerts
    ) -> None:
        self.store = store
        self.readings = readings
        self.latency = latency
        self.alerts = alerts
        self.outbox: dict[str, int] | None = None
        """The outbox counts read for the current scrape (None: the store did not answer)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def render(self) -> bytes:
        """Read what needs the store, then generate the exposition."""
        try:
            self.outbox = await self.store.mail.counts()
        except StoreError:
            self.outbox = None
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        readings = self.readings
        info = InfoMetricFamily(PREFIX + "build", "rtserver version")
        info.add_metric([], {"version": __version__})
        yield info
        stats = readings.commits()
        for name, value, help_text in (
            ("events_stored", stats["stored"], "Events stored (each messageId once)."),
            ("events_duplicate", stats["duplicates"], "Events received again and dropped."),
            ("commits", stats["commits"], "Group commits."),
            ("commits_failed", stats["failed_commits"], "Group commits that failed (nacked)."),
        ):
            yield CounterMetricFamily(PREFIX + name, help_text, value=value)
        if mail_outcomes := readings.mails():
            mails = CounterMetricFamily(
                PREFIX + "mail_outcomes", "Mail attempts and drops by outcome.", labels=["outcome"]
            )
            for outcome, count in mail_outcomes.items():
                mails.add_metric([outcome], count)
            yield mails
        if hook_outcomes := readings.webhooks():
            hooks = CounterMetricFamily(
                PREFIX + "webhook_outcomes",
                "Outbound webhook attempts by outcome (disabled: endpoints turned off by a 410).",
                labels=["outcome"],
            )
            for outcome, count in hook_outcomes.items():
                hooks.add_metric([outcome], count)
            yield hooks
        gauges = [
            ("websockets", readings.websockets(), "Open browser WebSockets."),
            ("ingest_queue_depth", readings.queue_depth(), "Batches waiting to commit."),
            (
                "timers_armed",
                readings.timers_armed(),
                "Timers armed in the wheel (run timers and scheduled sweeps).",
            ),
            ("dashboard_viewers", readings.viewers(), "Live viewers."),
        ]
        yield CounterMetricFamily(
            PREFIX + "dashboard_viewers_dropped",
            "Dashboard viewers dropped for falling behind.",
            value=readings.dropped_viewers(),
        )
        for name, value, help_text in gauges:
            yield GaugeMetricFamily(PREFIX + name, help_text, value=value)
        if self.outbox is not None:
            outbox = GaugeMetricFamily(PREFIX + "outbox_mails", "Mails by state.", labels=["state"])
            for state in OUTBOX_STATES:
                outbox.add_metric([state], self.outbox.get(state, 0))
            yield outbox
        yield from _polls(readings)
        alerts = GaugeMetricFamily(PREFIX + "alerts_active", "Raised alerts.", labels=["alert"])
        for name in self.alerts.active:
            alerts.add_metric([name], 1)
        yield alerts
        histogram = HistogramMetricFamily(
            PREFIX + "event_decision_seconds",
            "Event received -> its decision committed (the ack follows at once).",
            buckets=[
                ("+Inf" if math.isinf(bound) else repr(bound), count)
                for bound, count in self.latency.cumulative()
            ],
            sum_value=self.latency.sum,
        )
        yield histogram


def _polls(readings: Readings) -> Iterator[Metric]:
    """Each polling source's schedule, lag and counts, labelled ``source``."""
    rows = readings.polls()
    if not rows:
        return
    families: list[tuple[Metric, str]] = []
    for name, key, help_text in (
        ("poll_last_run_timestamp_seconds", "last_run", "When the source was last asked."),
        ("poll_next_run_timestamp_seconds", "next_run", "When the source may be asked next."),
        ("poll_lag_seconds", "lag_s", "Seconds since the source was last read to its end."),
        ("poll_failures", "failures", "Failed requests or pages in a row (backing off)."),
    ):
        families.append((GaugeMetricFamily(PREFIX + name, help_text, labels=["source"]), key))
    for name, key, help_text in (
        ("poll_requests", "requests", "Requests sent to the source."),
        ("poll_errors", "errors", "Requests or pages that failed."),
        ("poll_events", "events", "New events the source's items were stored as."),
    ):
        families.append((CounterMetricFamily(PREFIX + name, help_text, labels=["source"]), key))
    for family, key in families:
        for row in rows:
            if row.get(key) is not None:
                family.add_metric([row["name"]], row[key])  # type: ignore[attr-defined]
        yield family


async def endpoint(request: Request) -> Response:
    """``GET /metrics``: the Prometheus exposition."""
    metrics: Metrics = request.state.metrics
    return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)
