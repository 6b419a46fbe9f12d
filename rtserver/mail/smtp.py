"""SMTP delivery: one long-lived ``aiosmtplib.SMTP`` connection, and what each hand-off meant.

:class:`Relay` connects on first use and again after any error, then sends step by step (MAIL,
RCPT, DATA, the content) so each failure is classified into an :class:`Outcome`:

    2xx                                                 sent
    4xx; connect errors and timeouts before the content  retry
    5.1.x (550 5.1.1 user unknown)                       suppress
    other 5xx (5.7.x, 554)                               failed
    connection lost or timeout after the content went    ambiguous (the relay may
    out, before the final reply                          have taken it)

It sends a :class:`~rtserver.mail.mime.RawMail` as it is (its bytes are what DKIM signed), or an
``EmailMessage`` flattened by :func:`wire_bytes`. It never raises for SMTP or network errors.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender

from rtserver.mail.mime import POLICY, RawMail

__all__ = [
    "Outcome",
    "Relay",
    "classify",
    "raw_mail",
    "redact",
    "wire_bytes",
]

_ENHANCED_5_1 = re.compile(r"\s*5\.1\.\d{1,3}\b")
_ADDR = r"[^\s<>()\[\],;:\"'][^\s<>()\[\],;:\"]*@[^\s<>()\[\],;:\"']+"
_ADDRESS = re.compile(rf"<{_ADDR}>|{_ADDR}")
"""An address, with its angle brackets if it has them. A local part may hold an apostrophe
(``o'neil@``), but not start with one: that is a quote around the address."""


def redact(text: str) -> str:
    """``text`` with every email address replaced by ``<address>``: SMTP replies quote the
    recipient, and reasons end up in logs and on the dashboard (an erased address must
    not stay behind anywhere)."""
    return _ADDRESS.sub("<address>", text)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _needs_utf8(message: EmailMessage) -> bool:
    """Whether an address is non-ASCII, so the mail must go out as SMTPUTF8."""
    addresses = [extract_sender(message) or "", *extract_recipients(message)]
    return not all(a.isascii() for a in addresses)


def wire_bytes(message: EmailMessage) -> bytes:
    """The bytes of ``message`` as the relay sends them (and as DKIM signs them)."""
    if "Bcc" in message:
        message = copy.copy(message)
        del message["Bcc"]
    return message.as_bytes(policy=POLICY.clone(utf8=_needs_utf8(message)))


def raw_mail(message: EmailMessage) -> RawMail:
    """``message`` ready for the relay: its envelope (From; To, Cc and Bcc) and wire bytes,
    line ends made CRLF."""
    data = _LINE_END.sub(b"\r\n", wire_bytes(message))
    return RawMail(
        extract_sender(message) or "",
        tuple(extract_recipients(message)),
        data,
        str(message.get("Message-ID", "")),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one hand-off to SMTP."""

    state: Literal["sent", "retry", "failed", "suppress", "ambiguous"]
    code: int | None
    reason: str


def classify(code: int, message: str) -> Outcome:
    """The outcome an SMTP reply means."""
    reason = redact(f"{code} {message}".strip())
    if 200 <= code < 300:
        return Outcome("sent", code, reason)
    if 400 <= code < 500:
        return Outcome("retry", code, reason)
    if 500 <= code < 600 and _ENHANCED_5_1.match(message):
        return Outcome("suppress", code, reason)
    return Outcome("failed", code, reason)


class Relay:
    """One long-lived SMTP connection, opened on first use and again after any error."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout_s: float = 30.0,
        local_hostname: str | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            username=username,
            password=password,
            start_tls=starttls,
            timeout=timeout_s,
            local_hostname=local_hostname,
        )
        self._lock = asyncio.Lock()

    async def send(
        self, message: RawMail | EmailMessage, *, handed: Callable[[], object] | None = None
    ) -> Outcome:
        """Hand ``message`` to the relay; never raises for SMTP or network errors.

        ``handed`` is called once the content is written, while the relay digests it: the
        sender renders its next mail then (the longest wait of a transaction).
        """
        mail = message if isinstance(message, RawMail) else raw_mail(message)
        if not mail.sender or not mail.recipients:
            return Outcome("failed", None, "message without sender or recipient")
        async with self._lock:
            reused = self._client.is_connected
            outcome = await self._connect()
            if outcome is None:
                outcome, phase = await self._transaction(mail, handed)
                # A connection the server closed while idle fails before anything was
                # accepted: one fresh connection, then the outcome stands.
                if reused and phase == "mail" and outcome.state == "retry" and not outcome.code:
                    outcome = await self._connect()
                    if outcome is None:
                        outcome, _ = await self._transaction(mail, handed)
            return outcome

    async def close(self) -> None:
        """Say QUIT when connected, then drop the connection."""
        async with self._lock:
            if self._client.is_connected:
                try:
                    await self._client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    self._client.close()

    async def _connect(self) -> Outcome | None:
        if self._client.is_connected:
            return None
        try:
            await self._client.connect()
            # Greet now (aiosmtplib would at the first command) so the extensions, SMTPUTF8
            # among them, are known before MAIL, and a refused greeting counts as connecting.
            if self._client.is_ehlo_or_helo_needed:
                try:
                    await self._client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not self._client.is_connected:  # a 421 closes the connection
                        raise
                    await self._client.helo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Any failure to connect, even an authentication refusal, says nothing about this
            # mail: retry it later, when the relay or its configuration is fixed.
            self._client.close()
            code = exc.code if isinstance(exc, aiosmtplib.SMTPResponseException) else None
            return Outcome("retry", code, f"connect: {type(exc).__name__}: {exc}")
        return None

    async def _transaction(
        self, mail: RawMail, handed: Callable[[], object] | None
    ) -> tuple[Outcome, str]:
        client = self._client
        utf8 = mail.utf8
        if utf8 and not client.supports_extension("smtputf8"):
            return Outcome("failed", None, "the relay does not support SMTPUTF8"), "mail"
        options = ["SMTPUTF8", "BODY=8BITMIME"] if utf8 else []
        encoding = "utf-8" if utf8 else "ascii"
        # Dot-stuffing (RFC 5321 4.5.2); lines are CRLF and the last one ends (RawMail's
        # contract), so one replace does what a regex over every line end did.
        data = (b"\r\n" + mail.data).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"
        phase = "mail"
        try:
            await client.mail(mail.sender, options=options, encoding=encoding)
            phase = "rcpt"
            for recipient in mail.recipients:
                await client.rcpt(recipient, encoding=encoding)
            phase = "data"
            reply = await client.execute_command(b"DATA")
            if reply.code == 354:
                # aiosmtplib's data() can't tell whether the content went out before a failure;
                # sending it through the protocol ourselves can: after it, a loss is ambiguous.
                assert client.protocol is not None
                client.protocol.write(data)
                phase = "content"
                if handed is not None:
                    handed()
                reply = await client.protocol.read_response(timeout=self._timeout_s)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            return classify(exc.code, exc.message), phase
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            state: Literal["ambiguous", "retry"] = "ambiguous" if phase == "content" else "retry"
            return Outcome(state, None, redact(f"{phase}: {type(exc).__name__}: {exc}")), phase
        outcome = classify(reply.code, reply.message)
        if outcome.state != "sent":
            await self._reset()
        return outcome, phase

    async def _reset(self) -> None:
        """RSET after a refusal, so the connection serves the next mail; else drop it."""
        if self._client.is_connected:
            try:
                await self._client.rset()
            except (aiosmtplib.SMTPException, OSError):
                self._client.close()
