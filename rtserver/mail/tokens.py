"""Signed, URL-safe, expiring tokens for the links in mail. Pure.

One salt per kind, so a token of one kind never reads as another::

    kind          carries                  valid     used by
    open          mail id                  400 days  the pixel   /o/{token}
    click         mail id, target url      400 days  each link   /c/{token}
    unsubscribe   mail id, person id       400 days  one click   /u/{token}   (CAN-SPAM: >= 30 days)
    confirm       person id, email digest   7 days   double opt-in
    cart          catalog product ids, qty 30 days  the demo shop's "back to your cart" link

A token holds ids, urls and hashes only, never an email address. Its timestamp comes from
the injected clock (a :class:`itsdangerous.TimestampSigner` subclass), so tests move time by
hand. Reading never raises: a bad, tampered or expired token reads as ``None``.

Tokens are itsdangerous ``URLSafeTimedSerializer`` tokens (read by it), but made here: a mail
signs about ten of them, and itsdangerous builds a signer, derives its key and zlib-compresses
the payload for each (~14 µs a token, and zlib lets go of the GIL twice, which costs far more
while the store's threads are busy). Here the HMAC-SHA256 of each kind is keyed once (the same
``django-concat`` key derivation and salt) and copied per token, and the payload is never
compressed (a form itsdangerous reads as well; click tokens come out about a quarter longer):
~3 µs, the same key and MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from rtserver.clock import Clock
from rtserver.errors import MailError
from rtserver.model import email_hash

__all__ = [
    "Tokens",
]


DAY_S = 86400
CLICK_MAX_AGE_S = 400 * DAY_S
OPEN_MAX_AGE_S = 400 * DAY_S
UNSUBSCRIBE_MAX_AGE_S = 400 * DAY_S
CONFIRM_MAX_AGE_S = 7 * DAY_S
CART_MAX_AGE_S = 30 * DAY_S
MAX_CART_ITEMS = 50
MAX_TOKEN_CHARS = 8192
"""Longer input is not even looked at (a click token carries its url, so it may be long)."""


_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
KINDS = ("open", "click", "unsubscribe", "confirm", "cart")
_TIMESTAMP = struct.Struct(">Q")
_CART_ITEM = re.compile(r"([1-9][0-9]{0,3}):(.+)", re.S)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class _ClockSigner(TimestampSigner):
    """A timestamp signer whose time is the injected clock, for signing and for expiry."""

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


def _web_url(url: str) -> bool:
    """An absolute http(s) url without whitespace or control characters (it ends up in a
    ``Location`` header)."""
    if _UNSAFE.search(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Tokens:
    """Makes and reads the tokens of every kind with one secret (``previous`` ones still read)."""

    def __init__(
        self, secret: str, clock: Clock = time.time, *, previous: Sequence[str] = ()
    ) -> None:
        if not secret:
            raise MailError("empty token secret")
        # itsdangerous signs with the last key and accepts any of them: rotation without
        # breaking the links in mail already sent.
        self._serializer = URLSafeTimedSerializer(
            [*previous, secret],
            signer=_ClockSigner,
            signer_kwargs={"clock": clock, "digest_method": hashlib.sha256},
        )
        self._clock = clock
        self._email_salt = hashlib.sha256(f"rtserver.email{secret}".encode()).digest()
        # itsdangerous's key for a salt: sha256(salt + b"signer" + secret) ("django-concat").
        self._macs = {
            kind: hmac.new(
                hashlib.sha256(f"rtserver.{kind}signer{secret}".encode()).digest(),
                digestmod=hashlib.sha256,
            )
            for kind in KINDS
        }

    def _dump(self, kind: str, *fields: str) -> str:
        """What ``self._serializer.dumps(list(fields), salt=...)`` makes, never compressed."""
        payload = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        value = _b64(payload) + b"." + _b64(_TIMESTAMP.pack(int(self._clock())).lstrip(b"\x00"))
        mac = self._macs[kind].copy()
        mac.update(value)
        return (value + b"." + _b64(mac.digest())).decode("ascii")

    def _load(self, kind: str, token: object, max_age_s: int, size: int) -> list[str] | None:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            fields = self._serializer.loads(token, max_age=max_age_s, salt=f"rtserver.{kind}")
        except (BadData, ValueError, TypeError):
            return None
        if (
            not isinstance(fields, list)
            or len(fields) != size
            or not all(isinstance(f, str) for f in fields)
        ):
            return None
        return fields

    def open(self, mail_id: str) -> str:
        """The token of the open pixel of one mail."""
        return self._dump("open", mail_id)

    def click(self, mail_id: str, url: str) -> str:
        """The token of one link of a mail; only http and https targets."""
        if not _web_url(url):
            raise MailError(f"link target is not an http(s) url: {url!r}")
        return self._dump("click", mail_id, url)

    def unsubscribe(self, mail_id: str) -> str:
        """The one-click unsubscribe token of a mail; the person is looked up from the mail, so
        no user id (which may be an email address) is ever in a URL."""
        return self._dump("unsubscribe", mail_id)

    def confirm(self, person_id: str, email: str) -> str:
        """The double opt-in token; it carries a keyed digest of ``email``, not the address."""
        return self._dump("confirm", person_id, self.email_digest(email))

    def cart(self, items: Sequence[tuple[str, int]]) -> str:
        """A cart as ``(catalog product id, quantity)`` pairs, to be restored from a link: the
        products only, never who the cart was of."""
        return self._dump("cart", *(f"{quantity}:{pid}" for pid, quantity in items))

    def email_digest(self, email: str) -> str:
        """The digest of ``email`` a confirm token carries, keyed with this secret."""
        return email_hash(email, self._email_salt)

    def read_open(self, token: str) -> str | None:
        """The mail id, or None."""
        fields = self._load("open", token, OPEN_MAX_AGE_S, 1)
        return fields[0] if fields else None

    def read_click(self, token: str) -> tuple[str, str] | None:
        """``(mail_id, url)``, or None; the url is always http or https."""
        fields = self._load("click", token, CLICK_MAX_AGE_S, 2)
        if fields is None or not _web_url(fields[1]):
            return None
        return fields[0], fields[1]

    def read_unsubscribe(self, token: str) -> str | None:
        """The mail id, or None."""
        fields = self._load("unsubscribe", token, UNSUBSCRIBE_MAX_AGE_S, 1)
        return fields[0] if fields else None

    def read_cart(self, token: str) -> list[tuple[str, int]] | None:
        """The ``(product id, quantity)`` pairs of a cart token (a positive quantity each, at
        most ``MAX_CART_ITEMS`` of them), or None."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            fields = self._serializer.loads(token, max_age=CART_MAX_AGE_S, salt="rtserver.cart")
        except (BadData, ValueError, TypeError):
            return None
        if not isinstance(fields, list) or not 0 < len(fields) <= MAX_CART_ITEMS:
            return None
        items: list[tuple[str, int]] = []
        for field in fields:
            found = _CART_ITEM.fullmatch(field) if isinstance(field, str) else None
            if found is None:
                return None
            items.append((found[2], int(found[1])))
        return items

    def read_confirm(self, token: str) -> tuple[str, str] | None:
        """``(person_id, email_digest)``, or None; valid for 7 days."""
        fields = self._load("confirm", token, CONFIRM_MAX_AGE_S, 2)
        return (fields[0], fields[1]) if fields else None
