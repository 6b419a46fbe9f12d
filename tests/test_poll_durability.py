"""A polling source across a 429 and a ``kill -9``, on a real ``rtserver serve`` child process
against a real local orders API: across 5 pages, a 429 with ``Retry-After`` (no request before
it expires), a SIGKILL while a page is being read, and a restart: every order is stored exactly
once by messageId, and the restarted server asks from the saved cursor, not from the start."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from werkzeug import Request, Response

from tests.support.orders_api import OrdersApi
from tests.support.receiver import Receiver
from tests.support.server import TIMEOUT_UNIT
from tests.support.server_process import ServerProcess, free_port

RETRY_AFTER_S = 1


def queries(requests: list[Request]) -> list[str]:
    return [request.query_string.decode() for request in requests]


def config_text(tmp_path: Path, port: int, url: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout_s = 10.0

[store]
path = "{tmp_path / "rtserver.db"}"

[[poll]]
name = "orders"
url = "{url}"
every = "1s"
pagination = "cursor"
cursor_param = "cursor"
cursor = "response.next"
items = "response.orders"
id = "item.id"
event = "'Order Completed'"
user_id = "item.customer.id"
timestamp = "item.created"
allow_private = true

[poll.properties]
order_id = "item.id"
total = "item.total"
"""


@pytest.mark.slow
async def test_orders_are_stored_once_across_a_429_and_kill_9(tmp_path: Path) -> None:
    api = OrdersApi(9)  # 5 pages: cursor none, 2, 4, 6, 8
    limited_at: list[float] = []
    arrived_at: dict[str, list[float]] = {}

    def limited(request: Request) -> Response:
        limited_at.append(time.monotonic())
        return Response("{}", status=429, headers={"Retry-After": str(RETRY_AFTER_S)})

    async with Receiver.running() as receiver:
        held = receiver.gate()

        def hold(request: Request) -> Response:  # the page the server is killed on
            held.wait(8 * TIMEOUT_UNIT)
            return api.cursor_page(request)

        api.script[("cursor=2", 1)] = limited
        api.script[("cursor=6", 1)] = hold

        def handler(request: Request) -> Response:
            arrived_at.setdefault(request.query_string.decode(), []).append(time.monotonic())
            return api.by_cursor(request)

        receiver.expect_request("/orders").respond_with_handler(handler)
        config = tmp_path / "config.toml"
        config.write_text(config_text(tmp_path, free_port(), receiver.url_for("/orders")))
        server = ServerProcess(config)
        await server.start()
        try:
            # Pages 1 to 3 (the 429 between), then the server reads page 4 and is killed.
            first = await receiver.arrivals(5, timeout_s=4 * TIMEOUT_UNIT)
            assert queries(first) == ["", "cursor=2", "cursor=2", "cursor=4", "cursor=6"]
            assert arrived_at["cursor=2"][1] - limited_at[0] >= RETRY_AFTER_S - 0.01
            assert await server.kill() == -9
            held.set()

            await server.start()
            # The restarted server goes on from the cursor saved after page 3's commit; a
            # second request for the last page (the next cycle) shows page 5 is committed.
            after = await receiver.arrivals(8, timeout_s=4 * TIMEOUT_UNIT)
            assert queries(after[5:]) == ["cursor=6", "cursor=8", "cursor=8"]
            assert await server.terminate(4 * TIMEOUT_UNIT) == 0
        finally:
            await server.kill()

    with sqlite3.connect(tmp_path / "rtserver.db") as db:
        ids = [r[0] for r in db.execute("SELECT message_id FROM events ORDER BY seq")]
        (cursor,) = db.execute("SELECT cursor FROM poll_state WHERE name = 'orders'").fetchone()
    assert sorted(ids) == [f"poll-orders-{1000 + n}" for n in range(9)]
    assert len(ids) == len(set(ids)) == 9
    assert cursor == "8"
