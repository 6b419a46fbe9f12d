"""Outbound webhooks: the sender, where they may go (the SSRF guard), and their signatures.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.hooks.destinations import (
    AsyncResolve,
    DestinationRefused,
    Resolve,
    check_steps,
    check_url,
    fetch_into,
    post_json,
    resolve_async,
    resolve_host,
)
from rtserver.hooks.sender import Courier
from rtserver.hooks.signatures import new_secret, verify

__all__ = [
    "AsyncResolve",
    "Courier",
    "DestinationRefused",
    "Resolve",
    "check_steps",
    "check_url",
    "fetch_into",
    "new_secret",
    "post_json",
    "resolve_async",
    "resolve_host",
    "verify",
]
