"""Conditions and durations of workflows: Jinja2 expressions in the sandbox, ``"30m"`` strings.

One language for templates and conditions: a condition is a Jinja2 expression
compiled once with :meth:`SandboxedEnvironment.compile_expression`, evaluated over ``event``,
``person``, ``run`` and ``now``. A missing name is undefined and false; an expression that fails
at run time (comparing an undefined value, say) is false too.

The environment is the *immutable* sandbox: no underscore attributes, no ``str.format`` escapes,
and no method that changes a dict or list (a condition must not edit the event it reads). Event
values are attacker-controlled, so the operators that can blow up on them (``*`` repeating a
sequence, ``**``, ``%`` formatting a string) are bounded; past the bound the condition is false.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "Condition",
    "Expression",
    "compile_condition",
    "compile_expression",
    "documented_names",
    "free_names",
]

"""Longer is a typo (and past it, floats lose whole seconds)."""
MAX_SEQUENCE = 100_000
"""Longest string or list ``*`` may build in a condition."""
MAX_POWER_BITS = 4096
"""Largest integer ``**`` may build in a condition."""

NAMES: dict[str, frozenset[str]] = {
    "event": frozenset(
        {
            "type", "event", "name", "properties", "traits", "context", "messageId",
            "anonymousId", "userId", "timestamp", "previousId",
        }
    ),
    "run": frozenset(
        {"id", "workflow", "key", "started", "step", "variant", "wait_met", "sends"}
    ),
    "person": frozenset(
        {
            "id", "email", "traits", "consent", "first_seen", "last_seen", "orders_count",
            "total_spent", "last_order_at", "orders_since", "events_since", "opens",
            "clicks", "time_zone",
        }
    ),
    "now": frozenset(),
}  # fmt: skip
"""The documented names conditions may use; anything else gets a warning at check time."""


def _glob(value: Any, pattern: str) -> bool:
    """``url is glob('*/pricing*')``: shell-style match, case-insensitive."""
    return isinstance(value, str) and fnmatch.fnmatch(value.lower(), pattern.lower())


def _regex(value: Any, pattern: str) -> bool:
    """``referrer is regex('google\\.')``: a regular expression found anywhere in the value."""
    return isinstance(value, str) and re.search(pattern, value) is not None


def _repeats(left: Any, right: Any) -> int:
    """The length ``left * right`` would have if it repeats a sequence, else 0."""
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
            return len(seq) * n
    return 0


class _Environment(ImmutableSandboxedEnvironment):
    """The condition sandbox, with operators bounded on attacker-controlled values."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and _repeats(left, right) > MAX_SEQUENCE:
            raise SecurityError(f"sequence longer than {MAX_SEQUENCE}")
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left).bit_length() * right > MAX_POWER_BITS:
                raise SecurityError(f"power larger than {MAX_POWER_BITS} bits")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % in a condition")
        return super().call_binop(context, operator, left, right)


def _environment() -> _Environment:
    env = _Environment()
    env.tests["glob"] = _glob
    env.tests["regex"] = _regex
    return env


ENVIRONMENT = _environment()
"""One sandboxed environment for every condition (templates of mail get their own)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition; call it with the names, get a bool."""

    source: str
    function: Callable[..., Any] = field(repr=False, compare=False)

    def __call__(self, names: Mapping[str, Any]) -> bool:
        try:
            return bool(self.function(**names))
        # Any failure (undefined or ill-typed event data, a sandbox refusal, a bad pattern)
        # means the condition does not hold: one odd event must never stop the engine.
        except Exception:
            return False


def _parse(source: str) -> list[jinja2.nodes.Node]:
    """Every node of the expression (the root too), parsed as ``compile_expression`` does."""
    parser = Parser(ENVIRONMENT, source, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        raise jinja2.TemplateSyntaxError("chunk after expression", parser.stream.current.lineno)
    return [expr, *expr.find_all(jinja2.nodes.Node)]


def compile_condition(source: str) -> Condition:
    """Compile a condition expression.

    Raises:
        ValueError: the expression does not compile (message from Jinja2), or one of its
            ``regex('...')`` patterns is not a regular expression.
    """
    try:
        tree = _parse(source)
        function = ENVIRONMENT.compile_expression(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"condition {source!r} does not compile: {exc.message}") from None
    for test in tree:
        if not isinstance(test, jinja2.nodes.Test) or test.name != "regex":
            continue
        for arg in test.args:
            if isinstance(arg, jinja2.nodes.Const) and isinstance(arg.value, str):
                try:
                    re.compile(arg.value)
                except re.error as exc:
                    raise ValueError(f"condition {source!r}: bad regex: {exc}") from None
    return Condition(source, function)


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression that gives a value (not a truth): the same language and sandbox
    as conditions, for callers that read values out of data (polling sources map API answers
    to events with these). A missing name or attribute gives None."""

    source: str
    function: Callable[..., Any] = field(repr=False, compare=False)

    def __call__(self, names: Mapping[str, Any]) -> Any:
        """The value over ``names``.

        Raises:
            ValueError: the evaluation failed (ill-typed data, a sandbox refusal), naming the
                expression.
        """
        try:
            value = self.function(**names)
        except Exception as exc:
            raise ValueError(f"{self.source!r} failed: {exc}") from None
        return None if isinstance(value, jinja2.Undefined) else value


def compile_expression(source: str) -> Expression:
    """Compile a value expression (the same sandboxed Jinja2 as :func:`compile_condition`).

    Raises:
        ValueError: the expression does not compile (message from Jinja2).
    """
    try:
        _parse(source)
        function = ENVIRONMENT.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"expression {source!r} does not compile: {exc.message}") from None
    return Expression(source, function)


def free_names(source: str) -> list[str]:
    """The top-level names a compiled ``source`` reads (its variables), in order, once each."""
    tree = _parse(source)
    return list(dict.fromkeys(n.name for n in tree if isinstance(n, jinja2.nodes.Name)))


def documented_names(source: str) -> list[str]:
    """Names in a compiled ``source`` outside the documented list (for a warning)."""
    tree = _parse(source)
    unknown = [n.name for n in tree if isinstance(n, jinja2.nodes.Name) and n.name not in NAMES]
    for node in tree:
        attr: Any
        if isinstance(node, jinja2.nodes.Getattr):
            owner, attr = node.node, node.attr
        elif isinstance(node, jinja2.nodes.Getitem):
            arg = node.arg
            owner, attr = node.node, arg.value if isinstance(arg, jinja2.nodes.Const) else None
        else:
            continue
        if isinstance(owner, jinja2.nodes.Name) and owner.name in NAMES and isinstance(attr, str):
            if attr not in NAMES[owner.name]:
                unknown.append(f"{owner.name}.{attr}")
    return list(dict.fromkeys(unknown))
