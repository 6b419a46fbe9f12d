"""Exceptions raised by rtserver.

The hierarchy::

    RtServerError
     ├── ConfigError (also ValueError)
     ├── InvalidEvent (also ValueError)
     │    └── PolicyViolation      the input breaks a limit: the connection is closed
     ├── StoreError
     │    └── StorageUnavailable   transient: disk full, database locked; retry later
     ├── MailError
     └── InvalidSignature          a webhook that is not authentic or not fresh: 401

Library errors (``sqlite3.Error``, ``aiosmtplib.SMTPException``) surface as the ``__cause__``
of the matching rtserver error.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidEvent",
    "InvalidSignature",
    "MailError",
    "PolicyViolation",
    "RtServerError",
    "StorageUnavailable",
    "StoreError",
]


class RtServerError(Exception):
    """Base class of every error rtserver raises on purpose."""


class ConfigError(RtServerError, ValueError):
    """The configuration is invalid; the message names the dotted key and the value."""


class InvalidEvent(RtServerError, ValueError):
    """An event will never be accepted; the message is the lowercase reason sent to the client."""


class PolicyViolation(InvalidEvent):
    """The input breaks a limit (depth, batch size, rate, binary frame): close the connection."""


class StoreError(RtServerError):
    """The store failed."""


class StorageUnavailable(StoreError):
    """The store failed transiently (disk full, locked): nothing was written, retry later."""


class MailError(RtServerError):
    """A mail could not be rendered or delivered."""


class InvalidSignature(RtServerError):
    """A signed webhook failed verification; the message is the reason sent with the 401."""
