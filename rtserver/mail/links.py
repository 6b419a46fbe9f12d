"""The links in every mail: open pixel, click redirect, unsubscribe and double opt-in confirm.

``GET /o/<token>`` answers a 1x1 GIF whatever the token (no write for a bad one) and records
``Email Opened``. ``GET /c/<token>`` redirects to the URL signed in the token and records
``Email Clicked``; a bad, tampered or expired token gets a 404 page, never a redirect (no open
redirect), and so does a signed URL to a host that is neither the shop's nor written in a
template (:class:`~rtserver.mail.hosts.Hosts`). ``GET /u/<token>`` shows a confirmation page and
changes nothing (link scanners follow GETs); ``POST /u/<token>`` unsubscribes at once, without a
redirect (RFC 8058 one-click). ``GET /confirm/<token>`` shows a button that POSTs, and the
``POST`` verifies a claimed address (double opt-in), once per token.

Opens and clicks carry ``properties.marketing``: whether the mail was a marketing mail. A
transactional mail's (the double opt-in's) open is not interest in the shop: a workflow that
should start from opens asks for marketing ones (the shipped re-engagement does).

Opens and clicks that a machine made are recorded but flagged (``properties.machine``) and do
not count as engagement: HEAD requests, known scanner or image-proxy agents, and clicks within
``mail.scanner_window_s`` of delivery. Apple's Mail Privacy Protection fetches look like a
person's and cannot be told apart by the request alone.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from rtserver.clock import Clock
from rtserver.config import MailConfig
from rtserver.errors import StoreError
from rtserver.mail.hosts import Hosts
from rtserver.mail.tokens import Tokens
from rtserver.model import Event, Submit, email_hash, person_event
from rtserver.store import Store

__all__ = ["PIXEL", "Links", "click_target", "machine_reason", "routes"]

logger = logging.getLogger(__name__)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A transparent 1x1 GIF."""
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}
SCANNER_AGENTS = re.compile(
    r"bot\b|crawl|spider|scan|barracuda|mimecast|proofpoint|safelinks|trendmicro|"
    r"python-requests|python-httpx|aiohttp|curl/|wget/|go-http-client|java/|"
    r"microsoft office|ms-office|urlscan|headlesschrome",
    re.IGNORECASE,
)
MAX_FORM_BYTES = 4096
MAX_NAME_CHARS = 60
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PROXY_AGENTS = re.compile(r"googleimageproxy|yahoomailproxy|ggpht\.com", re.IGNORECASE)

pages = Jinja2Templates(directory=str(Path(__file__).parent.parent / "templates" / "pages"))


@dataclass(frozen=True, slots=True)
class Links:
    """What the link routes use, handed to them as ``request.state.links``."""

    store: Store
    tokens: Tokens
    submit: Submit
    """Records opens, clicks, unsubscribes and confirmations through the pipeline."""
    mail: MailConfig
    clock: Clock
    hosts: Hosts
    """Where ``/c/`` may redirect: the shop's hosts and the hosts written in templates."""


def machine_reason(
    request: Request, sent_at: float | None, now: float, window_s: float, *, opening: bool
) -> str | None:
    """Why this open or click looks automated, or None when it looks like a person's."""
    agent = request.headers.get("user-agent", "")
    if request.method == "HEAD":
        return "head request"
    if not agent:
        return "no user agent"
    if SCANNER_AGENTS.search(agent):
        return "scanner agent"
    if opening and PROXY_AGENTS.search(agent):
        return "image proxy"
    if not opening and sent_at is not None and now - sent_at < window_s:
        return f"within {window_s:g}s of delivery"
    return None


def _page(request: Request, name: str, status: int = 200, **values: Any) -> Response:
    links = cast(Links, request.state.links)
    context = {"brand": links.mail.brand, **values}
    return pages.TemplateResponse(request, name, context, status_code=status, headers=NO_STORE)


def _not_found(request: Request) -> Response:
    return _page(request, "link_invalid.html", 404)


async def _record(links: Links, events: list[Event]) -> bool:
    """Commit ``events``; a storage failure is logged, not shown (the person's click matters).
    Whether they were committed."""
    try:
        await (await links.submit(events, links.clock()))
    except (StoreError, TimeoutError) as exc:
        logger.warning("could not record %s: %s", events[0].name, exc)
        return False
    return True


async def _first_name(request: Request) -> str:
    """The optional first name typed on the confirm page: one line, at most 60 characters."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return ""
    fields = urllib.parse.parse_qs(body.decode(errors="replace"), max_num_fields=4)
    value = fields.get("first_name", [""])[0]
    return " ".join(CONTROL.sub(" ", value).split())[:MAX_NAME_CHARS]


async def _mail_event(
    request: Request, mail_id: str, name: str, extra: dict[str, Any]
) -> dict[str, Any] | None:
    """Record ``name`` for the mail ``mail_id``; its outbox row, or None if it is unknown."""
    links = cast(Links, request.state.links)
    row = await links.store.mail.get(mail_id)
    if row is None:
        return None
    now = links.clock()
    reason = machine_reason(
        request,
        row["sent_at"],
        now,
        links.mail.scanner_window_s,
        opening=name == "Email Opened",
    )
    properties = {
        "mail_id": mail_id,
        "workflow": row["workflow"],
        "template": row["template"],
        "run_id": row["run_id"],
        "marketing": bool(row["marketing"]),
        "machine": reason is not None,
        **extra,
    }
    if reason is not None:
        properties["machine_reason"] = reason
    message_id = f"rt-{name.split()[-1].lower()}-{mail_id}-{uuid.uuid4().hex}"
    await _record(links, [person_event(row["person_id"], message_id, name, properties)])
    return row


def click_target(tokens: Tokens, hosts: Hosts, token: str) -> str | None:
    """Where the click link ``/c/<token>`` leads (None where ``/c/`` would not redirect),
    without recording anything: a dashboard preview links there directly."""
    signed = tokens.read_click(token)
    if signed is None or not hosts.redirect(signed[1]):
        return None
    return signed[1]


async def pixel(request: Request) -> Response:
    """``GET /o/<token>``: the open pixel."""
    links = cast(Links, request.state.links)
    mail_id = links.tokens.read_open(request.path_params["token"])
    if mail_id is not None:
        await _mail_event(request, mail_id, "Email Opened", {})
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def click(request: Request) -> Response:
    """``GET /c/<token>``: record the click, then redirect to the signed URL (or 404)."""
    links = cast(Links, request.state.links)
    signed = links.tokens.read_click(request.path_params["token"])
    if signed is None:
        return _not_found(request)
    mail_id, url = signed
    if not links.hosts.redirect(url):
        # Signed, but not to the shop nor to a link of a template: data that should never
        # have reached a mail. Nothing is recorded and nobody is sent there.
        logger.warning("refused a click to a host outside the shop (mail %s)", mail_id)
        return _not_found(request)
    clicked: dict[str, Any] = {"url": url}
    try:
        product = await links.store.mail.shown_product(mail_id, url)
    except StoreError:
        product = None  # the click still counts; only which product it was is not known
    if product is not None:
        clicked["product_id"] = product  # recommendations learn from clicks on products
    if await _mail_event(request, mail_id, "Email Clicked", clicked) is None:
        return _not_found(request)
    return RedirectResponse(url, status_code=303, headers=NO_STORE)


async def unsubscribe(request: Request) -> Response:
    """``GET /u/<token>`` asks; ``POST /u/<token>`` unsubscribes (RFC 8058 one-click)."""
    links = cast(Links, request.state.links)
    mail_id = links.tokens.read_unsubscribe(request.path_params["token"])
    row = None if mail_id is None else await links.store.mail.get(mail_id)
    if row is None:
        return _not_found(request)  # a bad token, or the mail of a person since erased
    if request.method == "GET":
        return _page(request, "unsubscribe.html", action=str(request.url.path))
    if row["recipient"]:
        # The suppression first: it is checked when each later mail is claimed, so it holds
        # even for mails already queued, and for a profile that opts in again.
        now = links.clock()
        await links.store.mail.suppress(row["recipient"], "unsubscribe", now, row["id"])
    event = person_event(
        row["person_id"],
        f"rt-unsubscribe-{row['id']}-{uuid.uuid4().hex}",
        "Email Unsubscribed",
        {"mail_id": row["id"], "workflow": row["workflow"]},
    )
    await _record(links, [event])
    logger.info("unsubscribed %s (mail %s)", row["person_id"], row["id"])
    return _page(request, "unsubscribed.html")


async def confirm(request: Request) -> Response:
    """``GET /confirm/<token>`` shows a page whose button confirms the claimed address;
    ``POST`` confirms it, once per token (a second use shows "already confirmed").

    A GET never confirms: corporate link scanners fetch every link in a mail, some of them
    running its scripts, so the page has a plain form and no script. A first name typed on the
    page is the mailbox owner's own, and is kept as a trusted trait.
    """
    links = cast(Links, request.state.links)
    token = request.path_params["token"]
    signed = links.tokens.read_confirm(token)
    if signed is None:
        return _not_found(request)
    digest = hashlib.sha256(token.encode()).hexdigest()
    if await links.store.mail.token_used(digest):
        return _page(request, "confirmed.html", already=True)
    person_id, hashed = signed
    profile = await links.store.profile(person_id)
    claimed = (profile or {}).get("claimed_email")
    # A token made before the digest was keyed carries the plain hash: still good for its week.
    if not claimed or hashed not in (links.tokens.email_digest(claimed), email_hash(claimed)):
        return _not_found(request)
    if request.method == "GET":
        return _page(request, "confirm.html", action=request.url.path, address=claimed)
    first_name = await _first_name(request)
    if not await links.store.mail.use_token(digest, "confirm", links.clock()):
        return _page(request, "confirmed.html", already=True)
    unique = uuid.uuid4().hex
    traits = {"email": claimed, "consent": "confirmed_opt_in"}
    if first_name:
        traits["first_name"] = first_name
    events = [
        person_event(person_id, f"rt-confirm-id-{unique}", None, kind="identify", traits=traits),
        person_event(person_id, f"rt-confirm-{unique}", "Email Confirmed", {}),
    ]
    if not await _record(links, events):
        await links.store.mail.give_back_token(digest)
        return _page(request, "confirm_failed.html", 503)
    logger.info("double opt-in confirmed for %s", person_id)
    return _page(request, "confirmed.html")


routes = [
    Route("/o/{token}", pixel, methods=["GET", "HEAD"]),
    Route("/c/{token}", click, methods=["GET", "HEAD"]),
    Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
    Route("/confirm/{token}", confirm, methods=["GET", "POST"]),
]
