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
"""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette import status
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rtserver.errors import InvalidEvent, StorageUnavailable, StoreError
from rtserver.ingest.intake import Intake
from rtserver.ingest.products import updates_of
from rtserver.ingest.websocket import key_matches, origin_allowed
from rtserver.model import Event, Source, decode_json, message_id_of, parse_event, verify_identity

__all__ = [
    "SDK_PATHS",
    "SINGLE_TYPES",
    "HTTPFailure",
    "commit",
    "failure_response",
    "json_object",
    "parse_all",
    "read_body",
    "receive",
    "sdk_routes",
    "settings",
    "settings_document",
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


def _basic_user(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
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


def _gunzip(body: bytes, limit: int) -> bytes:
    """Inflate every gzip member of ``body`` (RFC 1952 allows several), at most ``limit`` bytes.

    Raises:
        HTTPFailure: 400 for a malformed or truncated stream, 413 past ``limit``.
    """
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, limit - size + 1)
        except zlib.error:
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, "malformed gzip body") from None
        size += len(part)
        if size > limit:
            raise _too_large(limit, " unzipped")
        if not inflater.eof:  # truncated: the whole input was read and the member did not end
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, "malformed gzip body")
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)


async def read_body(request: Request, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "").strip().lower() or "identity"
    if encoding not in (*GZIP_NAMES, "identity"):
        raise HTTPFailure(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"unsupported content-encoding {encoding!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding in GZIP_NAMES:
        body = _gunzip(body, limit)
    return body


def _authenticate(request: Request, intake: Intake, body_key: Any) -> Source:
    # The query string carries only the public key: a secret there would end up in access logs.
    key = _basic_user(request) or (body_key if isinstance(body_key, str) else None)
    if key_matches(key, intake.keys.write):
        return "server"
    if key_matches(key or request.query_params.get("key"), intake.keys.public):
        origin = request.headers.get("origin")
        host = request.headers.get("host")
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


def failure_response(request: Request, failure: HTTPFailure) -> JSONResponse:
    """The JSON answer of ``failure``; a 503 says when to retry."""
    headers = None
    if failure.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(failure.retry_after_s)))}
    elif failure.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        intake = cast(Intake, request.state.intake)
        seconds = math.ceil(intake.config.ingest.retry_after_ms / 1000)
        headers = {"Retry-After": str(seconds)}
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


async def _ingest(request: Request, kind: str | None) -> JSONResponse:
    intake = cast(Intake, request.state.intake)
    body = await read_body(request, intake.config.ingest.max_request_bytes)
    payload = json_object(body)
    source = _authenticate(request, intake, payload.get("writeKey"))
    context = None
    if kind is None:
        raws = payload.get("batch")
        if not isinstance(raws, list):
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, 'expected {"batch": [...]}')
        context = payload.get("context")
    else:
        raws = [payload]
    client_ip = request.client.host if request.client else None
    if source == "browser":  # the public key: held to its address's budget
        _spend(intake, client_ip or "unknown", max(1, len(raws)))
    accepted, rejected = parse_all(raws, intake, source, kind, context, client_ip)
    if not accepted:
        error = rejected[0]["error"] if rejected else "empty batch"
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, error, rejected=rejected)
    rejected += await commit(intake, accepted)
    result: dict[str, Any] = {"success": True}
    if rejected:
        result["rejected"] = rejected
    return JSONResponse(result)


MAX_RECOMMENDATIONS = 20


async def recommendations(request: Request) -> Response:
    """``GET /v1/recommendations?userId=...`` (or ``?anonymousId=...``) ``&n=4``, with the
    write key: the products a mail to that person would recommend now, from the catalog, for
    a shop that shows the same picks on its site. Ids go in the query, not the path: a user id
    may be an email address."""
    intake = cast(Intake, request.state.intake)
    try:
        if _authenticate(request, intake, None) != "server" or intake.recommend is None:
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


async def _answer(request: Request, kind: str | None) -> Response:
    try:
        return await _ingest(request, kind)
    except HTTPFailure as failure:
        return failure_response(request, failure)
    except ClientDisconnect:  # gone before the body arrived: nothing was stored, nobody to tell
        return Response(status_code=status.HTTP_400_BAD_REQUEST)


async def receive(request: Request) -> Response:
    """``POST /v1/batch`` and ``POST /v1/<type>``: store the events, answer after commit."""
    kind = request.path_params.get("kind")
    if kind is not None and kind not in SINGLE_TYPES:
        return JSONResponse({"success": False, "error": "not found"}, status.HTTP_404_NOT_FOUND)
    return await _answer(request, kind)


def _sdk_endpoint(kind: str | None) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of one of analytics.js's paths: the route of ``kind`` (``None``: batch)."""

    async def endpoint(request: Request) -> Response:
        return await _answer(request, kind)

    endpoint.__name__ = f"receive_{kind or 'batch'}"
    return endpoint


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


sdk_routes = [
    *(Route(f"/{path}", _sdk_endpoint(kind), methods=["POST"]) for path, kind in SDK_PATHS.items()),
    Route("/projects/{key}/settings", settings, methods=["GET"]),
]
"""analytics.js's routes, to mount under ``/v1`` before the generic ``/{kind}``."""
