"""Polling sources wired into the server: compiled with the rules (check-config names the field
and the expression names), run by the ``pollers`` task, shown on the dashboard and in
``/metrics``; and ``rtserver poll NAME --once`` against the configured store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from rtserver.cli import main
from rtserver.errors import ConfigError
from rtserver.runtime import load_rules, poll_once
from tests.support.orders_api import OrdersApi
from tests.support.receiver import Receiver
from tests.support.server import TIMEOUT_UNIT, FakeClock, make_config, run_server

POLL = {
    "name": "orders",
    "pagination": "cursor",
    "cursor_param": "cursor",
    "cursor": "response.next",
    "items": "response.orders",
    "id": "item.id",
    "event": "'Order Completed'",
    "user_id": "item.customer.id",
    "properties": {"total": "item.total"},
    "allow_private": True,
}


def no_dns(host: str, port: int) -> list[str]:
    raise OSError("no DNS in tests")


def test_load_rules_compiles_the_sources(tmp_path: Path) -> None:
    """A mistake is named by table and field; a private address refused without
    allow_private; a host that does not resolve now is a warning."""
    bad = make_config(tmp_path, poll=[{**POLL, "url": "https://shop.example/o", "id": "("}])
    with pytest.raises(ConfigError, match=r"^poll\[0\]\.id: expression '\(' does not compile"):
        load_rules(bad, no_dns)
    private = make_config(
        tmp_path, poll=[{**POLL, "url": "http://127.0.0.1/o", "allow_private": False}]
    )
    with pytest.raises(
        ConfigError, match=r"^poll\[0\]\.url 'http://127.0.0.1/o': 127.0.0.1 is a loopback"
    ):
        load_rules(private)
    later = make_config(tmp_path, poll=[{**POLL, "url": "https://shop.example/o"}])
    _, warnings = load_rules(later, no_dns)
    assert warnings == ["poll[0].url 'https://shop.example/o': shop.example does not resolve "
                        "now (no DNS in tests); checked again later"]  # fmt: skip


def test_check_config_shows_the_expression_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path / "x.db"}"\n[[poll]]\nname = "orders"\n'
        'url = "http://127.0.0.1/o"\nallow_private = true\nid = "item.id"\n'
        'event = "\'Order Completed\'"\nuser_id = "item.customer"\n'
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok (0 workflows, 1 polling sources)\n")
    assert "`response`" in out and "`item`" in out


async def test_the_server_polls_and_shows_each_source(tmp_path: Path) -> None:
    """The pollers task reads the source; the dashboard's snapshot and /metrics show it."""
    api = OrdersApi(5)
    async with Receiver.running() as receiver:
        receiver.expect_request("/orders").respond_with_handler(api.by_cursor)
        config = make_config(tmp_path, poll=[{**POLL, "url": receiver.url_for("/orders")}])
        async with run_server(config, clock=FakeClock()) as live:
            pollers = live.runtime.pollers
            async with asyncio.timeout(TIMEOUT_UNIT), pollers.progress:
                await pollers.progress.wait_for(lambda: pollers.cycles >= 1)
            assert await live.runtime.store.count_events() == 5
            data = await live.runtime.board.compose(None)
            (row,) = data["polls"]
            assert row["name"] == "orders" and row["events"] == 5 and row["lag_s"] == 0.0
            assert row["last_error"] is None and row["next_run"] == row["last_run"] + 300
            async with live.http() as client:
                text = (await client.get("/metrics")).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            samples = {(s.name, s.labels["source"]): s.value
                       for name in ("rtserver_poll_events", "rtserver_poll_requests",
                                    "rtserver_poll_lag_seconds", "rtserver_poll_failures")
                       for s in families[name].samples}  # fmt: skip
            assert samples[("rtserver_poll_events_total", "orders")] == 5
            assert samples[("rtserver_poll_requests_total", "orders")] == 3
            assert samples[("rtserver_poll_lag_seconds", "orders")] == 0
            assert samples[("rtserver_poll_failures", "orders")] == 0


async def test_poll_once_stores_through_the_pipeline(tmp_path: Path) -> None:
    api = OrdersApi(3)
    async with Receiver.running() as receiver:
        receiver.expect_request("/orders").respond_with_handler(api.by_cursor)
        config = make_config(tmp_path, poll=[{**POLL, "url": receiver.url_for("/orders")}])
        cycle = await poll_once(config, "orders", FakeClock())
        assert cycle.caught_up and [m.stored for m in cycle.mapped] == [True, True, True]
        again = await poll_once(config, "orders", FakeClock())
        assert [m.stored for m in again.mapped] == [False]  # the last page, read again
        with pytest.raises(ConfigError, match="no source named 'refunds' \\(orders\\)"):
            await poll_once(config, "refunds", FakeClock())


def write(tmp_path: Path, url: str, **extra: Any) -> Path:
    table = {**POLL, "url": url, **extra}
    properties = table.pop("properties")
    lines = [f'[store]\npath = "{tmp_path / "rtserver.db"}"', "[[poll]]"]
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in table.items()]
    lines += ["[poll.properties]"]
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in properties.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rtserver_poll_once_prints_what_it_mapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = OrdersApi(3)
    with HTTPServer(host="127.0.0.1", port=0) as server:
        server.expect_request("/orders").respond_with_handler(api.by_cursor)
        path = write(tmp_path, server.url_for("/orders"))
        assert main(["poll", "orders", "--once", "--config", str(path)]) == 0
        captured = capsys.readouterr()
        lines = [orjson.loads(line) for line in captured.out.splitlines()]
        assert lines[0] == {"messageId": "poll-orders-1000", "event": "Order Completed",
                            "userId": "c0", "anonymousId": None, "properties": {"total": 10.0},
                            "stored": "new"}  # fmt: skip
        assert len(lines) == 3
        assert "orders: 2 requests, 2 pages, 3 events (3 new, 0 already stored)" in captured.err
        assert "read to the end" in captured.err
        assert main(["poll", "orders", "--config", str(path)]) == 2
        assert "say --once" in capsys.readouterr().err
        path = write(tmp_path, server.url_for("/orders"), items="response.missing.x")
        assert main(["poll", "orders", "--once", "--config", str(path)]) == 1
        assert "rtserver: orders: items: " in capsys.readouterr().err
        path = write(tmp_path, server.url_for("/orders"), id="(")
        assert main(["poll", "orders", "--once", "--config", str(path)]) == 2
        assert "config error: poll[0].id" in capsys.readouterr().err


def test_rtserver_poll_reports_skipped_items(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with HTTPServer(host="127.0.0.1", port=0) as server:
        server.expect_request("/orders").respond_with_json({"orders": [{"id": 1}]})
        path = write(tmp_path, server.url_for("/orders"), pagination="", cursor_param="",
                     cursor="")  # fmt: skip
        assert main(["poll", "orders", "--once", "--config", str(path)]) == 0
        err = capsys.readouterr().err
        assert "skipped: item 0 of page 1: 'item.customer.id' failed: " in err
