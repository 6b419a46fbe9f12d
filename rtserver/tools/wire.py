"""Cheap load-generator clients: WebSocket and keep-alive HTTP/1.1 over asyncio protocols, for
``rtserver loadgen`` and the benchmarks in ``bench/``.

The client shares two cores with the server it measures, so it must cost much less than the
fastest server, or the baseline is held back by the client and every ratio is flattered.
A ``websockets`` client spends about as much CPU per message as a ``websockets`` server, so the
client here does the least a client may: frames are built (and masked, RFC 6455 §5.3) before the
clock starts, sending is one ``transport.write``, and replies are parsed from raw bytes in the
protocol callback, with no task or await per message. The opening handshake is checked as RFC
6455 §4.1 requires (status 101 and ``Sec-WebSocket-Accept``); it may offer permessage-deflate as
browsers do, for the memory benchmark (no data frame is compressed in any benchmark).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import httptools

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "HttpConn",
    "WireError",
    "WsConn",
    "client_frame",
    "close_all",
    "http_request",
    "open_http",
    "open_ws",
    "open_ws_many",
]

HOST = "127.0.0.1"
"""Where the clients connect unless told otherwise."""
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE_BYTES = 16384
MASK = os.urandom(4)
"""One masking key for the whole run, so frames can be built before the clock starts."""


class WireError(Exception):
    """A connection could not be opened, or the server answered what a client must refuse."""


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + MASK + apply_mask(payload, MASK)


CLOSE_FRAME = client_frame(struct.pack("!H", 1000), OP_CLOSE)


def _ignore(payload: bytes) -> None:
    pass


class WsConn(asyncio.Protocol):
    """One client WebSocket. Set :attr:`on_text` to receive text payloads (in order)."""

    def __init__(self, host: str, port: int, path: str, origin: str, deflate: bool):
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {origin}",
        ]
        if deflate:  # what browsers offer
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._buffer = bytearray()
        self._open = False
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.closing = False
        """A close frame was sent."""
        self.close_code: int | None = None
        self.error: str | None = None
        self.deflate = False
        """Whether the server accepted permessage-deflate."""
        self.on_text: Callable[[bytes], None] = _ignore

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._open:
            self._handshake()
        if self._open:
            self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost in handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # WebSocket

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close handshake (1000), then the TCP connection."""
        if self.transport is None or self.transport.is_closing() or self.closing:
            return
        self.closing = True
        self.transport.write(CLOSE_FRAME)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, why: str) -> None:
        self.error = why
        if not self.opened.done():
            self.opened.set_exception(WireError(why))
        self.abort()

    def _handshake(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HANDSHAKE_BYTES:
                self._fail("handshake response too long")
            return
        status_line, *header_lines = self._buffer[:end].decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        status = status_line.split(" ", 2)[1]
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != "101":
            self._fail(f"handshake refused: HTTP {status}")
        elif headers.get("sec-websocket-accept") != self._accept:
            self._fail("handshake: wrong Sec-WebSocket-Accept")
        else:
            self.deflate = "permessage-deflate" in headers.get("sec-websocket-extensions", "")
            self._open = True
            self.opened.set_result(None)

    def _frames(self) -> None:
        buffer = self._buffer
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            if size - pos < head + length:
                break
            payload = bytes(buffer[pos + head : pos + head + length])
            pos += head + length
            self._frame(first, payload)
            if self.error is not None:
                return
        del buffer[:pos]

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if first & 0xF0 != 0x80:  # FIN and no RSV bit: no fragments, nothing compressed
            self._fail(f"unexpected frame header 0x{first:02x}")
        elif opcode == OP_TEXT:
            self.on_text(payload)
        elif opcode == OP_PING:
            self.send(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if not self.closing:
                self.closing = True
                self.send(client_frame(payload[:2], OP_CLOSE))
            assert self.transport is not None
            self.transport.close()
        elif opcode != OP_PONG:
            self._fail(f"unexpected opcode {opcode}")


async def open_ws(
    port: int, *, path: str, origin: str, deflate: bool = False, host: str = HOST
) -> WsConn:
    """Open one WebSocket and complete its handshake."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: WsConn(host, port, path, origin, deflate), host, port
    )
    try:
        await conn.opened
    except BaseException:
        conn.abort()
        raise
    return conn


async def open_ws_many(
    n: int,
    port: int,
    *,
    path: str,
    origin: str,
    deflate: bool = False,
    host: str = HOST,
    concurrency: int = 100,
    timeout_s: float = 120.0,
) -> list[WsConn]:
    """Open ``n`` WebSockets, at most ``concurrency`` handshakes at a time; all or none."""
    gate = asyncio.Semaphore(concurrency)
    conns: list[WsConn] = []

    async def one() -> None:
        async with gate:
            conns.append(await open_ws(port, path=path, origin=origin, deflate=deflate, host=host))

    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            for _ in range(n):
                group.create_task(one())
    except BaseException as exc:
        for conn in conns:
            conn.abort()
        if isinstance(exc, BaseExceptionGroup):
            raise WireError(f"opening {n} websockets: {exc.exceptions[0]!r}") from exc
        if isinstance(exc, TimeoutError):
            raise WireError(
                f"opened only {len(conns)} of {n} websockets in {timeout_s:g}s"
            ) from None
        raise
    return conns


async def close_all(conns: Sequence[WsConn], timeout_s: float = 10.0) -> None:
    """Close handshakes in parallel; whatever is left after ``timeout_s`` is aborted."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(conn.close(timeout_s) for conn in conns))
    for conn in conns:
        conn.abort()


def http_request(path: str, body: bytes, headers: Mapping[str, str], host: str = HOST) -> bytes:
    """A keep-alive ``POST`` with a JSON body."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection; responses parsed by httptools, in order.

    Set :attr:`on_response` to receive ``(status, body)`` of each response.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._body = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_response: Callable[[int, bytes], None] = lambda status, body: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # httptools callbacks

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        body = bytes(self._body)
        self._body.clear()
        self.on_response(self._parser.get_status_code(), body)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_http(port: int, host: str = HOST) -> HttpConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(HttpConn, host, port)
    return conn
