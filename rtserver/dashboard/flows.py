"""A workflow as the Flows tab draws it, and the counts at each of its steps. Pure.

The dashboard may not import the engine (tests/test_layers.py), so the runtime hands it each
compiled workflow as a :class:`Flow`: the trigger, the steps in order with their arms, waits,
conditions and exits, the holdout. :func:`step_counts` counts the store's rows of one workflow
at each step: runs that reached it (entered), open runs waiting at it, mails sent by it, sends
skipped by it (by reason), and runs that ended there (by reason).

Where a run is: an open run waits at its ``step``; a run that ended ``completed`` went through
every step; a run that ended otherwise ended at the step its reason names ("exit_if at step 2",
"config changed: step 3 was removed"), else at its ``step`` (an ``exit_on`` event, a
confirmation that never came: both end a run where it waits).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Flow", "FlowStep", "step_counts", "templates_of"]

COMPLETED = "completed"
_STEP_NAMED = re.compile(r"\bstep (\d+)\b")


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One step of a workflow, as drawn: its kind, its arms (name, weight, value: seconds of a
    wait, a template, an event name, a URL; one arm named ``""`` when it has no variants) and
    the conditions on it."""

    kind: str
    arms: tuple[tuple[str, int, Any], ...]
    when: str | None = None
    """``if``: the step is passed over when false."""
    exit_if: str | None = None
    where: str | None = None
    timeout: float | None = None
    send_time: str = "immediate"
    selection: str = "weights"


@dataclass(frozen=True, slots=True)
class Flow:
    """One compiled workflow, as drawn."""

    name: str
    trigger: str
    steps: tuple[FlowStep, ...]
    where: str | None = None
    run_key: str | None = None
    exit_on: tuple[str, ...] = ()
    holdout: int = 0
    paused: bool = False
    transactional: bool = False

    @property
    def templates(self) -> list[str]:
        """The templates its sends use, in step order, each once."""
        names = [a[2] for s in self.steps if s.kind == "send" for a in s.arms]
        return list(dict.fromkeys(names))


def _ended_at(run: Mapping[str, Any], steps: int) -> int:
    """The step index an ended run ended at (``steps`` when it completed)."""
    reason = run["end_reason"] or ""
    if reason == COMPLETED:
        return steps
    named = _STEP_NAMED.search(reason)
    index = int(named.group(1)) - 1 if named else int(run["step"])
    return min(max(index, 0), max(steps - 1, 0))


def step_counts(
    flow: Flow,
    runs: Iterable[Mapping[str, Any]],
    decided: Iterable[Mapping[str, Any]],
    mails: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The counts at each step of ``flow`` over ``runs`` (the store's run rows, any workflow),
    ``decided`` (its ``steps`` rows) and ``mails`` (its outbox rows); rows of other runs are
    left out. Returns ``steps`` (one dict per step: entered, waiting, sent, done, skipped and
    exited by reason), ``runs``, ``open`` and ``completed``."""
    size = len(flow.steps)
    entered = [0] * size
    waiting = [0] * size
    exited: list[Counter[str]] = [Counter() for _ in range(size)]
    ids: set[str] = set()
    completed = active = 0
    for run in runs:
        if run["workflow"] != flow.name:
            continue
        ids.add(run["id"])
        if run["state"] == "active":
            active += 1
            at = min(int(run["step"]), size - 1)
            if at >= 0:
                waiting[at] += 1
        else:
            at = _ended_at(run, size)
            if at == size:
                completed += 1
            else:
                exited[at][run["end_reason"] or "ended"] += 1
        for index in range(min(at + 1, size)):
            entered[index] += 1
    done = [0] * size
    skipped: list[Counter[str]] = [Counter() for _ in range(size)]
    for row in decided:
        if row["run_id"] not in ids or not 0 <= row["step"] < size:
            continue
        if row["action"] == "skip":
            skipped[row["step"]][str(row["detail"].get("reason", ""))] += 1
        elif row["action"] != "send":
            done[row["step"]] += 1  # an event emitted, a webhook called
    sent = [0] * size
    for mail in mails:
        if mail["run_id"] in ids and mail["state"] == "sent" and 0 <= mail["step"] < size:
            sent[mail["step"]] += 1
    return {
        "runs": len(ids),
        "open": active,
        "completed": completed,
        "steps": [
            {
                "entered": entered[i],
                "waiting": waiting[i],
                "sent": sent[i],
                "done": done[i],
                "skipped": _by_count(skipped[i]),
                "exited": _by_count(exited[i]),
            }
            for i in range(size)
        ],
    }


def _by_count(reasons: Counter[str]) -> list[tuple[str, int]]:
    """Reasons, most frequent first (then by name)."""
    return sorted(reasons.items(), key=lambda item: (-item[1], item[0]))


def templates_of(flows: Sequence[Flow]) -> dict[str, list[str]]:
    """Each template a flow sends → the flows that send it."""
    used: dict[str, list[str]] = {}
    for flow in flows:
        for name in flow.templates:
            used.setdefault(name, []).append(flow.name)
    return used
