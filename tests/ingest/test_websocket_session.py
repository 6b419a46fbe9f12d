"""A session's two halves: reading in the endpoint's own task, a writer task only while there
are replies to send."""

from __future__ import annotations

import asyncio

from rtserver.ingest.websocket import Session
from tests.support.events import event
from tests.support.server import TIMEOUT_UNIT, LiveServer, send_batch


def only_session(live: LiveServer) -> Session:
    (session,) = live.ingest.sessions
    return session


async def test_an_idle_session_has_no_writer_and_its_reader_is_done_once_it_ended(
    live: LiveServer,
) -> None:
    raw = event()
    async with live.ws() as ws:
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
        session = only_session(live)
        # The writer ends in the step that sent the ack: nothing more was queued.
        assert session._writer is None
    await asyncio.wait_for(session.closed.wait(), TIMEOUT_UNIT)
    assert session.reader.done()  # (first asked for once the session had ended)


async def test_a_cancellation_that_is_not_the_sessions_goes_through(live: LiveServer) -> None:
    """uvicorn cancels the app's task when its graceful shutdown runs out of time: that is no
    idle timeout; the session ends at once and leaves the registry."""
    async with live.ws() as ws:
        session = only_session(live)
        assert session._task is not None
        session._task.cancel()
        await asyncio.wait_for(session.closed.wait(), TIMEOUT_UNIT)
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT_UNIT)
    assert not live.ingest.sessions
    raw = event()
    async with live.ws() as ws:
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
