"""rtserver as a real child process (``python -m rtserver serve``), for the tests that need real
signals: ``kill -9`` (durability), SIGTERM (graceful shutdown) and the CLI end to end; and the
points of a history at which a nemesis kills it (:func:`kill_points`).

Readiness is the ready banner on the child's stderr, not a sleep or a polling loop.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.server import TIMEOUT_UNIT

READY = re.compile(r"rtserver \S+ ready on (http://\S+)")


def free_port() -> int:
    """A port that was free a moment ago (for a server restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def kill_points(rng: random.Random, events: int, kills: int) -> list[int]:
    """Ack counts at which to kill: random gaps spread over 5%..90% of the history."""
    gaps = [rng.uniform(0.5, 1.5) for _ in range(kills)]
    start, span = 0.05 * events, 0.85 * events
    points, at = [], start
    for gap in gaps:
        at += gap * span / sum(gaps)
        points.append(int(at))
    return points


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write ``sections`` (flat tables of scalars and lists) as a config.toml at ``path``."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class ServerProcess:
    """One ``rtserver serve`` child, restartable; its stderr is kept in :attr:`log`."""

    def __init__(
        self,
        config: Path,
        *args: str,
        command: Sequence[str] = (sys.executable, "-m", "rtserver"),
        env: Mapping[str, str] | None = None,
    ):
        self.argv = [*command, "serve", "--config", str(config), *args]
        self.cwd = config.parent
        self.env = None if env is None else dict(env)
        self.log: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Start the child and return its base URL once it logged the ready banner."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(self.proc, ready), name="server-log")
        try:
            self.url = await asyncio.wait_for(ready, 4 * TIMEOUT_UNIT)
        except BaseException:
            await self.kill()
            raise
        return self.url

    async def _read_log(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[str]) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            match = READY.search(line)
            if match and not ready.done():
                ready.set_result(match.group(1))
        if not ready.done():
            ready.set_exception(RuntimeError("server exited before it was ready:\n" + self.tail()))

    def tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        return "\n".join(self.log[-lines:])

    async def _reap(self) -> int:
        assert self.proc is not None and self._reader is not None
        code = await self.proc.wait()
        await self._reader  # EOF follows the exit
        return code

    async def kill(self) -> int:
        """``kill -9`` and wait for the exit."""
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.kill()
        return await self._reap()

    async def terminate(self, timeout_s: float) -> int:
        """SIGTERM; the exit status, which must come within ``timeout_s``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self._reap(), timeout_s)
