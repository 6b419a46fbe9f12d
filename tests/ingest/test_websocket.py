"""The WebSocket ingest, end to end: a real uvicorn server, real ``websockets`` clients.

No mocks and no sleeps. Where a test must know how far the server got, it waits on something
the server does:

- a pong: uvicorn answers a ping as it reads it, so every frame sent before has reached it.
- :func:`read_barrier` (two ping round trips): uvicorn stops reading a socket while a frame waits
  for the application and reads on only once the application has taken every frame it holds, so
  the answer to a ping sent after a first pong proves the reader has taken every earlier frame.
- holding ``store._write_lock`` keeps commits (and so acks) from happening until released.
- a session's own task or ``closed`` event, for what no client can see (a slot released).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rtserver.config.schema import Config
from rtserver.ingest.websocket import Ingest, Session
from rtserver.store.database import Store
from tests.support.events import event
from tests.support.server import (
    ORIGIN,
    TIMEOUT_UNIT,
    LiveServer,
    make_config,
    recv_json,
    run_server,
    send_batch,
)

FOREIGN_ORIGIN = "http://evil.test"


# Helpers


def ingest_of(live: LiveServer) -> Ingest:
    """The server's ingest (its open sessions, its drain state)."""
    return live.ingest


def session_of(live: LiveServer, ws: ClientConnection) -> Session:
    """The server-side session of a connected client, found by the client's port."""
    port = ws.local_address[1]
    (session,) = (s for s in ingest_of(live).sessions if s.ws.client and s.ws.client.port == port)
    return session


def frame(events: list[dict[str, Any]]) -> str:
    return orjson.dumps({"batch": events}).decode()


async def read_barrier(ws: ClientConnection) -> None:
    """Return once the server's reader has taken every frame sent before this call."""
    for _ in range(2):
        await asyncio.wait_for(await ws.ping(), TIMEOUT_UNIT)


async def assert_no_reply_yet(ws: ClientConnection) -> None:
    """No reply has arrived before the last pong (the server sends in order, so one sent
    before the pong would already be buffered; ``recv`` returns it without waiting)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await ws.recv()


async def close_code(ws: ClientConnection) -> int | None:
    """Wait for the server to close the connection; return the code it sent."""
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT_UNIT)
    return ws.close_code


async def closed_after_replies(ws: ClientConnection) -> tuple[list[dict[str, Any]], int]:
    """Every reply until the server closes, and the close code."""
    replies = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            replies.append(await recv_json(ws))
    assert closed.value.rcvd is not None
    return replies, closed.value.rcvd.code


async def ids_stored(live: LiveServer) -> list[str]:
    return await live.runtime.store.stored_message_ids()


def ids(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["messageId"] for e in events]


def acked_ids(replies: list[dict[str, Any]]) -> list[str]:
    """The ids acked by ``replies``, all acks (one may cover several frames), in order."""
    assert all(list(reply) == ["ack"] for reply in replies), replies
    return [i for reply in replies for i in reply["ack"]]


async def assert_serving(live: LiveServer) -> None:
    """A new, well-behaved client still gets its batch acked and stored."""
    raw = event()
    async with live.ws() as ws:
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
    assert raw["messageId"] in await ids_stored(live)


def assert_reason(reason: str) -> None:
    """A reason reads like websockets' errors: lowercase start (names such as ``messageId`` keep
    their case), no trailing period."""
    assert reason[:1].islower() and not reason.endswith("."), reason


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


class BrokenClock:
    """A monotonic clock that fails when told to: something unexpected inside the reader."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("clock broke")
        return 0.0


# Acks, duplicates, rejects


async def test_ack_arrives_only_after_commit(live: LiveServer) -> None:
    """When the ack arrives, every acked messageId is already in the store."""
    events = [event() for _ in range(3)]
    async with live.ws() as ws:
        assert await send_batch(ws, events) == {"ack": ids(events)}
        assert await ids_stored(live) == ids(events)
    await assert_serving(live)


async def test_no_ack_while_the_commit_is_blocked(live: LiveServer) -> None:
    """A batch whose commit cannot happen yet gets no ack; it comes once the commit is done."""
    raw = event()
    async with live.ws() as ws:
        store = live.runtime.store
        async with store._write_lock:
            await ws.send(frame([raw]))
            await read_barrier(ws)  # the batch is with the pipeline, waiting for the lock
            await assert_no_reply_yet(ws)
            assert await ids_stored(live) == []
        assert await recv_json(ws) == {"ack": [raw["messageId"]]}
        assert await ids_stored(live) == [raw["messageId"]]


async def test_duplicates_are_acked_and_stored_once(live: LiveServer) -> None:
    """A messageId sent again (same batch, later batch, other connection) is acked, stored once."""
    raw, other = event(), event()
    async with live.ws() as first, live.ws() as second:
        assert await send_batch(first, [raw, raw, other]) == {"ack": ids([raw, raw, other])}
        assert await send_batch(first, [raw]) == {"ack": [raw["messageId"]]}
        assert await send_batch(second, [other, raw]) == {"ack": ids([other, raw])}
    assert await ids_stored(live) == ids([raw, other])


async def test_mixed_batch_rejects_the_invalid_and_acks_the_rest(live: LiveServer) -> None:
    """Invalid events get a reject (messageId, lowercase reason); the valid ones are acked."""
    good = [event(), event("page", name="Home")]
    unknown_type = event("purchase")
    no_name = event()
    del no_name["event"]
    no_message_id = event()
    del no_message_id["messageId"]
    batch = [good[0], unknown_type, no_name, no_message_id, "not an object", good[1]]
    async with live.ws() as ws:
        await ws.send(orjson.dumps({"batch": batch}).decode())
        reject = await recv_json(ws)
        assert await recv_json(ws) == {"ack": ids(good)}
    rejected = reject["reject"]
    assert [r["messageId"] for r in rejected] == [
        unknown_type["messageId"],
        no_name["messageId"],
        None,
        None,
    ]
    for r in rejected:
        assert_reason(r["error"])
    assert await ids_stored(live) == ids(good)
    await assert_serving(live)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"batch": [',
        "[]",
        '"batch"',
        "{}",
        '{"events": []}',
        '{"batch": {}}',
        '{"batch": null}',
    ],
)
async def test_frame_that_is_not_a_batch_is_rejected_and_the_socket_stays_open(
    live: LiveServer, text: str
) -> None:
    """Malformed JSON or a frame that is not ``{"batch": [...]}``: reject with messageId null."""
    raw = event()
    async with live.ws() as ws:
        await ws.send(text)
        reply = await recv_json(ws)
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
    ((reject,),) = reply.values()
    assert list(reply) == ["reject"]
    assert reject["messageId"] is None
    assert_reason(reject["error"])
    assert await ids_stored(live) == [raw["messageId"]]


async def test_five_thousand_digit_number_is_rejected(live: LiveServer) -> None:
    """A 5000-digit number gets a reject, not a crash or a stored event; the socket stays open."""
    raw = event()
    huge = '{"batch": [{"type": "track", "messageId": "m-huge", "anonymousId": "a", '
    huge += '"event": "Product Viewed", "properties": {"price": ' + "9" * 5000 + "}}]}"
    async with live.ws() as ws:
        await ws.send(huge)
        reply = await recv_json(ws)
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
    assert reply["reject"][0]["messageId"] is None
    assert await ids_stored(live) == [raw["messageId"]]


async def test_empty_batch_gets_no_reply(live: LiveServer) -> None:
    """``{"batch": []}`` has nothing to ack: no reply, and the next batch is acked."""
    raw = event()
    async with live.ws() as ws:
        await ws.send(frame([]))
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}


async def test_pipelined_batches_are_all_acked_in_order(live: LiveServer) -> None:
    """Many batches sent without waiting (more than max_in_flight) are all acked, in order;
    the acks of batches committed together come in one frame, which covers whole batches."""
    batches = [[event() for _ in range(3)] for _ in range(200)]
    every_id = [i for batch in batches for i in ids(batch)]
    acked: list[str] = []
    frames: list[list[str]] = []
    async with live.ws() as ws:
        for batch in batches:
            await ws.send(frame(batch))
        while len(acked) < len(every_id):
            reply = await recv_json(ws)
            assert list(reply) == ["ack"] and len(reply["ack"]) % 3 == 0
            frames.append(reply["ack"])
            acked += reply["ack"]
    assert acked == every_id
    assert len(frames) < len(batches)  # pipelined batches were committed, and acked, together
    assert await ids_stored(live) == every_id


# Handshake


@pytest.mark.parametrize(
    ("query", "origin"),
    [
        ("?key=pk_wrong", ORIGIN),
        ("", ORIGIN),
        ("?key=", ORIGIN),
        (None, FOREIGN_ORIGIN),
        (None, "null"),
        (None, None),
        (None, ORIGIN + ".evil.test"),
    ],
    ids=[
        "wrong-key",
        "no-key",
        "empty-key",
        "foreign-origin",
        "null-origin",
        "no-origin",
        "lookalike",
    ],
)
async def test_handshake_is_refused_with_403(
    live: LiveServer, query: str | None, origin: str | None
) -> None:
    """A bad key or an Origin not allowed is refused at the handshake with HTTP 403."""
    url = None if query is None else f"ws://127.0.0.1:{live.port}/v1/ws{query}"
    with pytest.raises(InvalidStatus) as refused:
        async with live.ws(origin=origin, url=url):
            pass  # pragma: no cover - the handshake must fail
    assert refused.value.response.status_code == 403
    assert not ingest_of(live).sessions
    await assert_serving(live)


async def test_wildcard_origin_allows_any_site_but_not_a_missing_origin(tmp_path: Path) -> None:
    """With ``allowed_origins = ["*"]`` any site may connect; a missing or null Origin may not."""
    async with run_server(make_config(tmp_path, server={"allowed_origins": ["*"]})) as live:
        raw = event()
        async with live.ws(origin=FOREIGN_ORIGIN) as ws:
            assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
        for origin in (None, "null"):
            with pytest.raises(InvalidStatus) as refused:
                async with live.ws(origin=origin):
                    pass  # pragma: no cover - the handshake must fail
            assert refused.value.response.status_code == 403


async def test_origin_with_a_trailing_slash_is_allowed(live: LiveServer) -> None:
    """An allowed Origin written with a trailing slash is the same origin."""
    async with live.ws(origin=ORIGIN + "/") as ws:
        raw = event()
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}


async def test_pages_rtserver_serves_itself_are_same_origin(live: LiveServer) -> None:
    """rtserver's own origin (the request's Host, as for /demo) needs no allowed_origins entry;
    a foreign one whose Host is rtserver's is still refused."""
    own = f"http://127.0.0.1:{live.port}"
    async with live.ws(origin=own) as ws:
        raw = event()
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
    with pytest.raises(InvalidStatus) as refused:
        async with live.ws(origin=f"http://127.0.0.1:{live.port + 1}"):
            pass  # pragma: no cover - the handshake must fail
    assert refused.value.response.status_code == 403


# Limits: each closes the offender and leaves everyone else alone


async def test_oversize_frame_closes_1009(live: LiveServer) -> None:
    """A frame over ingest.max_frame_bytes closes the socket with 1009; acked data stays."""
    raw = event()
    big = event(properties={"blob": "x" * live.config.ingest.max_frame_bytes})
    async with live.ws() as ws:
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
        await ws.send(frame([big]))
        assert await close_code(ws) == 1009
    assert await ids_stored(live) == [raw["messageId"]]
    await assert_serving(live)


async def test_binary_frame_closes_1008(live: LiveServer) -> None:
    """A binary frame closes the socket with 1008, even when it holds a valid batch."""
    raw = event()
    async with live.ws() as ws:
        await ws.send(frame([raw]).encode())
        assert await close_code(ws) == 1008
    assert await ids_stored(live) == []
    await assert_serving(live)


async def test_nesting_at_the_depth_limit_is_accepted(live: LiveServer) -> None:
    """An event nested exactly ingest.max_json_depth deep is acked."""
    depth = live.config.ingest.max_json_depth
    raw = event(properties={"deep": nested(depth - 2)})  # event, properties, then the lists
    async with live.ws() as ws:
        assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}


@pytest.mark.parametrize("bomb", [False, True], ids=["in-an-event", "nesting-bomb"])
async def test_nesting_deeper_than_the_limit_closes_1008(live: LiveServer, bomb: bool) -> None:
    """Nesting deeper than ingest.max_json_depth closes with 1008, also past the parser's limit."""
    depth = live.config.ingest.max_json_depth
    acked = event()
    deep = event(properties={"deep": nested(depth - 1)})
    text = "[" * 50000 if bomb else frame([deep])
    async with live.ws() as ws:
        assert await send_batch(ws, [acked]) == {"ack": [acked["messageId"]]}
        await ws.send(text)
        assert await close_code(ws) == 1008
    assert await ids_stored(live) == [acked["messageId"]]
    await assert_serving(live)


async def test_batch_over_max_batch_events_closes_1008(tmp_path: Path) -> None:
    """A batch with more than ingest.max_batch_events events closes with 1008; none is stored."""
    async with run_server(make_config(tmp_path, ingest={"max_batch_events": 3})) as live:
        fits = [event() for _ in range(3)]
        async with live.ws() as ws:
            assert await send_batch(ws, fits) == {"ack": ids(fits)}
            await ws.send(frame([event() for _ in range(4)]))
            assert await close_code(ws) == 1008
        assert await ids_stored(live) == ids(fits)
        await assert_serving(live)


def flood_config(tmp_path: Path) -> Config:
    """A burst of 3 events, then (practically) nothing: the fourth event is over the rate."""
    return make_config(
        tmp_path, ingest={"events_per_s": 0.001, "burst_events": 3, "max_batch_events": 3}
    )


async def test_event_flood_closes_1008(tmp_path: Path) -> None:
    """Events beyond ingest.events_per_s / burst_events close the socket with 1008."""
    async with run_server(flood_config(tmp_path)) as live:
        burst = [event() for _ in range(3)]
        async with live.ws() as ws:
            assert await send_batch(ws, burst[:2]) == {"ack": ids(burst[:2])}
            assert await send_batch(ws, burst[2:]) == {"ack": ids(burst[2:])}
            await ws.send(frame([event()]))
            assert await close_code(ws) == 1008
        assert await ids_stored(live) == ids(burst)
        await assert_serving(live)  # the limit is per connection


@pytest.mark.parametrize("text", ['{"batch": []}', "not json"], ids=["empty", "malformed"])
async def test_frame_flood_closes_1008(tmp_path: Path, text: str) -> None:
    """Frames without events (empty or malformed) cost a token each: a flood of them is closed."""
    async with run_server(flood_config(tmp_path)) as live:
        async with live.ws() as ws:
            for _ in range(4):
                await ws.send(text)
            replies, code = await closed_after_replies(ws)
        assert code == 1008
        assert len(replies) == (3 if text == "not json" else 0)
        await assert_serving(live)


async def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    """Over ingest.max_connections_per_ip, a socket is accepted then closed 1008; a freed slot
    can be used again."""
    config = make_config(tmp_path, ingest={"max_connections_per_ip": 2})
    async with run_server(config) as live:
        async with live.ws() as first, live.ws() as second:
            async with live.ws() as third:
                assert await close_code(third) == 1008
            for ws in (first, second):
                raw = event()
                assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
            session = session_of(live, first)
            await first.close()
            await asyncio.wait_for(session.closed.wait(), TIMEOUT_UNIT)
            await assert_serving(live)  # the slot of `first` is free again
            raw = event()
            assert await send_batch(second, [raw]) == {"ack": [raw["messageId"]]}


async def test_idle_connection_is_closed(tmp_path: Path) -> None:
    """A socket that sends nothing for ingest.idle_timeout_s is closed by the server (1000)."""
    async with run_server(make_config(tmp_path, ingest={"idle_timeout_s": 0.3})) as live:
        async with live.ws() as ws:
            assert await close_code(ws) == 1000
        assert not ingest_of(live).sessions
        await assert_serving(live)


async def test_activity_keeps_a_connection_open_past_the_idle_timeout(tmp_path: Path) -> None:
    """Frames sent more often than ingest.idle_timeout_s keep the socket open however long it
    lives; once they stop, it is closed (1000), not before a full timeout after the last one."""
    timeout = 0.2
    async with run_server(make_config(tmp_path, ingest={"idle_timeout_s": timeout})) as live:
        loop = asyncio.get_running_loop()
        async with live.ws() as ws:
            opened = loop.time()
            while loop.time() < opened + 3 * timeout:  # activity, not a wait
                raw = event()
                last_sent = loop.time()
                assert await send_batch(ws, [raw]) == {"ack": [raw["messageId"]]}
            assert await close_code(ws) == 1000
            # The server's idle wait began after it had read the last frame.
            assert loop.time() - last_sent >= timeout
        assert not ingest_of(live).sessions
        await assert_serving(live)


async def test_a_reader_held_up_by_backpressure_is_not_idle(tmp_path: Path) -> None:
    """A reader waiting for room for its replies (acks held up by a slow commit) is not idle,
    however long it waits: it is closed as idle only a full timeout after its acks go out."""
    timeout = 0.1
    config = make_config(tmp_path, ingest={"idle_timeout_s": timeout, "max_in_flight": 1})
    async with run_server(config) as live:
        batches = [[event()] for _ in range(3)]
        async with live.ws() as ws:
            session = session_of(live, ws)
            assert session.reader is not None
            async with live.runtime.store._write_lock:
                for batch in batches:
                    await ws.send(frame(batch))
                # The 1st waits for its commit, the 2nd for the writer, the 3rd for room.
                await read_barrier(ws)
                # Several idle timeouts pass with the reader stuck: it must not end.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(session.reader), 4 * timeout)
            replies, code = await closed_after_replies(ws)
        assert acked_ids(replies) == [i for batch in batches for i in ids(batch)]
        assert code == 1000
        assert await ids_stored(live) == [i for batch in batches for i in ids(batch)]


async def test_a_failed_send_ends_the_session(live: LiveServer) -> None:
    """When replying fails (the socket was closed under the session), the session ends and
    leaves the registry; the batch is still committed."""
    raw = event()
    async with live.ws() as ws:
        session = session_of(live, ws)
        assert session.closed is session.closed and not session.closed.is_set()
        async with live.runtime.store._write_lock:
            await ws.send(frame([raw]))
            await read_barrier(ws)  # the reader has taken it and waits for the next frame
            ws.transport.pause_reading()  # the client will not answer the close frame
            await session.ws.close(1000)  # so the reader gets nothing; the ack's send fails
        await asyncio.wait_for(session.closed.wait(), TIMEOUT_UNIT)
        assert session.closed.is_set()
        ws.transport.resume_reading()
    assert not ingest_of(live).sessions
    assert await ids_stored(live) == [raw["messageId"]]
    await assert_serving(live)


async def test_hostile_clients_do_not_disturb_a_well_behaved_one(live: LiveServer) -> None:
    """Oversize, deep and binary frames close their own sockets; a client beside them is acked."""
    depth = live.config.ingest.max_json_depth
    hostile = [
        ("x" * (live.config.ingest.max_frame_bytes + 1), 1009),
        ("[" * 60000, 1008),
        (frame([event(properties={"deep": nested(depth)})]), 1008),
        (b"\x00" * 1000, 1008),
    ]
    sent: list[dict[str, Any]] = []
    async with live.ws() as good:
        for payload, expected in hostile:
            async with live.ws() as bad:
                await bad.send(payload)
                raw = event()
                sent.append(raw)
                assert await send_batch(good, [raw]) == {"ack": [raw["messageId"]]}
                assert await close_code(bad) == expected
        raw = event()
        sent.append(raw)
        assert await send_batch(good, [raw]) == {"ack": [raw["messageId"]]}
    assert await ids_stored(live) == ids(sent)


# Overload, storage failure, clients leaving, internal errors


async def test_queue_overload_closes_1013(tmp_path: Path) -> None:
    """When the queue stays full past ingest.queue_timeout_s, the socket is closed 1013 after
    the acks of what was already queued; earlier acked data is kept."""
    config = make_config(tmp_path, ingest={"max_queue": 1, "queue_timeout_s": 0.2})
    async with run_server(config) as live:
        earlier = event()
        blocked = [event() for _ in range(3)]
        async with live.ws() as ws:
            assert await send_batch(ws, [earlier]) == {"ack": [earlier["messageId"]]}
            store = live.runtime.store
            session = session_of(live, ws)
            assert session.reader is not None
            async with store._write_lock:
                # 1st batch: in the blocked commit; 2nd: fills the queue; 3rd: cannot get in.
                for raw in blocked:
                    await ws.send(frame([raw]))
                await asyncio.wait_for(asyncio.shield(session.reader), 4 * TIMEOUT_UNIT)
            replies, code = await closed_after_replies(ws)
        assert code == 1013
        assert replies == [{"ack": [raw["messageId"]]} for raw in blocked[:2]]
        assert await ids_stored(live) == ids([earlier, *blocked[:2]])
        await assert_serving(live)


async def test_storage_failure_nacks_and_the_resend_is_stored_once(live: LiveServer) -> None:
    """Disk full: the batch is nacked with retry_after_ms; resent once there is room, it is acked
    and stored once."""
    earlier = event()
    batch = [event(properties={"blob": "x" * 4000}) for _ in range(12)]
    async with live.ws() as ws:
        assert await send_batch(ws, [earlier]) == {"ack": [earlier["messageId"]]}
        store = live.runtime.store
        async with store._write_lock:
            rows = await store._db.execute_fetchall("PRAGMA page_count")
            pages = next(iter(rows))[0]
            await store._db.execute(f"PRAGMA max_page_count = {pages}")
        reply = await send_batch(ws, batch)
        assert reply == {"nack": ids(batch), "retry_after_ms": live.config.ingest.retry_after_ms}
        assert await ids_stored(live) == [earlier["messageId"]]
        async with store._write_lock:
            await store._db.execute(f"PRAGMA max_page_count = {pages * 1000}")
        assert await send_batch(ws, batch) == {"ack": ids(batch)}
        assert await send_batch(ws, batch) == {"ack": ids(batch)}
    assert await ids_stored(live) == ids([earlier, *batch])


async def test_client_leaving_before_its_acks_still_commits(tmp_path: Path) -> None:
    """A client that leaves while its batches wait for the commit: they are still stored, and
    the server serves others."""
    async with run_server(make_config(tmp_path, ingest={"max_in_flight": 1})) as live:
        batches = [[event()] for _ in range(3)]
        async with live.ws() as ws:
            async with live.runtime.store._write_lock:
                for batch in batches:
                    await ws.send(frame(batch))
                # The 1st waits for its commit, the 2nd for the writer, the 3rd for room.
                await read_barrier(ws)
                session = session_of(live, ws)
                await ws.close()
        await asyncio.wait_for(session.closed.wait(), TIMEOUT_UNIT)
        await assert_serving(live)  # its commit comes after the gone client's three
        stored = await ids_stored(live)
        assert stored[:3] == ids(b[0] for b in batches) and len(stored) == 4
        assert not ingest_of(live).sessions


async def test_unexpected_reader_error_closes_only_that_socket_1011(tmp_path: Path) -> None:
    """An unexpected error while handling a frame closes that socket with 1011; others go on."""
    clock = BrokenClock()
    async with run_server(make_config(tmp_path), monotonic=clock) as live:
        raw = event()
        async with live.ws() as victim, live.ws() as bystander:
            assert await send_batch(victim, [raw]) == {"ack": [raw["messageId"]]}
            clock.broken = True
            await victim.send(frame([event()]))
            assert await close_code(victim) == 1011
            clock.broken = False
            other = event()
            assert await send_batch(bystander, [other]) == {"ack": [other["messageId"]]}
        assert await ids_stored(live) == ids([raw, other])
        await assert_serving(live)


# Shutdown


@pytest.mark.parametrize("held", [0, 2], ids=["all-read", "some-not-read-yet"])
async def test_shutdown_sends_every_ack_then_closes_1001(tmp_path: Path, held: int) -> None:
    """On shutdown, every batch the server has received, even one its reader has not taken yet,
    is committed and acked; then 1001."""
    async with run_server(make_config(tmp_path, ingest={"max_in_flight": 1})) as live:
        earlier = event()
        batches = [[event(), event()] for _ in range(3 + held)]
        async with live.ws() as busy, live.ws() as idle:
            assert await send_batch(busy, [earlier]) == {"ack": [earlier["messageId"]]}
            store = live.runtime.store
            async with store._write_lock:
                for batch in batches[:3]:
                    await busy.send(frame(batch))
                # The 1st waits for its commit, the 2nd for the writer, the 3rd for room.
                await read_barrier(busy)
                if held:
                    # Sent with a ping and without yielding, so uvicorn reads them at once: it
                    # holds them for the stuck reader, and its pong says they have arrived.
                    for batch in batches[3:]:
                        await busy.send(frame(batch))
                    await asyncio.wait_for(await busy.ping(), TIMEOUT_UNIT)
                live.server.should_exit = True
                # The idle socket is closed at once: the drain has begun, `busy` is still open.
                assert await close_code(idle) == 1001
            replies, code = await closed_after_replies(busy)
        assert acked_ids(replies) == [i for batch in batches for i in ids(batch)]
        assert code == 1001
        await asyncio.wait_for(live.task, 4 * TIMEOUT_UNIT)
    store = await Store.open(live.config.store.path)
    try:
        stored = await store.stored_message_ids()
    finally:
        await store.close()
    assert stored == ids([earlier, *(e for b in batches for e in b)])


async def test_handshake_during_the_drain_is_turned_away_1001(tmp_path: Path) -> None:
    """A handshake that reaches the app once the drain has begun is accepted, then closed 1001."""
    async with run_server(make_config(tmp_path)) as live:
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        try:
            # A keep-alive connection, accepted before the shutdown closes the listening socket.
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            async with asyncio.timeout(TIMEOUT_UNIT):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
            async with live.ws() as busy, live.ws() as idle:
                raw = event()
                async with live.runtime.store._write_lock:  # keeps the drain going while we knock
                    await busy.send(frame([raw]))
                    await read_barrier(busy)
                    live.server.should_exit = True
                    assert await close_code(idle) == 1001
                    key = base64.b64encode(os.urandom(16))
                    writer.write(
                        b"GET /v1/ws?key=" + live.config.keys.public.encode() + b" HTTP/1.1\r\n"
                        b"Host: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                        b"Origin: " + ORIGIN.encode() + b"\r\n\r\n"
                    )
                    async with asyncio.timeout(TIMEOUT_UNIT):
                        head = await reader.readuntil(b"\r\n\r\n")
                        opcode, size = await reader.readexactly(2)
                        payload = await reader.readexactly(size)
                    assert head.startswith(b"HTTP/1.1 101")
                    assert opcode == 0x88  # a final close frame
                    assert int.from_bytes(payload[:2], "big") == 1001
                replies, code = await closed_after_replies(busy)
            assert (replies, code) == ([{"ack": [raw["messageId"]]}], 1001)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_connections_are_summarized_not_logged_one_by_one(tmp_path: Path) -> None:
    """The ingest counts what it opens, closes and refuses (with the reason) for the summary
    logged once a minute; each summary starts counting again."""
    async with run_server(make_config(tmp_path)) as live:
        assert live.ingest.summary() is None
        async with live.ws() as ws:
            await send_batch(ws, [event()])
        with pytest.raises(InvalidStatus):
            async with live.ws(url=live.ws_url.replace("key=", "key=wrong")):
                pass  # pragma: no cover
        with pytest.raises(InvalidStatus):
            async with live.ws(origin="http://evil.test"):
                pass  # pragma: no cover
        line = live.ingest.summary() or ""
        # The closed socket's session may still be ending on the server: closed 0 or 1.
        expected = r"websockets: 1 opened, ([01]) closed, 2 refused \(1 invalid key, "
        expected += r"1 origin not allowed\); ([01]) open"
        match = re.fullmatch(expected, line)
        assert match is not None, line
        assert int(match[1]) + int(match[2]) == 1
        assert live.ingest.summary() in (None, "websockets: 0 opened, 1 closed; 0 open")
