"""Fixtures only: a real store on a fresh SQLite file, a config, a live server, and headless
Chromium. What they stand on (the server harness, event builders, the browser's shop site)
lives in :mod:`tests.support`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rtserver.config.schema import Config
from rtserver.store.database import Store
from tests.support.server import LiveServer, make_config, run_server

if TYPE_CHECKING:
    from playwright.async_api import Browser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that drive Chromium (they use the ``browser`` fixture) get the ``browser`` mark,
    so the fast mode can leave them out."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    """A real store on a fresh SQLite file."""
    store = await Store.open(db_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def live(config: Config) -> AsyncIterator[LiveServer]:
    async with run_server(config) as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium through Playwright (``playwright install`` is not used).
    Playwright is imported here, so that only the browser tests need it."""
    from playwright.async_api import async_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
