"""Workflow definitions: compiled once at start; every mistake named by workflow and step."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rtserver.engine.definitions import Policy, Workflow, Workflows, compile_workflows, step_value
from rtserver.errors import ConfigError
from tests.support.workflows import cart_workflow

TEMPLATES = frozenset({"cart_reminder", "cart_reminder_2"})
BANDIT_ARMS = [{"send": "cart_reminder"}, {"send": "cart_reminder_2"}]


def cart(**changes: Any) -> dict[str, Any]:
    """The shared cart workflow (:mod:`tests.support.workflows`), named 'cart', with ``changes``."""
    return cart_workflow(name="cart", **changes)


def with_step(step: Any, **changes: Any) -> dict[str, Any]:
    """A workflow whose only step is ``step``."""
    return cart(step=[step], **changes)


def error_of(*raw: Any, templates: frozenset[str] | None = TEMPLATES) -> str:
    """The ConfigError message compiling ``raw`` gives."""
    with pytest.raises(ConfigError) as info:
        compile_workflows(raw, templates=templates)
    return str(info.value)


def test_compiles_the_design_example() -> None:
    """The example cart workflow compiles to the steps, durations and conditions it says."""
    rules, warnings = compile_workflows([cart()], templates=TEMPLATES)
    assert warnings == []
    wf = rules.by_name["cart"]
    assert rules.by_trigger["Product Added"] == (wf,)
    assert [s.kind for s in wf.steps] == ["wait_inactive", "send", "wait_until", "send"]
    assert [s.number for s in wf.steps] == [1, 2, 3, 4]
    assert step_value(wf.steps[0], "") == 1800.0
    assert wf.steps[2].timeout == 86400.0
    assert wf.steps[3].when is not None
    assert (wf.run_key, wf.exit_on, wf.reentry_s) == (
        "properties.cart_id",
        {"Order Completed"},
        604800,
    )
    assert (wf.holdout, wf.paused, wf.transactional) == (0, False, False)


def test_send_time_defaults_to_immediate_and_optimal_waits_a_day() -> None:
    """A send goes at once unless ``send_time = "optimal"``, which waits up to ``within``
    (24 h unless given)."""
    steps = [
        {"send": "cart_reminder"},
        {"send": "cart_reminder", "send_time": "optimal"},
        {"send": "cart_reminder", "send_time": "optimal", "within": "6h"},
        {"send": "cart_reminder", "send_time": "immediate"},
    ]
    rules, _ = compile_workflows([cart(step=steps)], templates=TEMPLATES)
    got = [(s.send_time, s.within) for s in rules.by_name["cart"].steps]
    assert got == [
        ("immediate", 86400.0), ("optimal", 86400.0), ("optimal", 21600.0), ("immediate", 86400.0)
    ]  # fmt: skip


def test_defaults_and_flags() -> None:
    """Without run_key, exit_on and reentry: per person, no exits, re-entry always."""
    raw = {"name": "w", "trigger": "Signed Up", "step": [{"send": "x"}], "paused": True}
    rules, _ = compile_workflows([raw], policy=Policy(time_zone="Europe/Berlin"))
    wf = rules.by_name["w"]
    assert (wf.run_key, wf.exit_on, wf.reentry_s, wf.paused) == (None, frozenset(), 0.0, True)
    assert rules.policy.time_zone == "Europe/Berlin"


def test_reentry_never_and_durations() -> None:
    """``never`` is infinite, ``always`` zero, a duration its seconds."""
    assert compile_workflows([cart(reentry="never")])[0].items[0].reentry_s == math.inf
    assert compile_workflows([cart(reentry="always")])[0].items[0].reentry_s == 0.0
    assert compile_workflows([cart(reentry="1w")])[0].items[0].reentry_s == 604800.0


def test_exit_on_accepts_one_name() -> None:
    """A single exit event name may be given as a string."""
    rules, _ = compile_workflows([cart(exit_on="Order Completed")])
    assert rules.items[0].exit_on == frozenset({"Order Completed"})


def test_templates_unchecked_when_not_given() -> None:
    """Without a template list, any template name compiles."""
    rules, _ = compile_workflows([with_step({"send": "anything"})])
    assert step_value(rules.items[0].steps[0], "") == "anything"


def test_variants_compile_with_names_and_weights() -> None:
    """Variants keep their names (default A, B, ...) and weights; one kind for all."""
    step = {"variant": [{"wait": "1h", "weight": 3, "name": "fast"}, {"wait": "3h"}]}
    rules, _ = compile_workflows([with_step(step)])
    variants = rules.items[0].steps[0].variants
    assert [(v.name, v.weight, v.value) for v in variants] == [
        ("fast", 3, 3600.0),
        ("B", 1, 10800.0),
    ]
    assert step_value(rules.items[0].steps[0], "B") == 10800.0
    assert step_value(rules.items[0].steps[0], "gone") == 3600.0  # a removed arm: the first


def test_emit_webhook_activity_and_properties() -> None:
    """emit, webhook (with properties) and wait_inactive with its own activity list compile."""
    steps = [
        {"wait_inactive": "1h", "activity": ["Product Viewed"]},
        {"emit": "Cart Stalled", "properties": {"level": 1}},
        {"webhook": "https://hooks.example/x", "name": "notify"},
        {"wait_inactive": "2h", "activity": "Page Viewed"},
    ]
    wf = compile_workflows([cart(step=steps)])[0].items[0]
    assert wf.steps[0].activity == {"Product Viewed"}
    assert wf.steps[1].properties == {"level": 1}
    assert wf.steps[3].activity == {"Page Viewed"}


def test_workflows_of_indexes_by_trigger() -> None:
    """Two workflows on one trigger are both found, in order."""
    a = Workflow("a", "Product Added", ())
    b = Workflow("b", "Product Added", ())
    assert Workflows.of([a, b]).by_trigger == {"Product Added": (a, b)}


def test_bandit_step_compiles_with_goal_and_floor() -> None:
    """``selection = "bandit"`` keeps its goal and floor, and the workflows index the step."""
    step = {"variant": BANDIT_ARMS, "selection": "bandit", "goal": "ordered", "floor": 0.2}
    rules, _ = compile_workflows([with_step(step)])
    compiled = rules.items[0].steps[0]
    assert (compiled.selection, compiled.goal, compiled.floor) == ("bandit", "ordered", 0.2)
    assert rules.bandits == {("cart", 0): compiled}
    plain, _ = compile_workflows([with_step({"variant": BANDIT_ARMS})])
    assert plain.items[0].steps[0].selection == "weights" and plain.bandits == {}


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"sleep": "1h"}, "step 1: unknown step key 'sleep'"),
        ({}, "step 1: expected exactly one step kind"),
        ({"wait": "1h", "send": "cart_reminder"}, "step 1: expected exactly one step kind"),
        ({"wait": "soon"}, "step 1: wait: expected a duration"),
        ({"wait": "-5m"}, "step 1: wait: expected a duration"),
        ({"wait_inactive": "0m"}, "step 1: wait_inactive: duration must be positive"),
        ({"wait": 30}, "step 1: wait: expected a duration"),
        ({"send": "cart_remindr"}, "step 1: unknown template 'cart_remindr'"),
        ({"send": ""}, "step 1: send: expected a non-empty string"),
        ({"webhook": "ftp://x"}, "step 1: webhook: expected an http(s) URL"),
        ({"send": "cart_reminder", "if": "person.orders >"}, "step 1: if: condition"),
        ({"send": "cart_reminder", "exit_if": "("}, "step 1: exit_if: condition"),
        ({"send": "cart_reminder", "if": ""}, "step 1: if: expected a condition expression"),
        ({"wait_until": "Email Clicked"}, "step 1: wait_until needs a timeout"),
        ({"wait_until": "Email Clicked", "timeout": "0s"}, "step 1: timeout: duration must"),
        ({"wait": "1h", "timeout": "1h"}, "step 1: timeout and where belong to wait_until"),
        ({"send": "cart_reminder", "where": "true"}, "timeout and where belong to wait_until"),
        ({"wait": "1h", "activity": ["X"]}, "step 1: activity belongs to wait_inactive"),
        ({"wait_inactive": "1h", "activity": [1]}, "activity: expected a list of event names"),
        ({"emit": "X", "properties": "p"}, "step 1: properties: expected a table"),
        ({"wait": "1h", "weight": 2}, "step 1: unknown step key 'weight'"),
        ({"wait": "1h", "send_time": "optimal"}, "step 1: send_time and within belong to send"),
        ({"send": "cart_reminder", "send_time": "best"}, "send_time: expected 'immediate' or"),
        ({"send": "cart_reminder", "within": "2h"}, "within belongs to send_time = 'optimal'"),
        (
            {"send": "cart_reminder", "send_time": "optimal", "within": "8d"},
            "step 1: within: expected more than 0 and at most 7d, got '8d'",
        ),
        (
            {"send": "cart_reminder", "send_time": "optimal", "within": "soon"},
            "step 1: within: expected a duration",
        ),
        ("wait 1h", "step 1: expected a [[workflow.step]] table"),
        ({"variant": [{"wait": "1h"}]}, "step 1: variant: expected two or more"),
        ({"variant": {"wait": "1h"}}, "step 1: variant: expected two or more"),
        ({"wait": "1h", "variant": [{"wait": "1h"}, {"wait": "2h"}]}, "takes its kind from"),
        ({"variant": [{"wait": "1h"}, {"send": "cart_reminder"}]}, "all be of one kind"),
        ({"variant": [{"wait": "1h"}, {"wait": "2h", "if": "x"}]}, "unknown variant key 'if'"),
        ({"variant": [{"wait": "1h", "weight": 0}, {"wait": "2h", "weight": 0}]}, "add up to 0"),
        ({"variant": [{"wait": "1h", "weight": -1}, {"wait": "2h"}]}, "variant 1: weight must"),
        ({"variant": [{"wait": "1h", "weight": True}, {"wait": "2h"}]}, "variant 1: weight must"),
        ({"variant": [{"wait": "1h"}, {"wait": "2x"}]}, "variant 2: wait: expected a duration"),
        (
            {"variant": [{"send": "cart_reminder"}, {"send": "nope"}]},
            "variant 2: unknown template 'nope'",
        ),
        (
            {"variant": [{"wait": "1h", "name": "A"}, {"wait": "2h", "name": "A"}]},
            "variant 2: name 'A' is used twice",
        ),
        ({"send": "cart_reminder", "goal": "clicked"}, "goal and floor belong to selection"),
        ({"send": "cart_reminder", "selection": "best"}, "selection: expected 'weights' or"),
        ({"send": "cart_reminder", "selection": "bandit"}, "needs [[workflow.step.variant]]"),
        (
            {"variant": [{"wait": "1h"}, {"wait": "2h"}], "selection": "bandit"},
            "selection = 'bandit' needs [[workflow.step.variant]] tables of sends",
        ),
        (
            {"variant": BANDIT_ARMS, "selection": "bandit", "goal": "opened"},
            "goal: expected 'clicked' or 'ordered', got 'opened'",
        ),
        (
            {"variant": BANDIT_ARMS, "selection": "bandit", "floor": 0.6},
            "floor: expected a share between 0 and 1/2 (one per variant), got 0.6",
        ),
        ({"variant": BANDIT_ARMS, "selection": "bandit", "floor": True}, "floor: expected"),
        (
            {
                "variant": [{"send": "cart_reminder", "weight": 2}, {"send": "cart_reminder_2"}],
                "selection": "bandit",
            },
            "weight belongs to selection = 'weights'",
        ),
    ],
)
def test_bad_step_names_workflow_step_and_problem(step: Any, message: str) -> None:
    """Each bad step fails with the workflow's name, the step's number and the problem."""
    text = error_of(with_step(step))
    assert text.startswith("workflow 'cart' step 1: "), text
    assert message in text


def test_bad_step_number_is_its_position() -> None:
    """The failing step is counted from 1 in the message."""
    raw = cart()
    raw["step"][2] = {"wait_until": "Email Clicked"}
    assert error_of(raw) == "workflow 'cart' step 3: wait_until needs a timeout"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trigger": ""}, "workflow 'cart': trigger: expected an event name"),
        ({"trigger": None}, "workflow 'cart': trigger: expected an event name"),
        ({"step": []}, "workflow 'cart': needs at least one [[workflow.step]]"),
        ({"step": {"send": "x"}}, "workflow 'cart': needs at least one [[workflow.step]]"),
        ({"holdout": 100}, "workflow 'cart': holdout: expected a percentage from 0 to 99"),
        ({"holdout": -1}, "workflow 'cart': holdout: expected a percentage"),
        ({"holdout": 10.5}, "workflow 'cart': holdout: expected a percentage"),
        ({"holdout": True}, "workflow 'cart': holdout: expected a percentage"),
        ({"reentry": "sometimes"}, "workflow 'cart': reentry: expected 'never', 'always'"),
        ({"reentry": "-1d"}, "workflow 'cart': reentry: expected 'never', 'always'"),
        ({"reentry": 7}, "workflow 'cart': reentry: expected 'never', 'always'"),
        ({"run_key": ""}, "workflow 'cart': run_key: expected a path"),
        ({"run_key": "cart_id"}, "workflow 'cart': run_key: expected a path"),
        ({"run_key": 3}, "workflow 'cart': run_key: expected a path"),
        ({"exit_on": [""]}, "workflow 'cart': exit_on: expected a list of event names"),
        ({"exit_on": {"a": 1}}, "workflow 'cart': exit_on: expected a list of event names"),
        ({"paused": "yes"}, "workflow 'cart': paused: expected true or false"),
        ({"transactional": 1}, "workflow 'cart': transactional: expected true or false"),
        ({"where": "event.value >"}, "workflow 'cart': where: condition"),
        ({"where": "x is regex('(')"}, "workflow 'cart': where: condition"),
        ({"delay": "1h"}, "workflow 'cart': unknown key 'delay'"),
    ],
)
def test_bad_workflow_names_workflow_and_problem(changes: dict[str, Any], message: str) -> None:
    """Each bad workflow-level key fails with the workflow's name and the problem."""
    assert message in error_of(cart(**changes))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trigger": "X", "step": [{"wait": "1h"}]}, "workflow 1: name: expected a non-empty"),
        ({"name": "", "trigger": "X"}, "workflow 1: name: expected a non-empty string"),
        ({"name": 7, "trigger": "X"}, "workflow 1: name: expected a non-empty string, got 7"),
        (["not", "a", "table"], "workflow 1: expected a [[workflow]] table"),
    ],
)
def test_workflow_without_a_usable_name(raw: Any, message: str) -> None:
    """A workflow with no name, or not a table, is named by its position."""
    assert message in error_of(raw)


def test_two_workflows_with_one_name() -> None:
    """A second workflow of the same name fails, naming it."""
    assert error_of(cart(), cart(trigger="Cart Viewed")) == (
        "workflow 'cart': two workflows have this name"
    )


def test_warnings_for_undocumented_names() -> None:
    """Names outside the documented list warn with workflow, step and key; they still compile."""
    raw = cart(where="foo > 1")
    raw["step"][3] = {"if": "person.orderz == 0 and person.orderz < 1", "send": "cart_reminder_2"}
    raw["step"][2] = {"wait_until": "Email Clicked", "timeout": "1h", "where": "run.stepz"}
    rules, warnings = compile_workflows([raw], templates=TEMPLATES)
    assert warnings == [
        "workflow 'cart' step 3 where: 'run.stepz' is not a documented condition name",
        "workflow 'cart' step 4 if: 'person.orderz' is not a documented condition name",
        "workflow 'cart' where: 'foo' is not a documented condition name",
    ]
    assert rules.by_name["cart"].where is not None


def test_schedule_replaces_or_joins_the_trigger() -> None:
    """`schedule` makes a sweep workflow; with no trigger it is indexed by no event."""
    sweep = {
        "name": "s",
        "schedule": "1d",
        "where": "person.orders_count > 0",
        "step": [{"send": "t"}],
    }
    both = {**sweep, "name": "b", "trigger": "Signed Up"}
    compiled, _ = compile_workflows([sweep, both])
    assert compiled.by_name["s"].schedule_s == 86400 and compiled.by_name["s"].trigger == ""
    assert [w.name for w in compiled.scheduled] == ["s", "b"]
    assert [w.name for w in compiled.by_trigger["Signed Up"]] == ["b"]
    assert "" not in compiled.by_trigger


def test_bad_schedule_or_no_trigger_fails() -> None:
    """A bad schedule, or neither trigger nor schedule, names the workflow and the key."""
    sweep = {"name": "s", "schedule": "often", "step": [{"send": "t"}]}
    assert error_of(sweep, templates=None).startswith("workflow 's': schedule: ")
    none = {"name": "n", "step": [{"send": "t"}]}
    assert error_of(none, templates=None).startswith("workflow 'n': trigger: expected an event")
