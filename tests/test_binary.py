"""The single binary, built once by ``./scripts/build-binary`` and run alone: from an empty
directory, with an empty environment (``env -i PATH=/usr/bin:/bin``), so that nothing of the
checkout or of this Python is used. ``--version``, ``init``, ``check-config``, ``serve`` on a
free port with a real WebSocket client, and ``demo`` with its workflows."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT, send_batch
from tests.support.server_process import ServerProcess, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BARE = {"PATH": "/usr/bin:/bin"}
BUILD_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The built binary, copied alone into an empty directory."""
    build = subprocess.run(
        [str(ROOT / "scripts" / "build-binary")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    folder = tmp_path_factory.mktemp("host")
    shutil.copy2(ROOT / "dist" / "rtserver", folder / "rtserver")
    yield folder / "rtserver"


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], cwd=binary.parent, env=BARE, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


async def test_the_binary_alone_serves(binary: Path) -> None:
    version = run(binary, "--version")
    assert version.returncode == 0 and version.stdout.startswith("rtserver ")
    assert "revision" in version.stdout
    port = free_port()
    init = run(
        binary, "init", "site", "--shop-url", "http://127.0.0.1:9", "--public-url",
        f"http://127.0.0.1:{port}", "--sender", "Shop <hello@shop.example>",
        "--origin", "http://shop.test",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    config = binary.parent / "site" / "config.toml"
    checked = run(binary, "check-config", str(config))
    assert checked.returncode == 0 and "ok (" in checked.stdout, checked.stderr
    public = tomllib.loads(config.read_text())["keys"]["public"]
    server = ServerProcess(config, "--port", str(port), command=[str(binary)], env=BARE)
    base = await server.start()
    try:
        url = f"ws://127.0.0.1:{port}/v1/ws?key={public}"
        async with connect(url, additional_headers={"Origin": "http://shop.test"},
                           open_timeout=TIMEOUT_UNIT) as ws:  # fmt: skip
            batch = [event() for _ in range(5)]
            reply = await send_batch(ws, batch)
        assert sorted(reply["ack"]) == sorted(e["messageId"] for e in batch)
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT_UNIT) as http:
            for path in ("/rt.js", "/demo", "/dashboard", "/healthz"):
                answer = await http.get(path)
                assert answer.status_code in (200, 303, 401), (path, answer.status_code)
    finally:
        assert await server.terminate(4 * TIMEOUT_UNIT) == 0, server.tail()


async def test_the_demo_finds_its_workflows_in_an_empty_directory(binary: Path) -> None:
    folder = binary.parent / "demo"
    folder.mkdir()
    process = await asyncio.create_subprocess_exec(
        str(binary), "demo", "--port", str(free_port()), cwd=folder, env=BARE,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    try:
        async with asyncio.timeout(8 * TIMEOUT_UNIT):
            assert process.stderr is not None
            async for raw in process.stderr:
                lines.append(raw.decode(errors="replace"))
                if "demo: config" in lines[-1]:  # the tour follows the ready banner
                    break
    finally:
        process.terminate()
        await process.wait()
    log = "".join(lines)
    assert "the shipped example" in log and "timer wheel" in log, log[-2000:]
