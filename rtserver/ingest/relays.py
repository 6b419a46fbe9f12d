"""The relays that do not sign their webhooks with a shared key: Amazon SES through SNS, and
Postmark. Their reports are read by :mod:`rtserver.mail` (``sns_message``, ``ses_reports``,
``postmark``); here is what is HTTP about them.

``ses``
    Off (404) while ``ses.topic_arns`` is empty. The SNS envelope is checked, then its topic
    (403 for one not listed: anyone can subscribe our URL to a topic of theirs), its age (401
    past an hour) and its signature (401; the certificate is fetched through the outbound guard,
    503 when that fails, so SNS retries). The replay id is ``ses-<MessageId>``. Once the replay
    check passed, a ``SubscriptionConfirmation`` is confirmed (its ``SubscribeURL`` fetched
    through the guard) and a ``Notification``'s SES reports are read.
``postmark``
    Off (404) while ``postmark.username`` or ``keys.postmark_password`` is unset. A client
    address outside ``postmark.allow_ips`` (when set) is a 403; wrong or missing basic auth
    credentials a 401 (compared in constant time).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import io
import ipaddress
import logging

import httpx
from starlette import status
from starlette.requests import Request

from rtserver.hooks import AsyncResolve, DestinationRefused, fetch_into, resolve_async
from rtserver.ingest.intake import Intake
from rtserver.ingest.segment import HTTPFailure
from rtserver.mail import (
    Feedback,
    Fetch,
    FetchFailed,
    SnsMessage,
    check_fresh,
    postmark,
    ses_reports,
    sns_message,
)

__all__ = ["guarded_fetch", "postmark_reports", "ses_feedback", "ses_message"]

logger = logging.getLogger(__name__)

MAX_FETCH_BYTES = 65536
"""A signing certificate is about 2 KB, a confirmation's answer less than 1 KB."""


def guarded_fetch(
    *,
    allow_private: bool = False,
    resolve: AsyncResolve = resolve_async,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 10.0,
) -> Fetch:
    """A GET through the outbound guard (public addresses only, the connection pinned to the
    checked address, no redirects), at most :data:`MAX_FETCH_BYTES`; tests pass their own
    ``resolve`` and ``transport`` (a local CA)."""

    async def fetch(url: str) -> bytes:
        sink = io.BytesIO()
        try:
            await fetch_into(
                url,
                sink,
                allow_private=allow_private,
                timeout_s=timeout_s,
                max_bytes=MAX_FETCH_BYTES,
                resolve=resolve,
                transport=transport,
            )
        except (DestinationRefused, OSError, httpx.HTTPError) as exc:  # TimeoutError: OSError
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from None
        return sink.getvalue()

    return fetch


def _unavailable(what: str, exc: FetchFailed) -> HTTPFailure:
    logger.warning("ses: could not fetch the %s: %s", what, exc)
    return HTTPFailure(status.HTTP_503_SERVICE_UNAVAILABLE, f"could not fetch the {what}")


async def ses_message(intake: Intake, body: bytes) -> tuple[str, SnsMessage]:
    """The replay id and the SNS message of an authentic, fresh request from an allowed topic.

    Raises:
        HTTPFailure: 404 not configured, 403 a topic not listed, 503 the certificate could not
            be fetched.
        InvalidEvent: not an SNS message (400).
        InvalidSignature: not authentic, or stale (401).
    """
    topics = intake.config.ses.topic_arns
    if not topics:
        raise HTTPFailure(
            status.HTTP_404_NOT_FOUND, "webhook source 'ses' is not configured: set ses.topic_arns"
        )
    message = sns_message(body)
    if message.topic_arn not in topics:
        logger.warning(
            "ses: refused a message from topic %s (not in ses.topic_arns)", message.topic_arn
        )
        raise HTTPFailure(
            status.HTTP_403_FORBIDDEN, f"topic {message.topic_arn!r} is not in ses.topic_arns"
        )
    check_fresh(message, intake.clock(), intake.config.ingest.webhook_tolerance_s)
    try:
        await intake.sns.verify(message)
    except FetchFailed as exc:
        raise _unavailable("SNS signing certificate", exc) from None
    return f"ses-{message.message_id}", message


async def ses_feedback(intake: Intake, message: SnsMessage) -> list[Feedback]:
    """What an authentic SNS message not seen before does: a subscription confirmed, or the
    reports of SES's notification.

    Raises:
        HTTPFailure: 503 the confirmation could not be fetched.
        InvalidEvent: the notification is not SES's (400).
    """
    if message.type == "SubscriptionConfirmation":
        try:
            await intake.sns.confirm(message)
        except FetchFailed as exc:
            raise _unavailable("SNS SubscribeURL", exc) from None
        logger.info("ses: confirmed the SNS subscription to %s", message.topic_arn)
        return []
    if message.type == "UnsubscribeConfirmation":
        logger.warning("ses: SNS unsubscribed this endpoint from %s", message.topic_arn)
        return []
    return ses_reports(message.message)


@functools.lru_cache(maxsize=8)
def _networks(
    allow_ips: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in allow_ips)


def _allowed(host: str | None, allow_ips: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(allow_ips))


def _credentials(request: Request) -> bytes:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return b""
    try:
        return base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        return b""


def postmark_reports(request: Request, intake: Intake, body: bytes) -> tuple[str, list[Feedback]]:
    """The replay id and the reports of a Postmark webhook from an allowed address with the
    right credentials.

    Raises:
        HTTPFailure: 404 not configured, 403 an address not allowed, 401 wrong credentials.
        InvalidEvent: not a Postmark record (400).
    """
    config, password = intake.config.postmark, intake.config.keys.postmark_password
    if password is None or not config.username:
        raise HTTPFailure(
            status.HTTP_404_NOT_FOUND,
            "webhook source 'postmark' is not configured: set postmark.username and "
            "keys.postmark_password",
        )
    client = request.client.host if request.client else None
    if config.allow_ips and not _allowed(client, config.allow_ips):
        raise HTTPFailure(status.HTTP_403_FORBIDDEN, "address not in postmark.allow_ips")
    expected = f"{config.username}:{password.reveal()}".encode()
    if not hmac.compare_digest(_credentials(request), expected):
        raise HTTPFailure(status.HTTP_401_UNAUTHORIZED, "wrong or missing basic auth credentials")
    return postmark(body)
