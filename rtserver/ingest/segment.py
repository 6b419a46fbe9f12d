"""The Segment-compatible HTTP API and the browser beacon.

``POST /v1/batch`` and the single-message routes (``/v1/track``, ``/v1/identify``, ``/v1/page``,
``/v1/alias``, ``/v1/screen``, ``/v1/group``) take the write key as the HTTP Basic user (or
``writeKey`` in the body): server-side, trusted. The public key (``?key=``, ``writeKey``) is
accepted only with an allowed ``Origin``, and its events are browser events, bound to their own
identity. Bodies may be gzip-encoded; the beacon posts the same JSON as ``text/plain``.
``200 {"success": true}`` is sent only after the commit.

Segment's browser library (analytics.js, ``@segment/analytics-next``) posts to one-letter paths
(``/v1/t``, ``/v1/p``, ``/v1/i``, ``/v1/a``, ``/v1/g``, ``/v1/s``, and ``/v1/b`` when it batches)
with its key in the body, and first loads ``GET /v1/projects/<key>/settings``: :data:`sdk_routes`
serve both, under the same rules as the routes above.

The event routes are plain ASGI endpoints (:class:`Receiver`, mounted by :func:`segment_routes`
ahead of the rest of ``/v1``): they are the hot path of the HTTP API, and starlette's request,
response and CORS middleware cost more per request than the rest of the route but the commit.
They read the body straight from ``receive``, inflate gzip as it arrives, answer success with
prebuilt bytes and give the CORS answers of the middleware on the rest of ``/v1`` themselves
(:class:`Cors`, with the same settings: :data:`CORS_OPTIONS`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from starlette import status
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rtserver.config import Config
from rtserver.errors import InvalidEvent, StorageUnavailable, StoreError
from rtserver.ingest.intake import Intake
from rtserver.ingest.products import updates_of
from rtserver.ingest.websocket import key_matches, origin_allowed
from rtserver.model import Event, Source, decode_json, message_id_of, parse_event, verify_identity

__all__ = [
    "CORS_OPTIONS",
    "SDK_PATHS",
    "SINGLE_TYPES",
    "HTTPFailure",
    "commit",
    "failure_response",
    "json_object",
    "parse_all",
    "read_body",
    "recommendations",
    "sdk_routes",
    "segment_routes",
    "settings",
    "settings_document",
    "unknown_type",
]

SINGLE_TYPES = ("track", "identify", "page", "alias", "screen", "group")
SDK_PATHS: dict[str, str | None] = {
    "t": "track",
    "p": "page",
    "i": "identify",
    "a": "alias",
    "g": "group",
    "s": "screen",
    "b": None,
}
"""analytics.js's paths (the first letter of the type; ``b`` is a batch) and their types."""
GZIP_NAMES = ("gzip", "x-gzip")
"""``x-gzip`` is the same coding (RFC 9110, section 8.4.1.3)."""


class HTTPFailure(Exception):
    """Ends a request with a JSON error."""

    def __init__(
        self, status_code: int, error: str, retry_after_s: float | None = None, **extra: Any
    ):
        super().__init__(error)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.body = {"success": False, "error": error, **extra}


def _first_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name, the first of each, as starlette's
    ``Headers.get`` finds them."""
    return dict(reversed(scope["headers"]))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise HTTPFailure(status.HTTP_401_UNAUTHORIZED, "malformed authorization header") from None
    return decoded.partition(":")[0]


def _too_large(limit: int, unzipped: str = "") -> HTTPFailure:
    return HTTPFailure(
        status.HTTP_413_CONTENT_TOO_LARGE, f"body larger than {limit} bytes{unzipped}"
    )


def _malformed_gzip() -> HTTPFailure:
    return HTTPFailure(status.HTTP_400_BAD_REQUEST, "malformed gzip body")


class _Gunzip:
    """Inflates a gzip body as its chunks arrive: every member (RFC 1952 allows several), at
    most ``limit`` bytes in all, without holding the compressed body.

    A malformed stream or one past ``limit`` stops the inflating; the failure is raised by
    :meth:`result`, once the whole body was read: a body over its own limit is a 413 first,
    whatever its content (the order of the checks does not depend on where chunks end).
    """

    __slots__ = ("failure", "inflater", "limit", "members", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self.inflater: Any = None
        """The member being inflated; None between members."""
        self.members = 0
        """Members that ended."""
        self.failure: HTTPFailure | None = None

    def feed(self, data: bytes) -> None:
        while data and self.failure is None:
            if self.inflater is None:
                self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                # At most one byte past the limit: reaching it is the 413, so no input is left
                # in unconsumed_tail otherwise.
                part = self.inflater.decompress(data, self.limit - self.size + 1)
            except zlib.error:
                self.failure = _malformed_gzip()
                return
            self.size += len(part)
            if self.size > self.limit:
                self.failure = _too_large(self.limit, " unzipped")
                return
            self.parts.append(part)
            if not self.inflater.eof:
                return  # the member goes on in the next chunk
            data = self.inflater.unused_data  # the next member, if any
            self.inflater = None
            self.members += 1

    def result(self) -> bytes:
        """The inflated body.

        Raises:
            HTTPFailure: 400 for a malformed or truncated stream, 413 past ``limit``.
        """
        if self.failure is not None:
            raise self.failure
        if self.inflater is not None or not self.members:  # truncated, or no member at all
            raise _malformed_gzip()
        return b"".join(self.parts)


async def _read(
    chunks: AsyncIterator[bytes], encoding: str | None, declared: str | None, limit: int
) -> bytes:
    """The body from ``chunks``, at most ``limit`` bytes as sent and as inflated.

    Raises:
        HTTPFailure: 415 for an encoding other than gzip, 413 past ``limit``, 400 for a
            malformed gzip stream.
        ClientDisconnect: the client left before the end of the body.
    """
    encoding = (encoding or "").strip().lower() or "identity"
    if encoding not in (*GZIP_NAMES, "identity"):
        raise HTTPFailure(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"unsupported content-encoding {encoding!r}"
        )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    gunzip = _Gunzip(limit) if encoding in GZIP_NAMES else None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if gunzip is None:
            parts.append(chunk)
        else:
            gunzip.feed(chunk)
    return b"".join(parts) if gunzip is None else gunzip.result()


async def read_body(request: Request, limit: int) -> bytes:
    headers = request.headers
    encoding, declared = headers.get("content-encoding"), headers.get("content-length")
    return await _read(request.stream(), encoding, declared, limit)


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, as starlette's ``Request.stream`` gives it.

    Raises:
        ClientDisconnect: the client left first.
    """
    while True:
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return
        else:  # http.disconnect, the only other message of an HTTP request
            raise ClientDisconnect()


def _authenticate(
    intake: Intake, headers: Mapping[bytes, bytes], query: bytes, body_key: Any
) -> Source:
    """Who sent the request: ``headers`` as :func:`_first_headers` gives them, ``query`` the
    raw query string."""
    # The query string carries only the public key: a secret there would end up in access logs.
    key = _basic_user(_text(headers.get(b"authorization")) or "") or (
        body_key if isinstance(body_key, str) else None
    )
    if key_matches(key, intake.keys.write):
        return "server"
    if key_matches(key or QueryParams(query).get("key"), intake.keys.public):
        origin, host = _text(headers.get(b"origin")), _text(headers.get(b"host"))
        if not origin_allowed(origin, intake.config.server.allowed_origins, host):
            raise HTTPFailure(status.HTTP_403_FORBIDDEN, "origin not allowed for the public key")
        return "browser"
    raise HTTPFailure(status.HTTP_401_UNAUTHORIZED, "invalid write key")


def parse_all(
    raws: list[Any],
    intake: Intake,
    source: Source,
    kind: str | None,
    context: Any,
    client_ip: str | None,
) -> tuple[list[Event], list[dict[str, Any]]]:
    limits = intake.config.ingest
    batch_context = context if isinstance(context, dict) else None
    accepted: list[Event] = []
    rejected: list[dict[str, Any]] = []
    for raw in raws:
        if isinstance(raw, dict) and "writeKey" in raw:
            raw = {k: v for k, v in raw.items() if k != "writeKey"}  # never store the key
        try:
            event = parse_event(
                raw,
                limits,
                source=source,
                default_type=kind,
                context=batch_context,
                client_ip=client_ip,
            )
            accepted.append(verify_identity(event, intake.keys.identity_secret))
        except InvalidEvent as exc:
            rejected.append({"messageId": message_id_of(raw), "error": str(exc)})
    return accepted, rejected


async def commit(intake: Intake, events: list[Event]) -> list[dict[str, Any]]:
    """Apply the catalog updates among ``events`` (trusted sources only), then store the
    events through the pipeline and wait for the commit; the catalog events refused.

    The catalog is written first: a failure after it leaves the sender to retry, and writing
    the same product twice is writing it once.

    Raises:
        HTTPFailure: 400 when every event was refused, 503 while the storage is unavailable
            or the queue full, 500 if it failed.
    """
    events, products, deleted, refused = updates_of(events, intake.config.mail.brand.currency)
    if not events:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, refused[0]["error"], rejected=refused)
    try:
        now = intake.clock()
        if products and await intake.store.catalog.upsert(products, "events", now):
            intake.catalog_changed()
        if deleted:
            await intake.store.catalog.discontinue(deleted, now)
        await (await intake.submit(events, intake.clock()))
    except (TimeoutError, StorageUnavailable):
        raise HTTPFailure(
            status.HTTP_503_SERVICE_UNAVAILABLE, "storage unavailable, retry later"
        ) from None
    except StoreError:
        raise HTTPFailure(status.HTTP_500_INTERNAL_SERVER_ERROR, "storage failed") from None
    return refused


def _spend(intake: Intake, address: str, events: int) -> None:
    """Spend ``events`` of the address's budget.

    Raises:
        HTTPFailure: 429 over the budget, 503 while the disk is almost full (with Retry-After:
            the snippet keeps the events and sends them again after it).
    """
    if intake.budgets.disk_low():
        raise HTTPFailure(
            status.HTTP_503_SERVICE_UNAVAILABLE, "server disk almost full, retry later", 5.0
        )
    wait_s = intake.budgets.take("events", address, events)
    if wait_s is not None:
        error = "too many events from this address, retry later"
        raise HTTPFailure(status.HTTP_429_TOO_MANY_REQUESTS, error, wait_s)


def _retry_after(failure: HTTPFailure, intake: Intake) -> str | None:
    """The Retry-After of ``failure``'s answer: its own, or the nack delay for any 503."""
    if failure.retry_after_s is not None:
        return str(max(1, math.ceil(failure.retry_after_s)))
    if failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        return str(math.ceil(intake.config.ingest.retry_after_ms / 1000))
    return None


def failure_response(request: Request, failure: HTTPFailure) -> JSONResponse:
    """The JSON answer of ``failure``; a 503 says when to retry."""
    retry_after = _retry_after(failure, cast(Intake, request.state.intake))
    headers = None if retry_after is None else {"Retry-After": retry_after}
    return JSONResponse(failure.body, failure.status_code, headers=headers)


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` decoded as one JSON object.

    Raises:
        HTTPFailure: 400 with the reason, for malformed JSON or anything but an object.
    """
    try:
        payload = decode_json(body)
    except InvalidEvent as exc:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if not isinstance(payload, dict):
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, "body must be a json object")
    return payload


RawHeaders = list[tuple[bytes, bytes]]

CORS_OPTIONS: dict[str, Any] = {
    "allow_methods": ["POST"],
    # analytics.js sends its key as the Basic user and counts its retries in a header.
    "allow_headers": ["Content-Type", "Content-Encoding", "Authorization", "X-Retry-Count"],
    "expose_headers": ["Retry-After"],
    "max_age": 86400,
}
"""starlette's ``CORSMiddleware`` settings but the origins (``server.allowed_origins``): the
middleware's on ``/v1`` and :class:`Cors`'s for the event endpoints."""
_VARY: RawHeaders = [(b"vary", b"Origin")]
_JSON_TYPE = (b"content-type", b"application/json")
_OK_BODY = b'{"success":true}'
_OK_HEAD: RawHeaders = [(b"content-length", str(len(_OK_BODY)).encode()), _JSON_TYPE]


class Cors:
    """The CORS answers that starlette's ``CORSMiddleware`` with :data:`CORS_OPTIONS` gives,
    for endpoints outside it: its preflight answer, and the headers it adds to the others
    (they differ only by the request's ``Origin``, so those of the allowed origins and of no
    origin are built once)."""

    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        # The middleware lends its preflight answer and its settings; it never calls its app.
        self.middleware = CORSMiddleware(
            Response(status_code=status.HTTP_404_NOT_FOUND),
            allow_origins=list(allowed_origins),
            **CORS_OPTIONS,
        )
        self.simple: RawHeaders = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.middleware.simple_headers.items()
        ]
        self.allowed = frozenset(origin.encode("latin-1") for origin in allowed_origins)
        self.known = {origin: self._added(origin) for origin in (None, *self.allowed)}
        self.ok = {origin: [*_OK_HEAD, *added] for origin, added in self.known.items()}

    def _added(self, origin: bytes | None) -> RawHeaders:
        if origin is None:
            return _VARY
        if not self.middleware.allow_all_origins and origin in self.allowed:
            return [*self.simple, (b"access-control-allow-origin", origin), *_VARY]
        return [*self.simple, *_VARY]  # "*" is among the simple headers then

    def added(self, origin: bytes | None) -> RawHeaders:
        """The headers the middleware adds to an answer to a request from ``origin``."""
        known = self.known.get(origin)
        return self._added(origin) if known is None else known

    def ok_headers(self, origin: bytes | None) -> RawHeaders:
        """The headers of ``200 {"success":true}`` to a request from ``origin``."""
        known = self.ok.get(origin)
        return [*_OK_HEAD, *self._added(origin)] if known is None else known

    async def preflight(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.middleware.preflight_response(request_headers=Headers(scope=scope))
        await response(scope, receive, send)


def _render(content: Any) -> bytes:
    """JSON as starlette's ``JSONResponse`` renders it (the same bytes as before)."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def _respond(send: Send, status_code: int, body: bytes, headers: RawHeaders) -> None:
    await send({"type": "http.response.start", "status": status_code, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


class Receiver:
    """The ASGI endpoint of ``POST /v1/batch``, ``/v1/<type>`` and analytics.js's paths (the
    events of ``kind``; None: a batch): store the events, answer after the commit.

    Other methods get the answers they got from starlette's route and CORS middleware: the
    preflight of an allowed origin, else 405.
    """

    __slots__ = ("cors", "kind")

    def __init__(self, kind: str | None, cors: Cors) -> None:
        self.kind = kind
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _first_headers(scope)
        if scope["method"] != "POST":
            if (
                scope["method"] == "OPTIONS"
                and b"origin" in headers
                and b"access-control-request-method" in headers
            ):
                await self.cors.preflight(scope, receive, send)
                return
            raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, headers={"Allow": "POST"})
        origin = headers.get(b"origin")
        intake = cast(Intake, scope["state"]["intake"])
        try:
            rejected = await self._ingest(scope, receive, headers, intake)
        except HTTPFailure as failure:
            retry_after = _retry_after(failure, intake)
            head = [] if retry_after is None else [(b"retry-after", retry_after.encode())]
            body = _render(failure.body)
            length = (b"content-length", str(len(body)).encode())
            answer = [*head, length, _JSON_TYPE, *self.cors.added(origin)]
            await _respond(send, failure.status_code, body, answer)
            return
        except ClientDisconnect:  # gone before the body arrived: nothing was stored, nobody to tell
            answer = [(b"content-length", b"0"), *self.cors.added(origin)]
            await _respond(send, status.HTTP_400_BAD_REQUEST, b"", answer)
            return
        if not rejected:
            await _respond(send, status.HTTP_200_OK, _OK_BODY, self.cors.ok_headers(origin))
            return
        body = _render({"success": True, "rejected": rejected})
        length = (b"content-length", str(len(body)).encode())
        await _respond(
            send, status.HTTP_200_OK, body, [length, _JSON_TYPE, *self.cors.added(origin)]
        )

    async def _ingest(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], intake: Intake
    ) -> list[dict[str, Any]]:
        """Store the request's events; those refused."""
        kind = self.kind
        body = await _read(
            _chunks(receive),
            _text(headers.get(b"content-encoding")),
            _text(headers.get(b"content-length")),
            intake.config.ingest.max_request_bytes,
        )
        payload = json_object(body)
        source = _authenticate(intake, headers, scope["query_string"], payload.get("writeKey"))
        context = None
        if kind is None:
            raws = payload.get("batch")
            if not isinstance(raws, list):
                raise HTTPFailure(status.HTTP_400_BAD_REQUEST, 'expected {"batch": [...]}')
            context = payload.get("context")
        else:
            raws = [payload]
        client = scope.get("client")
        client_ip = None if client is None else str(client[0])
        if source == "browser":  # the public key: held to its address's budget
            _spend(intake, client_ip or "unknown", max(1, len(raws)))
        accepted, rejected = parse_all(raws, intake, source, kind, context, client_ip)
        if not accepted:
            error = rejected[0]["error"] if rejected else "empty batch"
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, error, rejected=rejected)
        return rejected + await commit(intake, accepted)


def segment_routes(config: Config) -> list[Route]:
    """``/v1/batch``, ``/v1/<type>`` and analytics.js's event paths, to mount ahead of the
    ``/v1`` mount (whose CORS middleware they do without)."""
    cors = Cors(config.server.allowed_origins)
    paths: dict[str, str | None] = {"batch": None, **{t: t for t in SINGLE_TYPES}, **SDK_PATHS}
    return [
        Route(f"/v1/{path}", Receiver(kind, cors), name=f"receive_{kind or 'batch'}_{path}")
        for path, kind in paths.items()
    ]


async def unknown_type(request: Request) -> Response:
    """``POST /v1/<anything else>``: 404, after the event routes and the others of ``/v1``."""
    return JSONResponse({"success": False, "error": "not found"}, status.HTTP_404_NOT_FOUND)


MAX_RECOMMENDATIONS = 20


async def recommendations(request: Request) -> Response:
    """``GET /v1/recommendations?userId=...`` (or ``?anonymousId=...``) ``&n=4``, with the
    write key: the products a mail to that person would recommend now, from the catalog, for
    a shop that shows the same picks on its site. Ids go in the query, not the path: a user id
    may be an email address."""
    intake = cast(Intake, request.state.intake)
    try:
        headers, query_string = _first_headers(request.scope), request.scope["query_string"]
        if _authenticate(intake, headers, query_string, None) != "server" or (
            intake.recommend is None
        ):
            raise HTTPFailure(status.HTTP_401_UNAUTHORIZED, "recommendations need the write key")
        query = request.query_params
        user, anonymous = query.get("userId"), query.get("anonymousId")
        try:
            count = int(query.get("n", "4"))
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_RECOMMENDATIONS:
            error = f"n must be a whole number from 1 to {MAX_RECOMMENDATIONS}"
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, error)
        if user:
            person = f"u:{user}"
        elif anonymous:
            person = await intake.store.person_of(anonymous) or f"a:{anonymous}"
        else:
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, "give userId or anonymousId")
        try:
            picks = await intake.recommend(person, intake.clock(), count)
        except StoreError:
            raise HTTPFailure(status.HTTP_503_SERVICE_UNAVAILABLE, "storage unavailable") from None
    except HTTPFailure as failure:
        return failure_response(request, failure)
    fields = ("id", "name", "price", "regular_price", "currency", "url", "image", "category")
    products = [{f: getattr(p, f) for f in fields} for p in picks]
    return JSONResponse({"products": products})


SETTINGS_MAX_AGE_S = 300
"""How long browsers may keep the settings document: a changed public key is seen soon."""


def settings_document(key: str, public_url: str) -> dict[str, Any]:
    """The source settings analytics.js loads before it sends anything: rtserver is its one
    destination (``Segment.io``), at ``public_url``; no other destination, middleware or plugin
    is loaded, and its own metrics are off (they would go to Segment)."""
    url = urllib.parse.urlsplit(public_url)
    # analytics.js posts to <protocol>://<apiHost>/<letter>: apiHost carries no scheme.
    api_host = f"{url.netloc}{url.path.rstrip('/')}/v1"
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": key,
                "apiHost": api_host,
                "protocol": url.scheme,
                "addBundledMetadata": False,
                "unbundledIntegrations": [],
                "maybeBundledConfigIds": {},
                "retryQueue": True,
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


async def settings(request: Request) -> Response:
    """``GET /v1/projects/<public key>/settings``: the settings document analytics.js loads
    from its ``cdnURL``; any other key is a 404 (the write key never belongs in a page)."""
    intake = cast(Intake, request.state.intake)
    if not key_matches(request.path_params["key"], intake.keys.public):
        return JSONResponse({"success": False, "error": "not found"}, status.HTTP_404_NOT_FOUND)
    document = settings_document(intake.keys.public, intake.config.server.public_url)
    return JSONResponse(document, headers={"Cache-Control": f"max-age={SETTINGS_MAX_AGE_S}"})


sdk_routes = [Route("/projects/{key}/settings", settings, methods=["GET"])]
"""analytics.js's settings route, to mount under ``/v1`` (its event paths are among
:func:`segment_routes`)."""
