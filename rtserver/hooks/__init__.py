"""Outbound webhooks: the sender, where they may go (the SSRF guard), and their signatures.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.hooks.destinations import Resolve, check_steps, check_url, post_json, resolve_host
from rtserver.hooks.sender import Courier
from rtserver.hooks.signatures import new_secret, verify

__all__ = [
    "Courier",
    "Resolve",
    "check_steps",
    "check_url",
    "new_secret",
    "post_json",
    "resolve_host",
    "verify",
]
