"""Receiving a shop platform's signed webhook (Shopify, WooCommerce): the one path both take.

A platform signs the raw body with HMAC-SHA256 and a secret the shop's admin shows, and sends
the digest base64-encoded in a header; the topic (``orders/paid``, ``order.updated``...) comes
in another, unsigned, header. :func:`receive_platform` checks the signature before it reads
anything, drops a replay (the same topic and body within the replay memory's 7 days: retries
carry the same body, and the platforms' delivery ids are unsigned), hands the payload to the
platform's mapping, then applies what the mapping asks, in order: catalog writes, erasures, and
the events, committed stage by stage (an identify that links a checkout to a customer is
committed before the order that ends that checkout's run). The replay is noted only once all of
it is done; each part is idempotent (events by ``messageId``, products by id), so a failure
halfway leaves the platform to retry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from starlette import status
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from rtserver.errors import InvalidEvent, StoreError
from rtserver.ingest.intake import Intake
from rtserver.ingest.segment import HTTPFailure, commit, failure_response, json_object, read_body
from rtserver.model import Event, Product, parse_event

__all__ = ["Outcome", "Platform", "money", "receive_platform", "signature_matches", "text"]

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 200
"""Longest name, SKU or id copied from a payload into an event."""


def signature_matches(secret: str, body: bytes, claimed: str | None) -> bool:
    """Whether ``claimed`` is the base64 HMAC-SHA256 of ``body`` with ``secret``, compared in
    constant time."""
    if not claimed:
        return False
    try:
        given = base64.b64decode(claimed.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return hmac.compare_digest(expected, given)


def money(value: Any) -> float | None:
    """An amount the platforms send as a decimal string (``"49.50"``) or a number; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    """A non-empty id or text from a payload (numbers as their decimal string), cut at
    ``limit`` characters; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()[:limit]
    return None


@dataclass
class Outcome:
    """What one webhook asks for."""

    stages: list[list[dict[str, Any]]] = field(default_factory=list)
    """Segment messages, trusted, committed one stage after the other."""
    products: list[Product] = field(default_factory=list)
    discontinued: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    """Addresses to erase (GDPR)."""
    ignored: str | None = None
    """Why nothing was done, for the answer and the debug log."""


@dataclass(frozen=True, slots=True)
class Platform:
    """One platform's way of signing, naming topics and mapping payloads."""

    name: str
    secret_key: str
    """The ``keys.*`` setting of its secret (for the "not configured" answer)."""
    signature_header: str
    topic_header: str
    secret: Callable[[Intake], str | None]
    """The secret in force, revealed, or None (the source is off)."""
    mapping: Callable[[Intake, str, dict[str, Any]], Outcome]
    """``(intake, topic, payload)``: what the webhook asks; raises :class:`HTTPFailure` (400)
    for a payload it cannot use."""
    ping: Callable[[bytes], bool] = lambda body: False
    """Whether ``body`` is the platform's unsigned hello, answered 200 and otherwise ignored."""


def _events(intake: Intake, raws: list[dict[str, Any]]) -> list[Event]:
    events: list[Event] = []
    for raw in raws:
        try:
            events.append(parse_event(raw, intake.config.ingest, source="server"))
        except InvalidEvent as exc:
            error = f"{raw.get('messageId')}: {exc}"
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, error) from None
    return events


async def _apply(intake: Intake, source: str, outcome: Outcome) -> int:
    """Do what ``outcome`` asks; how many events and records it touched."""
    # Every stage is parsed before anything is written: a bad one refuses the whole webhook.
    stages = [_events(intake, raws) for raws in outcome.stages]
    now = intake.clock()
    if outcome.products and await intake.store.catalog.upsert(outcome.products, source, now):
        intake.catalog_changed()
    if outcome.discontinued:
        await intake.store.catalog.discontinue(outcome.discontinued, now)
    for address in outcome.forget:
        erased = await intake.store.mail.forget(address, now)
        logger.info("%s webhook: erased %d profile(s) of address", source, erased)
    for events in stages:
        await commit(intake, events)
    touched = len(outcome.products) + len(outcome.discontinued) + len(outcome.forget)
    return touched + sum(len(events) for events in stages)


async def _receive(request: Request, platform: Platform) -> JSONResponse:
    intake = cast(Intake, request.state.intake)
    secret = platform.secret(intake)
    if secret is None:
        raise HTTPFailure(
            status.HTTP_404_NOT_FOUND,
            f"webhook source {platform.name!r} is not configured: set keys.{platform.secret_key}",
        )
    if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise HTTPFailure(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "webhooks are signed uncompressed"
        )
    body = await read_body(request, intake.config.ingest.max_webhook_bytes)
    if platform.ping(body):
        return JSONResponse({"success": True, "ping": True})
    if not signature_matches(secret, body, request.headers.get(platform.signature_header)):
        error = f"invalid or missing {platform.signature_header} signature"
        raise HTTPFailure(status.HTTP_401_UNAUTHORIZED, error)
    topic = request.headers.get(platform.topic_header, "").strip()
    if not topic:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, f"missing {platform.topic_header} header")
    digest = hashlib.sha256(topic.encode() + b"\n" + body).hexdigest()
    replay = f"{platform.name}-{digest}"
    if await intake.store.webhook_seen(replay):
        return JSONResponse({"success": True, "duplicate": True})
    outcome = platform.mapping(intake, topic, json_object(body))
    result: dict[str, Any] = {"success": True}
    if outcome.ignored is not None:
        logger.debug("%s webhook %s ignored: %s", platform.name, topic, outcome.ignored)
        result["ignored"] = outcome.ignored
    result["processed"] = await _apply(intake, platform.name, outcome)
    await intake.store.webhook_done(replay, platform.name, intake.clock())
    return JSONResponse(result)


async def receive_platform(request: Request, platform: Platform) -> Response:
    """Verify a platform's webhook, then apply it once; the answer the platform reads."""
    try:
        return await _receive(request, platform)
    except HTTPFailure as failure:
        return failure_response(request, failure)
    except StoreError as exc:
        logger.warning("%s webhook: %s", platform.name, exc)
        unavailable = HTTPFailure(status.HTTP_503_SERVICE_UNAVAILABLE, "storage unavailable")
        return failure_response(request, unavailable)
    except ClientDisconnect:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
