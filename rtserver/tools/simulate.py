"""``rtserver simulate``: a file of events through the real engine on a virtual clock.

The events (JSON lines, Segment messages with ISO ``timestamp``s) go through the same pipeline,
store and engine as on a live server, on a throwaway database, while a virtual clock jumps from
one due timer or event to the next; so days of workflow take milliseconds. Every decision comes
back as a :class:`Decision` (virtual time, person, workflow, step, action): how a marketer tries a
workflow before going live.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from rtserver.config import Config
from rtserver.engine import Engine, Pipeline, Workflows
from rtserver.errors import InvalidEvent
from rtserver.model import Event, decode_json, parse_event
from rtserver.runtime import load_rules
from rtserver.store import Changes, Prepared, Store

__all__ = ["Decision", "format_offset", "read_events", "simulate"]

DEFAULT_TAIL_S = 30 * 86400.0
"""After the last event, timers keep firing for this long."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision at a virtual time."""

    at: float
    offset: float
    person: str
    workflow: str
    step: int
    action: str
    detail: str

    def line(self) -> str:
        """``+30m00s  u1  cart_abandonment  step 2  send cart_reminder``."""
        detail = f"({self.detail})" if self.action in ("end", "skip") else self.detail
        text = f"{self.action} {detail}".strip()
        return (
            f"{format_offset(self.offset):>10}  {self.person}  {self.workflow}  "
            f"step {self.step}  {text}"
        )

    def as_json(self) -> dict[str, Any]:
        """The same decision as a JSON object."""
        return {
            "offset_s": self.offset,
            "at": datetime.fromtimestamp(self.at).astimezone().isoformat(),
            "person": self.person,
            "workflow": self.workflow,
            "step": self.step,
            "action": self.action,
            "detail": self.detail,
        }


def format_offset(seconds: float) -> str:
    """``+30m00s``, ``+2h00m00s``, ``+1d02h03m``."""
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"+{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"+{hours}h{minutes:02d}m{secs:02d}s"
    return f"+{minutes}m{secs:02d}s"


class _VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def read_events(lines: Iterable[str], config: Config) -> list[tuple[float, Event]]:
    """Parse JSON lines into (virtual time, event), in time order (stable for equal times).

    A line without a ``timestamp`` happens at the time of the line before it; a missing
    ``messageId`` is made from the line number.

    Raises:
        InvalidEvent: naming the line.
    """
    events: list[tuple[float, Event]] = []
    at = None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = decode_json(line)
            if not isinstance(raw, dict):
                raise InvalidEvent("event must be an object")
            raw.setdefault("messageId", f"sim-{number}")
            if raw.get("timestamp") is not None:
                at = datetime.fromisoformat(str(raw["timestamp"])).timestamp()
            elif at is None:
                raise InvalidEvent("the first event needs a timestamp")
            events.append((at, parse_event(raw, config.ingest)))
        except (InvalidEvent, ValueError) as exc:
            raise InvalidEvent(f"line {number}: {exc}") from None
    events.sort(key=lambda pair: pair[0])
    return events


def _person(person_id: str) -> str:
    return person_id.partition(":")[2] or person_id


def _describe(action: str, info: dict[str, Any], bandit: str = "") -> str:
    if action == "send":
        variant = info["variant"]
        text = str(info["template"]) + (f" [{variant}]" if variant else "")
        return text + bandit + _timing(info.get("send_time"))
    if action == "skip":
        return str(info["reason"])
    return str(info["event"] if action == "emit" else info["url"])


def _bandit(
    rules: Workflows,
    tallies: Mapping[tuple[str, int, str], tuple[int, int]] | None,
    workflow: str,
    step: int,
) -> str:
    """How a bandit step's arms stand once its send is counted: `` (bandit; sends/goals A 3/0,
    B 5/1)`` (the arm sent is the one in brackets before it); "" for any other step."""
    found = rules.bandits.get((workflow, step))
    if found is None or tallies is None:
        return ""
    counts = []
    for variant in found.variants:
        sends, successes = tallies.get((workflow, step, variant.name), (0, 0))
        counts.append(f"{variant.name} {sends}/{successes}")
    return f" (bandit; sends/goals {', '.join(counts)})"


def _timing(timing: dict[str, Any] | None) -> str:
    """How an optimal send's time was chosen: ``@ Sat 19:00 (optimal: 12.5 engagements; best
    Sat 19:00 0.081, Sat 18:00 0.074, Sat 20:00 0.070)``."""
    if timing is None:
        return ""
    if timing.get("arm") == "control":
        return " (control: at once)"
    if "hour" not in timing:
        return f" (optimal: {timing.get('reason', '')})"
    best = ", ".join(f"{hour} {score:.3f}" for hour, score in timing["top"])
    how = "optimal" if timing["how"] == "mean" else "optimal, explored"
    return f" @ {timing['hour']} ({how}: {timing['history']:g} engagements; best {best})"


def _decisions(changes: Changes, start: float, rules: Workflows) -> list[Decision]:
    found: list[Decision] = []
    for _, step, person, workflow, action, detail, _, at in changes.steps:
        bandit = _bandit(rules, changes.tallies, workflow, step) if action == "send" else ""
        text = _describe(action, orjson.loads(detail), bandit)
        found.append(Decision(at, at - start, _person(person), workflow, step + 1, action, text))
    for run, reason, at in changes.runs.values():
        if reason is not None:
            person = _person(run.person_id)
            found.append(
                Decision(at, at - start, person, run.workflow, run.step + 1, "end", reason)
            )
    return found


async def simulate(
    config: Config, events: list[tuple[float, Event]], tail_s: float = DEFAULT_TAIL_S
) -> list[Decision]:
    """Run ``events`` through the engine on a virtual clock; every decision, in time order."""
    rules, _ = load_rules(config)
    clock = _VirtualClock()
    start = events[0][0] if events else 0.0
    clock.now = start
    decisions: list[Decision] = []

    def record(prepared: Prepared, changes: Changes | None) -> None:
        if changes is not None:
            decisions.extend(_decisions(changes, start, rules))

    with tempfile.TemporaryDirectory(prefix="rtserver-simulate-") as folder:
        store = await Store.open(Path(folder) / "simulate.db")
        try:
            engine = Engine(rules, store)
            await engine.restore(start)
            pipeline = Pipeline(
                store,
                max_queue=16,
                max_group_events=config.store.max_group_events,
                queue_timeout_s=60.0,
                engine=engine,
                clock=clock,
            )
            pipeline.listeners.append(record)
            for at, event in [*events, (events[-1][0] + tail_s if events else start, None)]:
                await _fire_until(engine, pipeline, clock, at)
                clock.now = at
                if event is not None:
                    await pipeline.commit_now([event], at)
        finally:
            await store.close()
    return sorted(decisions, key=lambda d: d.at)  # stable: same-time decisions keep their order


async def _fire_until(
    engine: Engine, pipeline: Pipeline, clock: _VirtualClock, until: float
) -> None:
    """Fire every timer due up to ``until``, one tick at a time, in order."""
    while (
        deadline := engine.wheel.next_deadline()
    ) is not None and deadline * engine.tick_s <= until:
        clock.now = max(clock.now, deadline * engine.tick_s)
        due = engine.wheel.poll(deadline)
        if due:
            await pipeline.commit_now(received_at=clock.now, fired=due)
