"""A scripted SMTP server for tests: aiosmtpd's protocol on 127.0.0.1:0, answering each mail
transaction as its :class:`Script` says, and recording what arrived.

    async with SMTPServer([Script(rcpt="550 5.1.1 user unknown"), Script()]) as smtpd:
        relay = Relay(smtpd.host, smtpd.port, timeout_s=TIMEOUT_UNIT)
        ...
        [first, second] = await smtpd.wait_for(2)

Each transaction (one MAIL FROM) takes the next script; when they run out, everything is
accepted. ``DROP`` in place of a reply closes the connection at that point instead.
``SMTPServer(replies={"RSET": DROP})`` fixes the reply to EHLO, HELO, RSET or QUIT, and
``SMTPServer(greet=False)`` is a tarpit: it accepts TCP and never says a word.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.server import TIMEOUT_UNIT

GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
DROP = "drop"
"""A script entry meaning: close the connection instead of replying."""


@dataclass(frozen=True)
class Script:
    """The replies to one mail transaction (full SMTP reply lines, or ``DROP``)."""

    mail: str = "250 OK"
    """To MAIL FROM."""
    rcpt: str = "250 OK"
    """To every RCPT TO."""
    data_command: str = GO_AHEAD
    """To the DATA command itself, before any content."""
    data: str = "250 OK: queued"
    """After the content; ``DROP`` is a lost ack: the content arrived, the reply never does."""
    close_after: bool = False
    """Close the connection after the final reply (a relay dropping an idle client)."""


@dataclass(frozen=True)
class Received:
    """One message whose content reached the server, whatever it replied."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    reply: str

    @property
    def message(self) -> EmailMessage:
        """The content parsed (with plain newlines); ``content`` keeps the bytes on the wire."""
        content = self.content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        script = self.server.script.popleft() if self.server.script else Script()
        session.script = script
        if script.mail == DROP:
            return _drop(smtp)
        if script.mail.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return script.mail

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply: str = session.script.rcpt
        if reply == DROP:
            return _drop(smtp)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        script: Script = session.script
        content = envelope.original_content or b""
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), content, script.data)
        await self.server._arrived(received)
        if script.data == DROP:
            return _drop(smtp)
        if script.close_after:
            asyncio.get_running_loop().call_soon(_close, smtp)
        return script.data


def _close(smtp: SMTP) -> None:
    if smtp.transport is not None:
        smtp.transport.close()


def _drop(smtp: SMTP) -> str:
    """Close the connection; aiosmtpd's push of the returned reply then goes nowhere."""
    _close(smtp)
    return "421 closing"


class _ScriptedSMTP(SMTP):
    """aiosmtpd's protocol, with the reply to the DATA command itself scriptable."""

    def __init__(self, server: SMTPServer, **kwargs: Any) -> None:
        super().__init__(_Handler(server), hostname="smtp.test", **kwargs)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server.connections += 1
        self._server._transports.append(transport)
        super().connection_made(transport)

    async def _scripted(self, command: str) -> bool:
        """Answer ``command`` as ``SMTPServer(replies=...)`` says; False: answer normally."""
        reply = self._server.replies.get(command)
        if reply is None:
            return False
        if reply == DROP:
            _close(self)
        else:
            await self.push(reply)
        return True

    async def smtp_EHLO(self, arg: str) -> None:
        if not await self._scripted("EHLO"):
            await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        if not await self._scripted("HELO"):
            await super().smtp_HELO(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._scripted("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        if not await self._scripted("QUIT"):
            await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        script: Script | None = getattr(self.session, "script", None)
        if script is not None and script.data_command != GO_AHEAD:
            if script.data_command == DROP:
                _close(self)
            else:
                await self.push(script.data_command)
            return
        await super().smtp_DATA(arg)


class _Tarpit(asyncio.Protocol):
    def __init__(self, server: SMTPServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server.connections += 1
        self._server._transports.append(transport)


class SMTPServer:
    """An SMTP server on 127.0.0.1 and a free port, for one test."""

    host = "127.0.0.1"

    def __init__(
        self,
        script: Iterable[Script] = (),
        *,
        greet: bool = True,
        smtputf8: bool = False,
        replies: Mapping[str, str] | None = None,
        logins: Mapping[str, str] | None = None,
    ) -> None:
        self.script: deque[Script] = deque(script)
        self.replies = dict(replies or {})
        """Fixed replies (or ``DROP``) to EHLO, HELO, RSET or QUIT, for every connection."""
        self.received: list[Received] = []
        self.connections = 0
        self.port = 0
        self._greet = greet
        self._smtputf8 = smtputf8
        self.logins = dict(logins or {})
        """Accepted ``user: password`` pairs; when any, AUTH is offered (in clear: tests only)."""
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._transports: list[asyncio.BaseTransport] = []

    def add(self, *scripts: Script) -> None:
        """Queue the replies to more transactions."""
        self.script.extend(scripts)

    async def start(self) -> SMTPServer:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {"enable_SMTPUTF8": self._smtputf8}
        if self.logins:
            options |= {"auth_require_tls": False, "authenticator": self._authenticate}
        factory: Any = (
            (lambda: _ScriptedSMTP(self, **options)) if self._greet else (lambda: _Tarpit(self))
        )
        self._server = await loop.create_server(factory, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and close every connection still open."""
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.close()
        await self._server.wait_closed()

    def _authenticate(self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      data: LoginPassword) -> AuthResult:  # fmt: skip
        login, password = data.login.decode(), data.password.decode()
        return AuthResult(success=self.logins.get(login) == password, handled=False)

    async def __aenter__(self) -> SMTPServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _arrived(self, received: Received) -> None:
        async with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = TIMEOUT_UNIT) -> list[Received]:
        """The first ``count`` messages received, waiting for them to arrive."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.received) >= count), timeout
            )
        return self.received[:count]
