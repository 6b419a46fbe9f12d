"""What the dashboard shows, composed from the store (read-only connection) and the running
parts' counters: a full snapshot, or an update holding only what changed.

:meth:`Board.compose` is the hub's ``compose``: the counters, the events/s point and the alerts
are in every update (they are in memory); the newest events come from what the commits noted;
timers, runs and mail are read again only when a commit (or the sender) changed them; the
latency percentiles, the funnel, the send-time panel and the flows' step counts, which read more,
only after something changed and then at most every ``LATENCY_EVERY_S``, ``FUNNEL_EVERY_S``,
``SEND_TIME_EVERY_S`` and ``FLOWS_EVERY_S``
(a snapshot always has them); the funnel also at once when the outbox changed, so that its
"mailed" never contradicts the outbox beside it, and with the time it was composed
(``funnel_at``: the page says "as of").
:meth:`Board.watch` samples the counters for the alerts every ``ALERTS_EVERY_S``, whether or not
anyone watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from rtserver.clock import Clock, Monotonic
from rtserver.config import DashboardConfig
from rtserver.dashboard.alerts import Alerts, Sample
from rtserver.dashboard.experiments import bandit_panels, heatmap, timed_comparison
from rtserver.dashboard.flows import Flow, step_counts
from rtserver.dashboard.funnel import Order, RunRow, funnel
from rtserver.dashboard.hub import Changed
from rtserver.dashboard.latency import Histogram, percentile
from rtserver.dashboard.readings import Readings
from rtserver.errors import StoreError
from rtserver.model import AWAITING_CONFIRMATION, NAMES_BY_TYPE, Event, event_name
from rtserver.store import Store

__all__ = ["OUTBOX_STATES", "Board"]

logger = logging.getLogger(__name__)

DELIVERY_STATES = ("queued", "sending", "delivered", "retry_wait", "failed")
HOOK_ROWS = 20
OUTBOX_STATES = ("queued", "sending", "sent", "retry_wait", "ambiguous", "failed", "suppressed")
ROWS = 50
"""Rows of each live list (events, timers, runs, mails)."""
SINK_ROWS = 20
RATE_POINTS = 240
"""Points of the events/s chart kept for a snapshot."""
LATENCY_EVERY_S = 3.0
FUNNEL_EVERY_S = 30.0
"""The funnel reads every run, open, click and order of the last ``FUNNEL_DAYS``."""
SEND_TIME_EVERY_S = 5.0
"""The send-time panel reads the shop's histogram, the bandit counts and the timed sends of
the last ``FUNNEL_DAYS`` (fewer rows than the funnel's)."""
ALERTS_EVERY_S = 5.0
CONSISTENCY_EVERY_S = 60.0
"""How often the alert rules look for broken invariants in the store (a scan of the runs)."""
FUNNEL_DAYS = 30
FLOWS_EVERY_S = 10.0
"""The flows panel (each workflow's counts at each step) reads the newest ``FLOW_ROWS`` runs,
decided steps and mails: 45 ms on a store of 10k runs, 277 ms on one of 200k (their sort),
so at most once per 10 s (bench/RESULTS.md)."""
FLOW_ROWS = 5000
FLOW_RUN_ROWS = 20
"""Recent runs shown on a flow's page."""
PROPS_CHARS = 300
"""An event's properties are shown as JSON text cut to this length."""


def _props(values: Any) -> str:
    text = orjson.dumps(values or {}, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= PROPS_CHARS else text[: PROPS_CHARS - 1] + "…"


def _fresh_row(event: Event, person_id: str, at: float) -> dict[str, Any]:
    """A just-committed event, as the feed shows it."""
    shown = event.properties if event.type in ("track", "page", "screen") else event.traits
    return {
        "id": event.message_id,
        "at": at,
        "type": event.type,
        "name": event_name(event),
        "person": person_id,
        "source": event.source,
        "props": _props(shown),
    }


def _stored_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event (``Store.recent_events``), as the feed shows it."""
    message = row["message"]
    shown = message.get("properties") if "properties" in message else message.get("traits")
    return {
        "id": message.get("messageId"),
        "at": row["received_at"],
        "type": row["type"],
        "name": row["name"] or NAMES_BY_TYPE.get(row["type"], row["type"]),
        "person": row["person_id"],
        "source": row["source"],
        "props": _props(shown),
    }


def _item(at: float, kind: str, title: str, detail: str) -> dict[str, Any]:
    """One line of a person's timeline."""
    return {"at": at, "kind": kind, "title": title, "detail": detail}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _percentiles(histogram: Histogram) -> dict[str, Any]:
    return {
        "count": histogram.count,
        **{f"p{q}_ms": _ms(histogram.percentile(q)) for q in (50, 90, 99)},
    }


class Board:
    """Composes the dashboard's data; the hub calls :meth:`compose`."""

    def __init__(
        self,
        store: Store,
        readings: Readings,
        *,
        latency: Histogram,
        alerts: Alerts,
        dashboard: DashboardConfig,
        sink: bool,
        clock: Clock,
        monotonic: Monotonic = time.monotonic,
        bandits: Mapping[tuple[str, int], tuple[Sequence[str], str]] | None = None,
        flows: Sequence[Flow] = (),
    ) -> None:
        self.store = store
        self.flows = {flow.name: flow for flow in flows}
        """Each compiled workflow by name, as the Flows tab draws it (config order)."""
        self.bandits = bandits or {}
        """(workflow, step index) → (variant names, goal) of each ``selection = "bandit"``."""
        self.readings = readings
        self.latency = latency
        self.alerts = alerts
        self.sink = sink
        """Whether mail goes to the dev sink (its inbox is shown)."""
        self.clock = clock
        self.monotonic = monotonic
        self.click_window_s = dashboard.click_window
        self.open_window_s = dashboard.open_window
        self.rates: deque[tuple[float, float]] = deque(maxlen=RATE_POINTS)
        self._mark = (monotonic(), readings.commits()["stored"])
        self._stale = {"latency": True, "funnel": True, "send_time": True, "flows": True}
        """Whether something changed since each slow panel was last composed."""
        self._composed_at = dict.fromkeys(self._stale, -math.inf)
        self._consistency: tuple[float, dict[str, int]] = (-math.inf, {})
        """When the store's invariants were last checked (server clock), and the counts."""

    def counters(self) -> dict[str, Any]:
        """The in-memory counters (no store read)."""
        readings = self.readings
        return {
            **readings.commits(),
            "queue": readings.queue_depth(),
            "websockets": readings.websockets(),
            "viewers": readings.viewers(),
            "dropped_viewers": readings.dropped_viewers(),
            "timers_armed": readings.timers_armed(),
            "mails": dict(readings.mails()),
            "sender": readings.mail_sender(),
        }

    def _rate_point(self) -> tuple[float, float]:
        """Events stored per second since the previous point; appended to the chart."""
        now, stored = self.monotonic(), self.readings.commits()["stored"]
        then, before = self._mark
        self._mark = (now, stored)
        point = (self.clock(), round((stored - before) / max(now - then, 1e-3), 2))
        self.rates.append(point)
        return point

    async def compose(self, changed: Changed | None) -> dict[str, Any]:
        """A snapshot (``changed`` None) or an update with what ``changed`` says changed."""
        store, full = self.store, changed is None
        data: dict[str, Any] = {
            "at": self.clock(),
            "counters": self.counters(),
            "alerts": self.alerts.view(),
        }
        polls = [dict(row) for row in self.readings.polls()]
        if changed is None or polls:  # in memory, like the counters: cheap to send each time
            data["polls"] = polls
        if changed is None:
            data["rates"] = list(self.rates)
            data["events"] = [_stored_row(r) for r in await store.recent_events(ROWS)]
        else:
            data["rates"] = [self._rate_point()]
            data["events"] = [_fresh_row(*item) for item in reversed(changed.events)]
        if changed is None or changed.timers:
            data["timers"] = await self.timers()
        if changed is None or changed.runs:
            data["runs"] = await self.runs()
        if changed is None or changed.mail:
            data["mail"] = await self.mail()
        if changed:
            self._stale = dict.fromkeys(self._stale, True)
        now = self.monotonic()
        for panel, every_s, compose in (
            ("latency", LATENCY_EVERY_S, self.latencies),
            ("funnel", FUNNEL_EVERY_S, self.funnel),
            ("send_time", SEND_TIME_EVERY_S, self.send_time),
            ("flows", FLOWS_EVERY_S, self.flow_counts),
        ):
            due = now - self._composed_at[panel] >= every_s
            if panel == "funnel" and changed is not None and changed.mail:
                due = True  # a mail sent: the funnel's "mailed" follows the outbox at once
            if full or (self._stale[panel] and due):
                data[panel] = await compose()
                if panel == "funnel":
                    data["funnel_at"] = self.clock()
                if not full:
                    self._stale[panel], self._composed_at[panel] = False, now
        return data

    async def timers(self) -> list[dict[str, Any]]:
        """Pending timers, soonest first, with the person and run key (the cart) of each."""
        rows = await self.store.timers(ROWS)
        return [{**row, "due_in_s": round(row["due"] - self.clock(), 1)} for row in rows]

    async def runs(self) -> dict[str, Any]:
        """Open runs, newest first, and how many each workflow has; a run whose send waits for
        the person to confirm their address says so (``note``)."""
        store = self.store
        rows = await store.runs("active", ROWS)
        for row in rows:
            waiting = row["timing"] == AWAITING_CONFIRMATION
            row["note"] = "waiting for confirmation" if waiting else ""
        return {"active": await store.active_runs(), "rows": rows}

    async def mail(self) -> dict[str, Any]:
        """The outbox by state, its newest rows, the failures, the dev sink's inbox, and the
        webhook deliveries by state with the newest ones."""
        mail = self.store.mail
        counts = await mail.counts()
        sink = []
        if self.sink:
            sink = [
                {k: row[k] for k in ("id", "subject", "recipients", "received_at")}
                for row in await mail.sunk(SINK_ROWS)
            ]
        columns = ("id", "person_id", "workflow", "template", "variant", "recipient", "state",
                   "attempts", "created_at", "sent_at", "last_code", "last_error")  # fmt: skip
        recent = [{k: row[k] for k in columns} for row in await mail.outbox(limit=ROWS)]
        failed = [{k: row[k] for k in columns} for row in await mail.outbox("failed", limit=10)]
        hooks = self.store.deliveries
        hook_counts = await hooks.counts()
        return {
            "counts": {state: counts.get(state, 0) for state in OUTBOX_STATES},
            "recent": recent,
            "failed": failed,
            "sink": sink,
            "hooks": {
                "counts": {state: hook_counts.get(state, 0) for state in DELIVERY_STATES},
                "recent": await hooks.recent(HOOK_ROWS),
                "disabled": [
                    {"url": url, "reason": reason}
                    for url, reason in (await hooks.disabled()).items()
                ],
            },
        }

    async def latencies(self) -> dict[str, Any]:
        """Event → decision committed (the ack follows it at once) since start and over the
        alert window, and due → sent of the newest mails, as percentiles in ms."""
        delays = await self.store.delivery_delays()
        recent = self.latency
        if self.alerts.samples:
            recent = self.latency.minus(self.alerts.samples[0].latency)
        return {
            "decision": _percentiles(self.latency),
            "decision_recent": _percentiles(recent),
            "due_to_sent": {
                "count": len(delays),
                **{f"p{q}_ms": _ms(percentile(delays, q)) for q in (50, 90, 99)},
            },
        }

    async def funnel(self) -> list[dict[str, Any]]:
        """The funnel rows of runs started in the last ``FUNNEL_DAYS`` (see funnel.py)."""
        since = self.clock() - FUNNEL_DAYS * 86400.0
        runs, touches, orders = await self.store.funnel_rows(since)
        first: dict[tuple[str, str], float] = {(name, run): at for name, run, at in touches}
        rows = [
            RunRow(run_id, workflow, variant, bool(holdout), person, started, sent,
                   first.get(("Email Opened", run_id)), first.get(("Email Clicked", run_id)))
            for run_id, workflow, variant, holdout, person, started, sent in runs
        ]  # fmt: skip
        bought = [
            Order(person, at, _amount(properties), source == "server")
            for person, at, source, properties in orders
        ]
        return funnel(rows, bought, self.click_window_s, self.open_window_s)

    async def send_time(self) -> dict[str, Any]:
        """The send-time page: the shop's engagement heatmap, optimal sends against their
        control arm over the last ``FUNNEL_DAYS``, and a panel per bandit step."""
        experiments = self.store.experiments
        since = self.clock() - FUNNEL_DAYS * 86400.0
        steps = {key: names for key, (names, _) in self.bandits.items()}
        panels = bandit_panels(
            steps, await experiments.bandit_tallies(), await experiments.bandit_days(since)
        )
        for panel in panels:
            panel["goal"] = self.bandits[(panel["workflow"], panel["step"] - 1)][1]
        return {
            "shop": heatmap(await experiments.shop_engagement()),
            "comparison": timed_comparison(await experiments.timed_sends(since)),
            "bandits": panels,
            "days": FUNNEL_DAYS,
        }

    async def _flow_rows(self) -> tuple[list[Any], list[Any], list[Any], bool]:
        """The newest ``FLOW_ROWS`` runs, decided steps and mails, and whether any of the
        three reads reached its limit (then the counts are of the newest rows only)."""
        store = self.store
        runs = await store.runs(None, FLOW_ROWS)
        decided = await store.steps(None, FLOW_ROWS)
        mails = await store.mail.outbox(limit=FLOW_ROWS)
        partial = FLOW_ROWS in (len(runs), len(decided), len(mails))
        return runs, decided, mails, partial

    async def flow_counts(self) -> dict[str, Any]:
        """Each workflow's counts at each step (see flows.py), and whether they are partial."""
        runs, decided, mails, partial = await self._flow_rows()
        counts = {
            name: step_counts(flow, runs, decided, mails) for name, flow in self.flows.items()
        }
        return {"partial": partial, "rows": FLOW_ROWS, "counts": counts}

    async def flow(self, name: str) -> dict[str, Any] | None:
        """One workflow's page: its definition, counts at each step and newest runs; None when
        no workflow has that name."""
        flow = self.flows.get(name)
        if flow is None:
            return None
        runs, decided, mails, partial = await self._flow_rows()
        own = [run for run in runs if run["workflow"] == name]
        return {
            "flow": flow,
            "counts": step_counts(flow, own, decided, mails),
            "partial": partial,
            "rows": FLOW_ROWS,
            "runs": own[:FLOW_RUN_ROWS],
        }

    async def person(self, person_id: str, limit: int) -> dict[str, Any] | None:
        """One person's profile and timeline (events, runs, mails; opens and clicks marked),
        newest first; None when the person is unknown."""
        store = self.store
        profile = await store.profile(person_id)
        events = await store.recent_events(limit, person_id=person_id)
        if profile is None and not events:
            return None
        runs = await store.runs_of(person_id, limit)
        mails = await store.mail.outbox(person_id=person_id, limit=limit)
        kinds = {"Email Opened": "open", "Email Clicked": "click"}
        timeline = [
            _item(row["at"], kinds.get(row["name"], "event"), row["name"], row["props"])
            for row in map(_stored_row, events)
        ]
        for run in runs:
            arm = "holdout" if run["holdout"] else (run["variant"] or "")
            detail = f"key {run['key']} {arm}".strip()
            timeline.append(_item(run["started"], "run", f"{run['workflow']} started", detail))
            if run["ended_at"] is not None:
                title, reason = f"{run['workflow']} ended", run["end_reason"] or ""
                timeline.append(_item(run["ended_at"], "run", title, reason))
        for row in mails:
            outcome = f"{row['state']} {row['last_error'] or ''}".strip()
            title = f"mail {row['template']}"
            timeline.append(_item(row["created_at"], "mail", title + " decided", outcome))
            if row["sent_at"] is not None:
                sent = row["recipient"] or ""
                timeline.append(_item(row["sent_at"], "mail", title + " sent", sent))
        timeline.sort(key=lambda item: item["at"], reverse=True)
        if profile is not None:
            profile = {**profile, "traits": _props(profile["traits"])}
        experiments = store.experiments
        return {
            "profile": profile,
            "timeline": timeline[:limit],
            "runs": runs,
            "mails": mails,
            "engagement": heatmap(await experiments.engagement(person_id)),
            "pending": await experiments.pending_sends(person_id),
        }

    async def sample(self) -> Sample:
        """The counters the alert rules compare (one outbox read)."""
        counts = await self.store.mail.counts()
        mails = self.readings.mails()
        failures = sum(mails.get(k, 0) for k in ("retried", "failed", "ambiguous"))
        attempts = mails.get("sent", 0) + mails.get("suppressed", 0) + failures
        now = self.clock()
        checked_at, inconsistencies = self._consistency
        if not checked_at <= now < checked_at + CONSISTENCY_EVERY_S:
            inconsistencies = await self.store.inconsistencies()
            self._consistency = (now, inconsistencies)
        return Sample(
            at=now,
            failed_commits=self.readings.commits()["failed_commits"],
            smtp_attempts=attempts,
            smtp_failures=failures,
            latency=self.latency.copy(),
            queue_depth=self.readings.queue_depth(),
            outbox_backlog=counts.get("queued", 0) + counts.get("retry_wait", 0),
            inconsistencies=inconsistencies,
            disk_low=self.readings.disk_low(),
        )

    async def check_alerts(self) -> None:
        """One round of the alert rules: sample, raise or resolve, notify the webhook."""
        changes = self.alerts.check(await self.sample())
        await self.alerts.notify(changes)

    async def watch(self, stop: asyncio.Event, every_s: float = ALERTS_EVERY_S) -> None:
        """Check the alerts every ``every_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.check_alerts()
            except StoreError as exc:
                logger.warning("alerts: the store failed, trying again: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


def _amount(properties: str | None) -> float:
    """An order's amount: the first number of ``revenue``, ``total``, ``value``; else 0."""
    values = orjson.loads(properties) if properties else {}
    for key in ("revenue", "total", "value"):
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0
