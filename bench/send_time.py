"""Send-time optimisation against a known ground truth: a simulated shop, one campaign, three ways.

Population (fixed seed): ``--people`` persons across 6 time zones. Each has a hidden pattern of
5 types (morning 7-9, commute 17-19, lunch 12-13, evening 20-23, weekend mornings 8-10 on
Saturdays and Sundays), shifted by -1, 0 or +1 hour, mixed with 20 % uniform noise: the
weight of an hour of their week is ``0.8 * pattern + 0.2 * u``, where ``pattern`` is 0 on the
days outside the pattern (weekends for the weekday patterns, weekdays for weekend mornings) and
``u`` is uniform, one draw per person and hour.
A mail that arrives at local hour ``h`` is opened with probability ``p(h) = 0.05 + 0.35 *
weight(h)``, and an opened mail is clicked with probability 0.25. The true peak is the
pattern's peak hour, shifted (where ``p`` is highest).

History: each person has 0 to 40 past engagements (a quarter of them clicks) at hours drawn
from ``p``, over the 16 weeks before the campaign, fed as events through the real store and
:class:`~rtserver.engine.engine.Engine` at their own (virtual) times.

Campaign: one ``schedule`` workflow (``send`` step), swept by the real engine on a virtual
clock at 10:00 UTC on a Saturday and run for a day and a half, three ways, each on a copy of
the history's store:

- **immediate**: ``send_time = "immediate"``, all sent by the sweep at 10:00 UTC;
- **shop-wide best**: ``send_time = "optimal"``, but the history belongs to stand-ins (same
  zones, same times) and not to the persons, so each gets the shop's best hour: one best hour
  for the whole list, in each person's local time;
- **per-person optimal**: ``send_time = "optimal"`` with each person's own history.

Quiet hours are off and the control share is 0 (each arm is its own comparison); the
exploration share is the shipped one. Reported: open and click rates with 95 % (Wilson)
intervals; hour recovery (the chosen local hour within ±1 h of the true peak) by history
length; and the model's CPU cost: its update per engagement event (against a bare dict
increment, timed in the same rounds) and its choice per send.

    python -m bench.send_time                   # 5,000 people (about a minute)
    python -m bench.send_time --quick --json    # the smoke run of tests/test_bench.py
    python -m bench.send_time --cost            # the model's CPU alone (seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench._common import Column, document, emit, format_table
from rtserver.cli import GC_THRESHOLDS
from rtserver.config import MailConfig, SendTimeConfig
from rtserver.config.schema import IngestConfig
from rtserver.engine.definitions import Workflows, compile_workflows, policy_from
from rtserver.engine.engagement import (
    SendTiming,
    choose,
    engaged,
    engaged_one,
    engagement_weight,
    hour_of_week,
    prior_of,
    send_moments,
)
from rtserver.engine.engine import Engine
from rtserver.model import Engagement, Event, parse_event
from rtserver.store.database import Store

CAMPAIGN_AT = datetime(2027, 1, 16, 10, 0, tzinfo=ZoneInfo("UTC")).timestamp()  # a Saturday
RUN_FOR_S = 36 * 3600.0
"""The window is a day; what quiet moments or a late sweep chunk defer still lands in this."""
HISTORY_WEEKS = 16
ZONES = (
    "America/Los_Angeles",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Tokyo",
)
PATTERNS: dict[str, tuple[dict[int, float], tuple[int, ...]]] = {
    "morning": ({7: 0.6, 8: 1.0, 9: 0.6}, tuple(range(7))),
    "commute": ({17: 0.6, 18: 1.0, 19: 0.6}, tuple(range(7))),
    "lunch": ({12: 1.0, 13: 0.7}, tuple(range(7))),
    "evening": ({20: 0.6, 21: 1.0, 22: 0.8, 23: 0.5}, tuple(range(7))),
    "weekend": ({8: 0.6, 9: 1.0, 10: 0.6}, (5, 6)),
}
"""Pattern → (weight by local hour of day, the weekdays it holds on; 0 is Monday)."""
NOISE = 0.2
CLICK_GIVEN_OPEN = 0.25
HISTORY_CLICK_SHARE = 0.25
GROUP = 500
COST_ROUNDS = 5
BUCKETS = (("0", 0, 0), ("1-4", 1, 4), ("5-19", 5, 19), ("20+", 20, 10**9))
ARMS = ("immediate", "shop-wide best", "per-person optimal")
RATE_COLUMNS = [
    Column("arm", "arm"),
    Column("sent", "sent", "{:,}"),
    Column("open_rate", "open rate", "{:.1%}"),
    Column("open_ci", "95% interval"),
    Column("click_rate", "click rate", "{:.1%}"),
    Column("click_ci", "95% interval"),
    Column("median_delay_h", "median wait h", "{:.1f}"),
]
RECOVERY_COLUMNS = [
    Column("history", "past engagements"),
    Column("people", "people", "{:,}"),
    Column("optimal", "per-person optimal", "{:.1%}"),
    Column("shop", "shop-wide best", "{:.1%}"),
    Column("immediate", "immediate", "{:.1%}"),
]


class Person:
    """One simulated person: zone, hidden pattern, its weights, their history length."""

    def __init__(self, index: int, rng: random.Random):
        self.id = f"p{index:05d}"
        self.zone = ZoneInfo(rng.choice(ZONES))
        self.pattern = rng.choice(sorted(PATTERNS))
        self.shift = rng.choice((-1, 0, 1))
        hours, days = PATTERNS[self.pattern]
        self.weight = [
            (1 - NOISE) * (hours.get((how % 24 - self.shift) % 24, 0.0) if how // 24 in days
                           else 0.0) + NOISE * rng.random()
            for how in range(168)
        ]  # fmt: skip
        self.p = [0.05 + 0.35 * w for w in self.weight]
        self.peak = (max(hours, key=lambda h: hours[h]) + self.shift) % 24
        self.engagements = rng.randint(0, 40)
        self.u_open, self.u_click = rng.random(), rng.random()
        """Common random numbers: each arm's outcome of this person's mail uses the same."""

    def opens(self, at: float) -> tuple[bool, bool]:
        """Whether the mail that arrives at ``at`` is opened, and clicked."""
        p = self.p[hour_of_week(at, self.zone)]
        opened = self.u_open < p
        return opened, opened and self.u_click < CLICK_GIVEN_OPEN


def population(size: int, seed: int) -> list[Person]:
    rng = random.Random(seed)
    return [Person(i, rng) for i in range(size)]


def history_times(person: Person, rng: random.Random) -> list[float]:
    """When the person engaged: hours of the week drawn from ``p``, in past weeks."""
    monday = datetime.fromtimestamp(CAMPAIGN_AT, person.zone)
    monday = (monday - timedelta(days=monday.weekday())).replace(hour=0, minute=0, second=0)
    times = []
    for how in rng.choices(range(168), weights=person.p, k=person.engagements):
        week = rng.randint(1, HISTORY_WEEKS)
        local = monday - timedelta(weeks=week) + timedelta(hours=how, seconds=rng.random() * 3599)
        local = datetime(*local.timetuple()[:6], tzinfo=person.zone)  # the zone's offset then
        times.append(local.timestamp())
    return times


def server_event(raw: dict[str, Any]) -> Event:
    return parse_event(raw, IngestConfig(), source="server")


def history_events(people: list[Person], seed: int, stand_ins: bool) -> list[tuple[float, Event]]:
    """Each person's identify (verified email, consent, zone), then their engagements, by
    time; with ``stand_ins`` the engagements belong to a stand-in in the same zone."""
    rng = random.Random(seed + 1)
    timed: list[tuple[float, Event]] = []
    start = CAMPAIGN_AT - (HISTORY_WEEKS + 2) * 7 * 86400.0
    for person in people:
        zone = str(person.zone)
        traits = {"email": f"{person.id}@shop.test", "consent": "confirmed_opt_in"}
        identify = {"type": "identify", "userId": person.id, "messageId": f"id-{person.id}",
                    "traits": traits, "context": {"timezone": zone}}  # fmt: skip
        timed.append((start, server_event(identify)))
        owner = f"s-{person.id}" if stand_ins else person.id
        for n, at in enumerate(history_times(person, rng)):
            name = "Email Clicked" if rng.random() < HISTORY_CLICK_SHARE else "Email Opened"
            raw = {"type": "track", "event": name, "userId": owner, "messageId":
                   f"h-{person.id}-{n}", "context": {"timezone": zone}}  # fmt: skip
            timed.append((at, server_event(raw)))
    timed.sort(key=lambda item: item[0])
    return timed


def campaign_rules(send_time: str) -> Workflows:
    step: dict[str, Any] = {"send": "win_back"}
    if send_time == "optimal":
        step |= {"send_time": "optimal", "within": "24h"}
    raw = {"name": "campaign", "schedule": "1d", "reentry": "never", "step": [step]}
    policy = policy_from(MailConfig(frequency_cap="off"), SendTimeConfig(control=0.0))
    rules, _ = compile_workflows([raw], policy=policy)
    return rules


async def ingest(path: Path, timed: list[tuple[float, Event]]) -> float:
    """Commit the history through a store and engine, in groups, at the events' own times;
    the engine's CPU seconds (writer thread included: it is all one process)."""
    store = await Store.open(path)
    try:
        engine = Engine(campaign_rules("immediate"), store)
        started = time.process_time()
        for first in range(0, len(timed), GROUP):
            chunk = timed[first : first + GROUP]
            times = [at for at, _ in chunk]
            _, changes = await store.group_commit(
                [e for _, e in chunk], times, engine.plan((), times[-1])
            )
            engine.committed(changes)
        return time.process_time() - started
    finally:
        await store.close()


async def campaign(path: Path, send_time: str) -> dict[str, float]:
    """Sweep the campaign at CAMPAIGN_AT and fire its timers; person → when the mail went."""
    store = await Store.open(path)
    try:
        engine = Engine(campaign_rules(send_time), store)
        await engine.restore(CAMPAIGN_AT - 86400.0)  # the first sweep is one interval on
        while (tick := engine.wheel.next_deadline()) is not None:
            now = tick * engine.tick_s
            if now > CAMPAIGN_AT + RUN_FOR_S:
                break
            fired = engine.wheel.poll(tick)
            _, changes = await store.group_commit([], [], engine.plan(fired, now))
            engine.committed(changes)
        steps = await store.steps(limit=10**7)
    finally:
        await store.close()
    return {s["person_id"][2:]: s["at"] for s in steps if s["action"] == "send"}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def outcomes(arm: str, people: list[Person], sent: dict[str, float]) -> dict[str, Any]:
    opened = clicked = 0
    delays = []
    for person in people:
        at = sent.get(person.id)
        if at is None:
            continue
        o, c = person.opens(at)
        opened += o
        clicked += c
        delays.append((at - CAMPAIGN_AT) / 3600)
    n = len(delays)
    open_ci, click_ci = wilson(opened, n), wilson(clicked, n)
    delays.sort()
    return {
        "arm": arm,
        "sent": n,
        "open_rate": opened / n if n else 0.0,
        "open_ci": f"{open_ci[0]:.1%}-{open_ci[1]:.1%}",
        "open_interval": open_ci,
        "click_rate": clicked / n if n else 0.0,
        "click_ci": f"{click_ci[0]:.1%}-{click_ci[1]:.1%}",
        "click_interval": click_ci,
        "median_delay_h": delays[n // 2] if n else 0.0,
    }


def recovered(person: Person, at: float) -> bool:
    hour = datetime.fromtimestamp(at, person.zone).hour
    return min((hour - person.peak) % 24, (person.peak - hour) % 24) <= 1


def recovery(people: list[Person], sent: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for label, low, high in BUCKETS:
        group = [p for p in people if low <= p.engagements <= high]
        row: dict[str, Any] = {"history": label, "people": len(group)}
        for key, arm in (("optimal", ARMS[2]), ("shop", ARMS[1]), ("immediate", ARMS[0])):
            hits = [recovered(p, sent[arm][p.id]) for p in group if p.id in sent[arm]]
            row[key] = sum(hits) / len(hits) if hits else 0.0
        rows.append(row)
    return rows


def model_cost(
    people: list[Person], timed: list[tuple[float, Event]], rounds: int = COST_ROUNDS
) -> dict[str, float]:
    """CPU µs of the model alone, against a bare baseline timed in the same rounds.

    Per engagement event, the model's update as the engine makes it (the event's weight, its
    zone, the hour of the week there, the person's histogram with one bin changed, the shop's
    addition), and the baseline: the same loop over the same events adding 1 to a plain dict
    per person at the UTC hour of the week. Per optimal send, the choice (the window's moments,
    the scores). Each round builds the histograms afresh; the best round of each counts. The
    collector is set as the server sets it (``GC_THRESHOLDS``), and the input (persons and
    events) is frozen out of its sight, as bench.decide's is: a server holds a group of events
    at a time, not a whole history.
    """
    half_life = SendTiming().half_life_s
    zones = {p.id: str(p.zone) for p in people}
    zones |= {f"s-{p.id}": str(p.zone) for p in people}
    engagements = [(at, e) for at, e in timed if e.type == "track"]
    count = max(1, len(engagements))
    empty = Engagement()

    def baseline() -> None:
        histograms: dict[str, dict[int, float]] = {}
        for at, event in engagements:
            bins = histograms.setdefault(event.user_id or "", {})
            hour = int(at // 3600) % 168
            bins[hour] = bins.get(hour, 0.0) + 1.0

    def update() -> tuple[dict[str, Engagement], list[tuple[int, float, float]]]:
        histograms: dict[str, Engagement] = {}
        shop: list[tuple[int, float, float]] = []
        for at, event in engagements:
            weight = engagement_weight(event, event.name or "", 0.0, at)
            user = event.user_id or ""
            hour = hour_of_week(at, ZoneInfo(zones[user]))
            histograms[user] = engaged_one(histograms.get(user, empty), hour, weight, at, half_life)
            shop.append((hour, weight, at))
        return histograms, shop

    timing = SendTiming()
    best = {"baseline": math.inf, "update": math.inf, "choice": math.inf}
    with server_collector():
        for _ in range(rounds):
            started = time.process_time()
            baseline()
            best["baseline"] = min(best["baseline"], time.process_time() - started)
            started = time.process_time()
            histograms, shop = update()
            best["update"] = min(best["update"], time.process_time() - started)
            prior = prior_of(engaged(Engagement(), shop, half_life))  # once per group commit
            started = time.process_time()
            for person in people:
                moments = send_moments(CAMPAIGN_AT, 86400.0, person.zone)
                choose(moments, histograms.get(person.id, empty), prior, CAMPAIGN_AT,
                       timing, (person.id, "0"))  # fmt: skip
            best["choice"] = min(best["choice"], time.process_time() - started)
    return {
        "update_us_per_event": 1e6 * best["update"] / count,
        "baseline_us_per_event": 1e6 * best["baseline"] / count,
        "update_ratio": best["update"] / max(best["baseline"], 1e-9),
        "choice_us_per_send": 1e6 * best["choice"] / max(1, len(people)),
        "rounds": rounds,
    }


@contextlib.contextmanager
def server_collector() -> Iterator[None]:
    """The garbage collector as the server runs it, what exists now frozen; restored after."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def cost_lines(cost: dict[str, float]) -> list[str]:
    return [
        f"model CPU (best of {cost['rounds']} rounds): update {cost['update_us_per_event']:.2f} "
        f"µs per engagement event against {cost['baseline_us_per_event']:.2f} µs for a bare "
        f"dict increment ({cost['update_ratio']:.1f}x); choice {cost['choice_us_per_send']:.1f} "
        "µs per optimal send",
    ]


def measure_cost(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """``--cost``: the model's CPU alone (no store, no campaign), on the same histories."""
    people = population(args.people, args.seed)
    cost = model_cost(people, history_events(people, args.seed, stand_ins=False), args.rounds)
    goals = {"model_under_5_us": cost["update_us_per_event"] < 5}
    summary = {"model_cost": cost, "goals": goals, "goal_met": all(goals.values())}
    lines = [
        f"Send-time model cost: {args.people:,} people, seed {args.seed}",
        *cost_lines(cost),
        "goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in goals.items()),
    ]
    return document("send_time", args, [cost], summary), "\n".join(lines)


async def simulate(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    people = population(args.people, args.seed)
    own = history_events(people, args.seed, stand_ins=False)
    stand_in = history_events(people, args.seed, stand_ins=True)
    sent: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rtserver-send-time-") as folder:
        base = Path(folder)
        ingest_s = await ingest(base / "own.db", own)
        await ingest(base / "stand_in.db", stand_in)
        for arm, source, send_time in (
            (ARMS[0], "own.db", "immediate"),
            (ARMS[1], "stand_in.db", "optimal"),
            (ARMS[2], "own.db", "optimal"),
        ):
            copy = base / f"{arm}.db"
            shutil.copyfile(base / source, copy)
            sent[arm] = await campaign(copy, send_time)
    results = [outcomes(arm, people, sent[arm]) for arm in ARMS]
    rows = recovery(people, sent)
    cost = model_cost(people, own, args.rounds)
    by_arm = {r["arm"]: r for r in results}
    best = by_arm[ARMS[2]]

    def above(other: dict[str, Any], key: str) -> bool:
        return bool(best[key][0] > other[key][1])

    goals = {
        "beats_immediate": above(by_arm[ARMS[0]], "open_interval")
        and above(by_arm[ARMS[0]], "click_interval"),
        "beats_shop_wide": above(by_arm[ARMS[1]], "open_interval")
        and above(by_arm[ARMS[1]], "click_interval"),
        "recovery_20_plus": rows[-1]["optimal"] >= 0.8,
        "model_under_5_us": cost["update_us_per_event"] < 5,
    }
    summary = {
        "recovery": rows,
        "model_cost": cost,
        "history_events": len(own) - len(people),
        "ingest_us_per_event": 1e6 * ingest_s / len(own),
        "goals": goals,
        "goal_met": all(goals.values()),
    }
    lines = [
        f"Send time: {args.people:,} people in {len(ZONES)} zones, seed {args.seed}, "
        f"{summary['history_events']:,} past engagements; one campaign swept at 10:00 UTC "
        "on a Saturday",
        format_table(results, RATE_COLUMNS),
        "",
        "hour recovery (the chosen local hour within ±1 h of the true peak):",
        format_table(rows, RECOVERY_COLUMNS),
        "",
        *cost_lines(cost),
        f"(history through store and engine: {summary['ingest_us_per_event']:.0f} µs/event)",
        "goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in goals.items()),
    ]
    return document("send_time", args, results, summary), "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--people", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--quick", action="store_true", help="300 people (smoke)")
    parser.add_argument("--rounds", type=int, default=COST_ROUNDS, help="of the model's cost")
    parser.add_argument(
        "--cost", action="store_true", help="the model's CPU only: no store, no campaign"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.quick:
        args.people, args.rounds = 300, 2
    return args


def main() -> int:
    args = parse_args()
    emit(*(measure_cost(args) if args.cost else asyncio.run(simulate(args))), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
