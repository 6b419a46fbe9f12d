"""Workflow definitions: ``[[workflow]]`` tables checked and compiled once, at start. Pure.

A workflow is a trigger (an event name with an optional ``where`` condition) and a list of steps.
:func:`compile_workflows` turns the raw TOML tables into frozen :class:`Workflow` objects and
reports every problem with the workflow's name, the step's number and what is wrong; names
outside the documented condition names come back as warnings. The decisions themselves are made
by :func:`rtserver.engine.decide.decide`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rtserver.config import MailConfig, SendTimeConfig, parse_duration
from rtserver.engine.conditions import (
    NAMES,
    Condition,
    compile_condition,
    documented_names,
)
from rtserver.engine.engagement import SendTiming
from rtserver.errors import ConfigError

__all__ = [
    "STEP_KINDS",
    "Policy",
    "Step",
    "Variant",
    "Workflow",
    "Workflows",
    "compile_workflows",
    "policy_from",
    "sent_templates",
    "webhook_steps",
]

StepKind = Literal["wait", "wait_inactive", "wait_until", "send", "webhook", "emit"]
STEP_KINDS: tuple[StepKind, ...] = (
    "wait",
    "wait_inactive",
    "wait_until",
    "send",
    "webhook",
    "emit",
)
WAIT_KINDS = frozenset({"wait", "wait_inactive", "wait_until"})
STEP_OPTIONS = frozenset(
    {"if", "exit_if", "timeout", "where", "activity", "properties", "variant", "name"}
    | {"send_time", "within", "selection", "goal", "floor"}
)
SEND_TIMES = ("immediate", "optimal")
WITHIN_DEFAULT_S = 86400.0
WITHIN_MAX_S = 7 * 86400.0
"""The longest an optimal send may wait (one week: then every hour of the week is a choice)."""
GOALS = ("clicked", "ordered")
FLOOR_DEFAULT = 0.1
VARIANT_KEYS = frozenset({"name", "weight"})
WORKFLOW_KEYS = frozenset(
    {"name", "trigger", "where", "run_key", "exit_on", "reentry", "holdout", "paused", "step"}
    | {"transactional", "description", "schedule"}
)
NEVER = math.inf


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of a step: its value (seconds of a wait, a template, a URL, an event name)."""

    name: str
    weight: int
    value: Any


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow; a plain step has a single variant named ``""``."""

    index: int
    kind: StepKind
    variants: tuple[Variant, ...]
    when: Condition | None = None
    """``if``: the step is skipped when false."""
    exit_if: Condition | None = None
    """The run ends when true."""
    timeout: float | None = None
    where: Condition | None = None
    activity: frozenset[str] | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    send_time: Literal["immediate", "optimal"] = "immediate"
    """``optimal``: a send waits (up to ``within``) for the person's best hour."""
    within: float = WITHIN_DEFAULT_S
    selection: Literal["weights", "bandit"] = "weights"
    """``bandit``: traffic moves to the variant that reaches ``goal`` best (Thompson sampling),
    each getting at least ``floor`` of it; ``weights``: split by the variants' weights."""
    goal: Literal["clicked", "ordered"] = "clicked"
    floor: float = FLOOR_DEFAULT

    @property
    def number(self) -> int:
        """1-based, as people count steps (and as messages name them)."""
        return self.index + 1


@dataclass(frozen=True, slots=True)
class Workflow:
    """A compiled ``[[workflow]]``."""

    name: str
    trigger: str
    steps: tuple[Step, ...]
    where: Condition | None = None
    run_key: str | None = None
    exit_on: frozenset[str] = frozenset()
    reentry_s: float = 0.0
    """Seconds from the end of the last run before a new one may start (``inf``: never)."""
    holdout: int = 0
    paused: bool = False
    transactional: bool = False
    """Transactional mail skips the frequency cap and quiet hours."""
    schedule_s: float | None = None
    """Every so often, start a run for each person whose ``where`` holds (the fallback)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """Rules over all marketing mail to one person."""

    frequency_cap_s: float = 16 * 3600.0
    quiet_hours: tuple[int, int] | None = None
    """(start, end) in minutes after local midnight; the window may wrap midnight."""
    time_zone: str = "UTC"
    send_timing: SendTiming = SendTiming()
    confirm_wait_s: float = 7 * 86400.0
    """How long a send to an address awaiting its double opt-in waits for the confirmation."""


@dataclass(frozen=True, slots=True)
class Workflows:
    """Every workflow, indexed by trigger, with the mail policy."""

    items: tuple[Workflow, ...] = ()
    policy: Policy = Policy()
    by_name: Mapping[str, Workflow] = field(default_factory=dict)
    by_trigger: Mapping[str, tuple[Workflow, ...]] = field(default_factory=dict)
    bandits: Mapping[tuple[str, int], Step] = field(default_factory=dict)
    """(workflow, step index) → the step, for the steps with ``selection = "bandit"``."""

    @property
    def scheduled(self) -> tuple[Workflow, ...]:
        """The workflows with a ``schedule``."""
        return tuple(wf for wf in self.items if wf.schedule_s is not None)

    @classmethod
    def of(cls, items: Iterable[Workflow], policy: Policy = Policy()) -> Workflows:
        """Index ``items``."""
        items = tuple(items)
        triggers: dict[str, list[Workflow]] = {}
        for wf in items:
            if wf.trigger:
                triggers.setdefault(wf.trigger, []).append(wf)
        return cls(
            items,
            policy,
            {wf.name: wf for wf in items},
            {k: tuple(v) for k, v in triggers.items()},
            {
                (wf.name, step.index): step
                for wf in items
                for step in wf.steps
                if step.selection == "bandit"
            },
        )


class _Problem(Exception):
    """A problem in one workflow, before its location is prefixed."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def _duration(value: Any, key: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Problem(f"{key}: {exc}") from None


def _condition(
    table: Mapping[str, Any], key: str, warnings: list[str], where: str
) -> Condition | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Problem(f"{key}: expected a condition expression, got {value!r}")
    try:
        condition = compile_condition(value)
    except ValueError as exc:
        raise _Problem(f"{key}: {exc}") from None
    for name in documented_names(value):
        warnings.append(f"{where} {key}: {name!r} is not a documented condition name")
    return condition


def _names(value: Any, key: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Problem(f"{key}: expected a list of event names, got {value!r}")
    return frozenset(value)


def _value(kind: StepKind, raw: Any, templates: frozenset[str] | None) -> Any:
    if kind in ("wait", "wait_inactive"):
        return _duration(raw, kind)
    if not isinstance(raw, str) or not raw:
        raise _Problem(f"{kind}: expected a non-empty string, got {raw!r}")
    if kind == "send" and templates is not None and raw not in templates:
        raise _Problem(f"unknown template {raw!r} (templates: {', '.join(sorted(templates))})")
    if kind == "webhook" and not raw.startswith(("https://", "http://")):
        raise _Problem(f"webhook: expected an http(s) URL, got {raw!r}")
    return raw


def _kind_of(table: Mapping[str, Any], options: frozenset[str], what: str) -> StepKind:
    kinds = [k for k in STEP_KINDS if k in table]
    unknown = sorted(set(table) - set(STEP_KINDS) - options)
    if unknown:
        raise _Problem(f"unknown {what} key {unknown[0]!r} (step kinds: {', '.join(STEP_KINDS)})")
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        raise _Problem(f"expected exactly one step kind of {', '.join(STEP_KINDS)}, got {found}")
    return kinds[0]


def _variants(
    table: Mapping[str, Any], templates: frozenset[str] | None
) -> tuple[StepKind, tuple[Variant, ...]]:
    raw = table.get("variant")
    if raw is None:
        kind = _kind_of(table, STEP_OPTIONS, "step")
        return kind, (Variant("", 1, _value(kind, table[kind], templates)),)
    if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(v, dict) for v in raw):
        raise _Problem("variant: expected two or more [[workflow.step.variant]] tables")
    if any(k in table for k in STEP_KINDS):
        raise _Problem("a step with variants takes its kind from the variants")
    kinds = [_kind_of(v, VARIANT_KEYS, "variant") for v in raw]
    if len(set(kinds)) != 1:
        raise _Problem(f"variants must all be of one kind, got {', '.join(sorted(set(kinds)))}")
    kind = kinds[0]
    variants: list[Variant] = []
    for i, v in enumerate(raw):
        try:
            weight = v.get("weight", 1)
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise _Problem(f"weight must be a whole number >= 0, got {weight!r}")
            name = str(v.get("name", chr(ord("A") + i)))
            if any(name == other.name for other in variants):
                raise _Problem(f"name {name!r} is used twice")
            variants.append(Variant(name, weight, _value(kind, v[kind], templates)))
        except _Problem as exc:
            raise _Problem(f"variant {i + 1}: {exc}") from None
    if sum(v.weight for v in variants) == 0:
        raise _Problem("variant weights add up to 0")
    return kind, tuple(variants)


def _step(
    index: int, table: Any, templates: frozenset[str] | None, warnings: list[str], where: str
) -> Step:
    if not isinstance(table, dict):
        raise _Problem(f"expected a [[workflow.step]] table, got {table!r}")
    kind, variants = _variants(table, templates)
    timeout = None
    if kind == "wait_until":
        if "timeout" not in table:
            raise _Problem("wait_until needs a timeout")
        timeout = _duration(table["timeout"], "timeout")
    elif "timeout" in table or "where" in table:
        raise _Problem("timeout and where belong to wait_until steps")
    if "activity" in table and kind != "wait_inactive":
        raise _Problem("activity belongs to wait_inactive steps")
    properties = table.get("properties", {})
    if not isinstance(properties, dict):
        raise _Problem(f"properties: expected a table, got {properties!r}")
    send_time, within = _send_time(table, kind)
    selection, goal, floor = _selection(table, kind, variants)
    return Step(
        index=index,
        kind=kind,
        variants=variants,
        when=_condition(table, "if", warnings, where),
        exit_if=_condition(table, "exit_if", warnings, where),
        timeout=timeout,
        where=_condition(table, "where", warnings, where),
        activity=_names(table["activity"], "activity") if "activity" in table else None,
        properties=properties,
        send_time=send_time,
        within=within,
        selection=selection,
        goal=goal,
        floor=floor,
    )


def _selection(
    table: Mapping[str, Any], kind: StepKind, variants: tuple[Variant, ...]
) -> tuple[Literal["weights", "bandit"], Literal["clicked", "ordered"], float]:
    """``selection``, ``goal`` and ``floor`` of a step with variants."""
    selection = table.get("selection", "weights")
    if selection == "weights":
        if "goal" in table or "floor" in table:
            raise _Problem("goal and floor belong to selection = 'bandit'")
        return "weights", "clicked", FLOOR_DEFAULT
    if selection != "bandit":
        raise _Problem(f"selection: expected 'weights' or 'bandit', got {selection!r}")
    if kind != "send" or len(variants) < 2:
        # The reward is a click on (or an order after) the mail the variant chose.
        raise _Problem("selection = 'bandit' needs [[workflow.step.variant]] tables of sends")
    if any("weight" in v for v in table["variant"]):
        raise _Problem("weight belongs to selection = 'weights' (a bandit sets the shares)")
    goal = table.get("goal", "clicked")
    if goal not in GOALS:
        raise _Problem(f"goal: expected 'clicked' or 'ordered', got {goal!r}")
    floor = table.get("floor", FLOOR_DEFAULT)
    if (
        not isinstance(floor, int | float)
        or isinstance(floor, bool)
        or not 0 <= floor <= 1 / len(variants)
    ):
        raise _Problem(
            f"floor: expected a share between 0 and 1/{len(variants)} (one per variant), "
            f"got {floor!r}"
        )
    return "bandit", goal, float(floor)


def _send_time(
    table: Mapping[str, Any], kind: StepKind
) -> tuple[Literal["immediate", "optimal"], float]:
    """``send_time`` and ``within`` of a send step."""
    if ("send_time" in table or "within" in table) and kind != "send":
        raise _Problem("send_time and within belong to send steps")
    send_time = table.get("send_time", "immediate")
    if send_time == "immediate":
        if "within" in table:
            raise _Problem("within belongs to send_time = 'optimal'")
        return "immediate", WITHIN_DEFAULT_S
    if send_time != "optimal":
        raise _Problem(f"send_time: expected 'immediate' or 'optimal', got {send_time!r}")
    within = _duration(table.get("within", "24h"), "within")
    if not 0 < within <= WITHIN_MAX_S:
        raise _Problem(f"within: expected more than 0 and at most 7d, got {table['within']!r}")
    return "optimal", within


def _reentry(value: Any) -> float:
    if value == "always":
        return 0.0
    if value == "never":
        return NEVER
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _Problem(f"reentry: expected 'never', 'always' or a duration ({exc})") from None


def _workflow(
    raw: Mapping[str, Any], templates: frozenset[str] | None, warnings: list[str]
) -> Workflow:
    unknown = sorted(set(raw) - WORKFLOW_KEYS)
    if unknown:
        raise _Problem(f"unknown key {unknown[0]!r}")
    schedule = raw.get("schedule")
    schedule_s = None if schedule is None else _duration(schedule, "schedule")
    trigger = raw.get("trigger", "" if schedule_s is not None else None)
    if not isinstance(trigger, str) or (not trigger and schedule_s is None):
        raise _Problem(f"trigger: expected an event name (or a schedule), got {trigger!r}")
    steps_raw = raw.get("step")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise _Problem("needs at least one [[workflow.step]]")
    name = raw["name"]
    steps = []
    for i, table in enumerate(steps_raw):
        try:
            steps.append(_step(i, table, templates, warnings, f"workflow {name!r} step {i + 1}"))
        except _Problem as exc:
            raise _Problem(str(exc), step=i + 1) from None
    holdout = raw.get("holdout", 0)
    if not isinstance(holdout, int) or isinstance(holdout, bool) or not 0 <= holdout < 100:
        raise _Problem(f"holdout: expected a percentage from 0 to 99, got {holdout!r}")
    run_key = raw.get("run_key")
    if run_key is not None and (
        not isinstance(run_key, str) or run_key.split(".")[0] not in NAMES["event"]
    ):
        raise _Problem(f"run_key: expected a path like 'properties.cart_id', got {run_key!r}")
    for flag in ("paused", "transactional"):
        if not isinstance(raw.get(flag, False), bool):
            raise _Problem(f"{flag}: expected true or false, got {raw[flag]!r}")
    return Workflow(
        name=name,
        trigger=trigger,
        steps=tuple(steps),
        where=_condition(raw, "where", warnings, f"workflow {name!r}"),
        run_key=run_key,
        exit_on=_names(raw.get("exit_on", []), "exit_on"),
        reentry_s=_reentry(raw.get("reentry", "always")),
        holdout=holdout,
        paused=raw.get("paused", False),
        transactional=raw.get("transactional", False),
        schedule_s=schedule_s,
    )


def compile_workflows(
    raw: Iterable[Mapping[str, Any]],
    *,
    templates: frozenset[str] | None = None,
    policy: Policy = Policy(),
) -> tuple[Workflows, list[str]]:
    """Check and compile ``[[workflow]]`` tables; returns the workflows and the warnings.

    ``templates`` are the mail templates that exist (None: not checked).

    Raises:
        ConfigError: ``workflow 'cart_abandonment' step 2: unknown template 'cart_remindr'``.
    """
    warnings: list[str] = []
    compiled: dict[str, Workflow] = {}
    for number, item in enumerate(raw, 1):
        if not isinstance(item, Mapping):
            raise ConfigError(f"workflow {number}: expected a [[workflow]] table, got {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"workflow {number}: name: expected a non-empty string, got {name!r}")
        if name in compiled:
            raise ConfigError(f"workflow {name!r}: two workflows have this name")
        try:
            compiled[name] = _workflow(item, templates, warnings)
        except _Problem as exc:
            where = f" step {exc.step}" if exc.step else ""
            raise ConfigError(f"workflow {name!r}{where}: {exc}") from None
    return Workflows.of(compiled.values(), policy), warnings


def step_value(step: Step, variant: str) -> Any:
    """The value of ``step`` for the chosen ``variant`` (the only one of a plain step)."""
    for v in step.variants:
        if v.name == variant:
            return v.value
    return step.variants[0].value


QUIET_HOURS_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)")


def policy_from(mail: MailConfig, send_time: SendTimeConfig | None = None) -> Policy:
    """The mail policy of ``[mail]``: frequency cap, quiet hours, the shop's time zone, the
    wait for a confirmation; and
    how optimal send times are chosen (``[send_time]``).

    Raises:
        ConfigError: naming the key and the value.
    """
    cap = 0.0
    if mail.frequency_cap != "off":
        try:
            cap = parse_duration(mail.frequency_cap)
        except ValueError as exc:
            raise ConfigError(f"mail.frequency_cap: {exc} (or 'off')") from None
    quiet = None
    if mail.quiet_hours:
        match = QUIET_HOURS_RE.fullmatch(mail.quiet_hours.strip())
        if match is None:
            raise ConfigError(
                f"mail.quiet_hours: expected 'HH:MM-HH:MM' like '21:00-08:00', "
                f"got {mail.quiet_hours!r}"
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        quiet = (h1 * 60 + m1, h2 * 60 + m2)
        if quiet[0] == quiet[1]:
            raise ConfigError(f"mail.quiet_hours: empty window, got {mail.quiet_hours!r}")
    try:
        ZoneInfo(mail.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"mail.time_zone: unknown time zone, got {mail.time_zone!r}") from None
    send_time = send_time or SendTimeConfig()
    timing = SendTiming(
        half_life_s=float(send_time.half_life),
        prior_strength=send_time.prior_strength,
        exploration=send_time.exploration,
        control=send_time.control,
    )
    return Policy(
        frequency_cap_s=cap,
        quiet_hours=quiet,
        time_zone=mail.time_zone,
        send_timing=timing,
        confirm_wait_s=float(mail.confirm_wait),
    )


def webhook_steps(rules: Workflows) -> list[tuple[str, int, str]]:
    """``(workflow, step number, url)`` of every webhook step (all variants)."""
    return [
        (workflow.name, step.number, variant.value)
        for workflow in rules.items
        for step in workflow.steps
        if step.kind == "webhook"
        for variant in step.variants
    ]


def sent_templates(rules: Workflows) -> set[str]:
    """Every template a workflow step may send (all variants)."""
    return {
        variant.value
        for workflow in rules.items
        for step in workflow.steps
        if step.kind == "send"
        for variant in step.variants
    }
