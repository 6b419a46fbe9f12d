"""WebSocket ingest: ``GET /v1/ws?key=<public key>``, the browsers' persistent connection.

Protocol (fixed): text frames ``{"batch": [event, ...]}`` in; ``{"ack": [...]}`` only
after commit (one ack may cover several frames in a row, committed together), ``{"reject":
[...]}`` for events that will never be accepted, ``{"nack": [...], "retry_after_ms": N}`` after
a transient storage failure. Bad key or Origin: HTTP 403 at the handshake. Oversize frame: 1009
(uvicorn's ``ws_max_size``). Rate, depth, batch size or a binary frame: 1008. Queue full for too
long: 1013. Idle: 1000. Shutdown: 1001, after the final flush and acks.

Each connection has two halves: the endpoint's own task reads frames and submits batches, and a
writer task sends the replies in order (acks wait for their commit), so a client may pipeline
up to ``ingest.max_in_flight`` batches. Every frame costs at least one token of the rate limit,
so a flood of empty, malformed or non-batch frames is closed like a flood of events.

The endpoint is a plain ASGI app mounted ahead of starlette's router (:class:`IngestMount`):
frames pass between uvicorn's ``receive``/``send`` and the session with no wrapper in between.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
import re
import urllib.parse
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from starlette import status
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from rtserver.clock import Clock, Monotonic
from rtserver.config import Config
from rtserver.errors import InvalidEvent, PolicyViolation, StorageUnavailable, StoreError
from rtserver.ingest.intake import Intake
from rtserver.model import Event, message_id_of, parse_batch, parse_event, verify_identity

__all__ = ["Ingest", "IngestMount", "TokenBucket", "nesting_of", "origin_allowed"]

DISK_RETRY_S = 5.0
"""How long a client waits before it sends again while the disk is almost full."""

logger = logging.getLogger(__name__)
_ids = itertools.count(1)

FRAME_DEPTH = 2
"""Nesting the frame adds around an event: ``{"batch": [event]}``."""
MAX_CLOSE_REASON_BYTES = 123
"""A close frame's reason fits in a control frame (125 bytes) with its code."""
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_of(text: str) -> int:
    """How deep arrays and objects nest in JSON text, even malformed; strings are skipped.

    Only called for a frame that failed to decode (orjson gives up at depth 1024 with a plain
    decode error), so that a nesting bomb is still closed as a depth violation.
    """
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def origin_allowed(origin: str | None, allowed: tuple[str, ...], host: str | None = None) -> bool:
    """Whether a browser ``Origin`` may use the public key: a listed origin, or rtserver's own
    (``host`` is the request's Host: pages rtserver serves itself, like ``/demo``).

    A missing Origin never may, nor ``null`` (sandboxed frames, ``file:``), even with ``"*"``.
    """
    if origin is None or origin == "null":
        return False
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return host is not None and urllib.parse.urlsplit(origin).netloc == host


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time key comparison."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(slots=True)
class TokenBucket:
    """Events per second with a burst allowance, on an injected monotonic clock."""

    rate: float
    burst: float
    clock: Clock
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.updated = self.clock()

    def take(self, n: int) -> bool:
        """Spend ``n`` tokens if there are enough."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass(slots=True)
class Close:
    """Close the socket with this code, after the replies queued before it."""

    code: int
    reason: str


Reply = dict[str, Any] | tuple[asyncio.Future[None], list[str]] | Close


class Session:
    """One open WebSocket.

    Kept small, as thousands sit idle: the replies are a plain list with a future created only
    while one half waits for the other (not an ``asyncio.Queue``, three deques), ``closed`` is
    created only when asked for, and the idle timeout is one timer re-armed lazily (not an
    ``asyncio.timeout`` around every receive).
    """

    __slots__ = (
        "_closed",
        "_interrupted",
        "_putter",
        "_read_done",
        "_reading",
        "_task",
        "_timer",
        "_waiting",
        "_write_failed",
        "_writer",
        "bucket",
        "ended",
        "id",
        "idle_since",
        "peer",
        "receive",
        "replies",
        "intake",
        "scope",
        "send",
        "stopping",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        intake: Intake,
        peer: str,
        monotonic: Monotonic,
    ):
        self.id = next(_ids)
        self.scope = scope
        self.receive = receive
        """uvicorn's own callables: the per-frame path has no wrapper around them."""
        self.send = send
        self.intake = intake
        self.peer = peer
        limits = intake.config.ingest
        self.bucket = TokenBucket(limits.events_per_s, limits.burst_events, monotonic)
        self.replies: list[Reply] = []
        """Replies not yet sent, at most ``max_in_flight`` (and one :class:`Close`), in order."""
        self._putter: asyncio.Future[None] | None = None
        """Set while the reader waits for room among the replies."""
        self._task: asyncio.Task[Any] | None = None
        """The endpoint's task (uvicorn's), which reads."""
        self._reading = True
        self._interrupted = False
        """Whether :meth:`interrupt` cancelled the reading (any other cancellation is not ours)."""
        self._read_done: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        """Set while there are replies to send: an idle socket has no writer task."""
        self._write_failed = False
        self.stopping = False
        self.idle_since = 0.0
        """Loop time the reader began its receive in progress (or its last one)."""
        self._waiting = False
        """Whether the reader is waiting for a frame (so the idle timeout may stop it)."""
        self._timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Event | None = None
        self.ended = False

    @property
    def ws(self) -> WebSocket:
        """A starlette view of the socket, for a look from outside (tests, debugging); the
        session itself uses the ASGI callables."""
        return WebSocket(self.scope, self.receive, self.send)

    @property
    def reader(self) -> asyncio.Future[None]:
        """Done once the session has stopped reading (its replies may still be on their way)."""
        if self._read_done is None:
            self._read_done = asyncio.get_running_loop().create_future()
            if not self._reading:
                self._read_done.set_result(None)
        return self._read_done

    @property
    def closed(self) -> asyncio.Event:
        """Set once the session has ended (its socket closed and it left the registry)."""
        if self._closed is None:
            self._closed = asyncio.Event()
            if self.ended:
                self._closed.set()
        return self._closed

    def end(self) -> None:
        self.ended = True
        if self._closed is not None:
            self._closed.set()

    def has_room(self) -> bool:
        """Whether :meth:`push` may queue a reply now (else :meth:`put` waits for room)."""
        return len(self.replies) < self.intake.config.ingest.max_in_flight

    def push(self, reply: Reply) -> None:
        """Queue a reply without waiting (there is room, or it is the close), starting a writer
        if none is running."""
        self.replies.append(reply)
        if self._writer is None and not self._write_failed:
            self._writer = asyncio.create_task(self._write())

    async def put(self, reply: Reply) -> None:
        """Queue a reply for the writer, waiting while ``max_in_flight`` are queued already."""
        if not self.has_room() and not isinstance(reply, Close):
            self._putter = asyncio.get_running_loop().create_future()
            try:
                await self._putter
            finally:
                self._putter = None
        self.push(reply)

    def stop(self) -> None:
        """Stop reading (shutdown): frames already received are still read, committed and acked;
        then 1001.

        The reader is not cancelled in the middle of its work: a cancelled receive could leave a
        frame the server already holds unread. A receive waiting for a frame is ended (as the idle
        timeout does), and once stopping the reader only reads what is already there.
        """
        self.stopping = True
        if self._waiting:
            self.interrupt()

    def interrupt(self) -> None:
        """Stop reading: a receive waiting for a frame ends with the close (idle or shutdown);
        anywhere else (the writer failed) the reading is cancelled."""
        assert self._task is not None
        self._waiting = False  # once: neither the timer nor stop() expires it again
        self._interrupted = True
        self._task.cancel()

    def _on_idle_timer(self, when: float) -> None:
        """The idle timer: expire a receive waiting since ``when - idle_timeout_s`` or before,
        else look again when the current wait (or the next) could be over."""
        timeout = self.intake.config.ingest.idle_timeout_s
        due = self.idle_since + timeout
        if self._waiting and due <= when:
            self.interrupt()
            return
        loop = asyncio.get_running_loop()
        # While the reader is busy with a frame its next wait has not begun: it ends a full
        # timeout after it begins, at the earliest.
        when = due if self._waiting else loop.time() + timeout
        self._timer = loop.call_at(when, self._on_idle_timer, when)

    async def run(self) -> None:
        """Read frames until the client leaves, breaks a rule, or the server stops; then wait
        for the replies and the close to be sent."""
        loop = asyncio.get_running_loop()
        task = self._task = asyncio.current_task()
        assert task is not None
        self.idle_since = loop.time()
        when = self.idle_since + self.intake.config.ingest.idle_timeout_s
        self._timer = loop.call_at(when, self._on_idle_timer, when)
        try:
            close = await self._read_frames()
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            task.uncancel()  # the writer failed: the client is gone, nothing more to send
            close = None
        except Exception:  # the session's boundary: log, close this socket, keep the server up
            logger.exception("ws %d: reader failed", self.id)
            close = Close(status.WS_1011_INTERNAL_ERROR, "internal error")
        finally:
            self._reading_over()
        if close is not None:
            self.push(close)  # the close is queued even when the replies are full
        if self._writer is not None:
            await self._writer

    def _reading_over(self) -> None:
        # A method of its own: after a cancellation caught in a callee, Python 3.11 hides the
        # caller's next lines from tracers (coverage).
        assert self._timer is not None
        self._timer.cancel()  # (harmless on one that has fired)
        self._reading = False
        if self._read_done is not None:
            self._read_done.set_result(None)

    async def _read_frames(self) -> Close:
        loop = asyncio.get_running_loop()
        receive = self.receive
        while True:
            # The receive is inline, not in a helper coroutine: a cancellation caught in a
            # callee hides the caller's next lines from tracers (coverage) on Python 3.11.
            if self.stopping:
                # A zero timeout still returns a frame that is already queued: the receive does
                # not suspend, and the expiry only takes effect when it does.
                try:
                    async with asyncio.timeout(0):
                        message = await receive()
                except TimeoutError:
                    return Close(status.WS_1001_GOING_AWAY, "server shutting down")
            else:
                self.idle_since = loop.time()  # the idle timer looks at it when it fires
                self._waiting = True
                try:
                    message = await receive()
                except asyncio.CancelledError:  # interrupt(): idle, shutdown, or the writer ended
                    task = asyncio.current_task()
                    assert task is not None
                    if not self._interrupted:  # not ours: uvicorn gave up waiting for the app
                        raise
                    task.uncancel()
                    if self.stopping:
                        return Close(status.WS_1001_GOING_AWAY, "server shutting down")
                    return Close(status.WS_1000_NORMAL_CLOSURE, "idle timeout")
                finally:
                    self._waiting = False
            if message["type"] == "websocket.disconnect":
                return Close(-1, "client left")
            text = message.get("text")
            if text is None:
                return Close(status.WS_1008_POLICY_VIOLATION, "binary frames are not accepted")
            try:
                await self._handle(text)
            except PolicyViolation as exc:
                return Close(status.WS_1008_POLICY_VIOLATION, str(exc))
            except TimeoutError:  # the pipeline's queue stayed full
                return Close(status.WS_1013_TRY_AGAIN_LATER, "server overloaded, retry later")

    async def _handle(self, text: str) -> None:
        """Reply to one text frame: reject what is invalid, submit the rest for commit.

        Raises:
            PolicyViolation: the frame breaks a limit (close 1008).
            TimeoutError: the pipeline's queue stayed full (close 1013).
        """
        intake = self.intake
        limits = intake.config.ingest
        try:
            raw_events = parse_batch(text, limits)
        except PolicyViolation:
            raise
        except InvalidEvent as exc:
            self._spend(1)
            if nesting_of(text) > limits.max_json_depth + FRAME_DEPTH:
                raise PolicyViolation(f"json nested deeper than {limits.max_json_depth}") from None
            await self.put({"reject": [{"messageId": None, "error": str(exc)}]})
            return
        self._spend(max(1, len(raw_events)))
        budgets = intake.budgets
        wait_s = budgets.take("events", self.peer, max(1, len(raw_events)))
        if wait_s is not None or budgets.disk_low():
            # Over this address's budget (or the disk is almost full): nothing is stored, the
            # client keeps the events and sends them again after the wait.
            ids = [i for i in map(message_id_of, raw_events) if i is not None]
            retry_ms = math.ceil((wait_s or DISK_RETRY_S) * 1000)
            await self.put({"nack": ids, "retry_after_ms": retry_ms})
            return
        accepted: list[Event] = []
        rejected: list[dict[str, Any]] = []
        secret = intake.keys.identity_secret
        for raw in raw_events:
            try:
                event = parse_event(raw, limits, source="browser", client_ip=self.peer)
                accepted.append(verify_identity(event, secret))
            except PolicyViolation:
                raise
            except InvalidEvent as exc:
                rejected.append({"messageId": message_id_of(raw), "error": str(exc)})
        if rejected:
            await self.put({"reject": rejected})
        if accepted:
            done = await intake.submit(accepted, intake.clock())
            ack = (done, [e.message_id for e in accepted])
            if self.has_room():  # as a rule: no coroutine for the queueing
                self.push(ack)
            else:
                await self.put(ack)

    def _spend(self, events: int) -> None:
        if not self.bucket.take(events):
            limits = self.intake.config.ingest
            raise PolicyViolation(f"more than {limits.events_per_s:g} events per second")

    async def _write(self) -> None:
        """The writer: send the queued replies in order, then end (the next reply starts another).

        Acks are coalesced: once a batch's commit is awaited, the batches queued behind it whose
        commits are done too (the same group commit, as a rule) are acked in the same frame.
        """
        retry_after_ms = self.intake.config.ingest.retry_after_ms
        send = self.send
        replies = self.replies
        try:
            while replies:
                reply = replies.pop(0)
                putter = self._putter
                if putter is not None and not putter.done():
                    putter.set_result(None)
                if isinstance(reply, Close):
                    if reply.code > 0:
                        reason = reply.reason.encode()[:MAX_CLOSE_REASON_BYTES]
                        message = {"type": "websocket.close", "code": reply.code}
                        await send({**message, "reason": reason.decode(errors="ignore")})
                    return
                if isinstance(reply, tuple):
                    done, ids = reply
                    try:
                        await done
                        text = '{"ack":' + orjson.dumps(self._committed_after(ids)).decode() + "}"
                    except (StorageUnavailable, StoreError):
                        message = {"nack": ids, "retry_after_ms": retry_after_ms}
                        text = orjson.dumps(message).decode()
                else:
                    text = orjson.dumps(reply).decode()
                await send({"type": "websocket.send", "text": text})
        except Exception as exc:
            # The client is gone, as a rule (uvicorn raises OSError or RuntimeError): what it
            # sent is still committed, just not acked. Anything else is a bug, and logged so.
            gone = isinstance(exc, (OSError, RuntimeError))
            level = logging.DEBUG if gone else logging.ERROR
            logger.log(level, "ws %d: writer ended", self.id, exc_info=not gone)
            self._write_failed = True
            if self._reading:
                self.interrupt()
        finally:
            self._writer = None

    def _committed_after(self, ids: list[str]) -> list[str]:
        """``ids`` and the ids of the acks queued right behind them that are committed."""
        replies = self.replies
        if not replies:
            return ids
        merged = ids
        while replies:
            reply = replies[0]
            if not isinstance(reply, tuple):
                break
            done, more = reply
            if not done.done() or done.cancelled() or done.exception() is not None:
                break
            if merged is ids:
                merged = [*ids]
            merged += more
            replies.pop(0)
        if merged is not ids:
            putter = self._putter
            if putter is not None and not putter.done():
                putter.set_result(None)
        return merged


class Ingest:
    """The WebSocket endpoint and the registry of open sessions (for limits and the drain)."""

    def __init__(self, config: Config, monotonic: Monotonic):
        self.config = config
        self.monotonic = monotonic
        self.sessions: set[Session] = set()
        self.per_ip: Counter[str] = Counter()
        self.draining = False
        self.tally: Counter[str] = Counter()
        """Connections opened, closed and refused (by reason) since the last :meth:`summary`."""

    def summary(self) -> str | None:
        """One line on the connections since the last call (None if there were none); a
        server with thousands of browsers logs this once a minute, not a line per socket."""
        if not self.tally:
            return None
        tally, self.tally = self.tally, Counter()
        refused = {k.removeprefix("refused: "): n for k, n in tally.items() if k[:8] == "refused:"}
        line = f"websockets: {tally['opened']} opened, {tally['closed']} closed"
        if refused:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(refused.items()))
            line += f", {sum(refused.values())} refused ({reasons})"
        return f"{line}; {len(self.sessions)} open"

    async def _refuse(self, scope: Scope, send: Send, why: str) -> None:
        # Closing before accept makes uvicorn answer the handshake with HTTP 403. (A denial
        # response with a body would say more, but uvicorn logs each one as an ASGI error.)
        self.tally[f"refused: {why}"] += 1
        logger.debug("ws refused %s: %s", scope.get("client"), why)
        await send(
            {"type": "websocket.close", "code": status.WS_1008_POLICY_VIOLATION, "reason": ""}
        )

    async def _turn_away(self, receive: Receive, send: Send, code: int, why: str) -> None:
        self.tally[f"refused: {why}"] += 1
        await _accept(receive, send)
        await send({"type": "websocket.close", "code": code, "reason": why})

    async def endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/ws`` (an ASGI app): check key and Origin, then read and reply until closed."""
        intake = cast(Intake, scope["state"]["intake"])
        config = self.config
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        if not key_matches(QueryParams(scope["query_string"]).get("key"), intake.keys.public):
            return await self._refuse(scope, send, "invalid key")
        headers = Headers(scope=scope)
        origin, host = headers.get("origin"), headers.get("host")
        if not origin_allowed(origin, config.server.allowed_origins, host):
            return await self._refuse(scope, send, "origin not allowed")
        if self.draining:
            return await self._turn_away(receive, send, status.WS_1001_GOING_AWAY, "shutting down")
        if intake.budgets.disk_low():
            return await self._turn_away(
                receive,
                send,
                status.WS_1013_TRY_AGAIN_LATER,
                "server disk almost full: retry later",
            )
        wait_s = intake.budgets.take("opens", peer)
        if wait_s is not None:
            why = f"too many new connections from this address: retry in {math.ceil(wait_s)} s"
            return await self._turn_away(receive, send, status.WS_1013_TRY_AGAIN_LATER, why)
        if self.per_ip[peer] >= config.ingest.max_connections_per_ip:
            return await self._turn_away(
                receive,
                send,
                status.WS_1008_POLICY_VIOLATION,
                "too many connections from this address",
            )
        session = Session(scope, receive, send, intake, peer, self.monotonic)
        self.per_ip[peer] += 1
        self.sessions.add(session)
        try:
            await _accept(receive, send)
            self.tally["opened"] += 1
            logger.debug("ws %d open from %s", session.id, peer)
            await session.run()
        finally:
            session.end()
            self.sessions.discard(session)
            self.per_ip[peer] -= 1
            if not self.per_ip[peer]:
                del self.per_ip[peer]
            self.tally["closed"] += 1
            logger.debug("ws %d closed", session.id)

    async def drain(self) -> None:
        """Shutdown, before uvicorn closes sockets: stop reading, commit, ack, close with 1001."""
        self.draining = True
        sessions = list(self.sessions)
        for session in sessions:
            session.stop()
        if sessions:
            logger.info("draining %d websocket(s)", len(sessions))
        # Each session ends once its last ack and its close frame are sent.
        await asyncio.gather(*(s.closed.wait() for s in sessions))


async def _accept(receive: Receive, send: Send) -> None:
    """Complete the handshake: uvicorn's first message is always ``websocket.connect``."""
    await receive()
    await send({"type": "websocket.accept", "subprotocol": None, "headers": []})


class IngestMount:
    """ASGI middleware: WebSocket connections to ``path`` go straight to the ingest endpoint,
    everything else to ``app``.

    Ahead of starlette's routing and middleware on purpose: those wrap ``send`` (each
    ``wrap_app_handling_exceptions`` adds a coroutine per message) and hold a coroutine frame
    each for as long as the socket is open, which thousands of idle browsers multiply.
    """

    def __init__(self, app: ASGIApp, ingest: Ingest, path: str) -> None:
        self.app = app
        self.ingest = ingest
        self.path = path

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: it hands over the endpoint's, so an open socket holds no
        # frame of this dispatch.
        if scope["type"] == "websocket" and _route_path(scope) == self.path:
            return self.ingest.endpoint(scope, receive, send)
        return self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path within the app, as starlette's router matches it (without ``root_path``)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if (
        root_path
        and path.startswith(root_path)
        and path[len(root_path) : len(root_path) + 1] in ("/", "")
    ):
        return path[len(root_path) :]
    return path
