"""``GET /rt.js``: the browser snippet, built from ``client-js/`` and shipped in the package.

The file is read once, on the first request, with its gzip encoding and their ETags. Browsers
cache it for an hour and then revalidate: ``If-None-Match`` gets a ``304`` without a body. It
is served gzipped to clients that accept it (it is about a third of the size), so no proxy in
front is needed for that.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette import status
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["MAX_AGE_S", "script"]

MAX_AGE_S = 3600
"""How long browsers may use their copy before they revalidate it."""
MEDIA_TYPE = "application/javascript; charset=utf-8"
_REFUSED = re.compile(r"\s*q\s*=\s*0(\.0{0,3})?\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Asset:
    """The snippet in one encoding: its bytes and their strong ETag."""

    body: bytes
    etag: str


@functools.cache
def _assets() -> tuple[Asset, Asset]:
    """The snippet as shipped, and gzipped (``mtime=0``: the same bytes on every start)."""
    body = resources.files("rtserver").joinpath("static", "rt.js").read_bytes()
    tag = hashlib.sha256(body).hexdigest()[:32]
    zipped = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(body, f'"{tag}"'), Asset(zipped, f'"{tag}-gzip"')


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` lists gzip, and not with ``q=0``."""
    for coding in accept_encoding.split(","):
        name, _, params = coding.partition(";")
        if name.strip().lower() == "gzip":
            return not _REFUSED.fullmatch(params)
    return False


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, RFC 9110 section 13.1.2)."""
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return any(t in ("*", etag) for t in tags)


async def script(request: Request) -> Response:
    """``GET /rt.js``: the snippet, cacheable, revalidated by ETag."""
    plain, zipped = _assets()
    asset = zipped if _accepts_gzip(request.headers.get("accept-encoding", "")) else plain
    headers = {
        "Cache-Control": f"public, max-age={MAX_AGE_S}",
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if _matches(request.headers.get("if-none-match", ""), asset.etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if asset is zipped:
        headers["Content-Encoding"] = "gzip"
    return Response(asset.body, media_type=MEDIA_TYPE, headers=headers)
