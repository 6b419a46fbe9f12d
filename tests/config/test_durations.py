"""Durations in the config: ``"30m"`` and friends, parsed to seconds."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

from rtserver.config.durations import MAX_DURATION_S, Duration, parse_duration
from rtserver.config.schema import load_config
from rtserver.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1h30m", 5400),
        (" 1h 30m ", 5400),
    ],
)
def test_parse_duration_forms(text: str, seconds: int) -> None:
    """Every documented duration form parses to seconds."""
    assert parse_duration(text) == float(seconds)


@pytest.mark.parametrize(
    "value", ["", "30", "30x", "m30", "-5m", "1.5h", "0s", "0h0m", "30M", "5m and", 30, None]
)
def test_parse_duration_rejects_bad_values(value: Any) -> None:
    """Empty, unitless, unknown units, negative, fractional, zero and non-strings fail."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_parse_duration_rejects_absurd_lengths() -> None:
    """A duration past 100 years (a typo, or a float overflow) fails with a clear message."""
    assert parse_duration(f"{MAX_DURATION_S}s") == MAX_DURATION_S
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration("36501d")
    with pytest.raises(ValueError, match="longer than 100 years"):
        parse_duration("9" * 400 + "d")


def test_duration_is_seconds_that_show_as_text() -> None:
    """A Duration is a float of seconds that prints, reprs, copies and pickles as its text."""
    wait = Duration("1h30m")
    assert wait == 5400.0 and wait + 1 == 5401.0 and isinstance(wait, float)
    assert str(wait) == "1h30m" and repr(wait) == "'1h30m'"
    assert copy.deepcopy(wait).text == "1h30m" and pickle.loads(pickle.dumps(wait)).text == "1h30m"


def test_duration_settings_are_parsed_once_at_load(tmp_path: Path) -> None:
    """Duration settings are seconds as soon as the config is loaded."""
    path = tmp_path / "config.toml"
    path.write_text('[mail]\nmax_age = "2h"\nretry = ["30s", "1m"]\n[dashboard]\nsession = "1d"\n')
    config = load_config(path, env={})
    assert config.mail.max_age == 7200.0 and config.mail.retry == (30.0, 60.0)
    assert config.dashboard.session == 86400.0 and config.hooks.retry[0] == 5.0


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[mail]\nmax_age = "soon"', "mail.max_age: expected a duration like '90s'"),
        ("[mail]\nmax_age = 3600", "mail.max_age: expected a duration like '30m', got 3600"),
        ('[hooks]\nretry = ["5s", "1.5h"]', r"hooks.retry\[1\]: expected a duration"),
        ('[dashboard]\nsession = "0s"', "dashboard.session: duration must be positive"),
    ],
)
def test_a_bad_duration_setting_names_its_key(tmp_path: Path, toml: str, message: str) -> None:
    """A duration that does not parse fails at load, naming the dotted key and the value."""
    path = tmp_path / "config.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})
