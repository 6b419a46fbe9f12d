"""Mail on the wire: the bytes of a rendered mail, built directly, and the envelope they go with.

Built through ``EmailMessage`` (every header parsed by ``email.headerregistry``, the parts
quoted-printable-encoded in pure Python, then flattened by the generator) a shop mail cost
about 1.5 ms of CPU. Here the header block is written from strings: a short value of plain
ASCII words, which the email package would write unchanged, is written as it is; any other
value goes through the policy's own header parser and folder, so the bytes are the same either
way (``tests/test_mime.py`` holds both paths to that). The two parts are encoded by
:func:`binascii.b2a_qp` (C), lines of at most 76 characters (RFC 2045). The layout is the one
``EmailMessage.set_content`` + ``add_alternative`` gives::

    From, To, Subject, Date, Message-ID, X-RT-Mail-ID[, List-Unsubscribe, -Post]
    MIME-Version, Content-Type: multipart/alternative; boundary="=*15<19 digits>=="
    [DKIM-Signature]  (signed last, so it goes last, as ``EmailMessage.set_raw`` put it)
        text/plain; charset="utf-8", quoted-printable
        text/html; charset="utf-8", quoted-printable (and a MIME-Version, as there)

:class:`RawMail` is what :class:`~rtserver.mail.smtp.Relay` sends and what DKIM signs; its
:meth:`~RawMail.message` parses it back for callers that want an ``EmailMessage``.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import random
import re
import sys
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import formatdate

import dkim  # type: ignore[import-untyped]

from rtserver.errors import MailError

__all__ = ["POLICY", "RawMail", "compose", "date_value", "header", "recipients_of", "sign"]

POLICY = email.policy.SMTP.clone(refold_source="none")
"""The policy of rendered mail: SMTP's (CRLF, lines folded at 78), except that headers set
raw (List-Unsubscribe, DKIM-Signature) are written as they are: refolding a long url would
turn it into RFC 2047 encoded words, and a refolded signature would no longer verify."""
_UTF8 = POLICY.clone(utf8=True)
MAX_LINE = 78

_ATOMS = r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*"
_ADDR = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_ADDRESS = re.compile(rf"(?P<bare>{_ADDR})|{_ATOMS} <(?P<named>{_ADDR})>")
"""An address header value the email package writes as it is: one plain address, or one
behind a display name of plain words."""
_FAST = {
    "date": re.compile(
        r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov"
        r"|Dec) \d{4} \d\d:\d\d:\d\d \+0000"
    ),
    "message-id": re.compile(
        r"<[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>"
    ),
    **dict.fromkeys(("from", "to", "cc", "bcc", "sender", "reply-to"), _ADDRESS),
}
"""Values of structured headers that are written unchanged; other headers are unstructured."""
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
_BAD_VALUE = "bad header: header values may not contain linefeed or carriage return characters"
_PART = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
_HEAD_END = b"\r\n\r\n"
_PARSE_ERRORS = (ValueError, TypeError, IndexError, AttributeError)
"""What the email package's header parser raises on odd values (AttributeError: a display
name of only a dot, say)."""


def _policy(utf8: bool) -> email.policy.EmailPolicy[EmailMessage]:
    return _UTF8 if utf8 else POLICY


def header(name: str, value: str, utf8: bool = False) -> bytes:
    """``Name: value`` and CRLF, folded and encoded as the email package writes it (RFC 2047
    words for non-ASCII text unless ``utf8``); MailError for a line break in the value."""
    if len(value.splitlines()) > 1:  # the email package's own test (header_store_parse)
        raise MailError(_BAD_VALUE)
    pattern = _FAST.get(name.lower())
    if len(name) + 2 + len(value) <= MAX_LINE and (
        pattern.fullmatch(value) if pattern else "=?" not in value and _PLAIN.fullmatch(value)
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    policy = _policy(utf8)
    try:
        folded: bytes = policy.fold_binary(name, policy.header_factory(name, value))
    except _PARSE_ERRORS as exc:
        raise MailError(f"bad header: {exc}") from exc
    return folded


def recipients_of(value: str) -> tuple[str, ...]:
    """The addresses (addr-specs) of an address header's value; MailError for a bad one."""
    if len(value.splitlines()) > 1:
        raise MailError(_BAD_VALUE)
    found = _ADDRESS.fullmatch(value)
    if found is not None:
        return (found.group("bare") or found.group("named"),)
    try:
        parsed = POLICY.header_factory("To", value)
        return tuple(address.addr_spec for address in parsed.addresses)
    except _PARSE_ERRORS as exc:
        raise MailError(f"bad header: {exc}") from exc


def date_value(now: float) -> str:
    """The Date header's value for ``now``, as the email package writes a UTC date."""
    return formatdate(now, usegmt=True)[:-3] + "+0000"


def _boundary() -> bytes:
    # The email package's own (generator._make_boundary): quoted-printable parts encode every
    # '=', so the run of fifteen can never occur in them and no check is needed.
    return b"===============%019d==" % random.randrange(sys.maxsize)


def _quoted_printable(text: str) -> bytes:
    lines = text.encode("utf-8").splitlines()  # as email.contentmanager: \r, \n or \r\n
    return binascii.b2a_qp(b"\r\n".join(lines) + b"\r\n", istext=True)


def compose(head: bytes, text: str, html: str) -> bytes:
    """The mail: ``head`` (header lines, CRLF each) and a multipart/alternative body of
    ``text`` and ``html``."""
    boundary = _boundary()
    return b"".join(
        (
            head,
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="',
            boundary,
            b'"\r\n\r\n--',
            boundary,
            b"\r\n",
            _PART % b"plain",
            b"\r\n",
            _quoted_printable(text),
            b"\r\n--",
            boundary,
            b"\r\n",
            _PART % b"html",
            b"MIME-Version: 1.0\r\n\r\n",  # add_alternative's part carried one too
            _quoted_printable(html),
            b"\r\n--",
            boundary,
            b"--\r\n",
        )
    )


def _insert(data: bytes, line: bytes) -> bytes:
    """``data`` with the header ``line`` added at the end of its header block."""
    at = data.index(_HEAD_END) + 2
    return data[:at] + line + data[at:]


def sign(data: bytes, selector: str, domain: str, key: bytes, headers: tuple[bytes, ...]) -> bytes:
    """``data`` with a DKIM-Signature (relaxed/relaxed, rsa-sha256) over ``headers`` and the
    body, at the end of the header block."""
    try:
        signature: bytes = dkim.sign(
            data,
            selector.encode(),
            domain.encode(),
            key,
            include_headers=list(headers),
            canonicalize=(b"relaxed", b"relaxed"),
            linesep=b"\r\n",
        )
    # dkimpy refuses only bad keys and names, both checked when the mailer is built.
    except dkim.DKIMException as exc:  # pragma: no cover
        raise MailError(f"dkim signing failed: {exc}") from exc
    # As dkimpy folded it; t= is its own clock (the time of signing), everything else is ours.
    name, _, value = signature.partition(b":")
    lines = value.lstrip(b" ").rstrip(b"\r\n").splitlines()
    return _insert(data, name + b": " + b"\r\n".join(lines) + b"\r\n")


@dataclass(frozen=True, slots=True)
class RawMail:
    """A rendered mail: the envelope and the bytes exactly as they are sent (before SMTP's
    dot-stuffing): CRLF line ends only, the last line ended too."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str

    @property
    def utf8(self) -> bool:
        """Whether an address is non-ASCII, so the mail must go out as SMTPUTF8."""
        return not (self.sender.isascii() and all(r.isascii() for r in self.recipients))

    def with_header(self, name: str, value: str) -> RawMail:
        """This mail with one more header, after the others (outside any DKIM signature)."""
        return replace(self, data=_insert(self.data, header(name, value, self.utf8)))

    def message(self) -> EmailMessage:
        """The mail parsed back (``wire_bytes`` of it gives :attr:`data` again); its text
        has ``\\n`` line ends, as a message built in memory has."""
        # Text, not bytes: ASCII but for the UTF-8 headers of an SMTPUTF8 mail, which then
        # read as text instead of surrogate escapes.
        text = self.data.replace(b"\r\n", b"\n").decode("utf-8")
        message = email.message_from_string(text, _class=EmailMessage, policy=POLICY)
        assert isinstance(message, EmailMessage)
        return message
