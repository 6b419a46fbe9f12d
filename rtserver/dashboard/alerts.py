"""Alerts: thresholds over what the server measures, raised and resolved, shown on the
dashboard and optionally POSTed to a webhook.

Every few seconds the dashboard takes a :class:`Sample` of the counters (whether or not anyone
watches). :meth:`Alerts.check` compares the newest sample with the oldest one still inside
``dashboard.alert_window``, so rates are over that window, and returns what changed: alerts
raised and alerts resolved. Each change is posted to ``dashboard.alert_webhook`` as JSON
(``{"alert", "state", "message", "value", "threshold", "at"}``) by :meth:`Alerts.notify`; a
webhook that fails is logged, and the next change is tried again.

Rules (``dashboard.alert_*``):

- ``trigger_failures``: group commits that failed in the window (their events were nacked, so
  neither stored nor decided: triggers did not fire);
- ``smtp_failure_rate``: failed, deferred or ambiguous SMTP attempts over all attempts in the
  window, once there were ``alert_smtp_min_attempts``;
- ``ingest_latency``: p99 of event → decision committed in the window (bucket bound);
- ``queue_depth``: batches waiting for the writer, now;
- ``outbox_backlog``: mails queued or waiting to retry, now;
- ``data_inconsistency``: any broken invariant between runs and timers (an active run that
  waits with no timer to wake it, a timer of no active run), checked every minute.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rtserver.config import DashboardConfig
from rtserver.dashboard.latency import Histogram

__all__ = ["Alert", "Alerts", "Post", "Sample"]

logger = logging.getLogger(__name__)

HISTORY = 50
"""Raised and resolved alerts kept for the dashboard."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters at one moment (``at``: the server's clock)."""

    at: float
    failed_commits: int
    smtp_attempts: int
    smtp_failures: int
    latency: Histogram
    queue_depth: int
    outbox_backlog: int
    inconsistencies: dict[str, int] = field(default_factory=dict)
    """Broken invariant → how many rows break it (``Store.inconsistencies``)."""
    disk_low: bool = False
    """Free disk space under ``store.min_free_mb``: browser ingest is refused."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert that is raised (or was, in the history)."""

    name: str
    message: str
    value: float
    threshold: float
    since: float

    def as_json(self, state: str, at: float) -> dict[str, Any]:
        return {
            "alert": self.name,
            "state": state,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "at": at,
        }


Post = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""POSTs one change as JSON to the webhook: the wiring hands in the guarded poster of
:mod:`rtserver.hooks` (checked addresses, no redirects), never a bare HTTP client."""


class Alerts:
    """The alert rules of ``config``, the samples of the window, and what is raised."""

    def __init__(self, config: DashboardConfig, post: Post | None = None) -> None:
        self.config = config
        self.window_s = config.alert_window
        self.post = post
        self.samples: deque[Sample] = deque()
        self.active: dict[str, Alert] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.posted = 0
        self.post_failures = 0

    def _measure(self, old: Sample, new: Sample) -> dict[str, tuple[float, float, str]]:
        """Rule name → (value, threshold, message) for every rule over its threshold."""
        config = self.config
        over: dict[str, tuple[float, float, str]] = {}
        failed = new.failed_commits - old.failed_commits
        if failed >= config.alert_trigger_failures:
            over["trigger_failures"] = (
                failed,
                config.alert_trigger_failures,
                f"{failed} group commits failed: their events were not decided",
            )
        attempts = new.smtp_attempts - old.smtp_attempts
        if attempts >= config.alert_smtp_min_attempts:
            rate = (new.smtp_failures - old.smtp_failures) / attempts
            if rate >= config.alert_smtp_failure_rate:
                over["smtp_failure_rate"] = (
                    round(rate, 3),
                    config.alert_smtp_failure_rate,
                    f"{rate:.0%} of {attempts} SMTP attempts failed or were deferred",
                )
        p99 = new.latency.minus(old.latency).percentile(99)
        if p99 is not None and p99 * 1000 > config.alert_latency_ms:
            over["ingest_latency"] = (
                p99 * 1000,
                config.alert_latency_ms,
                f"p99 event -> decision over {p99 * 1000:g} ms",
            )
        if new.queue_depth > config.alert_queue_depth:
            over["queue_depth"] = (
                new.queue_depth,
                config.alert_queue_depth,
                f"{new.queue_depth} batches wait for the writer",
            )
        if new.outbox_backlog > config.alert_outbox_backlog:
            over["outbox_backlog"] = (
                new.outbox_backlog,
                config.alert_outbox_backlog,
                f"{new.outbox_backlog} mails wait to be sent",
            )
        if new.disk_low:
            over["disk_low"] = (
                1,
                0,
                "free disk space is under store.min_free_mb: browser events are refused",
            )
        broken = {name: n for name, n in new.inconsistencies.items() if n}
        if broken:
            over["data_inconsistency"] = (
                sum(broken.values()),
                0,
                "; ".join(f"{n} {name.replace('_', ' ')}" for name, n in broken.items()),
            )
        return over

    def check(self, sample: Sample) -> list[dict[str, Any]]:
        """Add ``sample``; raise and resolve alerts; return the changes (webhook payloads)."""
        self.samples.append(sample)
        while len(self.samples) > 2 and self.samples[1].at <= sample.at - self.window_s:
            self.samples.popleft()
        over = self._measure(self.samples[0], sample)
        changes: list[dict[str, Any]] = []
        for name, (value, threshold, message) in over.items():
            if name not in self.active:
                alert = Alert(name, message, value, threshold, sample.at)
                changes.append(alert.as_json("raised", sample.at))
                logger.warning("alert raised: %s (%s)", name, message)
            else:
                alert = Alert(name, message, value, threshold, self.active[name].since)
            self.active[name] = alert
        for name in [n for n in self.active if n not in over]:
            alert = self.active.pop(name)
            changes.append(alert.as_json("resolved", sample.at))
            logger.info("alert resolved: %s", name)
        self.history.extendleft(changes)
        return changes

    async def notify(self, changes: list[dict[str, Any]]) -> None:
        """POST each change to the webhook, if one is configured; failures are logged."""
        url = self.config.alert_webhook
        if not url or self.post is None:
            return
        for change in changes:
            try:
                await self.post(url, change)
                self.posted += 1
            except Exception as exc:  # any failure of someone else's endpoint: log, go on
                self.post_failures += 1
                logger.warning("alert webhook failed for %s: %s", change["alert"], exc)

    def view(self) -> dict[str, Any]:
        """What the dashboard shows: the raised alerts and the recent changes."""
        return {
            "active": [
                {
                    "alert": a.name,
                    "message": a.message,
                    "value": a.value,
                    "threshold": a.threshold,
                    "since": a.since,
                }
                for a in self.active.values()
            ],  # fmt: skip
            "history": list(self.history),
        }
