"""Signed inbound webhooks: ``POST /v1/webhooks/<source>``.

Every request is verified with Standard Webhooks (:mod:`rtserver.hooks.signatures`) over the raw
body, against ``keys.webhook_secret`` (and ``keys.webhook_secret_previous`` during a
rotation), before anything in it is read. A ``webhook-id`` already processed answers 200 and
does nothing again; ids are kept 7 days. Sources:

``segment``
    Segment messages from the shop's backend (one, or ``{"batch": [...]}``), trusted like the
    write key: their orders are verified revenue and make customers (soft opt-in). A message
    without ``messageId`` gets ``<webhook-id>-<index>``, so a replay stores nothing twice.
``mail``
    Bounces and complaints from the relay (:mod:`rtserver.mail.feedback`): the address is
    suppressed if the report calls for it, and the person of the mail gets an ``Email Bounced`` or
    ``Email Marked as Spam`` event.
``mailgun``, ``sendgrid``, ``ses``, ``postmark``
    The same feedback in the relays' own formats, each verified its way instead
    (:mod:`rtserver.mail.providers`, :mod:`rtserver.mail.ses`, :mod:`rtserver.ingest.relays`).

Answers: 200 ``{"success": true, "processed": n}`` (``"duplicate": true`` for a replay), 401
with the reason for a bad signature or a stale timestamp, 413 past ``ingest.max_webhook_bytes``,
415 for a compressed body, 400 for a body that is not what the source takes, 404 for an
unknown source; 403 for an SNS topic or a Postmark address not allowed; 503 (retry later)
when the store, or the SNS certificate or subscription URL, cannot be reached.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from starlette import status
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from rtserver.errors import InvalidEvent, InvalidSignature, StoreError
from rtserver.hooks import verify
from rtserver.ingest.intake import Intake
from rtserver.ingest.relays import postmark_reports, ses_feedback, ses_message
from rtserver.ingest.segment import (
    HTTPFailure,
    commit,
    failure_response,
    json_object,
    parse_all,
    read_body,
)
from rtserver.mail import Feedback, mailgun, parse_feedback, sendgrid
from rtserver.model import Event, person_event

__all__ = ["SOURCES", "receive"]

SOURCES = ("segment", "mail", "mailgun", "sendgrid", "ses", "postmark")

logger = logging.getLogger(__name__)

EVENT_NAMES = {"bounce": "Email Bounced", "complaint": "Email Marked as Spam"}
"""The event a person's mail feedback becomes (the names of Segment's email spec)."""


def _segment_events(
    request: Request, intake: Intake, body: bytes, webhook_id: str
) -> tuple[list[Event], list[dict[str, Any]]]:
    payload = json_object(body)
    batch = "batch" in payload
    raws = payload["batch"] if batch else [payload]
    if not isinstance(raws, list) or not raws:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, "batch must be a non-empty list")
    raws = [
        {"messageId": f"{webhook_id}-{i}", **raw} if isinstance(raw, dict) else raw
        for i, raw in enumerate(raws)
    ]
    client_ip = request.client.host if request.client else None
    context = payload.get("context") if batch else None
    events, rejected = parse_all(raws, intake, "server", None, context, client_ip)
    if not events:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, rejected[0]["error"], rejected=rejected)
    return events, rejected


async def _apply(
    intake: Intake, report: Feedback, message_id: str, now: float
) -> tuple[Event | None, str | None]:
    """Suppress as ``report`` says; the event for the mail's person, and who it was about."""
    row = await intake.store.mail.get(report.mail_id) if report.mail_id else None
    address = report.address or (row["recipient"] if row else None)
    if address is None:
        return None, None  # a mail since erased, and no address: nothing left to act on
    if report.suppress is not None:
        await intake.store.mail.suppress(address, report.suppress, now, report.status)
    if row is None:
        return None, address
    properties = {
        "mail_id": row["id"],
        "workflow": row["workflow"],
        "template": row["template"],
        "status": report.status,
        "suppressed": report.suppress is not None,
    }
    if report.detail:
        properties["reason"] = report.detail
    name = EVENT_NAMES[report.kind]
    return person_event(row["person_id"], message_id, name, properties), address


async def _feedback_events(intake: Intake, reports: list[Feedback], webhook_id: str) -> list[Event]:
    """Apply each report (suppressions); the events for the mails' persons."""
    now = intake.clock()
    events: list[Event] = []
    for i, report in enumerate(reports):
        event, address = await _apply(intake, report, f"{webhook_id}-{i}", now)
        if event is not None:
            events.append(event)
        logger.info(
            "mail webhook: %s %s for mail %s%s",
            report.kind,
            report.status,
            report.mail_id or "-",
            f" (suppressed: {report.suppress})" if report.suppress and address else "",
        )
    return events


def _not_configured(source: str, key: str) -> HTTPFailure:
    return HTTPFailure(
        status.HTTP_404_NOT_FOUND, f"webhook source {source!r} is not configured: set keys.{key}"
    )


async def _verified(request: Request, intake: Intake, source: str, body: bytes) -> tuple[str, Any]:
    """The replay id of an authentic, fresh webhook, and what the source's verification
    parsed already (the relays' reports, SNS's message), or None.

    Raises:
        HTTPFailure: 401 not authentic or not fresh, 404 a relay not configured, 400 malformed,
            403 a sender not allowed, 503 SNS's certificate out of reach.
    """
    keys, now = intake.config.keys, intake.clock()
    tolerance_s = intake.config.ingest.webhook_tolerance_s
    try:
        if source == "mailgun":
            if keys.mailgun_signing_key is None:
                raise _not_configured(source, "mailgun_signing_key")
            replay, reports = mailgun(body, keys.mailgun_signing_key.reveal(), now, tolerance_s)
            return f"mailgun-{replay}", reports
        if source == "sendgrid":
            if not keys.sendgrid_public_key:
                raise _not_configured(source, "sendgrid_public_key")
            return sendgrid(body, request.headers, keys.sendgrid_public_key, now, tolerance_s)
        if source == "ses":
            return await ses_message(intake, body)
        if source == "postmark":
            return postmark_reports(request, intake, body)
        webhook_id = verify(intake.keys.webhook_secrets, request.headers, body, now, tolerance_s)
        return webhook_id, None
    except InvalidSignature as exc:
        raise HTTPFailure(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    except InvalidEvent as exc:
        raise HTTPFailure(status.HTTP_400_BAD_REQUEST, str(exc)) from None


async def _receive(request: Request, source: str) -> JSONResponse:
    intake = cast(Intake, request.state.intake)
    if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise HTTPFailure(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "webhooks are signed uncompressed"
        )
    body = await read_body(request, intake.config.ingest.max_webhook_bytes)
    webhook_id, reports = await _verified(request, intake, source, body)
    if await intake.store.webhook_seen(webhook_id):
        return JSONResponse({"success": True, "duplicate": True})
    result: dict[str, Any] = {"success": True}
    if source == "segment":
        events, rejected = _segment_events(request, intake, body, webhook_id)
        if rejected:
            result["rejected"] = rejected
        processed = len(events)
    else:
        try:
            if source == "ses":  # reports: the SNS message, authentic and not seen before
                reports = await ses_feedback(intake, reports)
            elif reports is None:
                reports = parse_feedback(body, request.headers.get("content-type", ""))
        except InvalidEvent as exc:
            raise HTTPFailure(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        events = await _feedback_events(intake, reports, webhook_id)
        processed = len(reports)
    if events:
        refused = await commit(intake, events)
        if refused:
            result["rejected"] = [*result.get("rejected", []), *refused]
    # Noted only once done: a failure before it leaves the sender to retry, and each step
    # above is idempotent (events by messageId, suppressions by address).
    await intake.store.webhook_done(webhook_id, source, intake.clock())
    result["processed"] = processed
    return JSONResponse(result)


async def receive(request: Request) -> Response:
    """``POST /v1/webhooks/<source>``: verify, then store the events or apply the feedback."""
    source = request.path_params["source"]
    if source not in SOURCES:
        error = f"unknown webhook source {source!r}: use one of {', '.join(SOURCES)}"
        return JSONResponse({"success": False, "error": error}, status.HTTP_404_NOT_FOUND)
    try:
        return await _receive(request, source)
    except HTTPFailure as failure:
        return failure_response(request, failure)
    except StoreError as exc:  # reading what was processed, or suppressing: retry later
        logger.warning("webhook %s: %s", source, exc)
        unavailable = HTTPFailure(status.HTTP_503_SERVICE_UNAVAILABLE, "storage unavailable")
        return failure_response(request, unavailable)
    except ClientDisconnect:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
