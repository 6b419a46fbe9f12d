"""A flow's counts at each step, from run, step and outbox rows (pure)."""

from __future__ import annotations

from typing import Any

from rtserver.dashboard.flows import Flow, FlowStep, step_counts, templates_of

FLOW = Flow(
    name="cart",
    trigger="Product Added",
    steps=(
        FlowStep("wait", (("", 1, 1800.0),)),
        FlowStep("send", (("A", 1, "cart_reminder"), ("B", 1, "cart_reminder_2"))),
        FlowStep("webhook", (("", 1, "https://crm.example/hook"),), exit_if="person.orders"),
        FlowStep("send", (("", 1, "cart_reminder"),)),
    ),
)


def run(run_id: str, state: str, step: int, reason: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": run_id, "workflow": kw.get("workflow", "cart"), "state": state, "step": step,
            "end_reason": reason}  # fmt: skip


def test_each_run_counts_up_to_where_it_is() -> None:
    """An open run entered the steps up to the one it waits at; a completed one every step; an
    ended one up to the step its reason names, else its own step (clamped to the flow's)."""
    runs = [
        run("r1", "active", 0),
        run("r2", "active", 1),  # a send waiting for its hour
        run("r3", "ended", 0, "completed"),
        run("r4", "ended", 0, "exit_if at step 3"),
        run("r5", "ended", 0, "exit on Order Completed"),
        run("r6", "ended", 0, "config changed: step 9 was removed"),
        run("r7", "ended", 1, None),
        run("x1", "active", 0, workflow="other"),
    ]
    decided = [
        {"run_id": "r3", "step": 1, "action": "send", "detail": {}},
        {"run_id": "r3", "step": 2, "action": "webhook", "detail": {}},
        {"run_id": "r3", "step": 3, "action": "skip", "detail": {"reason": "frequency cap"}},
        {"run_id": "r4", "step": 1, "action": "skip", "detail": {"reason": "holdout"}},
        {"run_id": "x1", "step": 1, "action": "skip", "detail": {"reason": "holdout"}},
        {"run_id": "r3", "step": 7, "action": "emit", "detail": {}},  # not a step of it now
    ]
    mails = [
        {"run_id": "r3", "step": 1, "state": "sent"},
        {"run_id": "r2", "step": 1, "state": "queued"},
        {"run_id": "x1", "step": 1, "state": "sent"},
    ]
    counts = step_counts(FLOW, runs, decided, mails)
    assert (counts["runs"], counts["open"], counts["completed"]) == (7, 2, 1)
    steps = counts["steps"]
    assert [s["entered"] for s in steps] == [7, 5, 3, 2]
    assert [s["waiting"] for s in steps] == [1, 1, 0, 0]
    assert [s["sent"] for s in steps] == [0, 1, 0, 0]
    assert [s["done"] for s in steps] == [0, 0, 1, 0]
    assert steps[1]["skipped"] == [("holdout", 1)]
    assert steps[3]["skipped"] == [("frequency cap", 1)]
    assert steps[0]["exited"] == [("exit on Order Completed", 1)]
    assert steps[1]["exited"] == [("ended", 1)]
    assert steps[2]["exited"] == [("exit_if at step 3", 1)]
    assert steps[3]["exited"] == [("config changed: step 9 was removed", 1)]


def test_a_flow_without_steps_counts_its_runs_only() -> None:
    empty = Flow(name="cart", trigger="Product Added", steps=())
    counts = step_counts(empty, [run("r1", "active", 0), run("r2", "ended", 0, "x")], [], [])
    assert counts == {"runs": 2, "open": 1, "completed": 1, "steps": []}


def test_templates_are_listed_with_the_flows_sending_them() -> None:
    welcome = Flow(name="welcome", trigger="Signed Up", steps=(FlowStep("send", (("", 1, "hi"),)),))
    assert FLOW.templates == ["cart_reminder", "cart_reminder_2"]
    assert templates_of([FLOW, welcome]) == {
        "cart_reminder": ["cart"],
        "cart_reminder_2": ["cart"],
        "hi": ["welcome"],
    }
