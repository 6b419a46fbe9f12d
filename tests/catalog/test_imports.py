"""``rtserver catalog import``: good rows kept, each bad row reported with its line, field and
value, new and updated products counted; the CLI against a real store file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rtserver.catalog import imports
from rtserver.catalog.feeds import BadRow
from rtserver.catalog.imports import import_products
from rtserver.cli import main
from rtserver.model import Product
from rtserver.store import Store
from tests.support.receiver import Receiver

FEED = """id,title,price,availability,link
mug,Mug,12.50 EUR,in stock,https://shop.example/mug
cup,Cup,free,in stock,https://shop.example/cup
jug,Jug,30,out of stock,https://shop.example/jug
"""


def test_the_import_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "rt.db"}"\n')
    feed = tmp_path / "feed.csv"
    feed.write_text(FEED)
    assert main(["catalog", "import", str(feed), "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "imported 2, updated 0, skipped 1"
    assert "feed.csv: line 3: price = 'free': not a price" in err
    feed.write_text(FEED.replace("out of stock", "in stock"))
    assert main(["catalog", "import", str(feed), "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("imported 0, updated 2, skipped 1\n1 back in stock or cheaper")
    assert main(["catalog", "import", str(tmp_path / "feed.bin"), "--config", str(config)]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    missing = str(tmp_path / "none.csv")
    assert main(["catalog", "import", missing, "--config", str(config)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert (
        main(["catalog", "import", str(feed), "--format", "shopify", "--config", str(config)]) == 0
    )


async def test_imports_write_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imports, "CHUNK", 2)
    monkeypatch.setattr(imports, "MAX_REPORTED", 1)
    rows = [Product(str(i), f"P{i}") for i in range(5)]
    bad = [BadRow(1, "price", "'x'", "no"), BadRow(2, "price", "'y'", "no")]
    report = await import_products(store, [*rows, *bad], "import", lambda: 1.0)
    assert (report.imported, report.skipped, len(report.bad)) == (5, 2, 1)
    assert await store.catalog.count() == 5


async def test_the_import_command_reads_a_url_through_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "rt.db"}"\n')
    async with Receiver.running() as receiver:
        receiver.expect_request("/feed.csv").respond_with_data(FEED)
        url = receiver.url_for("/feed.csv")
        refused = await asyncio.to_thread(main, ["catalog", "import", url, "--config", str(config)])
        assert refused == 2 and "loopback" in capsys.readouterr().err
        command = ["catalog", "import", url, "--allow-private", "--config", str(config)]
        assert await asyncio.to_thread(main, command) == 0
        out, err = capsys.readouterr()
        assert out.strip() == "imported 2, updated 0, skipped 1" and "line 3" in err
