"""The settings machinery on a small schema of its own: typed building from tables, checks,
secrets, merging, and the walk the README reference is made from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from rtserver.config.settings import (
    Secret,
    Setting,
    build,
    iter_settings,
    long_password,
    merge,
    setting,
)
from rtserver.errors import ConfigError


def _even(value: int) -> str | None:
    return None if value % 2 == 0 else "expected an even number"


@dataclass(frozen=True, slots=True)
class Inner:
    """A nested table."""

    mode: Literal["a", "b"] = setting("a", "A choice.")
    token: Secret | None = setting(None, "A secret.", env="TEST_TOKEN")


@dataclass(frozen=True, slots=True)
class Outer:
    """A schema with every kind of leaf."""

    size: int = setting(2, "An even int.", check=_even)
    ratio: float = setting(0.5, "A float.")
    names: tuple[str, ...] = setting(["x"], "A list.")
    from_: str = setting("me", "A key that is a Python keyword.")
    inner: Inner = field(default_factory=Inner, metadata={"help": "Nested."})


def test_build_converts_and_checks_every_leaf() -> None:
    """Ints become floats where a float is expected, lists tuples, strings secrets; `from`
    maps to `from_`; an unset key keeps its default."""
    built = build(Outer, {"ratio": 2, "names": ["a", "b"], "from": "you", "inner": {"token": "t"}})
    assert built == Outer(ratio=2.0, names=("a", "b"), from_="you", inner=Inner(token=Secret("t")))
    assert repr(built.inner.token) == "Secret('**********')" == str(built.inner.token)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"size": 3}, r"^size: expected an even number, got 3$"),
        ({"size": True}, r"^size: expected int, got True$"),
        ({"names": "x"}, r"^names: expected a list, got 'x'$"),
        ({"names": [1]}, r"^names\[0\]: expected str, got 1$"),
        ({"inner": 1}, r"^inner: expected a table, got 1$"),
        ({"inner": {"mode": "c"}}, r"^inner\.mode: expected one of 'a', 'b', got 'c'$"),
        ({"inner": {"token": 5}}, r"^inner\.token: expected str, got int$"),
        ({"bogus": 1}, r"^bogus: unknown key \(expected one of size, ratio, names, from, inner\)$"),
    ],
)
def test_build_names_the_key_and_the_value(data: dict[str, object], message: str) -> None:
    """Every refusal names the dotted key and the value (a secret's type only)."""
    with pytest.raises(ConfigError, match=message):
        build(Outer, data)


def test_merge_is_table_by_table_and_copies() -> None:
    """``extra`` overrides leaves and merges tables; neither input changes."""
    base = {"inner": {"mode": "a", "token": "t"}, "size": 2}
    extra = {"inner": {"mode": "b"}, "ratio": 1.0}
    assert merge(base, extra) == {"inner": {"mode": "b", "token": "t"}, "size": 2, "ratio": 1.0}
    assert base == {"inner": {"mode": "a", "token": "t"}, "size": 2}
    assert merge({"inner": 1}, {"inner": {"mode": "b"}}) == {"inner": 1}  # reported by build


def test_iter_settings_walks_the_leaves_in_order() -> None:
    """Dotted keys in declaration order, with defaults, help and environment variables."""
    assert list(iter_settings(Outer)) == [
        Setting("size", 2, "An even int.", None),
        Setting("ratio", 0.5, "A float.", None),
        Setting("names", ("x",), "A list.", None),
        Setting("from", "me", "A key that is a Python keyword.", None),
        Setting("inner.mode", "a", "A choice.", None),
        Setting("inner.token", None, "A secret.", "TEST_TOKEN"),
    ]


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "password too short"),
        ("a" * 40, "password too plain"),
        ("abababababab", "password too plain"),
        ("correct horse battery staple", None),
    ],
)
def test_dashboard_passwords_must_be_long_and_varied(password: str, problem: str | None) -> None:
    """A dashboard password of under 12 characters, or of fewer than 6 different ones
    (``aaaa...``), is refused, as weak keys are."""
    result = long_password(Secret(password))
    assert (result is None) if problem is None else (result or "").startswith(problem)
