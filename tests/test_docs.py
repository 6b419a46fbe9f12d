"""The README and config.toml stay in sync with the code (every setting documented)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rtserver.cli import main
from rtserver.config.schema import iter_settings, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_readme_documents_every_setting() -> None:
    """Each dotted config key appears in the README's config reference."""
    readme = (ROOT / "README.md").read_text()
    missing = [s.key for s in iter_settings() if f"`{s.key}`" not in readme]
    assert not missing, f"README config reference lacks {missing}"


def test_shipped_config_mentions_every_setting() -> None:
    """config.toml shows every setting (secrets as comments) and loads cleanly."""
    text = (ROOT / "config.toml").read_text()
    for setting in iter_settings():
        leaf = setting.key.rsplit(".", 1)[1]
        assert f"{leaf} =" in text or f"{leaf}:" in text, setting.key
    load_config(ROOT / "config.toml", env={})


def test_readme_starts_with_the_two_commands() -> None:
    """The README opens with the serve command and the test command CI runs."""
    readme = (ROOT / "README.md").read_text()
    head = readme[:1500]
    assert "./scripts/serve" in head and "./scripts/test" in head
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_readme_table_matches_settings_command(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's reference table is exactly what `rtserver settings` prints (no stale keys)."""
    main(["settings"])
    table = capsys.readouterr().out.strip()
    assert table in (ROOT / "README.md").read_text()


def _pinned(lock: str) -> dict[str, str]:
    """``name -> version`` of a lock file, each entry checked to carry hashes."""
    text = (ROOT / lock).read_text()
    entry = r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:\s+--hash=sha256:\w+ ?\\?\n?)+)"
    entries = re.findall(entry, text, re.M)
    assert entries, lock
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version, _ in entries}


def _names(requirements: list[str]) -> set[str]:
    names = (re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in requirements)
    return {re.sub(r"[-_.]+", "-", name).lower() for name in names}


def test_the_locks_pin_every_dependency_with_hashes() -> None:
    """requirements.lock pins every runtime dependency of pyproject.toml, and
    requirements-dev.lock those and the development tools, each with its hashes
    (./scripts/lock refreshes them); the runtime lock holds no development tool."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = _names(project["dependencies"]), _names(project["optional-dependencies"]["dev"])
    serving, developing = _pinned("requirements.lock"), _pinned("requirements-dev.lock")
    assert runtime <= set(serving), runtime - set(serving)
    assert runtime | dev <= set(developing), (runtime | dev) - set(developing)
    assert not {"pytest", "mypy", "playwright"} & set(serving)
    assert all(developing[name] == version for name, version in serving.items())
