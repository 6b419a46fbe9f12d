"""The embedded dev SMTP sink: every mail it receives is kept in the store (``transport = "sink"``).

It runs aiosmtpd's ``SMTP`` protocol on the server's own event loop through
``loop.create_server`` rather than aiosmtpd's threaded ``Controller``: one loop, one thread,
and its writes go through the store's single writer like every other. The sender relays to it
over loopback exactly as it would to a real relay, so the demo exercises the whole SMTP path.
"""

from __future__ import annotations

import asyncio
import logging
from email import policy
from email.parser import BytesParser

from aiosmtpd.smtp import SMTP, Envelope, Session

from rtserver.clock import Clock
from rtserver.errors import StoreError
from rtserver.store import Store

__all__ = ["Sink", "start_sink"]

logger = logging.getLogger(__name__)


HOSTNAME = "rtserver-sink"
"""What the sink calls itself in its greeting (aiosmtpd would look up the FQDN per connection)."""
DATA_SIZE_LIMIT = 10 * 2**20
"""Largest mail the sink accepts, in bytes."""
IDLE_TIMEOUT_S = 300.0
"""A client silent this long is disconnected (aiosmtpd's default, RFC 5321 §4.5.3.2.7)."""

_HEADERS = BytesParser(policy=policy.default)


def headers_of(content: bytes) -> tuple[str | None, str]:
    """The Message-ID (as sent, angle brackets included; None when absent) and the Subject."""
    message = _HEADERS.parsebytes(content, headersonly=True)
    message_id = message.get("Message-ID")
    subject = message.get("Subject")
    return (
        str(message_id).strip() or None if message_id is not None else None,
        str(subject) if subject is not None else "",
    )


class _Handler:
    """aiosmtpd's handler: keep each mail in the store, then answer 250."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message_id, subject = headers_of(content)
        try:
            await self.store.mail.save_sunk(
                message_id,
                envelope.mail_from or "",
                envelope.rcpt_tos,
                subject,
                content,
                self.clock(),
            )
        except StoreError as exc:
            # A transient answer: the sender keeps the mail and tries again later.
            logger.warning("sink could not store %s: %s", message_id, exc)
            return "451 4.3.0 sink storage unavailable"
        logger.debug("sink stored %s for %s", message_id, envelope.rcpt_tos)
        return "250 2.0.0 OK stored"


class Sink:
    """A running sink: where it listens, and how to stop it."""

    def __init__(self, server: asyncio.Server, sessions: set[SMTP]) -> None:
        self._server = server
        self._sessions = sessions
        host, port = server.sockets[0].getsockname()[:2]
        self.host: str = host
        self.port: int = port

    async def close(self) -> None:
        """Stop listening and end every open session."""
        self._server.close()
        await self._server.wait_closed()
        handlers = []
        for session in list(self._sessions):
            # A session leaves the set when its connection is lost, so it still has both.
            assert session.transport is not None and session._handler_coroutine is not None
            session.transport.close()
            handlers.append(session._handler_coroutine)
        # Closing a transport cancels its session's task (aiosmtpd's connection_lost);
        # wait for those tasks so none outlives the sink.
        if handlers:
            await asyncio.wait(handlers)


async def start_sink(store: Store, clock: Clock, host: str = "127.0.0.1", port: int = 0) -> Sink:
    """Listen for SMTP on ``host:port`` (0: any free port) and keep what arrives in ``store``."""
    loop = asyncio.get_running_loop()
    handler = _Handler(store, clock)
    sessions: set[SMTP] = set()

    def session() -> SMTP:
        protocol = _Session(sessions, handler, loop)
        sessions.add(protocol)
        return protocol

    server = await loop.create_server(session, host, port)
    sink = Sink(server, sessions)
    logger.info("SMTP sink listening on %s:%d", sink.host, sink.port)
    return sink


class _Session(SMTP):
    """aiosmtpd's protocol that forgets itself in the sink when its connection ends."""

    def __init__(self, sessions: set[SMTP], handler: _Handler, loop: asyncio.AbstractEventLoop):
        super().__init__(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname=HOSTNAME,
            timeout=IDLE_TIMEOUT_S,
            loop=loop,
        )
        self._sessions = sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self._handler_coroutine is not None  # aiosmtpd starts it in connection_made
        self._handler_coroutine.add_done_callback(_session_ended)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)


def _session_ended(task: asyncio.Task[None]) -> None:
    """Retrieve how a session ended: a client that hangs up mid-command is no error of ours."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("sink session ended: %r", task.exception())
