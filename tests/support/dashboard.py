"""What the dashboard tests share: a config with a known password and a cart workflow, a logged-in
HTTP client, a Server-Sent Events reader, and a stop event that ends a loop after a known number
of rounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sse_starlette.sse import AppStatus

from rtserver.config.schema import Config
from tests.support.server import TIMEOUT_UNIT, make_config
from tests.support.workflows import cart_workflow

PASSWORD = "correct horse battery staple"
CART = cart_workflow(
    name="cart",
    reentry="always",
    step=[{"wait_inactive": "30m"}, {"send": "cart_reminder"}],
)
WELCOME = {"name": "welcome", "trigger": "Signed Up", "step": [{"send": "welcome"}]}
XSS = "<script>alert(1)</script>"


@pytest.fixture(autouse=True)
def sse_exit_flag_reset() -> Iterator[None]:
    """sse-starlette keeps a process-global "should exit" flag that uvicorn's exit handler
    sets and nothing resets: after any test that stopped a server by signal, every stream
    would end at once. Modules with streams import this fixture (it is autouse)."""
    AppStatus.should_exit = False
    yield
    AppStatus.should_exit = False


def dashboard_config(tmp_path: Path, **sections: Any) -> Config:
    """A config with the dashboard password set, the cart and welcome workflows, no cap."""
    dashboard = {"password": PASSWORD, **sections.pop("dashboard", {})}
    mail = {"frequency_cap": "off", **sections.pop("mail", {})}
    workflows = sections.pop("workflow", [CART, WELCOME])
    return make_config(tmp_path, dashboard=dashboard, mail=mail, workflow=workflows, **sections)


async def login(client: httpx.AsyncClient, password: str = PASSWORD) -> str:
    """Log ``client`` in; return the session's CSRF token (from the page's logout form)."""
    response = await client.post("/dashboard/login", data={"password": password})
    assert response.status_code == 303, response.text
    page = await client.get("/dashboard")
    assert page.status_code == 200
    marker = 'name="csrf" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


@dataclass
class Frame:
    """One Server-Sent Event."""

    id: str
    event: str
    raw: str
    data: dict[str, Any]


class SSE:
    """Reads the frames of an open ``text/event-stream`` response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self) -> Frame | None:
        """The next frame with data (comments and retry lines skipped); None at the end."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(2 * TIMEOUT_UNIT):
            async for line in self.lines:
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "data" in fields:
                    return Frame(
                        fields["id"], fields["event"], fields["data"], orjson.loads(fields["data"])
                    )
                fields = {}
        return None

    async def until(self, check: Any) -> Frame:
        """Frames until one for which ``check(frame)`` holds."""
        while True:
            frame = await self.next()
            assert frame is not None, "the stream ended"
            if check(frame):
                return frame


class StopAfter(asyncio.Event):
    """A stop event that sets itself after being looked at ``looks`` times (so a loop runs a
    known number of rounds, without any waiting on time)."""

    def __init__(self, looks: int) -> None:
        super().__init__()
        self.looks = looks

    def is_set(self) -> bool:
        self.looks -= 1
        if self.looks <= 0:
            self.set()
        return super().is_set()


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient, last_id: str | None = None, since: str | None = None
) -> AsyncIterator[SSE]:
    """Open ``/dashboard/stream`` (resuming from ``last_id`` as a browser would)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    params = {"since": since} if since else {}
    async with client.stream(
        "GET", "/dashboard/stream", headers=headers, params=params
    ) as response:
        assert response.status_code == 200, response.status_code
        yield SSE(response)
