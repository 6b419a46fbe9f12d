"""The dev SMTP sink on the test's own loop: what it keeps, how it answers, how it stops."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from rtserver.mail.sink import Sink, _session_ended, headers_of, start_sink
from rtserver.store.database import Store
from tests.support.server import TIMEOUT_UNIT, FakeClock


@pytest.fixture
async def sink(store: Store) -> AsyncIterator[Sink]:
    sink = await start_sink(store, FakeClock(1234.5))
    try:
        yield sink
    finally:
        await sink.close()


def message(subject: str = "Hello", message_id: str | None = "<m1@shop.test>") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Shop <shop@example.com>"
    mail["To"] = "ann@example.com"
    if subject:
        mail["Subject"] = subject
    if message_id is not None:
        mail["Message-ID"] = message_id
    mail.set_content("Hi Ann\n")
    return mail


def client(sink: Sink) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=TIMEOUT_UNIT)


async def test_sink_keeps_each_mail(store: Store, sink: Sink) -> None:
    """A mail sent to the sink is kept with its envelope, headers, raw bytes and receive time."""
    assert sink.host == "127.0.0.1" and sink.port > 0
    smtp = client(sink)
    async with smtp:
        errors, reply = await smtp.send_message(message("Your cart, Ann ✓"))
        await smtp.send_message(message("Second", "<m2@shop.test>"), recipients=["b@x.test"])
    assert errors == {} and reply.startswith("2.0.0 OK")
    second, first = await store.mail.sunk()
    assert first["message_id"] == "<m1@shop.test>"
    assert first["mail_from"] == "shop@example.com"
    assert first["recipients"] == ["ann@example.com"]
    assert first["subject"] == "Your cart, Ann ✓"
    assert first["received_at"] == 1234.5
    assert b"Hi Ann" in first["body"] and b"Message-ID: <m1@shop.test>" in first["body"]
    assert (second["message_id"], second["recipients"]) == ("<m2@shop.test>", ["b@x.test"])


async def test_sink_keeps_mail_without_id_or_subject(store: Store, sink: Sink) -> None:
    """A mail with no Message-ID or Subject is kept with None and an empty subject."""
    async with client(sink) as smtp:
        await smtp.send_message(message(subject="", message_id=None))
    (kept,) = await store.mail.sunk()
    assert (kept["message_id"], kept["subject"]) == (None, "")


def test_headers_of_reads_only_the_headers() -> None:
    """Message-ID and Subject come from the header block; the body is never parsed."""
    raw = b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID:  <a@b>\r\n\r\nMessage-ID: <body@x>\r\n"
    assert headers_of(raw) == ("<a@b>", "café")
    assert headers_of(b"Message-ID: \r\n\r\n") == (None, "")
    assert headers_of(b"") == (None, "")


async def test_sink_answers_451_when_the_store_is_locked(
    store: Store, sink: Sink, db_path: Path
) -> None:
    """A store that cannot write makes the sink answer 451 (the sender retries); it keeps going."""
    await store._db.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        async with client(sink) as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                await smtp.send_message(message())
            assert refused.value.code == 451
            other.execute("ROLLBACK")
            await smtp.send_message(message())
    finally:
        other.close()
    assert len(await store.mail.sunk()) == 1


async def test_sink_survives_a_client_hanging_up_mid_mail(store: Store, sink: Sink) -> None:
    """A client that drops the connection in the middle of DATA leaves nothing and no error."""
    reader, writer = await asyncio.open_connection(sink.host, sink.port)
    assert (await reader.readline()).startswith(b"220 rtserver-sink")
    for line in (b"HELO x", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
        writer.write(line + b"\r\n")
        await reader.readline()
    writer.write(b"Subject: cut\r\n\r\nhalf a body")
    writer.transport.abort()  # a reset, not a polite close
    async with client(sink) as smtp:
        await smtp.send_message(message())
    assert [m["subject"] for m in await store.mail.sunk()] == ["Hello"]


async def test_close_ends_open_sessions(store: Store) -> None:
    """Closing the sink stops listening and ends a session left open by its client."""
    sink = await start_sink(store, FakeClock())
    smtp = client(sink)
    await smtp.connect()
    await smtp.ehlo()
    await sink.close()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await smtp.noop()
    with pytest.raises(OSError):
        await asyncio.open_connection(sink.host, sink.port)
    await sink.close()  # twice is harmless


async def test_a_session_ending_in_an_error_is_no_error() -> None:
    """A session task that ended with an exception (a reset mid-reply) has it retrieved, so
    asyncio never reports it as unhandled."""

    async def reset() -> None:
        raise ConnectionResetError("peer reset")

    task = asyncio.ensure_future(reset())
    await asyncio.wait([task])
    _session_ended(task)
    assert task._log_traceback is False  # retrieved: no "exception was never retrieved"
