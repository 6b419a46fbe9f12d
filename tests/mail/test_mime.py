"""The wire form of rendered mail: built directly, it is the mail ``EmailMessage`` built (same
header bytes, same parts, same envelope), header by header and whole."""

from __future__ import annotations

import dataclasses
import email.generator
import email.policy
import re
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import pytest
from aiosmtplib.email import extract_recipients, extract_sender
from hypothesis import HealthCheck, given, settings, strategies as st

import rtserver.mail.mime
from rtserver.config.schema import BrandConfig, MailConfig
from rtserver.errors import MailError
from rtserver.mail.mime import POLICY, RawMail, compose, date_value, header, recipients_of
from rtserver.mail.render import SAMPLE, SPARSE, MailContext, Mailer
from rtserver.mail.smtp import wire_bytes
from rtserver.mail.tokens import Tokens
from tests.support.server import FakeClock

BOUNDARY = "===============1234567890123456789=="
CONFIG = MailConfig(
    from_="Acme <shop@acme.example>",
    brand=BrandConfig(name="Acme & Co", url="https://shop.example", address="1 Road, Berlin"),
)


def slow(name: str, value: str, utf8: bool = False) -> bytes:
    """What the email package writes for the header (the path every value could take)."""
    policy = POLICY.clone(utf8=utf8)
    folded: bytes = policy.fold_binary(name, policy.header_factory(name, value))
    return folded


def reference(mailer: Mailer, template: str, context: MailContext) -> EmailMessage:
    """The mail as rendering built it before: an ``EmailMessage``, flattened by the relay."""
    subject, text, html, unsubscribe = mailer._content(mailer._env, template, context)
    message = EmailMessage(policy=POLICY)
    message["From"] = mailer.config.from_
    message["To"] = context.to
    message["Subject"] = subject
    message["Date"] = formatdate(context.now, usegmt=True)
    message["Message-ID"] = f"<{context.mail_id}@acme.example>"
    message["X-RT-Mail-ID"] = context.mail_id
    if context.marketing:
        message.set_raw("List-Unsubscribe", f"<{unsubscribe}>")
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message


@pytest.fixture(autouse=True)
def fixed_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """One boundary for both ways of building, so their bytes can be compared."""
    monkeypatch.setattr(
        email.generator.Generator, "_make_boundary", classmethod(lambda cls, text=None: BOUNDARY)
    )
    monkeypatch.setattr(rtserver.mail.mime, "_boundary", lambda: BOUNDARY.encode())


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, _class=EmailMessage, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_same_mail(new: RawMail, message: EmailMessage) -> None:
    """Byte for byte the same header block; the same parts with the same headers and the
    same decoded content (only where quoted-printable soft-breaks a line may differ); the
    same envelope."""
    old = wire_bytes(message)
    new_head, _, _ = new.data.partition(b"\r\n\r\n")
    old_head, _, _ = old.partition(b"\r\n\r\n")
    assert new_head == old_head
    ours, theirs = parsed(new.data), parsed(old)
    assert [p.items() for p in ours.walk()] == [p.items() for p in theirs.walk()]
    for mine, other in zip(ours.iter_parts(), theirs.iter_parts(), strict=True):
        assert mine.get_content() == other.get_content()  # type: ignore[attr-defined]
    assert new.sender == extract_sender(message)
    assert list(new.recipients) == extract_recipients(message)
    assert new.message_id == message["Message-ID"]
    assert re.fullmatch(rb"(?:[^\r\n]*\r\n)*", new.data)  # CRLF only, last line ended
    assert max(len(line) for line in new.data.split(b"\r\n")) <= 998
    body = new.data.partition(b"\r\n\r\n")[2]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # RFC 2045 6.7 (5)


def make_mailer() -> Mailer:
    return Mailer(CONFIG, "https://rt.example", Tokens("mime-secret-0123456789", FakeClock()))


MAILER = make_mailer()
NAMES = st.sampled_from(
    ["", "Ann", "Zoë 😀", " x  y ", "=?utf-8?q?x?=", "A" * 90, "a\tb", "é" * 40]
)
RECIPIENTS = st.sampled_from(
    [
        "ann@example.com",
        "Ada Lovelace <ada@example.com>",
        '"Lovelace, Ada" <ada@example.com>',
        "A. Smith <a.smith@example.com>",
        "Zoë Ü <zoe@example.com>",
        "ü@bücher.example",
        "Björn <ü@bücher.example>",
        "ann@example.com, bob@example.com",
        "a+tag@sub.example.co.uk",
        "x" * 60 + "@example.com",
    ]
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(
    name=NAMES | st.text(max_size=30),
    to=RECIPIENTS,
    marketing=st.booleans(),
    template=st.sampled_from(["cart_reminder", "welcome", "confirm", "win_back"]),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_built_mail_is_the_email_package_mail(
    name: str, to: str, marketing: bool, template: str, now: float
) -> None:
    """For any first name (so any subject), recipient, template and time, the mail built
    directly is the one EmailMessage built."""
    context = dataclasses.replace(
        SAMPLE, to=to, now=now, marketing=marketing, person={"traits": {"first_name": name}}
    )
    assert_same_mail(MAILER.render_bytes(template, context), reference(MAILER, template, context))


@pytest.mark.parametrize("context", [SAMPLE, SPARSE])
def test_shipped_mail_is_the_email_package_mail(context: MailContext) -> None:
    """The sample mail and the sparse one, every shipped template."""
    for template in MAILER.names():
        assert_same_mail(
            MAILER.render_bytes(template, context), reference(MAILER, template, context)
        )


def test_non_ascii_from_is_encoded_as_the_email_package_does() -> None:
    """A From with a non-ASCII name: RFC 2047 words, or raw UTF-8 in an SMTPUTF8 mail."""
    mailer = Mailer(
        dataclasses.replace(CONFIG, from_="Bücher & Co <shop@acme.example>"),
        "https://rt.example",
        Tokens("mime-secret-0123456789", FakeClock()),
    )
    for to in ("ann@example.com", "ü@bücher.example"):
        context = dataclasses.replace(SAMPLE, to=to)
        assert_same_mail(
            mailer.render_bytes("welcome", context), reference(mailer, "welcome", context)
        )


# Headers one by one

WORDS = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=90)
UNICODE = st.text(max_size=60).filter(lambda s: len(s.splitlines()) <= 1)


@settings(max_examples=300)
@given(st.sampled_from(["Subject", "X-RT-Mail-ID", "List-Unsubscribe-Post"]), WORDS | UNICODE)
def test_unstructured_header_is_written_as_the_email_package_writes_it(
    name: str, value: str
) -> None:
    """Short plain values as they are, anything else folded and encoded by the policy."""
    for utf8 in (False, True):
        assert header(name, value, utf8) == slow(name, value, utf8)


ATEXT = st.text(st.sampled_from("abcXYZ09._+-"), min_size=1, max_size=20)
DOMAIN = st.lists(st.text(st.sampled_from("abz09-"), min_size=1, max_size=10), min_size=1,
                  max_size=3).map(".".join)  # fmt: skip


@settings(max_examples=300)
@given(
    st.tuples(st.text(st.sampled_from("Ab9 .,\"'ü"), max_size=20), ATEXT, DOMAIN).map(
        lambda t: f"{t[0]} <{t[1]}@{t[2]}>" if t[0] else f"{t[1]}@{t[2]}"
    )
)
def test_address_header_is_written_as_the_email_package_writes_it(value: str) -> None:
    """To and From values, plain or with a display name: the same bytes and addresses."""
    try:
        expected = slow("To", value)
        addresses = [a.addr_spec for a in POLICY.header_factory("To", value).addresses]
    except (ValueError, TypeError, IndexError, AttributeError):
        with pytest.raises(MailError, match="bad header"):
            header("To", value)
        with pytest.raises(MailError, match="bad header"):
            recipients_of(value)
        return
    assert header("To", value) == expected
    assert header("From", value) == slow("From", value)
    assert list(recipients_of(value)) == addresses


@settings(max_examples=200)
@given(ATEXT, DOMAIN)
def test_message_id_is_written_as_the_email_package_writes_it(mail_id: str, domain: str) -> None:
    """Message-IDs of every mail id the mailer accepts."""
    value = f"<{mail_id}@{domain}>"
    assert header("Message-ID", value) == slow("Message-ID", value)


@settings(max_examples=200)
@given(st.floats(min_value=0, max_value=2.5e11))
def test_date_is_written_as_the_email_package_writes_it(now: float) -> None:
    """The email package rewrites a GMT date as +0000; date_value writes that directly."""
    assert header("Date", date_value(now)) == slow("Date", formatdate(now, usegmt=True))


@pytest.mark.parametrize(
    "value", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\u2028b", "a\x85b"]
)
def test_line_breaks_in_header_values_are_refused(value: str) -> None:
    """CR, LF (and what else Python counts as a line break) never reach the header block."""
    with pytest.raises(MailError, match="bad header"):
        header("Subject", value)
    with pytest.raises(MailError, match="bad header"):
        recipients_of(value + "@example.com")
    raw = RawMail("a@example.com", ("b@example.com",), b"From: a\r\n\r\nx\r\n", "<m@x>")
    with pytest.raises(MailError, match="bad header"):
        raw.with_header("X-RT-Original-To", value)


def test_bad_address_headers_are_mail_errors() -> None:
    """What the header parser fails on is a MailError; an empty list has no recipient."""
    assert recipients_of("undisclosed-recipients:;") == ()
    for name in ("To", "Subject"):
        header(name, "x")  # fine
    with pytest.raises(MailError, match="bad header"):
        recipients_of(". <a@example.com>")  # the parser raises AttributeError
    with pytest.raises(MailError, match="bad header"):
        header("To", ". <a@example.com>")


# RawMail


def test_with_header_goes_after_the_others() -> None:
    """An added header ends the header block (after any DKIM-Signature), the body untouched."""
    raw = MAILER.render_bytes("welcome", SAMPLE)
    rerouted = raw.with_header("X-RT-Original-To", "ada@example.com")
    head, _, body = rerouted.data.partition(b"\r\n\r\n")
    assert head.endswith(b"\r\nX-RT-Original-To: ada@example.com")
    assert body == raw.data.partition(b"\r\n\r\n")[2]
    assert (rerouted.sender, rerouted.recipients) == (raw.sender, raw.recipients)


def test_message_parses_back_to_the_same_bytes() -> None:
    """message() gives an EmailMessage whose wire bytes are the mail's, and whose text has
    plain line ends."""
    for to in ("Ada Lovelace <ada@example.com>", "Zoë <ü@bücher.example>"):
        raw = MAILER.render_bytes("cart_reminder", dataclasses.replace(SAMPLE, to=to))
        message = raw.message()
        assert wire_bytes(message) == raw.data
        assert message["To"] == to
        text: Any = message.get_body(("plain",))
        assert "\r" not in text.get_content()


def test_utf8_is_needed_for_non_ascii_addresses_only() -> None:
    """SMTPUTF8 when the sender or a recipient is non-ASCII, not for names or subjects."""
    assert not RawMail("a@x.example", ("b@x.example",), b"", "").utf8
    assert RawMail("a@x.example", ("ü@x.example",), b"", "").utf8
    assert RawMail("ü@x.example", ("b@x.example",), b"", "").utf8


def test_compose_encodes_awkward_lines() -> None:
    """Lone dots, trailing spaces, long lines, CR and LF of any kind come out as CRLF lines
    of at most 76 characters that decode to the text (line ends made \\n)."""
    text = ".\nend  \r\n" + "x" * 200 + "\rlast"
    data = compose(b"From: a@example.com\r\n", text, "<p>" + "é" * 100 + "</p>")
    assert b"\n." not in data.replace(b"\r\n.", b"")  # no bare LF before a dot
    message = parsed(data)
    plain: Any = message.get_body(("plain",))
    html: Any = message.get_body(("html",))
    assert plain.get_content().replace("\r\n", "\n") == ".\nend  \n" + "x" * 200 + "\nlast\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>" + "é" * 100 + "</p>\n"
    body = data.partition(b"\r\n\r\n")[2]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
