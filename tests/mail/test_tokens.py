"""Signed tokens: round trips, expiry on the injected clock, one salt per kind, no PII, and
garbage or tampering never reading back."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, strategies as st

from rtserver.errors import MailError
from rtserver.mail.tokens import Tokens
from rtserver.model.people import email_hash
from tests.support.server import FakeClock

DAY = 86400.0
SECRET = "token-secret-0123456789"


def make(clock: FakeClock | None = None) -> Tokens:
    return Tokens(SECRET, clock or FakeClock())


def test_round_trips() -> None:
    """Every kind reads back what it carries."""
    tokens = make()
    assert tokens.read_open(tokens.open("m1")) == "m1"
    assert tokens.read_click(tokens.click("m1", "https://shop.example/p?a=1#x")) == (
        "m1",
        "https://shop.example/p?a=1#x",
    )
    assert tokens.read_unsubscribe(tokens.unsubscribe("m1")) == "m1"
    assert tokens.read_confirm(tokens.confirm("u:ada", "Ada@Example.com")) == (
        "u:ada",
        tokens.email_digest("ada@example.com"),
    )
    assert tokens.email_digest("ada@example.com") != email_hash("ada@example.com")  # keyed


def test_tokens_are_url_safe() -> None:
    """A token needs no escaping in a url path."""
    tokens = make()
    for token in (
        tokens.open("m/1"),
        tokens.click("m1", "https://shop.example/a%20b?q=%C3%A9&x=é"),
        tokens.unsubscribe("m1"),
        tokens.confirm("u:ada", "ada@example.com"),
    ):
        assert all(c.isalnum() or c in "-_." for c in token), token


def test_no_email_address_in_a_token() -> None:
    """The confirm token carries the hash of the address, not the address, even decoded."""
    tokens = make()
    token = tokens.confirm("u:ada", "ada@example.com")
    assert "ada@example.com" not in token
    payload = token.split(".")[0] + "=="
    assert b"ada@example.com" not in base64.urlsafe_b64decode(payload)


def test_email_hash_is_stable_and_normalised() -> None:
    """Case and surrounding space do not change the hash; it is hex SHA-256."""
    assert email_hash(" Ada@Example.COM\n") == email_hash("ada@example.com")
    assert len(email_hash("a@b.c")) == 64
    assert email_hash("a@b.c") != email_hash("b@b.c")


def test_salts_keep_kinds_apart() -> None:
    """A token of one kind never reads as another kind."""
    tokens = make()
    open_token = tokens.open("m1")
    unsubscribe = tokens.unsubscribe("m1")
    click = tokens.click("m1", "https://shop.example/")
    assert tokens.read_click(open_token) is None
    assert tokens.read_unsubscribe(click) is None
    assert tokens.read_open(unsubscribe) is None
    assert tokens.read_confirm(unsubscribe) is None


def test_click_refuses_other_schemes() -> None:
    """Only http(s) targets with a host and no whitespace are signed."""
    tokens = make()
    for url in (
        "javascript:alert(1)",
        "//evil.example/",
        "ftp://x.example/",
        "https://",
        "https://a b.example/",
        "https://x.example/\r\nSet-Cookie: a",
        "http://[::1",
    ):
        with pytest.raises(MailError):
            tokens.click("m1", url)


def test_read_click_refuses_a_signed_non_web_url() -> None:
    """Even a correctly signed payload with another scheme does not read as a click."""
    tokens = make()
    forged = tokens._dump("click", "m1", "javascript:alert(1)")
    assert tokens.read_click(forged) is None


def test_expiry_follows_the_clock() -> None:
    """Clicks, opens and unsubscribes last 400 days; confirmations 7 days."""
    clock = FakeClock()
    tokens = make(clock)
    opened = tokens.open("m1")
    click = tokens.click("m1", "https://shop.example/")
    unsubscribe = tokens.unsubscribe("m1")
    confirm = tokens.confirm("u:ada", "ada@example.com")
    clock.advance(7 * DAY)
    assert tokens.read_confirm(confirm) is not None
    clock.advance(1)
    assert tokens.read_confirm(confirm) is None
    clock.advance(31 * DAY)  # CAN-SPAM: unsubscribe still works after 30 days
    assert tokens.read_unsubscribe(unsubscribe) is not None
    clock.now += 400 * DAY - 38 * DAY - 1
    assert tokens.read_open(opened) == "m1"
    assert tokens.read_click(click) is not None
    assert tokens.read_unsubscribe(unsubscribe) is not None
    clock.advance(2)
    assert tokens.read_open(opened) is None
    assert tokens.read_click(click) is None
    assert tokens.read_unsubscribe(unsubscribe) is None


def test_a_token_from_the_future_is_refused() -> None:
    """A token signed later than now (a clock gone back) does not read."""
    clock = FakeClock()
    tokens = make(clock)
    token = tokens.open("m1")
    clock.advance(-60)
    assert tokens.read_open(token) is None


def test_other_secret_refuses_and_previous_secret_reads() -> None:
    """A token made with another secret fails; a rotated-out secret still reads."""
    old = Tokens("old-secret", FakeClock())
    token = old.open("m1")
    assert make().read_open(token) is None
    rotated = Tokens(SECRET, FakeClock(), previous=["old-secret"])
    assert rotated.read_open(token) == "m1"
    assert old.read_open(rotated.open("m2")) is None


def test_empty_secret_is_refused() -> None:
    """Tokens without a secret would be forgeable."""
    with pytest.raises(MailError):
        Tokens("")


def test_garbage_reads_as_none() -> None:
    """Bad input of any shape returns None, never raises."""
    tokens = make()
    good = tokens.unsubscribe("m1")
    for bad in ("", ".", "..", "a.b.c", "x" * 10_000, good + "x", good[:-1], "é.ü.ö", None, 42):
        assert tokens.read_open(bad) is None  # type: ignore[arg-type]
        assert tokens.read_click(bad) is None  # type: ignore[arg-type]
        assert tokens.read_unsubscribe(bad) is None  # type: ignore[arg-type]
        assert tokens.read_confirm(bad) is None  # type: ignore[arg-type]


def test_payload_of_the_wrong_shape_reads_as_none() -> None:
    """A signed payload with the wrong number or types of fields is refused."""
    tokens = make()
    salt = "rtserver.unsubscribe"
    for payload in (["m1", "u"], ["m1", "u", "x"], [3], {"a": 1}, "m1"):
        token = tokens._serializer.dumps(payload, salt=salt)
        assert tokens.read_unsubscribe(token) is None


@given(st.text(min_size=1, max_size=40), st.integers(min_value=0), st.characters())
def test_tampered_tokens_never_read_back(mail_id: str, position: int, char: str) -> None:
    """Changing any one character of a token makes it unreadable (or leaves it as it was)."""
    tokens = make()
    for token, read in (
        (tokens.open(mail_id), tokens.read_open),
        (tokens.click(mail_id, "https://shop.example/p"), tokens.read_click),
        (tokens.unsubscribe(mail_id), tokens.read_unsubscribe),
        (tokens.confirm(mail_id, "a@b.example"), tokens.read_confirm),
    ):
        index = position % len(token)
        tampered = token[:index] + char + token[index + 1 :]
        result = read(tampered)  # type: ignore[operator]
        if tampered != token:
            # base64 can decode two strings to one value only in padding bits; the data the
            # token carries may then read back, but never anything else.
            assert result is None or result == read(token)  # type: ignore[operator]


@given(st.text(max_size=300))
def test_arbitrary_strings_never_read_back(text: str) -> None:
    """Random input is never a valid token of any kind."""
    tokens = make()
    assert tokens.read_open(text) is None
    assert tokens.read_click(text) is None
    assert tokens.read_unsubscribe(text) is None
    assert tokens.read_confirm(text) is None


def test_tokens_are_itsdangerous_tokens() -> None:
    """A token made here is the one itsdangerous makes (same payload, key, salt and MAC) when
    compressing does not pay; otherwise it is the uncompressed form, which itsdangerous reads;
    and its own compressed tokens read here."""
    tokens = make()
    for kind, fields in (("open", ["m1"]), ("confirm", ["u:ä", email_hash("ann@example.com")])):
        made = tokens._dump(kind, *fields)
        assert made == tokens._serializer.dumps(fields, salt=f"rtserver.{kind}")
    url = (
        "https://shop.example/p/1?utm_source=rtserver&utm_medium=email"
        "&utm_campaign=cart_reminder&utm_content=cart_reminder&rt_run=run-1"
    )
    click = tokens.click("m1", url)
    theirs = tokens._serializer.dumps(["m1", url], salt="rtserver.click")
    assert theirs.startswith(".") and not click.startswith(".")  # theirs compressed
    assert tokens._serializer.loads(click, salt="rtserver.click") == ["m1", url]
    assert tokens.read_click(theirs) == tokens.read_click(click) == ("m1", url)


def test_a_cart_token_carries_product_ids_and_quantities_only() -> None:
    """The demo's "back to your cart" link: (product id, quantity) pairs read back; a product id
    may hold a colon; a month later, tampered, or malformed, it reads as None."""
    clock = FakeClock()
    tokens = make(clock)
    token = tokens.cart([("lamp", 2), ("sku:9", 1)])
    assert tokens.read_cart(token) == [("lamp", 2), ("sku:9", 1)]
    assert tokens.read_open(token) is None  # another kind's salt
    assert tokens.read_cart(token[:-2] + "xx") is None
    assert tokens.read_cart("x" * 9000) is None
    assert tokens.read_cart(tokens.cart([])) is None
    for bad in (["0:lamp"], ["two:lamp"], ["2:"], [3], ["²:lamp"]):
        forged = tokens._serializer.dumps(bad, salt="rtserver.cart")
        assert tokens.read_cart(forged) is None, bad
    assert tokens.read_cart(tokens._serializer.dumps({"a": 1}, salt="rtserver.cart")) is None
    clock.advance(31 * DAY)
    assert tokens.read_cart(token) is None
