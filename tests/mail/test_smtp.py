"""The SMTP relay against a real, scripted aiosmtpd server on port 0: every reply class,
lost connections, a tarpit, connection reuse and reconnects. No sleeps."""

from __future__ import annotations

import asyncio
import socket
from email.message import EmailMessage
from typing import Any

import pytest

from rtserver.mail.mime import RawMail
from rtserver.mail.smtp import Outcome, Relay, classify, raw_mail, redact, wire_bytes
from tests.support.server import TIMEOUT_UNIT
from tests.support.smtp_server import DROP, Script, SMTPServer


def mail(to: str = "bob@example.com", body: str = "hello\n.leading dot\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@acme.example"
    message["To"] = to
    message["Subject"] = "hi"
    message["Message-ID"] = "<m1@acme.example>"
    message.set_content(body)
    return message


def relay_for(server: SMTPServer, **kw: Any) -> Relay:
    return Relay(server.host, server.port, timeout_s=kw.pop("timeout_s", TIMEOUT_UNIT), **kw)


async def test_relay_sends_and_reuses_the_connection() -> None:
    """Two mails go out on one connection, content intact (dot-stuffing undone)."""
    async with SMTPServer() as server:
        relay = relay_for(server)
        assert await relay.send(mail()) == Outcome("sent", 250, "250 OK: queued")
        assert (await relay.send(mail(to="carol@example.com"))).state == "sent"
        first, second = await server.wait_for(2)
        await relay.close()
    assert server.connections == 1
    assert first.mail_from == "shop@acme.example" and first.rcpt_tos == ["bob@example.com"]
    assert second.rcpt_tos == ["carol@example.com"]
    assert first.message["Message-ID"] == "<m1@acme.example>"
    assert first.message.get_content() == "hello\n.leading dot\n"


@pytest.mark.parametrize(
    ("script", "state", "code"),
    [
        (Script(mail="421 4.3.2 shutting down"), "retry", 421),
        (Script(mail="451 4.3.0 try again later"), "retry", 451),
        (Script(rcpt="450 4.2.1 mailbox busy"), "retry", 450),
        (Script(rcpt="452 4.5.3 too many recipients"), "retry", 452),
        (Script(rcpt="451 4.7.1 greylisted"), "retry", 451),
        (Script(rcpt="550 5.1.1 user unknown"), "suppress", 550),
        (Script(rcpt="553 5.1.3 bad address syntax"), "suppress", 553),
        (Script(rcpt="550 5.7.1 relaying denied"), "failed", 550),
        (Script(data="554 5.7.1 message rejected as spam"), "failed", 554),
        (Script(data_command="554 5.7.1 no thanks"), "failed", 554),
        (Script(data="552 5.3.4 message too big"), "failed", 552),
        (Script(data="452 4.3.1 out of storage"), "retry", 452),
    ],
)
async def test_relay_classifies_replies(script: Script, state: str, code: int) -> None:
    """Each reply maps to its outcome, and the next mail still goes out."""
    async with SMTPServer([script]) as server:
        relay = relay_for(server)
        outcome = await relay.send(mail())
        assert (outcome.state, outcome.code) == (state, code)
        assert str(code) in outcome.reason
        assert (await relay.send(mail())).state == "sent"
        await relay.close()
    # After a 421 the server is gone, so a new connection; otherwise RSET kept the one.
    assert server.connections == (2 if code == 421 else 1)


async def test_relay_lost_connection_after_content_is_ambiguous() -> None:
    """The content arrived but the reply never did: ambiguous; the next mail reconnects."""
    async with SMTPServer([Script(data=DROP)]) as server:
        relay = relay_for(server)
        outcome = await relay.send(mail())
        assert outcome.state == "ambiguous" and outcome.code is None
        assert (await relay.send(mail())).state == "sent"
        first, _ = await server.wait_for(2)
        await relay.close()
    assert first.reply == DROP and first.message["Message-ID"] == "<m1@acme.example>"
    assert server.connections == 2


@pytest.mark.parametrize("script", [Script(data_command=DROP), Script(rcpt=DROP)])
async def test_relay_lost_connection_before_content_is_retry(script: Script) -> None:
    """Nothing was handed over yet: a plain retry."""
    async with SMTPServer([script]) as server:
        relay = relay_for(server)
        outcome = await relay.send(mail())
        assert outcome.state == "retry" and outcome.code is None
        await relay.close()
    assert server.received == []


async def test_relay_reconnects_once_when_an_idle_connection_was_dropped() -> None:
    """A reused connection that fails before MAIL is answered gets one fresh try."""
    async with SMTPServer([Script(), Script(mail=DROP)]) as server:
        relay = relay_for(server)
        assert (await relay.send(mail())).state == "sent"
        assert (await relay.send(mail())).state == "sent"
        await server.wait_for(2)
        await relay.close()
    assert server.connections == 2


async def test_relay_survives_a_server_closing_after_a_mail() -> None:
    """A relay that hangs up after each mail costs a reconnect, not a failure."""
    async with SMTPServer([Script(close_after=True), Script(close_after=True)]) as server:
        relay = relay_for(server)
        for _ in range(3):
            assert (await relay.send(mail())).state == "sent"
        await server.wait_for(3)
        await relay.close()
    assert server.connections == 3


async def test_relay_tarpit_times_out_as_retry() -> None:
    """A server that accepts TCP and never greets: a retry after the timeout."""
    async with SMTPServer(greet=False) as tarpit:
        relay = relay_for(tarpit, timeout_s=0.5)
        outcome = await asyncio.wait_for(relay.send(mail()), 4 * TIMEOUT_UNIT)
        await relay.close()
    assert outcome.state == "retry" and "connect" in outcome.reason
    assert tarpit.connections == 1


async def test_relay_connection_refused_is_retry() -> None:
    """Nothing listening: a retry, not an exception."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    relay = Relay("127.0.0.1", port, timeout_s=TIMEOUT_UNIT)
    outcome = await relay.send(mail())
    assert outcome.state == "retry" and outcome.code is None
    await relay.close()


async def test_relay_refused_greeting_is_retry_with_its_code() -> None:
    """A relay refusing EHLO and HELO: retry, keeping the code for the operator."""
    async with SMTPServer(replies={"EHLO": "554 5.7.1 go away", "HELO": "554 5.7.1 no"}) as s:
        outcome = await relay_for(s).send(mail())
    assert outcome.state == "retry" and outcome.code == 554
    assert s.received == []


async def test_relay_falls_back_to_helo() -> None:
    """A relay that only knows HELO still gets the mail."""
    async with SMTPServer(replies={"EHLO": "502 5.5.1 what"}) as server:
        relay = relay_for(server)
        assert (await relay.send(mail())).state == "sent"
        await relay.close()


@pytest.mark.parametrize("kw", [{"starttls": True}, {"username": "u", "password": "p"}])
async def test_relay_missing_starttls_or_auth_is_retry(kw: dict[str, Any]) -> None:
    """Configured STARTTLS or login that the server does not offer: retry, not send in clear."""
    async with SMTPServer() as server:
        relay = relay_for(server, **kw)
        outcome = await relay.send(mail())
        await relay.close()
    assert outcome.state == "retry"
    assert server.received == []


async def test_relay_logs_in() -> None:
    """With a username the relay logs in; a refused login is a retry with its code."""
    async with SMTPServer(logins={"shop": "s3cret"}) as server:
        relay = relay_for(server, username="shop", password="s3cret")
        assert (await relay.send(mail())).state == "sent"
        await relay.close()
        refused = relay_for(server, username="shop", password="wrong")
        outcome = await refused.send(mail())
        await refused.close()
    assert outcome.state == "retry" and outcome.code == 535
    assert len(server.received) == 1


async def test_relay_retry_on_a_fresh_connection_may_fail_too() -> None:
    """When the fresh connection after an idle drop is refused, that refusal is the outcome."""
    async with SMTPServer([Script(), Script(mail=DROP)]) as server:
        relay = relay_for(server)
        assert (await relay.send(mail())).state == "sent"
        server.replies["EHLO"] = "421 4.3.2 busy"
        server.replies["HELO"] = "421 4.3.2 busy"
        outcome = await relay.send(mail())
        await relay.close()
    assert (outcome.state, outcome.code) == ("retry", 421)
    assert server.connections == 2


def test_wire_bytes_leaves_out_bcc() -> None:
    """A Bcc header never goes on the wire."""
    message = mail()
    message["Bcc"] = "hidden@example.com"
    assert b"hidden@example.com" not in wire_bytes(message)
    assert message["Bcc"] == "hidden@example.com"


async def test_relay_drops_the_connection_when_rset_fails() -> None:
    """After a refusal the connection is reset; if RSET fails it is dropped and reopened."""
    async with SMTPServer([Script(rcpt="550 5.1.1 unknown")], replies={"RSET": DROP}) as s:
        relay = relay_for(s)
        assert (await relay.send(mail())).state == "suppress"
        assert (await relay.send(mail())).state == "sent"
        await relay.close()
    assert s.connections == 2


async def test_relay_close_tolerates_a_dead_server() -> None:
    """close() after the server vanished, or when never connected, does not raise."""
    await Relay("127.0.0.1", 9, timeout_s=TIMEOUT_UNIT).close()
    async with SMTPServer(replies={"QUIT": DROP}) as server:
        relay = relay_for(server)
        assert (await relay.send(mail())).state == "sent"
        await relay.close()
        await relay.close()


async def test_relay_smtputf8() -> None:
    """Non-ASCII addresses need SMTPUTF8: sent where the server offers it, failed elsewhere."""
    async with SMTPServer(smtputf8=True) as server:
        relay = relay_for(server)
        assert (await relay.send(mail(to="ü@bücher.example"))).state == "sent"
        [received] = await server.wait_for(1)
        await relay.close()
    assert received.rcpt_tos == ["ü@bücher.example"]
    async with SMTPServer() as plain:
        relay = relay_for(plain)
        outcome = await relay.send(mail(to="ü@bücher.example"))
        await relay.close()
    assert outcome.state == "failed" and "SMTPUTF8" in outcome.reason


async def test_relay_refuses_a_message_without_addresses() -> None:
    """A message with no From or no To is failed without touching the network."""
    message = EmailMessage()
    message["Subject"] = "x"
    relay = Relay("127.0.0.1", 9)
    assert (await relay.send(message)).state == "failed"


def test_classify() -> None:
    """Reply codes and enhanced status codes map to outcomes."""
    assert classify(250, "ok").state == "sent"
    assert classify(421, "bye").state == "retry"
    assert classify(550, "5.1.1 no such user").state == "suppress"
    assert classify(550, "  5.1.10 null MX").state == "suppress"
    assert classify(550, "mailbox unavailable").state == "failed"
    assert classify(554, "5.7.1 spam").state == "failed"
    assert classify(354, "go ahead").state == "failed"
    assert classify(550, "5.1.1 x") == Outcome("suppress", 550, "550 5.1.1 x")


async def test_relay_sends_raw_mail_as_it_is() -> None:
    """A RawMail goes out byte for byte (dot-stuffed on the wire, unstuffed on arrival), to
    its envelope, not to its headers."""
    data = (
        b"From: shop@acme.example\r\nTo: bob@example.com\r\nSubject: hi\r\n"
        b"Message-ID: <m2@acme.example>\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n"
    )
    mail = RawMail("bounce@acme.example", ("carol@example.com",), data, "<m2@acme.example>")
    async with SMTPServer() as server:
        relay = relay_for(server)
        assert (await relay.send(mail)).state == "sent"
        [received] = await server.wait_for(1)
        await relay.close()
    assert (received.mail_from, received.rcpt_tos) == ("bounce@acme.example", ["carol@example.com"])
    assert received.content.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


def test_raw_mail_of_a_message() -> None:
    """An EmailMessage becomes its envelope and CRLF wire bytes (Bcc in the envelope only)."""
    message = mail()
    message["Bcc"] = "hidden@example.com"
    raw = raw_mail(message)
    assert raw.sender == "shop@acme.example"
    assert raw.recipients == ("bob@example.com", "hidden@example.com")
    assert raw.data == wire_bytes(message) and raw.message_id == "<m1@acme.example>"


def test_addresses_in_replies_are_redacted() -> None:
    """An SMTP reply quoting the recipient keeps no address in the outcome's reason (it is
    logged, stored with the mail and shown on the dashboard)."""
    outcome = classify(550, "5.1.1 <ann.o'neil+x@example.com>: Recipient address rejected")
    assert outcome == Outcome("suppress", 550, "550 5.1.1 <address>: Recipient address rejected")
    assert redact("mailbox bob@example.com full (bob@example.com)") == (
        "mailbox <address> full (<address>)"
    )
    assert redact("invalid address 'bob@example.com': no") == "invalid address '<address>': no"
