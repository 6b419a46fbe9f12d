"""A real HTTP receiver for outbound webhooks: pytest-httpserver in a thread, that an asyncio
test can await.

Every request is recorded as it *arrives* (before its handler runs, so a handler that blocks
is seen too) and the test's event loop is told at once; handlers can be held on a gate (a
``threading.Event`` the test releases) to play a hung receiver. No sleeps, no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Callable

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.support.server import TIMEOUT_UNIT

__all__ = ["KeepAlive", "Receiver"]

Handler = Callable[[Request], Response]


class Receiver(HTTPServer):
    """pytest-httpserver on ``127.0.0.1:0`` (or ``::1``), threaded so a held handler does not
    stop the next request; :meth:`arrivals` waits for requests from the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(host=host, port=0, ssl_context=ssl_context, threaded=True)
        self.arrived: list[Request] = []
        self._loop = loop
        self._arrival = asyncio.Event()
        self._gates: list[threading.Event] = []
        self._busy = 0
        self._idle = threading.Condition()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
    ) -> AsyncIterator[Receiver]:
        """A started receiver (HTTPS with ``ssl_context``); on the way out every gate opens,
        the handlers still running finish, the server stops, and what the handlers asserted
        is raised."""
        receiver = cls(asyncio.get_running_loop(), host, ssl_context)
        receiver.start()
        try:
            yield receiver
        finally:
            await receiver.close()
        receiver.check()

    async def close(self) -> None:
        for gate in self._gates:
            gate.set()
        await asyncio.to_thread(self._wait_idle)
        if self.is_running():
            await asyncio.to_thread(self.stop)

    def thread_target(self) -> None:
        assert self.server is not None
        self.server.serve_forever(poll_interval=0.02)  # stop() waits for the next poll

    def _wait_idle(self) -> None:
        with self._idle:
            assert self._idle.wait_for(lambda: self._busy == 0, 4 * TIMEOUT_UNIT), "handler hung"

    def application(self, request: Request) -> Response:
        request.get_data()  # the raw body, kept on the request
        with self._idle:
            self._busy += 1
            self.arrived.append(request)
        try:
            self._loop.call_soon_threadsafe(self._arrival.set)
            return super().application(request)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    async def arrivals(self, count: int, timeout_s: float = TIMEOUT_UNIT) -> list[Request]:
        """The first ``count`` requests, once they arrived (their handlers may still run)."""
        async with asyncio.timeout(timeout_s):
            while len(self.arrived) < count:
                self._arrival.clear()
                await self._arrival.wait()
        return self.arrived[:count]

    @property
    def paths(self) -> list[str]:
        return [request.path for request in self.arrived]

    def gate(self) -> threading.Event:
        """A gate held closed until the test (or :meth:`close`) opens it."""
        gate = threading.Event()
        self._gates.append(gate)
        return gate

    def held(self, response: Response) -> tuple[Handler, threading.Event]:
        """A handler that answers ``response`` once its gate opens (a hung receiver)."""
        gate = self.gate()

        def handler(request: Request) -> Response:
            gate.wait(8 * TIMEOUT_UNIT)  # a bound, in case a test forgets to open it
            return response

        return handler, gate


class KeepAlive:
    """A minimal HTTP/1.1 receiver on the test's loop that keeps connections open (werkzeug's
    server closes every one): it answers 200 to every request and notes, for each, the number
    of the connection it came on and its ``Host``."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str]] = []
        self.connections = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[KeepAlive]:
        receiver = cls()
        server = await asyncio.start_server(receiver._serve, "127.0.0.1", 0, ssl=ssl_context)
        receiver.port = server.sockets[0].getsockname()[1]
        try:
            yield receiver
        finally:
            server.close()
            await server.wait_closed()
            for writer in receiver._writers:
                writer.close()
            if receiver._handlers:
                await asyncio.wait(receiver._handlers, timeout=TIMEOUT_UNIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines if line)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((number, headers.get("host", "")))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client closed the connection
        finally:
            writer.close()
            self._handlers.discard(task)
