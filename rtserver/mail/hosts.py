"""Where links and images in mail may point: the shop's own hosts. Pure.

Links written in templates are the operator's own (carrier tracking, reviews, social) and may
point anywhere. A URL that comes from data (a catalog product's link or image, an event) may only
point at the shop:

- links: ``mail.link_hosts`` (by default the host of ``mail.brand.url``), and always the host
  of ``server.public_url``;
- images: https, from ``mail.image_hosts`` (by default the image hosts of the configured feeds
  and the link hosts), and always from the host of ``server.public_url`` (in its own scheme:
  the demo serves http).

``GET /c/<token>`` redirects only to those link hosts or to a host written in a template, even
when the token's signature is good, so a data URL that reached a mail before this rule (or by
a mistake) is still no open redirect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from urllib.parse import urlsplit

from rtserver.config import MailConfig

__all__ = ["Hosts", "hosts_in"]

_URL_HOST = re.compile(r"""https?://([A-Za-z0-9.-]+)""")


def hosts_in(texts: Iterable[str]) -> set[str]:
    """The hosts of the http(s) URLs written in ``texts`` (a template's source)."""
    return {match.lower().rstrip(".") for text in texts for match in _URL_HOST.findall(text)}


def _host(url: str | None) -> tuple[str, str] | None:
    """(scheme, lower-case host) of an http(s) URL, else None."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    return parts.scheme, host.rstrip(".")


class Hosts:
    """The shop's hosts for links and images from data, and the redirect rule of ``/c/``."""

    def __init__(
        self,
        config: MailConfig,
        public_url: str,
        template_hosts: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        public = _host(public_url)
        self.public = public[1] if public else ""
        self.public_scheme = public[0] if public else "https"
        brand = _host(config.brand.url)
        self.links = set(config.link_hosts) or ({brand[1]} if brand else set())
        self.links.add(self.public)
        self.configured_images = frozenset(config.image_hosts)
        self.feed_images: frozenset[str] = frozenset()
        """The image hosts of the configured feeds (the default of ``mail.image_hosts``), as
        the store last gave them."""
        self._template_hosts = template_hosts
        self._written: frozenset[str] | None = None

    def link(self, url: str | None) -> str | None:
        """``url`` if it may be a link from data in a mail, else None."""
        found = _host(url)
        return url if found is not None and found[1] in self.links else None

    def image(self, url: str | None) -> str | None:
        """``url`` if it may be a product image in a mail, else None."""
        found = _host(url)
        if found is None:
            return None
        scheme, host = found
        if host == self.public:
            return url if scheme in ("https", self.public_scheme) else None
        allowed = self.configured_images or self.feed_images | self.links
        return url if scheme == "https" and host in allowed else None

    def redirect(self, url: str) -> bool:
        """Whether ``/c/`` may redirect to ``url``: a shop host, or a host a template names
        (read again when a host is not found, so an edited template counts at once)."""
        found = _host(url)
        if found is None:
            return False
        host = found[1]
        if host in self.links:
            return True
        if self._written is None or host not in self._written:
            self._written = frozenset(self._template_hosts())
        return host in self._written
