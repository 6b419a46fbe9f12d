"""Click tracking in rendered mail: each web link becomes a signed ``/c/`` url. Pure.

Every http(s) ``<a href>`` (and ``<area href>``) of the HTML and every http(s) url of the text
becomes ``{public_url}/c/{token}``, whose signed target carries ``utm_source=rtserver``,
``utm_medium=email``, ``utm_campaign=<workflow>``, ``utm_content=<template>`` and
``rt_run=<run id>`` (parameters the link already has are kept). rtserver's own ``/u/``,
``/o/`` and ``/c/`` links and the urls in ``keep`` stay as they are; a target that cannot be
signed (no host, say) stays as the template has it. One token per target and mail.
Split off :mod:`rtserver.mail.render`, so that each module has one job.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

from rtserver.errors import MailError
from rtserver.mail.tokens import Tokens

__all__ = ["track_links"]

_HREF = re.compile(r"""(<(?:a|area)\b[^>]*?\shref\s*=\s*)(["'])(.*?)\2""", re.I | re.S)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'`]+""", re.I)
_UNSAFE_URL_CHAR = re.compile(r"[\x00-\x20\x7f]")


def _safe_url(url: str) -> str:
    """The url with whitespace and control characters percent-encoded."""
    url = url.strip()
    if _UNSAFE_URL_CHAR.search(url) is None:
        return url
    return _UNSAFE_URL_CHAR.sub(lambda m: f"%{ord(m.group()):02X}", url)


class _Links:
    """Rewrites the links of one mail to signed click urls (one token per target)."""

    def __init__(
        self,
        tokens: Tokens,
        public_url: str,
        mail_id: str,
        run: Mapping[str, Any],
        template: str,
        keep: Collection[str],
    ) -> None:
        self._tokens = tokens
        self._public_url = public_url
        self._mail_id = mail_id
        self._own = tuple(f"{public_url}/{p}/" for p in ("u", "o", "c"))
        self._keep = keep
        tags = {
            "utm_source": "rtserver",
            "utm_medium": "email",
            "utm_campaign": str(run.get("workflow") or template),
            "utm_content": template,
        }
        if run.get("id"):
            tags["rt_run"] = str(run["id"])
        self._tags = [(k, f"{k}={quote(v, safe='')}") for k, v in tags.items()]
        self._all_tags = "&".join(pair for _, pair in self._tags)
        self._done: dict[str, str] = {}

    def track(self, url: str) -> str:
        """The click url for ``url``, or ``url`` itself when it is not to be tracked."""
        url = url.strip()
        if url.startswith(self._own) or url in self._keep:
            return url
        if url not in self._done:
            base, hash_, fragment = _safe_url(url).partition("#")
            base, _, query = base.partition("?")
            if query:
                have = {pair.split("=", 1)[0] for pair in query.split("&") if pair}
                add = "&".join(pair for k, pair in self._tags if k not in have)
                query = f"{query}&{add}" if add else query
            else:
                query = self._all_tags
            target = f"{base}?{query}{hash_}{fragment}"
            try:
                token = self._tokens.click(self._mail_id, target)
            except MailError:  # no host, say: a broken link stays as the template has it
                return url
            self._done[url] = f"{self._public_url}/c/{token}"
        return self._done[url]

    def html(self, match: re.Match[str]) -> str:
        url = match.group(3)
        url = html.unescape(url) if "&" in url else url
        if not url.lower().startswith(("http://", "https://")):
            return match.group(0)
        mark = match.group(2)
        return f"{match.group(1)}{mark}{html.escape(self.track(url))}{mark}"

    def text(self, match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(".,;:!?)]}")
        return self.track(stripped) + url[len(stripped) :]


def track_links(
    html_body: str,
    text_body: str,
    *,
    tokens: Tokens,
    public_url: str,
    mail_id: str,
    run: Mapping[str, Any],
    template: str,
    keep: Collection[str] = (),
) -> tuple[str, str]:
    """``html_body`` and ``text_body`` with their web links tracked."""
    links = _Links(tokens, public_url, mail_id, run, template, keep)
    return _HREF.sub(links.html, html_body), _TEXT_URL.sub(links.text, text_body)
