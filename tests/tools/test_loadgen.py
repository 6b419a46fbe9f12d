"""`rtserver loadgen` against a real server: every event of the shop mix sent, acked and
decided once, the percentiles printed; the errors a load generator meets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rtserver.cli import main
from rtserver.tools.loadgen import Report, loadgen
from rtserver.tools.wire import WireError
from tests.support.server import ORIGIN, make_config, run_server


async def test_the_shop_mix_is_acked_and_decided(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live:
        lines: list[str] = []
        ticks = iter(range(10_000))
        report = await loadgen(
            live.http_url, key=live.config.keys.public, origin=ORIGIN, shoppers=5, events=100,
            progress=lines.append, clock=lambda: float(next(ticks)),
        )  # fmt: skip
        assert (report.sent, report.acked, report.refused, report.decided) == (100, 100, 0, 100)
        assert lines and lines[-1].startswith("sent ")
        assert await live.runtime.store.count_events() == 100
        paced = await loadgen(
            live.http_url, key=live.config.keys.public, origin=ORIGIN, shoppers=2, events=10,
            rate=5000.0,
        )  # fmt: skip
        assert paced.acked == 10
        summary = paced.summary()
        assert "sent 10, acked 10" in summary and "p99" in summary


async def test_refusals_and_errors(tmp_path: Path) -> None:
    async with run_server(make_config(tmp_path)) as live:
        with pytest.raises(WireError, match="403"):
            await loadgen(live.http_url, key="pk_wrong", origin=ORIGIN, shoppers=1, events=1)
        with pytest.raises(WireError, match="handshake refused"):
            await loadgen(live.http_url, key=live.config.keys.public, origin="http://evil.test",
                          shoppers=1, events=1)  # fmt: skip
    with pytest.raises(ValueError, match="no TLS"):
        await loadgen("https://rt.example", key="k", origin=ORIGIN, shoppers=1, events=1)
    assert Report(1).summary().startswith("shoppers 1, 0.0 s: sent 0")


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def serve_and_run() -> int:
        async with run_server(make_config(tmp_path)) as live:
            command = ["loadgen", live.http_url, "--shoppers", "2", "--events", "20",
                       "--key", live.config.keys.public, "--origin", ORIGIN]  # fmt: skip
            return await asyncio.to_thread(main, command)

    assert asyncio.run(serve_and_run()) == 0
    assert "sent 20, acked 20" in capsys.readouterr().out
    assert main(["loadgen", "https://x.example", "--events", "1"]) == 1
    assert "no TLS" in capsys.readouterr().err
