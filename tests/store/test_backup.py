"""Backups while the server writes, and the migrations an upgrade applies (with a backup first).
Real SQLite files, a real server and a real WebSocket client."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from rtserver.cli import main
from rtserver.errors import StoreError
from rtserver.store import Store, backup, pending_migrations
from rtserver.store.schema import MIGRATIONS
from tests.support.events import event
from tests.support.server import make_config, run_server, send_batch


async def test_a_backup_while_ingest_streams_holds_every_acked_event(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with run_server(config) as live:
        acked: list[str] = []
        running = True
        started = asyncio.Event()

        async def stream() -> None:
            async with live.ws() as ws:
                while running:
                    batch = [event() for _ in range(20)]
                    reply = await send_batch(ws, batch)
                    acked.extend(reply["ack"])
                    if len(acked) >= 200:  # some acked before the copy starts
                        started.set()

        streaming = asyncio.create_task(stream())
        await started.wait()
        before = set(acked)
        target = tmp_path / "copy.db"
        size = await asyncio.to_thread(backup, config.store.path, target)
        running = False
        await streaming
    assert size == target.stat().st_size and stat.S_IMODE(target.stat().st_mode) == 0o600
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {r[0] for r in copy.execute("SELECT message_id FROM events")}
    copy.close()
    assert before <= stored


def test_a_backup_never_overwrites_and_needs_a_store(tmp_path: Path) -> None:
    (tmp_path / "exists.db").write_text("keep me")
    with pytest.raises(StoreError, match="exists"):
        backup(tmp_path / "rt.db", tmp_path / "exists.db")
    with pytest.raises(StoreError, match="no store"):
        backup(tmp_path / "rt.db", tmp_path / "new.db")
    (tmp_path / "junk.db").write_text("not a database at all" * 100)
    with pytest.raises(StoreError, match="backup of"):
        backup(tmp_path / "junk.db", tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists() and not list(tmp_path.glob(".*partial"))
    with pytest.raises(StoreError, match="cannot write"):
        backup(tmp_path / "junk.db", tmp_path / "missing-folder" / "new.db")


async def test_an_upgrade_backs_up_before_migrating(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    assert pending_migrations(path) == [name for name, _ in MIGRATIONS]
    store = await Store.open(path)
    await store.close()
    assert pending_migrations(path) == []
    last = MIGRATIONS[-1][0]
    db = sqlite3.connect(path)
    db.execute("DELETE FROM migrations WHERE name = ?", (last,))  # as if a version behind
    db.commit()
    db.close()
    assert pending_migrations(path) == [last]
    try:  # the migration runs again (it may find its tables there already)
        await (await Store.open(path)).close()
    except StoreError:
        pass
    assert (tmp_path / f"rt.db.before-{last}").is_file()
    (tmp_path / "junk.db").write_text("not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot read"):
        pending_migrations(tmp_path / "junk.db")


def test_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "rt.db"}"\n')
    assert main(["migrate", "--check", "--config", str(config)]) == 0
    assert f"{len(MIGRATIONS)} migration(s) to apply" in capsys.readouterr().out
    asyncio.run(_open_and_close(tmp_path / "rt.db"))
    assert main(["migrate", "--check", "--config", str(config)]) == 0
    assert "up to date" in capsys.readouterr().out
    db = sqlite3.connect(tmp_path / "rt.db")
    db.execute("DELETE FROM migrations WHERE name = ?", (MIGRATIONS[-1][0],))
    db.commit()
    db.close()
    assert main(["migrate", "--check", "--config", str(config)]) == 0
    assert f"backed up first, to {tmp_path / 'rt.db'}.before-" in capsys.readouterr().out
    assert main(["backup", str(tmp_path / "b.db"), "--config", str(config)]) == 0
    assert "integrity ok, mode 0600" in capsys.readouterr().out
    assert main(["backup", str(tmp_path / "b.db"), "--config", str(config)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    (tmp_path / "rt.db").unlink()
    (tmp_path / "rt.db").write_text("junk" * 1000)
    assert main(["migrate", "--check", "--config", str(config)]) == 2


async def _open_and_close(path: Path) -> None:
    store = await Store.open(path)
    await store.close()
