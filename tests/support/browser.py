"""What the real-browser tests of the snippet stand on: a tiny shop site and a TCP proxy.

:class:`Shop` serves pages that carry the snippet exactly as its README says (the queue stub,
then ``<script async src=".../rt.js" data-key=...>``), from a real uvicorn server on a port-0
socket. :class:`TcpProxy` sits between the browser and rtserver: the test cuts the network
(every connection dropped, new ones refused), stalls it (open connections black-holed, new ones
pass), restores it, and waits for the HTTP exchanges it forwarded (``POST /v1/batch`` answered
``200``), so a test can wait on what really happened on the wire instead of on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.support.server import TIMEOUT_UNIT

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium (apt): Playwright's own browsers cannot be downloaded here."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _Expect:
    """Playwright's ``expect`` (calls and ``set_options``), imported when a browser test first
    uses it (so that only the browser tests need Playwright)."""

    def __call__(self, actual: Any) -> Any:
        from playwright.async_api import expect as playwright_expect

        return playwright_expect(actual)

    def set_options(self, **options: Any) -> None:
        from playwright.async_api import expect as playwright_expect

        playwright_expect.set_options(**options)


expect = _Expect()


STUB = "window.rt = window.rt || function(){(rt.q = rt.q || []).push(arguments)};"
"""The install stub, as client-js/README.md shows it (test/bundle.test.js checks the README)."""
PRODUCTS = {"p1": ("Blue shoes", 59.9), "p2": ("Red scarf", 19.5)}
STREAM_JS = """
window.streamDone = false;
window.startStream = (count, everyMs) => {
  let n = 0;
  const timer = setInterval(() => {
    rt('track', 'Stream Tick', { n: n++ });
    if (n == count) { clearInterval(timer); window.streamDone = true; }
  }, everyMs);
};
"""


@dataclass
class Shop:
    """A shop whose pages load rt.js from ``script_base`` and send to ``host`` (rtserver or a
    proxy in front of it); the test sets both before a page loads."""

    key: str
    script_base: str = ""
    host: str = ""
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def foreign_origin(self) -> str:
        """The same pages under another origin (``localhost``), which rtserver does not allow."""
        return f"http://localhost:{self.port}"

    def _page(self, title: str, body: str, snippet: bool = True) -> HTMLResponse:
        head = ""
        if snippet:
            src = html.escape(f"{self.script_base}/rt.js")
            head = (
                f"<script>{STUB}</script>\n"
                f'<script async src="{src}" data-key="{html.escape(self.key)}" '
                f'data-host="{html.escape(self.host)}"></script>'
            )
        return HTMLResponse(
            f"<!doctype html><html><head><title>{title}</title>{head}</head>"
            f"<body>{body}</body></html>"
        )

    async def home(self, request: Request) -> HTMLResponse:
        links = "".join(
            f'<a id="{pid}" href="/product/{pid}">{name}</a> '
            for pid, (name, _) in PRODUCTS.items()
        )
        return self._page("Shop", f"<h1>Shop</h1>{links}<script>{STREAM_JS}</script>")

    async def product(self, request: Request) -> HTMLResponse:
        pid = request.path_params["pid"]
        name, price = PRODUCTS[pid]
        item = (
            f"{{product_id: '{pid}', name: '{name}', price: {price}, quantity: 1, cart_id: 'c1'}}"
        )
        body = (
            f"<h1>{name}</h1>"
            f"<script>rt('productViewed', {item});</script>"
            f'<button id="add" onclick="rt(\'productAdded\', {item})">Add to cart</button>'
            "<button id=\"cart\" onclick=\"history.pushState({}, '', '/cart'); "
            "rt('cartViewed', {cart_id: 'c1'})\">View cart</button>"
            '<a id="leave" href="/plain">Leave</a>'
        )
        return self._page(name, body)

    async def plain(self, request: Request) -> HTMLResponse:
        return self._page("No snippet here", "<p>A page without the snippet.</p>", snippet=False)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.home),
                Route("/product/{pid}", self.product),
                Route("/plain", self.plain),
            ]
        )


@contextlib.asynccontextmanager
async def serve_pages(app: Starlette) -> AsyncIterator[int]:
    """Serve ``app`` (a site of another origin than rtserver's) on a pre-bound port-0 socket
    (connections queue until uvicorn accepts); yields its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="pages")
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 4 * TIMEOUT_UNIT)
        sock.close()


@contextlib.asynccontextmanager
async def serve_shop(shop: Shop) -> AsyncIterator[Shop]:
    """Serve ``shop`` with :func:`serve_pages`."""
    async with serve_pages(shop.app()) as port:
        shop.port = port
        yield shop


@dataclass(eq=False)
class Link:
    """One proxied connection: the client's side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    stalled: bool = False
    requests: deque[str] = field(default_factory=deque)


class TcpProxy:
    """A TCP forwarder on a port-0 socket, to one upstream address, that the test controls.

    It also reads along, a little: the request line at the start of a chunk from the client
    and the status line at the start of a chunk from the server make one exchange
    (``("POST /v1/batch HTTP/1.1", "HTTP/1.1 200 OK")``); the requests here are small enough
    that each goes in one write.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = 0
        self.refusing = False
        self.links: set[Link] = set()
        self.exchanges: list[tuple[str, str]] = []
        self.swallowed = 0
        """Bytes black-holed on stalled connections."""
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """The network goes: every connection is dropped and new ones are refused."""
        self.refusing = True
        for link in list(self.links):
            self._drop(link)

    def stall(self) -> None:
        """Open connections go silent (black-holed both ways); new ones still work."""
        for link in self.links:
            link.stalled = True

    def restore(self) -> None:
        """The network is back for new connections."""
        self.refusing = False

    async def wait_for(self, check: Callable[[], bool]) -> None:
        """Until ``check()`` holds (it is tried after every exchange and every chunk lost)."""
        async with asyncio.timeout(6 * TIMEOUT_UNIT), self.changed:
            await self.changed.wait_for(check)

    def answered(self, request_prefix: str, status: int) -> int:
        """How many requests starting with ``request_prefix`` got ``status``."""
        return sum(
            1
            for request, reply in self.exchanges
            if request.startswith(request_prefix) and reply.split(" ")[1:2] == [str(status)]
        )

    def _drop(self, link: Link) -> None:
        self.links.discard(link)
        link.client.transport.abort()
        link.upstream.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # so that close() waits for it
        task.add_done_callback(self._tasks.discard)
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = Link(writer, up_writer)
        self.links.add(link)
        pumps = [
            asyncio.create_task(self._pump(link, reader, up_writer, outbound=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, outbound=False)),
        ]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        self._drop(link)

    async def _pump(
        self,
        link: Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        outbound: bool,
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if link.stalled:  # black-holed
                    async with self.changed:
                        self.swallowed += len(chunk)
                        self.changed.notify_all()
                    continue
                if outbound and chunk[:1].isalpha():
                    link.requests.append(chunk.split(b"\r\n", 1)[0].decode(errors="replace"))
                elif not outbound and chunk.startswith(b"HTTP/1.1 ") and link.requests:
                    status = chunk.split(b"\r\n", 1)[0].decode(errors="replace")
                    async with self.changed:
                        self.exchanges.append((link.requests.popleft(), status))
                        self.changed.notify_all()
                writer.write(chunk)
                await writer.drain()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self.links):
            self._drop(link)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[TcpProxy]:
    """A :class:`TcpProxy` to ``127.0.0.1:port``, closed on exit."""
    proxy = TcpProxy(port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
