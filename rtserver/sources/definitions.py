"""``[[poll]]`` tables checked and compiled once, at start and by ``check-config``.

A polling source reads a platform's HTTP API on a schedule (for platforms that cannot send
webhooks) and maps each item of each page to a ``track`` event. Every mapping is an expression
in the sandboxed Jinja2 language workflow conditions use (:mod:`rtserver.engine`), over two
names: ``response`` (the page's decoded JSON) and ``item`` (one element of the page's items).
Every mistake is named by its table and field: ``poll[0].every: ...``.

Secrets never sit in the file: ``secret_env`` names the environment variable that holds the
header's value (or ``user:password`` for basic auth), read here, once.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from rtserver.config import parse_duration
from rtserver.engine import Expression, compile_expression, free_names
from rtserver.errors import ConfigError

__all__ = ["AUTH", "NAMES", "PAGINATION", "PollSource", "compile_sources"]

Auth = Literal["", "header", "basic"]
Pagination = Literal["", "cursor", "link", "since"]
AUTH: tuple[Auth, ...] = ("", "header", "basic")
PAGINATION: tuple[Pagination, ...] = ("", "cursor", "link", "since")

NAMES: dict[str, tuple[str, ...]] = {
    "items": ("response",),
    "cursor": ("response",),
    "since": ("item", "response"),
    "item": ("item", "response"),
}
"""What each kind of expression may read: ``items`` and a ``cursor`` expression read the page
(``response``); with ``pagination = "since"`` the ``cursor`` expression reads each ``item``;
``id``, ``event``, ``user_id``, ``anonymous_id``, ``timestamp`` and ``properties`` read ``item``
and ``response``."""

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A source's name: it goes into messageIds (``poll-<name>-<id>``), task and metric names."""
DEFAULT_RATE_PER_MINUTE = 60.0

KEYS = frozenset(
    {
        "name", "url", "every", "auth", "auth_header", "secret_env", "rate_per_minute",
        "pagination", "cursor_param", "cursor", "items", "id", "event", "user_id",
        "anonymous_id", "timestamp", "properties", "allow_private",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PollSource:
    """One compiled ``[[poll]]`` table."""

    name: str
    url: str
    every_s: float
    items: Expression
    id: Expression
    event: Expression
    user_id: Expression | None = None
    anonymous_id: Expression | None = None
    timestamp: Expression | None = None
    properties: tuple[tuple[str, Expression], ...] = ()
    pagination: Pagination = ""
    cursor_param: str = ""
    cursor: Expression | None = None
    rate_per_minute: float = DEFAULT_RATE_PER_MINUTE
    allow_private: bool = False
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The authentication header, ready to send (secret: never shown)."""
    where: str = ""
    """``poll[i]``: how errors and warnings name this table."""


def _str(table: Mapping[str, Any], where: str, key: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a str, got {value!r}")
    return value


def _choice(table: Mapping[str, Any], where: str, key: str, choices: Sequence[str]) -> str:
    value = _str(table, where, key)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{where}.{key}: expected one of {allowed}, got {value!r}")
    return value


def _expression(
    where: str, key: str, source: Any, names: Collection[str], warnings: list[str]
) -> Expression:
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(
            f"{where}.{key}: expected an expression (a non-empty str), got {source!r}"
        )
    try:
        compiled = compile_expression(source)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None
    for name in free_names(source):
        if name not in names:
            known = ", ".join(names)
            warnings.append(f"{where}.{key}: {name!r} is undefined here (it sees {known})")
    return compiled


def _optional(
    table: Mapping[str, Any], where: str, key: str, names: Collection[str], warnings: list[str]
) -> Expression | None:
    source = table.get(key, "")
    if source == "":
        return None
    return _expression(where, key, source, names, warnings)


def _headers(table: Mapping[str, Any], where: str, env: Mapping[str, str]) -> dict[str, str]:
    auth = cast(Auth, _choice(table, where, "auth", AUTH))
    header = _str(table, where, "auth_header", "Authorization")
    variable = _str(table, where, "secret_env")
    if not auth:
        if variable:
            raise ConfigError(f"{where}.secret_env: set, but auth is '' (say 'header' or 'basic')")
        return {}
    if not variable:
        raise ConfigError(
            f"{where}.secret_env: auth = {auth!r} needs the name of the environment variable "
            "that holds the secret (never the secret itself)"
        )
    secret = env.get(variable, "")
    if not secret:
        raise ConfigError(f"{where}.secret_env: the environment variable {variable} is not set")
    if auth == "basic":
        if ":" not in secret:
            raise ConfigError(f"{where}.secret_env: {variable} must hold 'user:password'")
        return {"authorization": "Basic " + base64.b64encode(secret.encode()).decode("ascii")}
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
        raise ConfigError(f"{where}.auth_header: not a header name: {header!r}")
    return {header.lower(): secret}


def _compile(
    i: int, table: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[PollSource, list[str]]:
    where = f"poll[{i}]"
    warnings: list[str] = []
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(KEYS))})")
    name = _str(table, where, "name")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}.name: letters, digits, '-' and '_' only (1-64), got {name!r}")
    url = _str(table, where, "url")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: expected an http(s) URL, got {url!r}")
    try:
        every_s = parse_duration(table.get("every", "5m"))
    except ValueError as exc:
        raise ConfigError(f"{where}.every: {exc}") from None
    rate = table.get("rate_per_minute", DEFAULT_RATE_PER_MINUTE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 100_000:
        raise ConfigError(
            f"{where}.rate_per_minute: expected a number in (0, 100000], got {rate!r}"
        )
    allow_private = table.get("allow_private", False)
    if not isinstance(allow_private, bool):
        raise ConfigError(f"{where}.allow_private: expected true or false, got {allow_private!r}")
    pagination = cast(Pagination, _choice(table, where, "pagination", PAGINATION))
    cursor_param = _str(table, where, "cursor_param")
    cursor: Expression | None = None
    if pagination in ("cursor", "since"):
        if not cursor_param:
            raise ConfigError(
                f"{where}.cursor_param: pagination = {pagination!r} needs the query parameter "
                "that carries the cursor"
            )
        names = NAMES["cursor"] if pagination == "cursor" else NAMES["since"]
        cursor = _expression(where, "cursor", table.get("cursor", ""), names, warnings)
    elif table.get("cursor", "") or cursor_param:
        key = "cursor" if table.get("cursor", "") else "cursor_param"
        raise ConfigError(f"{where}.{key}: only used with pagination = 'cursor' or 'since'")
    item = NAMES["item"]
    properties = table.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ConfigError(
            f"{where}.properties: expected a table of expressions, got {properties!r}"
        )
    compiled_properties = tuple(
        (key, _expression(where, f"properties.{key}", source, item, warnings))
        for key, source in properties.items()
    )
    user_id = _optional(table, where, "user_id", item, warnings)
    anonymous_id = _optional(table, where, "anonymous_id", item, warnings)
    if user_id is None and anonymous_id is None:
        raise ConfigError(f"{where}.user_id: user_id or anonymous_id is required (an expression)")
    source = PollSource(
        name=name,
        url=url,
        every_s=every_s,
        items=_expression(
            where, "items", table.get("items", "response"), NAMES["items"], warnings
        ),  # fmt: skip
        id=_expression(where, "id", table.get("id", ""), item, warnings),
        event=_expression(where, "event", table.get("event", ""), item, warnings),
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=_optional(table, where, "timestamp", item, warnings),
        properties=compiled_properties,
        pagination=pagination,
        cursor_param=cursor_param,
        cursor=cursor,
        rate_per_minute=float(rate),
        allow_private=allow_private,
        headers=_headers(table, where, env),
        where=where,
    )
    return source, warnings


def compile_sources(
    tables: Sequence[Mapping[str, Any]], env: Mapping[str, str]
) -> tuple[tuple[PollSource, ...], list[str]]:
    """Compile every ``[[poll]]`` table; the sources and the warnings (names an expression
    reads that are undefined where it runs).

    Raises:
        ConfigError: ``poll[i].field`` and the problem.
    """
    sources: list[PollSource] = []
    warnings: list[str] = []
    for i, table in enumerate(tables):
        source, found = _compile(i, table, env)
        sources.append(source)
        warnings += found
    return tuple(sources), warnings
