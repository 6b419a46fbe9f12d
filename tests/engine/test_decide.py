"""Decisions, driven end to end: each test feeds decide's actions back into the facts and moves
time to the timers' due times, as the engine does, but synchronously and without a store."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from rtserver.config.schema import IngestConfig
from rtserver.engine.decide import decide, quiet_until
from rtserver.engine.definitions import Policy, Workflows, compile_workflows
from rtserver.engine.engagement import SendTiming, engaged, hour_of_week, prior_of
from rtserver.engine.memory import EVENT_BYTES, PERSON_BYTES, Memory
from rtserver.model.actions import (
    Action,
    CallWebhook,
    CancelTimer,
    EmitEvent,
    EndRun,
    Scheduled,
    ScheduleTimer,
    SendMail,
    SkipStep,
    StartRun,
    TimerFired,
    UpdateRun,
)
from rtserver.model.events import (
    Event,
    parse_event,
    person_event,
    sign_identity,
    verify_identity,
)
from rtserver.model.facts import (
    HISTORY_LIMIT,
    Engagement,
    Facts,
    Person,
    Run,
    event_name,
    observe,
)
from rtserver.model.history import History
from tests.support.workflows import cart_workflow

M, H, D = 60.0, 3600.0, 86400.0
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 UTC
DEFAULT = Policy()
NO_CAP = Policy(frequency_cap_s=0.0)
IDS = itertools.count()

CART = cart_workflow(name="cart")
"""The shared cart workflow, named as these tests always named it (run ids, holdout buckets and
variant arms hash the name)."""


def rules(*raw: dict[str, Any], policy: Policy = DEFAULT) -> Workflows:
    """Compiled workflows (no warnings expected)."""
    compiled, warnings = compile_workflows(raw, policy=policy)
    assert warnings == []
    return compiled


def flow(steps: list[dict[str, Any]], **keys: Any) -> dict[str, Any]:
    """A workflow named ``w`` on ``Signed Up`` with ``steps``."""
    return {"name": "w", "trigger": "Signed Up", "step": steps, **keys}


def ev(name: str, type: str = "track", user: str = "u1", **fields: Any) -> Event:
    """A server-side event of ``user``: ``properties=``, ``context=``, ``traits=`` as given."""
    raw: dict[str, Any] = {"type": type, "messageId": f"m{next(IDS)}", "userId": user, **fields}
    if name:
        raw["event" if type == "track" else "name"] = name
    return parse_event(raw, IngestConfig(), source="server")


def identify(**traits: Any) -> Event:
    """An identify of ``u1`` with ``traits``."""
    return ev("", type="identify", traits=traits)


def added(cart: str | None = "c1", **props: Any) -> Event:
    """Product Added to ``cart`` (no cart_id when None)."""
    return ev("Product Added", properties={"cart_id": cart, **props} if cart else props)


class Sim:
    """One person's facts, folded from decide's actions; timers fire at their due times."""

    def __init__(self, workflows: Workflows, person: Person | None = None, now: float = START):
        self.rules = workflows
        self.facts = Facts(
            person or Person("u:u1", email="ann@example.com", consent="confirmed_opt_in")
        )
        self.now = now
        self.timers: dict[str, tuple[int, float]] = {}
        self.log: list[tuple[float, Action]] = []
        self.ended: dict[str, str] = {}

    def decide(self, input: Event | TimerFired) -> list[Action]:
        """Decide ``input`` now (observing an event first) and fold the actions."""
        if isinstance(input, Event):
            self.facts = replace(self.facts, person=observe(self.facts.person, input, self.now))
        actions = decide(self.rules, input, self.facts, self.now)
        assert actions == decide(self.rules, input, self.facts, self.now)  # deterministic
        runs = {run.id: run for run in self.facts.runs}
        ended, last_sent = dict(self.facts.last_ended), self.facts.last_sent
        for action in actions:
            self.log.append((self.now, action))
            if isinstance(action, StartRun | UpdateRun | EndRun):
                assert action.run.id not in self.ended, action
            else:
                assert action.run_id not in self.ended, action
            if isinstance(action, StartRun | UpdateRun):
                runs[action.run.id] = action.run
            elif isinstance(action, EndRun):
                runs.pop(action.run.id)
                self.timers.pop(action.run.id, None)
                ended[(action.run.workflow, action.run.key)] = self.now
                self.ended[action.run.id] = action.reason
            elif isinstance(action, ScheduleTimer):
                self.timers[action.run_id] = (action.step, action.due)
            elif isinstance(action, CancelTimer):
                self.timers.pop(action.run_id, None)
            elif isinstance(action, SendMail):
                assert action.run_id in runs
                if not self.rules.by_name[action.workflow].transactional:
                    last_sent = self.now
        self.facts = replace(self.facts, runs=tuple(runs.values()), last_ended=ended)
        self.facts = replace(self.facts, last_sent=last_sent)
        return actions

    def at(self, offset: float, event: Event | None = None) -> list[Action]:
        """Fire every timer due by ``START + offset``, then decide ``event`` (if any) then."""
        target = START + offset
        while due := [(d, r, s) for r, (s, d) in self.timers.items() if d <= target]:
            self.now, run_id, step = min(due)
            del self.timers[run_id]  # fired: gone unless the decision re-arms it
            self.decide(TimerFired(run_id, step))
        self.now = max(self.now, target)
        return self.decide(event) if event is not None else []

    def sent(self) -> list[tuple[float, str]]:
        """(offset, template) of every SendMail so far."""
        return [(t - START, a.template) for t, a in self.log if isinstance(a, SendMail)]

    def skipped(self) -> list[tuple[float, str]]:
        """(offset, reason) of every SkipStep so far."""
        return [(t - START, a.reason) for t, a in self.log if isinstance(a, SkipStep)]

    def runs(self) -> list[Run]:
        """The open runs."""
        return list(self.facts.runs)

    def started(self) -> list[Run]:
        """Every run started so far, as it started."""
        return [a.run for _, a in self.log if isinstance(a, StartRun)]


# --- the abandoned-cart sequence --------------------------------------------------------------


def test_cart_inactivity_is_rearmed_by_activity() -> None:
    """A view at +20 min re-arms the 30 min wait: the reminder goes at +50 min, not +30."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    sim.at(20 * M, ev("Product Viewed"))
    sim.at(49 * M)
    assert sim.sent() == []
    sim.at(50 * M)
    assert sim.sent() == [(50 * M, "cart_reminder")]
    assert sim.timers == {sim.runs()[0].id: (2, 50 * M + D + START)}


def test_cart_second_mail_when_no_click_and_no_order() -> None:
    """No click within 24 h and no order: the second reminder goes, then the run completes."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    sim.at(2 * D)
    assert sim.sent() == [(30 * M, "cart_reminder"), (30 * M + D, "cart_reminder_2")]
    assert list(sim.ended.values()) == ["completed"] and sim.runs() == [] and sim.timers == {}


def test_cart_click_skips_the_second_mail() -> None:
    """A click within 24 h sets run.wait_met; the second mail's `if` is false."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    actions = sim.at(2 * H, ev("Email Clicked"))
    run_id = sim.started()[0].id
    assert CancelTimer(run_id) in actions
    assert sim.sent() == [(30 * M, "cart_reminder")]
    assert sim.ended == {run_id: "completed"}
    ended = [a for a in actions if isinstance(a, EndRun)][0]
    assert ended.run.wait_met and ended.run.sends == 1


def test_cart_purchase_before_the_deadline_sends_nothing() -> None:
    """An order at +10 min ends the run and cancels its timer: nothing is sent."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    run = sim.runs()[0]
    actions = sim.at(10 * M, ev("Order Completed", properties={"cart_id": "c1", "revenue": 30}))
    assert actions == [
        CancelTimer(run.id),
        EndRun(replace(run, due=None), "exit on Order Completed"),
    ]
    sim.at(3 * D)
    assert sim.sent() == [] and sim.timers == {}
    assert sim.ended == {run.id: "exit on Order Completed"}


def test_cart_purchase_after_the_first_mail_stops_the_second() -> None:
    """An order between the two mails ends the run: no second reminder."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    sim.at(5 * H, ev("Order Completed"))
    sim.at(3 * D)
    assert sim.sent() == [(30 * M, "cart_reminder")]


def test_trigger_of_an_open_run_starts_nothing_and_counts_as_activity() -> None:
    """A second add to the same cart re-arms the wait, even with a narrow activity list."""
    wf = {**CART, "step": [{"wait_inactive": "30m", "activity": ["Product Viewed"]}, {"send": "x"}]}
    sim = Sim(rules(wf, policy=NO_CAP))
    sim.at(0, added())
    sim.at(10 * M, ev("Page Viewed", type="page"))  # not in the list
    actions = sim.at(20 * M, added())
    assert not any(isinstance(a, StartRun) for a in actions)
    sim.at(25 * M, added("c2"))  # another cart: its own run, not activity for c1
    sim.at(2 * H)
    assert sim.sent() == [(50 * M, "x"), (55 * M, "x")]


@pytest.mark.parametrize(
    ("event", "rearms"),
    [
        (ev("Product Viewed"), True),
        (ev("Home", type="page"), True),
        (ev("Home", type="screen"), True),
        (ev("Email Opened"), False),
        (ev("Email Clicked"), False),
        (ev("Time On Page"), False),
        (ev("Scroll Depth Reached"), False),
        (identify(plan="pro"), False),
    ],
)
def test_what_counts_as_activity(event: Event, rearms: bool) -> None:
    """Track, page and screen events re-arm; email events, engagement signals, identify don't."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    sim.at(20 * M, event)
    sim.at(3 * H)
    assert sim.sent()[0] == (50 * M if rearms else 30 * M, "cart_reminder")


# --- run keys, exits and re-entry ------------------------------------------------------------


def test_one_run_per_cart_key() -> None:
    """Two carts give two runs; a second add to the first cart gives none."""
    sim = Sim(rules(CART))
    sim.at(0, added("A"))
    sim.at(1 * M, added("B"))
    sim.at(2 * M, added("A"))
    assert sorted(r.key for r in sim.runs()) == ["A", "B"]


def test_run_key_falls_back_to_the_person() -> None:
    """Without the run_key property the key is "" (the person): one such run at a time."""
    sim = Sim(rules(CART))
    sim.at(0, added(None))
    sim.at(1 * M, added(None))
    assert [r.key for r in sim.runs()] == [""]
    wf = {k: v for k, v in CART.items() if k != "run_key"}
    sim = Sim(rules(wf))
    sim.at(0, added("A"))
    sim.at(1 * M, added("B"))
    assert [r.key for r in sim.runs()] == [""]


def test_exit_event_with_the_key_ends_only_that_run() -> None:
    """An order of cart A ends A's run; B's keeps running and sends."""
    sim = Sim(rules(CART))
    sim.at(0, added("A"))
    sim.at(0, added("B"))
    sim.at(5 * M, ev("Order Completed", properties={"cart_id": "A"}))
    assert [r.key for r in sim.runs()] == ["B"]
    sim.at(35 * M)
    assert sim.sent() == [(35 * M, "cart_reminder")]  # B, re-armed by the order at +5


def test_exit_event_without_the_key_ends_every_run() -> None:
    """An order without a cart id ends all of the person's runs of the workflow."""
    sim = Sim(rules(CART))
    sim.at(0, added("A"))
    sim.at(0, added("B"))
    sim.at(5 * M, ev("Order Completed"))
    assert sim.runs() == [] and sim.timers == {}
    assert sorted(sim.ended.values()) == ["exit on Order Completed"] * 2


def test_keyed_exit_ends_a_run_started_without_a_key() -> None:
    """A run without a key stands for all the person's carts: any order ends it."""
    sim = Sim(rules(CART))
    sim.at(0, added(None))
    sim.at(0, added("B"))
    sim.at(5 * M, ev("Order Completed", properties={"cart_id": "A"}))
    assert [r.key for r in sim.runs()] == ["B"]


def test_exit_does_not_touch_other_workflows() -> None:
    """An exit event of one workflow leaves another's runs alone."""
    other = {**CART, "name": "other", "exit_on": ["Checkout Started"]}
    sim = Sim(rules(CART, other))
    sim.at(0, added("A"))
    sim.at(1 * M, ev("Order Completed"))
    assert [r.workflow for r in sim.runs()] == ["other"]


def test_reentry_per_cart_key() -> None:
    """After a cart's run ends, the same cart starts again only 7 days later; others at once."""
    sim = Sim(rules(CART))
    sim.at(0, added("A"))
    sim.at(1 * M, ev("Order Completed", properties={"cart_id": "A"}))
    assert not any(isinstance(a, StartRun) for a in sim.at(1 * D, added("A")))
    assert isinstance(sim.at(1 * D, added("B"))[0], StartRun)
    assert not any(isinstance(a, StartRun) for a in sim.at(7 * D + 1 * M - 1, added("A")))
    assert isinstance(sim.at(7 * D + 1 * M, added("A"))[0], StartRun)


def test_reentry_never_and_always() -> None:
    """``never``: once per key for good; ``always``: again as soon as the run ended."""
    sim = Sim(rules({**CART, "reentry": "never"}))
    sim.at(0, added("A"))
    sim.at(1 * M, ev("Order Completed"))
    sim.at(400 * D, added("A"))
    assert sim.runs() == []
    sim = Sim(rules({**CART, "reentry": "always"}))
    sim.at(0, added("A"))
    sim.at(1 * M, ev("Order Completed"))
    sim.at(1 * M, added("A"))
    assert [r.key for r in sim.runs()] == ["A"]


# --- trigger filters and branches ------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "event", "starts"),
    [
        ("event.properties.value > 50", added(value=51), True),
        ("event.properties.value > 50", added(value=50), False),
        ("event.properties.value > 50", added(), False),
        ("event.properties.value > 50", added(value="lots"), False),
        ("event.properties.category in ['shoes', 'bags']", added(category="bags"), True),
        ("event.properties.category in ['shoes', 'bags']", added(category="hats"), False),
        ("event.properties.url is glob('*/sale/*')", added(url="https://s.example/Sale/x"), True),
        ("event.properties.url is glob('*/sale/*')", added(url="https://s.example/x"), False),
    ],
)
def test_trigger_where_filters(where: str, event: Event, starts: bool) -> None:
    """A trigger's `where` filters on properties: comparisons, `in`, URL globs."""
    sim = Sim(rules({**CART, "where": where}))
    sim.at(0, event)
    assert bool(sim.runs()) is starts


@pytest.mark.parametrize(
    ("url", "referrer", "starts"),
    [
        ("https://shop.example/pricing", "https://www.google.com/", True),
        ("https://shop.example/pricing?plan=pro", "https://duckduckgo.com/", True),
        ("https://shop.example/pricing", "https://news.example/", False),
        ("https://shop.example/about", "https://www.google.com/", False),
    ],
)
def test_page_url_and_referrer_patterns(url: str, referrer: str, starts: bool) -> None:
    """A page visit triggers on its URL glob and its referrer regex (the seeds' key pages)."""
    wf = {
        "name": "high_value",
        "trigger": "Page Viewed",
        "where": "event.context.page.url is glob('*/pricing*') and "
        "event.context.page.referrer is regex('google\\\\.|duckduckgo')",
        "step": [{"wait": "2h"}, {"send": "followup"}],
    }
    sim = Sim(rules(wf))
    sim.at(0, ev("Pricing", type="page", context={"page": {"url": url, "referrer": referrer}}))
    assert bool(sim.runs()) is starts


def test_branches_on_profile_facts() -> None:
    """Steps with `if` on orders, total spent, clicks, traits and last seen take their branch."""
    steps = [
        {"wait": "3d"},
        {"if": "person.orders_count == 0", "send": "first_order_offer"},
        {"if": "person.orders_count > 0 and person.total_spent > 200", "send": "vip"},
        {"if": "person.clicks > 0", "send": "engaged"},
        {"if": "person.traits.plan == 'pro'", "send": "pro"},
        {"if": "now - person.last_seen > 2 * 86400", "send": "lapsed"},
        {"if": "person.last_order_at and person.last_order_at > run.started", "send": "bought"},
    ]
    sim = Sim(rules(flow(steps), policy=NO_CAP))
    sim.at(0, ev("Signed Up"))
    sim.at(4 * D)
    assert [t for _, t in sim.sent()] == ["first_order_offer", "lapsed"]
    sim = Sim(rules(flow(steps), policy=NO_CAP))
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, identify(plan="pro"))
    sim.at(2 * H, ev("Order Completed", properties={"revenue": 250.0}))
    sim.at(3 * D - 1, ev("Email Clicked"))
    sim.at(4 * D)
    assert [t for _, t in sim.sent()] == ["vip", "engaged", "pro", "bought"]


def test_condition_that_errors_at_run_time_is_false() -> None:
    """An `if` comparing ill-typed data skips its step; the run goes on."""
    steps = [{"if": "person.traits.age > 30", "send": "old"}, {"send": "always"}]
    sim = Sim(rules(flow(steps), policy=NO_CAP))
    sim.at(0, identify(age="unknown"))
    sim.at(1, ev("Signed Up"))
    assert [t for _, t in sim.sent()] == ["always"]


def test_exit_if_ends_the_run() -> None:
    """A step's `exit_if` ends the run with the step's number when true."""
    steps = [{"wait": "1d"}, {"exit_if": "person.orders_count > 0", "send": "nudge"}]
    sim = Sim(rules(flow(steps)))
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, ev("Order Completed"))
    sim.at(2 * D)
    assert sim.sent() == [] and list(sim.ended.values()) == ["exit_if at step 2"]


def test_wait_until_where_and_timeout() -> None:
    """Only a matching event meets the wait; otherwise the timeout moves the run on."""
    steps = [
        {
            "wait_until": "Email Clicked",
            "where": "event.properties.link == 'buy'",
            "timeout": "48h",
        },
        {"if": "not run.wait_met", "send": "no_click"},
        {"if": "run.wait_met", "send": "clicked"},
    ]
    sim = Sim(rules(flow(steps), policy=NO_CAP))
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, ev("Email Clicked", properties={"link": "faq"}))
    sim.at(3 * D)
    assert sim.sent() == [(48 * H, "no_click")]
    sim = Sim(rules(flow(steps), policy=NO_CAP))
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, ev("Email Clicked", properties={"link": "buy"}))
    assert sim.sent() == [(1 * H, "clicked")] and sim.timers == {}


def test_fixed_wait_ignores_activity() -> None:
    """A `wait` step fires at its time whatever the person does."""
    sim = Sim(rules(flow([{"wait": "2h"}, {"send": "x"}])))
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, ev("Product Viewed"))
    sim.at(3 * H)
    assert sim.sent() == [(2 * H, "x")]


def test_emit_and_webhook_actions() -> None:
    """emit and webhook steps produce their recorded actions with the step's properties."""
    steps = [
        {"emit": "Cart Stalled", "properties": {"level": 2}},
        {"webhook": "https://hooks.example/cart", "properties": {"channel": "sms"}},
    ]
    sim = Sim(rules(flow(steps)))
    actions = sim.at(0, ev("Signed Up"))
    run_id = sim.started()[0].id
    assert actions[1:3] == [
        EmitEvent(run_id, 0, "u:u1", "Cart Stalled", {"level": 2}),
        CallWebhook(
            run_id,
            1,
            "u:u1",
            "https://hooks.example/cart",
            {"workflow": "w", "run": run_id, "step": 2, "channel": "sms"},
        ),
    ]
    assert isinstance(actions[3], EndRun) and actions[3].reason == "completed"


# --- A/B variants and holdout ----------------------------------------------------------------


def started(workflows: Workflows, person: str, at: float = 0) -> Sim:
    """A Sim of ``person`` after a Signed Up at ``at``."""
    sim = Sim(
        workflows, Person(f"u:{person}", email=f"{person}@example.com", consent="confirmed_opt_in")
    )
    sim.at(at, ev("Signed Up", user=person))
    return sim


def test_holdout_is_deterministic_per_person_and_recorded() -> None:
    """The same person is always in (or out of) the holdout; held-out runs send nothing."""
    wf = rules(flow([{"send": "welcome"}, {"send": "again"}], holdout=10), policy=NO_CAP)
    held = [p for p in (f"p{i}" for i in range(3000)) if started(wf, p).started()[0].holdout]
    assert 0.08 < len(held) / 3000 < 0.12
    sim = started(wf, held[0])
    assert sim.sent() == [] and sim.skipped() == [(0, "holdout"), (0, "holdout")]
    sim.at(1 * D, ev("Signed Up", user=held[0]))
    assert [r.holdout for r in sim.started()] == [True, True]
    free = next(f"p{i}" for i in range(3000) if f"p{i}" not in held)
    assert [t for _, t in started(wf, free).sent()] == ["welcome", "again"]


def test_variants_are_deterministic_spread_by_weight_and_recorded() -> None:
    """A person gets the same arm every time; arms spread by weight; run.variant records it."""
    steps = [
        {"variant": [{"wait": "1h", "weight": 3}, {"wait": "3h", "weight": 1}]},
        {"variant": [{"send": "red", "name": "red"}, {"send": "blue", "name": "blue"}]},
    ]
    wf = rules(flow(steps), policy=NO_CAP)
    arms: Counter[tuple[float, str]] = Counter()
    for i in range(2000):
        sim = started(wf, f"p{i}")
        sim.at(1 * D)
        ((when, template),) = sim.sent()
        ended = [a for _, a in sim.log if isinstance(a, EndRun)][0]
        assert ended.run.variant == f"1:{'A' if when == H else 'B'},2:{template}"
        arms[(when, template)] += 1
    assert 0.71 < (arms[(H, "red")] + arms[(H, "blue")]) / 2000 < 0.79
    assert 0.46 < (arms[(H, "red")] + arms[(3 * H, "red")]) / 2000 < 0.54
    again = started(wf, "p7", at=2 * D)
    again.at(3 * D)
    first = started(wf, "p7")
    first.at(1 * D)
    assert [(t % D, name) for t, name in again.sent()] == first.sent()


BANDIT = flow(
    [
        {
            "variant": [{"send": "red", "name": "red"}, {"send": "blue", "name": "blue"}],
            "selection": "bandit",
            "floor": 0.05,
        }
    ]
)
BLUE_WINS = {("w", 0, "red"): (1000, 20), ("w", 0, "blue"): (1000, 80)}
RED_WINS = {("w", 0, "red"): (1000, 80), ("w", 0, "blue"): (1000, 20)}


def person(name: str) -> Person:
    return Person(f"u:{name}", email=f"{name}@example.com", consent="confirmed_opt_in")


def test_bandit_sends_most_people_the_better_variant_and_replays_the_same() -> None:
    """With blue clicked 8% and red 2%, about all but the floor get blue; each decision is the
    same when made again; without counts the split is about even."""
    wf = rules(BANDIT, policy=NO_CAP)
    picks: Counter[tuple[str, str]] = Counter()
    for i in range(1000):
        facts = Facts(person(f"p{i}"))
        signed_up = ev("Signed Up", user=f"p{i}")
        for counts, label in ((BLUE_WINS, "counted"), ({}, "none")):
            actions = decide(wf, signed_up, facts, START, tallies=counts)
            assert actions == decide(wf, signed_up, facts, START, tallies=counts)
            (send,) = [a for a in actions if isinstance(a, SendMail)]
            (ended,) = [a for a in actions if isinstance(a, EndRun)]
            assert send.variant == send.template and ended.run.variant == f"1:{send.template}"
            picks[(label, send.template)] += 1
    assert picks[("counted", "blue")] > 930 and picks[("counted", "red")] > 15
    assert 440 < picks[("none", "blue")] < 560


def test_bandit_arm_is_sticky_within_the_run() -> None:
    """A send held back by quiet hours keeps the arm it was given, whatever the counts say
    when it goes."""
    quiet = Policy(frequency_cap_s=0.0, quiet_hours=(9 * 60, 11 * 60))
    wf = rules(BANDIT, policy=quiet)
    for i in range(40):
        facts = Facts(person(f"p{i}"))
        first = decide(wf, ev("Signed Up", user=f"p{i}"), facts, START, tallies=RED_WINS)
        (held,) = [a.run for a in first if isinstance(a, UpdateRun)]
        assert not any(isinstance(a, SendMail) for a in first)
        later = decide(
            wf, TimerFired(held.id, 0), Facts(facts.person, (held,)), START + H, tallies=BLUE_WINS
        )
        (send,) = [a for a in later if isinstance(a, SendMail)]
        assert f"1:{send.template}" == held.variant


def test_variant_of_weight_zero_is_never_picked() -> None:
    """An arm with weight 0 (switched off) gets nobody."""
    steps = [
        {"variant": [{"send": "off", "weight": 0}, {"send": "on"}, {"send": "x", "weight": 0}]}
    ]
    wf = rules(flow(steps))
    assert {t for i in range(200) for _, t in started(wf, f"p{i}").sent()} == {"on"}


def test_variant_of_wait_inactive_rearms_with_its_own_delay() -> None:
    """Activity re-arms an A/B'd inactivity wait with the person's arm of the delay."""
    steps = [
        {"variant": [{"wait_inactive": "1h", "name": "s"}, {"wait_inactive": "3h", "name": "l"}]},
        {"send": "x"},
    ]
    wf = rules(flow(steps))
    delays = set()
    for person in [f"p{i}" for i in range(12)]:
        sim = started(wf, person)
        delay = sim.timers[sim.runs()[0].id][1] - START
        sim.at(30 * M, ev("Product Viewed", user=person))
        assert sim.timers[sim.runs()[0].id][1] - START == 30 * M + delay
        delays.add(delay)
    assert delays == {H, 3 * H}


def test_variant_of_wait_until_waits_for_the_persons_event() -> None:
    """An A/B'd wait_until is met by the event of the person's arm only."""
    steps = [
        {
            "variant": [{"wait_until": "Email Clicked"}, {"wait_until": "Email Opened"}],
            "timeout": "1d",
        },
        {"if": "run.wait_met", "send": "met"},
    ]
    wf = rules(flow(steps))
    arms = set()
    for person in [f"p{i}" for i in range(12)]:
        sim = started(wf, person)
        arms.add(arm := sim.runs()[0].variant)
        awaited, other = ("Email Clicked", "Email Opened")[:: 1 if arm == "1:A" else -1]
        sim.at(1 * H, ev(other, user=person))
        assert sim.sent() == []
        sim.at(2 * H, ev(awaited, user=person))
        assert sim.sent() == [(2 * H, "met")]
    assert arms == {"1:A", "1:B"}


# --- mail policy: verified email, frequency cap, quiet hours ---------------------------------


def test_no_verified_email_skips_the_send() -> None:
    """A person without a verified address gets a recorded skip, not a mail."""
    sim = Sim(rules(flow([{"send": "x"}])), Person("u:u1"))
    sim.at(0, ev("Signed Up", traits={"email": "claimed@example.com"}))
    assert sim.facts.person.email == "claimed@example.com"  # a server event is trusted
    sim = Sim(rules(flow([{"send": "x"}])), Person("u:u1"))
    raw = {"type": "track", "event": "Signed Up", "messageId": "b1", "anonymousId": "a1",
           "traits": {"email": "claimed@example.com"}}  # fmt: skip
    sim.at(0, parse_event(raw, IngestConfig(), source="browser"))
    assert sim.facts.person.email is None
    assert sim.sent() == [] and sim.skipped() == [(0, "no verified email")]


def test_frequency_cap_skips_a_second_marketing_mail() -> None:
    """Within 16 h a second marketing mail is skipped with the reason; after, it goes."""
    a = flow([{"send": "a"}], name="a")
    b = flow([{"send": "b"}], name="b", trigger="Product Viewed")
    sim = Sim(rules(a, b))
    sim.at(0, ev("Signed Up"))
    sim.at(16 * H - 1, ev("Product Viewed"))
    sim.at(16 * H, ev("Product Viewed"))
    assert sim.sent() == [(0, "a"), (16 * H, "b")]
    assert sim.skipped() == [(16 * H - 1, "frequency cap")]


def test_transactional_mail_ignores_and_does_not_count_for_the_cap() -> None:
    """Transactional mail ignores the cap and quiet hours, and starts no cap window."""
    a = flow([{"send": "a"}], name="a")
    receipt = flow([{"send": "receipt"}], name="r", trigger="Order Completed", transactional=True)
    b = flow([{"send": "b"}], name="b", trigger="Product Viewed")
    sim = Sim(rules(a, receipt, b, policy=Policy(quiet_hours=(0, 24 * 60 - 1))))
    sim.at(0, ev("Order Completed"))  # quiet hours too: transactional mail goes at once
    assert sim.facts.last_sent is None
    sim.at(1 * H, ev("Signed Up"))
    assert sim.sent() == [(0, "receipt")]  # a: held by the (near) all-day quiet hours
    sim = Sim(rules(a, receipt, b))
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, ev("Order Completed"))
    sim.at(16 * H, ev("Product Viewed"))
    assert sim.sent() == [(0, "a"), (1 * H, "receipt"), (16 * H, "b")]


def local(zone: str, *parts: int) -> float:
    """The POSIX time of a wall-clock time in ``zone``."""
    year, month, day, hour, minute = parts
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


NIGHT = (22 * 60, 8 * 60)


@pytest.mark.parametrize(
    ("wall", "resume"),
    [
        ((2026, 3, 3, 23, 30), (2026, 3, 4, 8, 0)),  # before midnight: next morning
        ((2026, 3, 4, 1, 0), (2026, 3, 4, 8, 0)),  # after midnight: this morning
        ((2026, 3, 4, 22, 0), (2026, 3, 5, 8, 0)),  # the window's first minute
        ((2026, 3, 4, 7, 59), (2026, 3, 4, 8, 0)),
        ((2026, 3, 4, 8, 0), None),  # the window's end is outside it
        ((2026, 3, 4, 12, 0), None),
        ((2026, 3, 28, 23, 0), (2026, 3, 29, 8, 0)),  # Berlin springs forward: an 8 h night
        ((2026, 10, 24, 23, 0), (2026, 10, 25, 8, 0)),  # and falls back: a 10 h night
    ],
)
def test_quiet_until_across_midnight_and_dst(wall: tuple[int, ...], resume: Any) -> None:
    """Quiet hours 22:00-08:00 in Europe/Berlin end at 08:00 local, DST days included."""
    zone = ZoneInfo("Europe/Berlin")
    got = quiet_until(local("Europe/Berlin", *wall), NIGHT, zone)
    assert got == (None if resume is None else local("Europe/Berlin", *resume))


def test_quiet_until_dst_lengths_are_real_hours() -> None:
    """From 23:00 the spring-forward night lasts 8 real hours, the fall-back night 10."""
    zone = ZoneInfo("Europe/Berlin")
    spring = local("Europe/Berlin", 2026, 3, 28, 23, 0)
    fall = local("Europe/Berlin", 2026, 10, 24, 23, 0)
    assert quiet_until(spring, NIGHT, zone) == spring + 8 * H
    assert quiet_until(fall, NIGHT, zone) == fall + 10 * H


def test_quiet_until_day_window_and_empty_window() -> None:
    """A window within one day works; an empty window (start == end) is never quiet."""
    zone = ZoneInfo("Europe/Berlin")
    assert quiet_until(local("Europe/Berlin", 2026, 3, 4, 13, 0), (12 * 60, 14 * 60), zone) == (
        local("Europe/Berlin", 2026, 3, 4, 14, 0)
    )
    assert quiet_until(local("Europe/Berlin", 2026, 3, 4, 11, 0), (12 * 60, 14 * 60), zone) is None
    assert quiet_until(START, (600, 600), zone) is None
    assert quiet_until(START, None, zone) is None


def test_quiet_until_end_in_the_skipped_dst_hour() -> None:
    """An end at 02:30 on the spring-forward day is read with the offset before the jump."""
    zone = ZoneInfo("Europe/Berlin")  # 02:30 CET does not exist: 03:30 CEST is the same instant
    got = quiet_until(local("Europe/Berlin", 2026, 3, 29, 1, 0), (22 * 60, 2 * 60 + 30), zone)
    assert got == local("Europe/Berlin", 2026, 3, 29, 3, 30)


def test_quiet_hours_in_the_persons_time_zone() -> None:
    """A person whose zone is known (context.timezone) gets mail after their own night."""
    policy = Policy(quiet_hours=NIGHT, time_zone="UTC")
    at = local("America/New_York", 2026, 3, 4, 6, 0) - START  # 11:00 UTC: day in UTC
    policy = replace(policy, frequency_cap_s=0)
    sim = Sim(rules(flow([{"send": "x"}, {"send": "y"}]), policy=policy))
    sim.at(at, ev("Signed Up", context={"timezone": "America/New_York"}))
    assert sim.facts.person.time_zone == "America/New_York"
    assert sim.sent() == [] and sim.runs()[0].step_kind == "send"
    sim.at(3 * D)
    morning = local("America/New_York", 2026, 3, 4, 8, 0) - START
    assert sim.sent() == [(morning, "x"), (morning, "y")]


def test_quiet_hours_fall_back_to_the_shops_zone() -> None:
    """Without a (valid) zone of the person, the policy's zone decides."""
    policy = Policy(quiet_hours=NIGHT, time_zone="Asia/Tokyo", frequency_cap_s=0)
    at = local("Asia/Tokyo", 2026, 3, 3, 2, 0) - START
    sim = Sim(rules(flow([{"send": "x"}]), policy=policy))
    sim.at(at, ev("Signed Up", context={"timezone": "Mars/Olympus"}))
    assert sim.facts.person.time_zone is None
    sim.at(2 * D)
    assert sim.sent() == [(local("Asia/Tokyo", 2026, 3, 3, 8, 0) - START, "x")]
    bad = Sim(rules(flow([{"send": "x"}]), policy=replace(policy, time_zone="Nowhere/Else")))
    bad.at(local("UTC", 2026, 3, 3, 23, 0) - START, ev("Signed Up"))  # both unknown: UTC
    bad.at(2 * D)
    assert bad.sent() == [(local("UTC", 2026, 3, 4, 8, 0) - START, "x")]


def test_quiet_hours_resume_rechecks_the_cap() -> None:
    """A send held by quiet hours is decided again in the morning, frequency cap included."""
    policy = Policy(quiet_hours=NIGHT, time_zone="UTC")
    a = flow([{"send": "a"}], name="a")
    b = flow([{"send": "b"}], name="b", trigger="Product Viewed")
    sim = Sim(rules(a, b, policy=policy))
    sim.at(local("UTC", 2026, 3, 3, 21, 0) - START, ev("Signed Up"))
    sim.at(local("UTC", 2026, 3, 3, 23, 0) - START, ev("Product Viewed"))
    sim.at(2 * D)
    assert [t for _, t in sim.sent()] == ["a"]
    assert [r for _, r in sim.skipped()] == ["frequency cap"]


# --- paused workflows and config changes -----------------------------------------------------


def test_paused_workflow_starts_no_run() -> None:
    """A trigger of a paused workflow starts nothing."""
    sim = Sim(rules({**CART, "paused": True}))
    assert sim.at(0, added()) == []


def test_paused_workflow_holds_due_steps_then_resumes() -> None:
    """A due step of a paused workflow is held and rechecked hourly; unpaused, it goes on."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    sim.rules = rules({**CART, "paused": True})
    sim.at(5 * H)
    run = sim.runs()[0]
    assert sim.sent() == [] and (run.step, run.due) == (0, START + 30 * M + 5 * H)
    sim.rules = rules(CART)
    sim.at(6 * H)
    assert sim.sent() == [(5 * H + 30 * M, "cart_reminder")]


def test_paused_wait_until_is_held_as_met() -> None:
    """The awaited event of a paused workflow is recorded as met; the run moves on when resumed."""
    steps = [{"wait_until": "Email Clicked", "timeout": "2d"}, {"if": "run.wait_met", "send": "m"}]
    sim = Sim(rules(flow(steps)))
    sim.at(0, ev("Signed Up"))
    sim.rules = rules(flow(steps, paused=True))
    sim.at(1 * H, ev("Email Clicked"))
    assert sim.runs()[0].wait_met and sim.sent() == []
    sim.at(3 * H)
    assert sim.sent() == []
    sim.rules = rules(flow(steps))
    sim.at(4 * H)
    assert sim.sent() == [(4 * H, "m")]


def test_config_change_keeps_runs_whose_step_kept_its_kind() -> None:
    """A run continues when its step still exists by position and kind (new values apply)."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    steps = [{"wait_inactive": "1h"}, {"send": "new_reminder"}]
    sim.rules = rules({**CART, "step": steps})
    sim.at(31 * M)
    assert sim.sent() == [(30 * M, "new_reminder")]


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        ([{"wait": "30m"}, {"send": "x"}], "config changed: step 1 is no longer a wait_inactive"),
        (None, "workflow removed from the config"),
    ],
)
def test_config_change_ends_runs_with_the_reason(steps: Any, reason: str) -> None:
    """A run whose step changed kind, or whose workflow is gone, ends when next touched."""
    for touch in (lambda sim: sim.at(1 * H), lambda sim: sim.at(1 * M, ev("Product Viewed"))):
        sim = Sim(rules(CART))
        sim.at(0, added())
        run_id = sim.runs()[0].id
        sim.rules = rules({**CART, "step": steps}) if steps else rules(flow([{"send": "x"}]))
        touch(sim)
        assert sim.ended == {run_id: reason} and sim.sent() == [] and sim.timers == {}


def test_config_change_ends_a_run_whose_step_was_removed() -> None:
    """A run waiting at step 3 of a workflow cut to two steps ends with the reason."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    sim.at(31 * M)
    sim.rules = rules({**CART, "step": CART["step"][:2]})
    sim.at(2 * D)
    assert list(sim.ended.values()) == ["config changed: step 3 was removed"]


def test_stale_timers_do_nothing() -> None:
    """A timer of an unknown run, or of a step the run has left, decides nothing."""
    sim = Sim(rules(CART))
    sim.at(0, added())
    run = sim.runs()[0]
    assert decide(sim.rules, TimerFired("no-such-run", 0), sim.facts, START + D) == []
    assert decide(sim.rules, TimerFired(run.id, 2), sim.facts, START + D) == []
    assert decide(sim.rules, TimerFired(run.id, 0), sim.facts, START + D) != []


# --- observe and names ------------------------------------------------------------------------


def test_observe_orders() -> None:
    """Orders count, add up (revenue, else total, else value; non-numbers are 0), and are timed."""
    person = Person("u:u1")
    for at, props in enumerate([{"revenue": 10}, {"total": 5.5}, {"value": 2},
                                {"revenue": "9"}, {"revenue": None, "total": 1}], 1):  # fmt: skip
        person = observe(person, ev("Order Completed", properties=props), float(at))
    assert person.orders_count == 5 and person.total_spent == 18.5
    assert person.last_order_at == 5.0 and person.order_times == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert person.orders_since(3.0) == 3


def test_observe_engagement_counts_only_human_signals() -> None:
    """Opens and clicks count, but machine-flagged ones (scanners, proxies) don't."""
    person = Person("u:u1")
    for name, machine in [("Email Opened", False), ("Email Opened", True),
                          ("Email Clicked", False), ("Email Clicked", True)]:  # fmt: skip
        person = observe(person, ev(name, properties={"machine": machine}), 1.0)
    assert (person.opens, person.clicks) == (1, 1)


def test_observe_time_zone_from_context_or_traits() -> None:
    """context.timezone or identify traits.timezone set the zone; unknown names are ignored."""
    person = observe(Person("u:u1"), ev("X", context={"timezone": "Europe/Berlin"}), 1.0)
    assert person.time_zone == "Europe/Berlin"
    person = observe(person, identify(timezone="Asia/Tokyo"), 2.0)
    assert person.time_zone == "Asia/Tokyo" and person.traits == {"timezone": "Asia/Tokyo"}
    for bad in ("", "Nowhere/Else", "../../etc/passwd", "zone.tab", "Europe", "a" * 5000, 7):
        assert observe(person, ev("X", context={"timezone": bad}), 3.0).time_zone == "Asia/Tokyo"


def test_observe_traits_email_seen_and_history() -> None:
    """Identify merges traits (email apart, if verified); seen times move; history is bounded."""
    person = observe(Person("u:u1"), identify(plan="pro", email="Ann@Example.com"), 5.0)
    assert person.traits == {"plan": "pro"} and person.email == "ann@example.com"
    assert (person.first_seen, person.last_seen) == (5.0, 5.0)
    person = observe(person, identify(vip=True), 3.0)  # late: first seen moves, last doesn't
    assert person.traits == {"plan": "pro", "vip": True}
    assert (person.first_seen, person.last_seen) == (3.0, 5.0)
    for i in range(HISTORY_LIMIT + 5):
        person = observe(person, ev("Product Viewed"), 10.0 + i)
    assert (
        len(person.history) == HISTORY_LIMIT and person.history[-1][1] == 10.0 + HISTORY_LIMIT + 4
    )
    assert person.events_since("Product Viewed", 10.0 + HISTORY_LIMIT) == 5


def test_observe_can_leave_the_history_alone() -> None:
    """Without history (no condition reads it), observe keeps the recent events as they were."""
    person = observe(
        Person("u:u1", history=History([("X", 1.0)])), ev("Product Viewed"), 5.0, history=False
    )
    assert list(person.history) == [("X", 1.0)] and person.last_seen == 5.0


def test_memory_recalls_trims_and_drops_the_least_recent() -> None:
    """The memory gives back what it kept (history trimmed to the window once something in it
    is older), reports the persons it lacks, and keeps what fits its budget."""
    memory = Memory(budget=2 * PERSON_BYTES + 3 * EVENT_BYTES)  # a and b fit, not a third
    old = Facts(Person("a", history=History([("X", 5.0), ("Y", 20.0), ("Z", 30.0)])))
    memory.keep({"a": (old, 5.0), "b": (Facts(Person("b")), 0.0)})
    found, missing = memory.recall(["a", "c"], None)
    assert found == {"a": (old, 5.0)} and missing == ["c"]
    found, _ = memory.recall(["a"], 10.0)
    assert found["a"] == (Facts(Person("a", history=History([("Y", 20.0), ("Z", 30.0)]))), 20.0)
    assert memory.recall(["a"], 40.0)[0]["a"] == (Facts(Person("a")), 40.0)
    memory.keep({"a": (old, 5.0)})  # refreshed: "b" is now the least recent
    memory.keep({"c": (Facts(Person("c")), 0.0)})
    assert list(memory.entries) == ["a", "c"]
    memory.forget(["a", "nobody"])
    assert list(memory.entries) == ["c"]
    memory.clear()
    assert not memory.entries


def test_event_name_per_type() -> None:
    """Tracks are named by their event; other types by a fixed name per type."""
    assert event_name(ev("Product Added")) == "Product Added"
    assert event_name(ev("Home", type="page")) == "Page Viewed"
    assert event_name(identify(plan="x")) == "Identify"


# --- properties -------------------------------------------------------------------------------

PROPERTY_RULES = rules(
    {
        **CART,
        "reentry": "2h",
        "holdout": 20,
        "step": [
            {"variant": [{"wait_inactive": "30m"}, {"wait_inactive": "2h"}]},
            *CART["step"][1:],
        ],
    },
    {
        "name": "browse",
        "trigger": "Product Viewed",
        "exit_on": ["Order Completed", "Product Added"],
        "step": [{"wait_inactive": "1h"}, {"send": "browse"}, {"wait": "1d"}, {"emit": "Done"}],
    },
)
OPS = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["A", "B", "C", None])),
    st.tuples(st.just("view"), st.none()),
    st.tuples(st.just("order"), st.sampled_from(["A", "B", None])),
    st.tuples(st.just("click"), st.none()),
    st.tuples(st.just("fire"), st.integers(0, 5)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(OPS, st.integers(0, 2 * 86400)), max_size=30))
def test_random_sequences_keep_the_invariants(ops: list[tuple[tuple[str, Any], int]]) -> None:
    """Random events and timer fires keep one open run per key and every open run armed."""
    # Sim.decide also checks, at every step, that decide is deterministic and that no action
    # (a SendMail above all) names a run that has ended (by its exit event or otherwise).
    sim = Sim(PROPERTY_RULES)
    ever: list[str] = []
    offset = 0.0
    for (op, arg), delta in ops:
        offset += delta
        if op == "fire":
            sim.at(offset)
            ids = ever + ["unknown"]
            run = {r.id: r for r in sim.runs()}.get(ids[arg % len(ids)])
            sim.timers.pop(ids[arg % len(ids)], None)  # fired early (or stale): any time at all
            sim.decide(TimerFired(ids[arg % len(ids)], run.step if run else arg))
        elif op == "add":
            sim.at(offset, added(arg))
        elif op == "order":
            sim.at(offset, ev("Order Completed", properties={"cart_id": arg} if arg else {}))
            exited = [r for r in sim.runs() if arg is None or r.key in ("", arg)]
            assert exited == []  # browse runs have the key "": every order ends them
        else:
            sim.at(offset, ev("Product Viewed" if op == "view" else "Email Clicked"))
        ever += [r.id for r in sim.runs() if r.id not in ever]
        keys = [(r.workflow, r.person_id, r.key) for r in sim.runs()]
        assert len(keys) == len(set(keys))
        assert {r.id for r in sim.runs()} == set(sim.timers)
        assert all(sim.timers[r.id] == (r.step, r.due) for r in sim.runs())


def test_scheduled_sweep_starts_runs_only_in_the_segment() -> None:
    """Scheduled(workflow) starts a run when `where` holds for the person, once per reentry."""
    sweep = {
        "name": "win_back",
        "schedule": "1d",
        "where": "person.orders_count > 0",
        "reentry": "30d",
        "step": [{"send": "we_miss_you"}],
    }
    compiled = rules(sweep, {**sweep, "name": "paused", "paused": True})
    buyer = Facts(Person("u:u1", email="a@b.example", orders_count=1, consent="confirmed_opt_in"))
    actions = decide(compiled, Scheduled("win_back"), buyer, START)
    assert [type(a).__name__ for a in actions] == ["StartRun", "SendMail", "EndRun"]
    ended = Facts(buyer.person, last_ended={("win_back", ""): START})
    assert decide(compiled, Scheduled("win_back"), ended, START + 86400) == []
    stranger = Facts(Person("u:u2", email="c@d.example"))
    assert decide(compiled, Scheduled("win_back"), stranger, START) == []
    assert decide(compiled, Scheduled("paused"), buyer, START) == []
    assert decide(compiled, Scheduled("unknown"), buyer, START) == []


def test_consent_comes_only_from_trusted_sources_or_the_persons_own_verified_email() -> None:
    """The backend, rtserver's own mail events and a verified identify set consent;
    an order makes a customer (soft opt-in); a browser cannot opt anybody in, and a browser
    without the user's userHash cannot change a known user's consent."""
    person = Person("u:u1")
    assert observe(person, ev("Order Completed"), 1.0).consent == "soft_opt_in_customer"
    opted = observe(person, identify(consent="confirmed_opt_in"), 1.0)
    assert opted.consent == "confirmed_opt_in"
    assert observe(opted, ev("Order Completed"), 2.0).consent == "confirmed_opt_in"
    assert observe(opted, ev("Email Unsubscribed"), 2.0).consent == "unsubscribed"
    assert observe(person, ev("Email Confirmed"), 2.0).consent == "confirmed_opt_in"
    assert observe(person, identify(consent="whatever"), 2.0).consent == "none"
    raw = {"type": "identify", "messageId": "b1", "userId": "u1", "anonymousId": "a1"}
    claimed = {**raw, "traits": {"email": "eve@example.com", "consent": "confirmed_opt_in"}}
    browser = parse_event(claimed, IngestConfig(), source="browser")
    assert observe(person, browser, 3.0).consent == "none"  # email not verified
    verified = verify_identity(
        parse_event(
            {**claimed, "context": {"emailHash": sign_identity("s" * 32, "eve@example.com")}},
            IngestConfig(),
            source="browser",
        ),
        "s" * 32,
    )
    # The browser's own anonymous profile takes it; a known user's, without the user's
    # userHash, does not (knowing an anonymousId proves nothing).
    assert observe(Person("a:a1"), verified, 3.0).consent == "confirmed_opt_in"
    assert observe(person, verified, 3.0).consent == "none"
    tracked = parse_event({**raw, "type": "track", "event": "Email Confirmed"}, IngestConfig(),
                          source="browser")  # fmt: skip
    assert observe(person, tracked, 3.0).consent == "none"


def test_marketing_mail_needs_consent_but_transactional_does_not() -> None:
    """Without marketing consent a send is skipped with the reason; a transactional one goes."""
    flow = {"name": "w", "trigger": "Signed Up", "step": [{"send": "welcome"}]}
    plain = Facts(Person("u:u1", email="ann@example.com"))
    actions = decide(rules(flow), ev("Signed Up"), plain, START)
    assert [a.reason for a in actions if isinstance(a, SkipStep)] == ["no marketing consent"]
    actions = decide(rules({**flow, "transactional": True}), ev("Signed Up"), plain, START)
    assert any(isinstance(a, SendMail) for a in actions)


def test_machine_email_events_are_no_engagement() -> None:
    """A link scanner's click (flagged ``machine``) neither meets a wait_until nor triggers."""
    flow = {
        "name": "w",
        "trigger": "Email Opened",
        "step": [{"wait_until": "Email Clicked", "timeout": "1h"}, {"send": "test"}],
    }
    sim = Sim(rules(flow))
    sim.at(0, ev("Email Opened", properties={"machine": True}))
    assert sim.runs() == []
    sim.at(1, ev("Email Opened", properties={"machine": False}))
    assert len(sim.runs()) == 1
    sim.at(2, ev("Email Clicked", properties={"machine": True}))
    assert sim.sent() == [] and not sim.runs()[0].wait_met
    sim.at(3, ev("Email Clicked"))
    assert sim.sent() == [(3, "test")]


# --- send time: `send_time = "optimal"` ----------------------------------------------------

EVENING = 19  # the person reads mail at 19:00 UTC
OPTIMAL = flow([{"send": "x", "send_time": "optimal", "within": "24h"}], exit_on=["Unsubscribed"])
TIMED = Policy(frequency_cap_s=0.0, send_timing=SendTiming(exploration=0.0, control=0.0))


def reader(
    hour: int | tuple[int, ...] = EVENING, zone: str | None = "UTC", engagements: int = 20
) -> Person:
    """A person with ``engagements`` opens at ``hour`` (UTC; several: in turn) on the days
    before START."""
    hours = (hour,) if isinstance(hour, int) else hour
    additions = []
    for i in range(engagements):
        day = START - (i + 1) * D
        at = day - day % D + hours[i % len(hours)] * H
        additions.append((hour_of_week(at, ZoneInfo(zone or "UTC")), 1.0, at))
    engagement = engaged(Engagement(), sorted(additions, key=lambda a: a[2]), 60 * D)
    return Person(
        "u:u1", email="ann@example.com", consent="confirmed_opt_in", time_zone=zone,
        engagement=engagement,
    )  # fmt: skip


def timing_of(sim: Sim) -> dict[str, Any]:
    """The timing detail of the one mail sent."""
    (mail,) = [a for _, a in sim.log if isinstance(a, SendMail)]
    detail: dict[str, Any] = json.loads(mail.timing)
    return detail


def test_optimal_send_waits_for_the_person_best_hour() -> None:
    """Signed up at 10:00, reads mail at 19:00: the mail goes at 19:00, with its reason."""
    sim = Sim(rules(OPTIMAL, policy=TIMED), reader())
    sim.at(0, ev("Signed Up"))
    (run,) = sim.runs()
    assert sim.sent() == [] and sim.timers == {run.id: (0, START + 9 * H)}
    assert json.loads(run.timing)["hour"] == "Mon 19:00"
    sim.at(9 * H)
    assert sim.sent() == [(9 * H, "x")]
    detail = timing_of(sim)
    assert detail["arm"] == "optimal" and detail["at"] == START + 9 * H
    assert detail["how"] == "mean" and detail["top"][0][0] == "Mon 19:00"
    assert sim.runs() == [] and sim.ended == {run.id: "completed"}


def test_optimal_send_at_the_current_hour_goes_now() -> None:
    """The best hour is the current one: the mail goes at once, its timing still noted."""
    soon = flow([{"send": "x", "send_time": "optimal", "within": "12h"}])
    sim = Sim(rules(soon, policy=TIMED), reader(hour=10))
    sim.at(0, ev("Signed Up"))
    assert sim.sent() == [(0, "x")] and timing_of(sim)["at"] == START


def test_control_share_goes_at_once() -> None:
    """The control arm sends at once (same step), recorded as the control."""
    policy = replace(TIMED, send_timing=SendTiming(control=1.0))
    sim = Sim(rules(OPTIMAL, policy=policy), reader())
    sim.at(0, ev("Signed Up"))
    assert sim.sent() == [(0, "x")] and timing_of(sim) == {"arm": "control"}


def test_control_share_is_about_its_share() -> None:
    """About 10 % of runs are the control, by run id."""
    policy = replace(TIMED, send_timing=SendTiming(exploration=0.0, control=0.1))
    compiled = rules(OPTIMAL, policy=policy)
    arms = Counter()
    for i in range(1000):
        person = replace(reader(), id=f"u:{i}")
        actions = decide(compiled, ev("Signed Up", user=str(i)), Facts(person), START)
        arms["control" if any(isinstance(a, SendMail) for a in actions) else "optimal"] += 1
    assert 60 < arms["control"] < 140


def test_quiet_hours_move_the_chosen_time() -> None:
    """The best hour (23:00) is in quiet hours (22:00-08:00): the best allowed one goes (21:00,
    between the person's two hours)."""
    policy = replace(TIMED, quiet_hours=NIGHT)
    sim = Sim(rules(OPTIMAL, policy=policy), reader(hour=(23, 23, 20)))
    sim.at(0, ev("Signed Up"))
    ((_, due),) = sim.timers.values()
    assert due == START + 11 * H
    sim.at(due - START)
    assert len(sim.sent()) == 1


def test_a_window_all_quiet_sends_when_the_quiet_hours_end() -> None:
    """Within 2 h from 23:00, all quiet: the send goes at 08:00, the first allowed moment."""
    late = flow([{"send": "x", "send_time": "optimal", "within": "2h"}])
    sim = Sim(rules(late, policy=replace(TIMED, quiet_hours=NIGHT)), reader(), START + 13 * H)
    sim.at(13 * H, ev("Signed Up"))
    ((_, due),) = sim.timers.values()
    assert due == START + 22 * H  # Tuesday 08:00 UTC
    sim.at(22 * H)
    assert sim.sent() == [(22 * H, "x")] and timing_of(sim)["reason"] == "window quiet"


def test_exit_before_the_chosen_time_cancels_the_send() -> None:
    """An exit event while the send waits ends the run and cancels its timer."""
    sim = Sim(rules(OPTIMAL, policy=TIMED), reader())
    sim.at(0, ev("Signed Up"))
    sim.at(2 * H, ev("Unsubscribed"))
    sim.at(D)
    assert sim.sent() == [] and sim.timers == {}
    assert list(sim.ended.values()) == ["exit on Unsubscribed"]


def test_caps_and_consent_are_checked_when_the_send_is_decided() -> None:
    """The frequency cap measures from the chosen time: a mail sent meanwhile skips it."""
    other = flow([{"send": "y"}], name="other", trigger="Product Viewed")
    policy = replace(TIMED, frequency_cap_s=16 * H)
    sim = Sim(rules(OPTIMAL, other, policy=policy), reader())
    sim.at(0, ev("Signed Up"))
    sim.at(1 * H, ev("Product Viewed"))
    sim.at(D)
    assert sim.sent() == [(1 * H, "y")] and sim.skipped() == [(9 * H, "frequency cap")]
    assert sim.runs() == []


def test_a_timed_send_held_by_a_paused_workflow_is_not_chosen_again() -> None:
    """Paused when the chosen time comes: it waits, then sends (no second choice)."""
    sim = Sim(rules(OPTIMAL, policy=TIMED), reader())
    sim.at(0, ev("Signed Up"))
    sim.rules = rules({**OPTIMAL, "paused": True}, policy=TIMED)
    sim.at(9 * H)
    assert sim.sent() == []
    sim.rules = rules(OPTIMAL, policy=TIMED)
    sim.at(10 * H)
    assert sim.sent() == [(10 * H, "x")] and timing_of(sim)["at"] == START + 9 * H


def test_cold_start_follows_the_shop_prior() -> None:
    """No history: the shop's best hour (from the prior decide is given)."""
    shop = reader(hour=15).engagement
    person = Person("u:u1", email="ann@example.com", consent="confirmed_opt_in")
    compiled = rules(OPTIMAL, policy=TIMED)
    actions = decide(compiled, ev("Signed Up"), Facts(person), START, prior_of(shop))
    (timer,) = [a for a in actions if isinstance(a, ScheduleTimer)]
    assert timer.due == START + 5 * H


@settings(max_examples=150, deadline=None)
@given(
    now=st.floats(START, START + 365 * D),
    within_h=st.integers(1, 72),
    quiet=st.one_of(st.none(), st.tuples(st.integers(0, 1439), st.integers(0, 1439))),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    hour=st.integers(0, 23),
    engagements=st.integers(0, 30),
)
def test_the_chosen_time_lies_in_the_window_or_just_after_it(
    now: float,
    within_h: int,
    quiet: tuple[int, int] | None,
    zone: str,
    hour: int,
    engagements: int,
) -> None:
    """The send goes within [now, now + within], outside quiet hours; when the whole window
    is quiet, at the first allowed moment after it."""
    quiet = None if quiet is None or quiet[0] == quiet[1] else quiet
    policy = replace(TIMED, quiet_hours=quiet, send_timing=SendTiming(control=0.0))
    step = {"send": "x", "send_time": "optimal", "within": f"{within_h}h"}
    sim = Sim(rules(flow([step]), policy=policy), reader(hour, zone, engagements), now)
    sim.decide(ev("Signed Up"))
    sent = [t for t, a in sim.log if isinstance(a, SendMail)]
    if not sent:
        ((_, due),) = sim.timers.values()
        sim.at(due - START)
        sent = [t for t, a in sim.log if isinstance(a, SendMail)]
    (at,) = sent
    end = now + within_h * H
    local = ZoneInfo(zone)
    assert quiet_until(at, quiet, local) is None
    if now <= at <= end:
        return
    first = now
    while (resume := quiet_until(first, quiet, local)) is not None:
        first = resume
    assert at > end and at == first  # the window was all quiet


def browser_ev(name: str, type: str = "track", **fields: Any) -> Event:
    """A browser's event of the anonymous ``a1`` (what it says of itself is only claimed)."""
    raw: dict[str, Any] = {"type": type, "messageId": f"b{next(IDS)}", "anonymousId": "a1"}
    if name:
        raw["event"] = name
    return parse_event({**raw, **fields}, IngestConfig(), source="browser")


def signed_up_claiming() -> list[Event]:
    """A sign-up form: identify with a claimed address, then Signed Up."""
    claim = browser_ev("", type="identify", traits={"email": "eve@example.com"})
    return [claim, browser_ev("Signed Up")]


def confirmed() -> list[Event]:
    """What ``POST /confirm/<token>`` records: the verified address, then Email Confirmed."""
    verified = {"email": "eve@example.com", "consent": "confirmed_opt_in"}
    return [
        person_event("a:a1", f"c{next(IDS)}", None, kind="identify", traits=verified),
        person_event("a:a1", f"c{next(IDS)}", "Email Confirmed", {}),
    ]


def test_a_send_to_a_claimed_address_waits_for_its_confirmation() -> None:
    """The welcome to an address awaiting its double opt-in waits (a timer at the step, the
    run saying so), and is decided when the address is confirmed: sent then, the rest of the
    workflow from then."""
    sim = Sim(rules(flow([{"send": "welcome"}, {"wait": "1d"}, {"send": "tips"}])), Person("a:a1"))
    for event in signed_up_claiming():
        sim.at(0, event)
    assert sim.facts.person.confirming
    (run,) = sim.runs()
    assert (run.step, run.step_kind, run.due) == (0, "send", START + 7 * D)
    assert json.loads(run.timing) == {"waiting": "confirmation"}
    assert sim.sent() == [] and sim.skipped() == []
    for event in confirmed():
        sim.at(2 * D, event)
    assert sim.sent() == [(2 * D, "welcome")]
    (run,) = sim.runs()
    assert run.timing == "" and run.due == START + 3 * D
    sim.at(8 * D)
    assert sim.sent() == [(2 * D, "welcome"), (3 * D, "tips")] and sim.skipped() == []


def test_a_confirmation_wait_that_runs_out_ends_the_run_saying_so() -> None:
    """Unconfirmed after ``mail.confirm_wait``: the step is skipped and the run ends, both
    with the reason."""
    policy = Policy(confirm_wait_s=2 * D)
    sim = Sim(rules(flow([{"send": "welcome"}]), policy=policy), Person("a:a1"))
    for event in signed_up_claiming():
        sim.at(0, event)
    sim.at(2 * D - 1, browser_ev("Page Viewed", type="page"))  # nothing to resume
    assert len(sim.runs()) == 1
    sim.at(2 * D)
    assert sim.runs() == [] and sim.sent() == []
    assert sim.skipped() == [(2 * D, "address not confirmed within 2d")]
    assert list(sim.ended.values()) == ["address not confirmed within 2d"]


def test_an_address_verified_otherwise_is_sent_to_when_the_wait_ends() -> None:
    """A person verified without an event the run saw (say, by another device's identify
    decided elsewhere) gets the send when the timer fires."""
    sim = Sim(rules(flow([{"send": "welcome"}])), Person("a:a1"))
    for event in signed_up_claiming():
        sim.at(0, event)
    person = replace(sim.facts.person, email="eve@example.com", consent="confirmed_opt_in")
    sim.facts = replace(sim.facts, person=person)
    sim.at(7 * D)
    assert sim.sent() == [(7 * D, "welcome")] and sim.runs() == []


def test_no_confirmation_wait_and_no_claim_skip_at_once() -> None:
    """With ``mail.confirm_wait`` 0, or no address claimed, a send without a verified email is
    skipped as before; a paused workflow's waiting run is not sent on confirmation."""
    policy = Policy(confirm_wait_s=0.0)
    sim = Sim(rules(flow([{"send": "welcome"}]), policy=policy), Person("a:a1"))
    for event in signed_up_claiming():
        sim.at(0, event)
    assert sim.skipped() == [(0, "no verified email")]
    sim = Sim(rules(flow([{"send": "welcome"}])), Person("a:a1"))
    sim.at(0, browser_ev("Signed Up"))
    assert sim.skipped() == [(0, "no verified email")]
    sim = Sim(rules(flow([{"send": "welcome"}])), Person("a:a1"))
    for event in signed_up_claiming():
        sim.at(0, event)
    sim.rules = rules(flow([{"send": "welcome"}], paused=True))
    for event in confirmed():
        sim.at(1 * D, event)
    assert sim.sent() == [] and len(sim.runs()) == 1


@pytest.mark.parametrize(
    ("wait_s", "said"), [(7 * D, "7d"), (36 * H, "36h"), (90 * M, "90m"), (45.5, "45.5s")]
)
def test_the_confirmation_wait_is_named_as_configured(wait_s: float, said: str) -> None:
    """The reason names the wait in the largest whole unit, as a config would write it."""
    sim = Sim(rules(flow([{"send": "welcome"}]), policy=Policy(confirm_wait_s=wait_s)))
    sim.facts = replace(sim.facts, person=Person("a:a1"))
    for event in signed_up_claiming():
        sim.at(0, event)
    sim.at(wait_s)
    assert sim.skipped() == [(wait_s, f"address not confirmed within {said}")]
