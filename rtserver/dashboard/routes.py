"""The dashboard's routes: its tabs (Overview, Flows and each flow, People, Messages, System),
their shared SSE stream, a person's timeline, the send-time page (under Flows), the dev sink's
mails, login and logout. Every route but the login sits behind
:class:`~rtserver.dashboard.auth.RequireLogin`.

The page is rendered on the server (Jinja2, autoescaped) from a snapshot and then kept live by
``static/dashboard.js`` over ``GET /dashboard/stream``: Server-Sent Events with ids, resumed
with ``Last-Event-ID`` (the browser sends it on reconnect; the first connection passes the
page's snapshot id as ``?since=``), replayed by the hub. Event data is attacker-controlled: the
templates escape it, the script only ever sets ``textContent``, the snapshot is embedded as
JSON that cannot close its ``<script>`` (Jinja's ``tojson``), and the CSP allows scripts from
this origin only. A sink mail is shown in a sandboxed iframe, with a CSP ``sandbox`` of its own.
A preview is not the customer reading: it has no open pixel, its tracked links lead straight to
where they point (no click is recorded), and its unsubscribe links are inert.
"""

from __future__ import annotations

import datetime
import email.policy
import hmac
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from html import escape as htmlescape
from pathlib import Path
from typing import Any, cast

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from rtserver.clock import Clock
from rtserver.dashboard.auth import Auth, Session
from rtserver.dashboard.board import Board
from rtserver.dashboard.flows import templates_of
from rtserver.dashboard.hub import Hub, HubClosed, TooManyViewers
from rtserver.store import Store

__all__ = ["CSP", "Dashboard", "duration", "routes"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent.parent
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEAD = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
MAIL_CSP = (
    "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
    "img-src https: http: data:; style-src 'unsafe-inline'"
)
"""No scripts, no same origin; its links open in a new tab (as a mail client opens them)."""
"""A sink mail: no scripts, no forms, no same-origin, remote images only (as a mail client)."""
HEADERS = {
    "Cache-Control": "no-store",
    # Not "no-referrer": under it browsers send "Origin: null" with the page's own form POSTs,
    # and the Origin check would refuse them. Other sites still get no referrer.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
PING_S = 15.0
SEND_TIMEOUT_S = 10.0
"""A viewer that takes this long to accept one write (data or ping) is dropped, not waited on."""
RETRY_MS = 2000
"""How long a browser waits before reconnecting a stream that ended."""
MAX_FORM_BYTES = 4096
TIMELINE_ROWS = 200


def _clock_time(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:g} ms"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


DURATION_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def duration(seconds: float | None) -> str:
    """A duration as people write it: its largest unit and the next one if not zero ("5 s",
    "12 min 5 s", "1 h 12 min", "2 d 3 h"); "< 1 s" under a second. The page's script writes
    the same (``static/dashboard.js``: ``duration``)."""
    if seconds is None:
        return "–"
    whole = int(seconds)
    if whole < 1:
        return "< 1 s"
    parts: list[str] = []
    for unit, size in DURATION_UNITS:
        if whole >= size or parts:
            count, whole = divmod(whole, size)
            parts.append(f"{count} {unit}")
            if len(parts) == 2:
                break
    if len(parts) == 2 and parts[1].startswith("0 "):
        parts.pop()
    return " ".join(parts)


def _money(value: float | None, currency: str) -> str:
    return "–" if value is None else f"{value:.2f} {currency}".rstrip()


def _stamp(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _day(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the dashboard's routes use, handed to them as ``request.state.dashboard``."""

    store: Store
    board: Board
    auth: Auth
    hub: Hub
    public_url: str
    """``server.public_url``: a POST from this origin is same-origin too."""
    clock: Clock
    click_target: Callable[[str], str | None] = lambda token: None
    """Where a mail's click link ``/c/<token>`` leads, read without recording a click."""
    currency: str = ""
    """``mail.brand.currency``: what the funnel's revenue is in."""
    preview: Callable[[str], str | None] = lambda template: None
    """A template's HTML rendered with sample data (None: no such template, or it failed)."""
    template_names: Callable[[], list[str]] = list
    """Every template there is (``mail.templates`` and the shipped ones)."""


templates = Jinja2Templates(directory=str(HERE / "templates" / "pages"))
templates.env.filters["clock"] = _clock_time
templates.env.filters["ms"] = _ms
templates.env.filters["percent"] = _percent
templates.env.filters["day"] = _day
templates.env.filters["duration"] = duration
templates.env.filters["money"] = _money
templates.env.filters["stamp"] = _stamp


def _render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    headers = {**HEADERS, "Content-Security-Policy": CSP}
    return templates.TemplateResponse(request, name, context, status_code=status, headers=headers)


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from this site: no ``Origin`` (not a browser's cross-site form),
    or this server's own origin, as asked for or as ``server.public_url`` names it."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    dashboard: Dashboard = request.state.dashboard
    public = urllib.parse.urlsplit(dashboard.public_url)
    own = {f"{request.url.scheme}://{request.url.netloc}", f"{public.scheme}://{public.netloc}"}
    return origin in own


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form body (at most ``MAX_FORM_BYTES``), first value of each field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    fields = urllib.parse.parse_qs(body.decode(errors="replace"), max_num_fields=16)
    return {name: values[0] for name, values in fields.items()}


def _next_path(value: str | None) -> str:
    """Where a login goes: a dashboard path only (no open redirect)."""
    if value and value.startswith("/dashboard") and not value.startswith("/dashboard/login"):
        if "//" not in value and "\\" not in value:
            return value
    return "/dashboard"


TABS = (
    ("overview", "/dashboard", "Overview"),
    ("flows", "/dashboard/flows", "Flows"),
    ("people", "/dashboard/people", "People"),
    ("messages", "/dashboard/messages", "Messages"),
    ("system", "/dashboard/system", "System"),
)
"""The dashboard's tabs: (key, path, label); every page but the login names its tab."""
templates.env.globals["TABS"] = TABS
PEOPLE_ROWS = 50
"""People listed on the People tab: those of the newest events, newest first."""
PEOPLE_EVENTS = 500
MAX_QUERY_CHARS = 200


async def _live(request: Request, name: str, tab: str, **context: Any) -> Response:
    """A tab kept live by ``static/dashboard.js``: rendered from a snapshot of the stream, whose
    id the page's stream resumes from (every tab shares the one stream)."""
    dashboard = cast(Dashboard, request.state.dashboard)
    since, data = await dashboard.hub.snapshot()
    session: Session = request.state.session
    return _render(
        request,
        name,
        data=data,
        since=since,
        csrf=session.csrf,
        currency=dashboard.currency,
        tab=tab,
        live=True,
        **context,
    )


async def page(request: Request) -> Response:
    """``GET /dashboard``: the Overview tab (the funnel, events/s and the live feed)."""
    return await _live(request, "dashboard.html", "overview")


async def flows(request: Request) -> Response:
    """``GET /dashboard/flows``: each workflow with its live counts, open runs and timers."""
    board = cast(Dashboard, request.state.dashboard).board
    return await _live(request, "dashboard_flows.html", "flows", flows=list(board.flows.values()))


async def flow(request: Request) -> Response:
    """``GET /dashboard/flows/<name>``: one workflow drawn from its compiled definition, with
    the counts at each step, its arms and holdout, and its newest runs."""
    board = cast(Dashboard, request.state.dashboard).board
    view = await board.flow(request.path_params["name"])
    if view is None:
        session: Session = request.state.session
        return _render(
            request,
            "dashboard_flow.html",
            404,
            view=None,
            unknown=request.path_params["name"],
            csrf=session.csrf,
            tab="flows",
        )
    return await _live(request, "dashboard_flow.html", "flows", view=view)


async def people(request: Request) -> Response:
    """``GET /dashboard/people``: the people of the newest events, or those a search finds
    (a person id, a user id, an anonymous id: each an indexed lookup)."""
    dashboard = cast(Dashboard, request.state.dashboard)
    store = dashboard.store
    query = request.query_params.get("q", "").strip()[:MAX_QUERY_CHARS]
    if query:
        linked = await store.person_of(query)
        candidates = [query, f"u:{query}", f"a:{query}", *([linked] if linked else [])]
    else:
        events = await store.recent_events(PEOPLE_EVENTS)
        candidates = [row["person_id"] for row in events]
    found: list[dict[str, Any]] = []
    for person_id in list(dict.fromkeys(candidates))[:PEOPLE_ROWS]:
        profile = await store.profile(person_id)
        if profile is not None or not query:
            found.append({"person_id": person_id, "profile": profile})
    session: Session = request.state.session
    return _render(
        request, "dashboard_people.html", people=found, query=query, csrf=session.csrf, tab="people"
    )


async def messages(request: Request) -> Response:
    """``GET /dashboard/messages``: the templates the flows send, the outbox, the dev sink's
    inbox with its previews, and failed mail."""
    dashboard = cast(Dashboard, request.state.dashboard)
    used = templates_of(list(dashboard.board.flows.values()))
    names = sorted(set(dashboard.template_names()) | set(used))
    listed = [(name, used.get(name, [])) for name in names]
    return await _live(request, "dashboard_messages.html", "messages", templates=listed)


async def system(request: Request) -> Response:
    """``GET /dashboard/system``: the operator's figures (queue, commits, viewers, latency,
    alerts, webhooks, polling sources)."""
    return await _live(request, "dashboard_system.html", "system")


async def stream(request: Request) -> Response:
    """``GET /dashboard/stream``: batched updates as Server-Sent Events (resumable)."""
    hub = cast(Dashboard, request.state.dashboard).hub
    last_id = request.headers.get("last-event-id") or request.query_params.get("since")
    if hub.closed or len(hub.subscribers) >= hub.max_subscribers:
        return PlainTextResponse("too many dashboard viewers", status_code=503, headers=HEADERS)

    async def frames() -> Any:
        try:
            async with hub.subscribe(last_id) as subscription:
                yield ServerSentEvent(retry=RETRY_MS)
                while (update := await subscription.queue.get()) is not None:
                    yield update.frame
        except (HubClosed, TooManyViewers):  # raced with the check above: end the stream
            return

    return EventSourceResponse(
        frames(),
        ping=PING_S,
        send_timeout=SEND_TIMEOUT_S,
        headers={**HEADERS, "X-Accel-Buffering": "no"},
    )


async def person(request: Request) -> Response:
    """``GET /dashboard/person/<id>``: one profile's timeline (events, runs, mails, clicks)."""
    board = cast(Dashboard, request.state.dashboard).board
    person_id = request.path_params["person_id"]
    view = await board.person(person_id, TIMELINE_ROWS)
    erased = request.query_params.get("erased")
    if view is None:
        status = 404 if erased is None else 200
        return _render(
            request,
            "dashboard_person.html",
            status,
            person_id=person_id,
            view=None,
            erased=erased,
            tab="people",
        )
    session: Session = request.state.session
    return _render(
        request,
        "dashboard_person.html",
        person_id=person_id,
        view=view,
        csrf=session.csrf,
        tab="people",
    )


async def send_time(request: Request) -> Response:
    """``GET /dashboard/send-time``: the shop's engagement heatmap, optimal sends against their
    control arm, and each bandit step's arms."""
    board = cast(Dashboard, request.state.dashboard).board
    session: Session = request.state.session
    view = await board.send_time()
    return _render(
        request, "dashboard_send_time.html", view=view, csrf=session.csrf, tab="flows", live=True
    )


def _inert(html: str, public_url: str, target: Callable[[str], str | None]) -> str:
    """A mail's HTML as a preview shows it: the open pixel gone, each click link replaced by
    where it leads (or by no link), each unsubscribe link without its href; so previewing
    records no open, click or unsubscribe of the customer's."""
    own = re.escape(public_url)
    html = re.sub(rf"""<img\b[^>]*?\ssrc\s*=\s*["']{own}/o/[^>]*>""", "", html, flags=re.I)

    def link(match: re.Match[str]) -> str:
        kind, token = match.group(2), match.group(3)
        url = target(token) if kind == "c" else None
        if url is None:
            return ' title="inert in a preview"'
        return f"{match.group(1)}{htmlescape(url)}{match.group(4)}"

    pattern = rf"""(\shref\s*=\s*["']){own}/([cu])/([A-Za-z0-9_.=-]+)(["'])"""
    return re.sub(pattern, link, html, flags=re.I)


async def mail(request: Request) -> Response:
    """``GET /dashboard/mail/<id>``: a mail the dev sink received, for a sandboxed iframe."""
    dashboard: Dashboard = request.state.dashboard
    found = await dashboard.store.sunk_mail(request.path_params["sunk_id"])
    if found is None:
        return PlainTextResponse("no such mail", status_code=404, headers=HEADERS)
    message = BytesParser(policy=email.policy.default).parsebytes(found["body"])
    part = message.get_body(("html", "plain"))
    content = part.get_content() if part is not None else ""
    if part is None or part.get_content_type() != "text/html":
        escaped = content.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        content = f"<pre>{escaped}</pre>"
    return _framed(content, dashboard)


def _framed(content: str, dashboard: Dashboard) -> Response:
    """A mail's HTML for the dashboard's sandboxed iframe: inert (see :func:`_inert`), its
    links opening in a new tab, under its own CSP sandbox."""
    content = _inert(content, dashboard.public_url.rstrip("/"), dashboard.click_target)
    # Its links open in a new tab, as a mail client opens them (not inside the dashboard).
    head = _HEAD.search(content)
    at = head.end() if head else 0
    content = content[:at] + '<base target="_blank">' + content[at:]
    headers = {
        **HEADERS,
        "Content-Security-Policy": MAIL_CSP + "; frame-ancestors 'self'",
        "X-Frame-Options": "SAMEORIGIN",
    }
    return HTMLResponse(content, headers=headers)


async def preview(request: Request) -> Response:
    """``GET /dashboard/messages/preview/<template>``: a template rendered with sample data
    (no customer's), for the Messages tab's sandboxed iframe."""
    dashboard: Dashboard = request.state.dashboard
    content = dashboard.preview(request.path_params["template"])
    if content is None:
        return PlainTextResponse("no such template", status_code=404, headers=HEADERS)
    return _framed(content, dashboard)


async def forget(request: Request) -> Response:
    """``POST /dashboard/person/<id>/forget``: erase everyone with this person's address, as
    ``rtserver forget`` does (the data goes, a salted-hash suppression stays). Needs the CSRF
    token and the ``confirm`` box ticked."""
    dashboard: Dashboard = request.state.dashboard
    form = await _checked_form(request)
    if form is None:
        return _refused()
    person_id = request.path_params["person_id"]
    if form.get("confirm") != "yes":
        return PlainTextResponse("tick the box to confirm", status_code=400, headers=HEADERS)
    profile = await dashboard.store.profile(person_id)
    address = (profile or {}).get("email") or (profile or {}).get("claimed_email")
    if not address:
        return PlainTextResponse("no address to erase by", status_code=409, headers=HEADERS)
    erased = await dashboard.store.mail.forget(address, dashboard.clock())
    logger.info("dashboard: erased %d person(s) on request", erased)
    target = f"/dashboard/person/{urllib.parse.quote(person_id, safe='')}?erased={erased}"
    return RedirectResponse(target, status_code=303, headers=HEADERS)


async def login(request: Request) -> Response:
    """``GET /dashboard/login`` shows the form; ``POST`` checks the password (throttled)."""
    auth = cast(Dashboard, request.state.dashboard).auth
    address = request.client.host if request.client else "unknown"
    next_path = _next_path(request.query_params.get("next"))
    if request.method == "GET":
        return _render(request, "dashboard_login.html", next=next_path, error=None)
    if not _same_origin(request):
        return PlainTextResponse("cross-site login refused", status_code=403, headers=HEADERS)
    refused = auth.admit(address)  # counted before the password is checked
    if refused is not None:
        wait_s, why = refused
        response = _render(request, "dashboard_login.html", 429, next=next_path, error=why)
        response.headers["Retry-After"] = str(int(wait_s))
        return response
    form = await _form(request)
    next_path = _next_path(form.get("next"))
    if not await auth.check(address, form.get("password", "")):
        logger.warning("dashboard: failed login from %s", address)
        return _render(
            request, "dashboard_login.html", 401, next=next_path, error="Wrong password."
        )
    value, _ = auth.issue()
    response = RedirectResponse(next_path, status_code=303, headers=HEADERS)
    auth.set_cookie(response, value)
    logger.info("dashboard: login from %s", address)
    return response


async def _checked_form(request: Request) -> dict[str, str] | None:
    """The form of a dashboard action, or None unless it is same-origin and carries the
    session's CSRF token."""
    session: Session = request.state.session
    form = await _form(request)
    token = form.get("csrf", "")
    if not _same_origin(request) or not hmac.compare_digest(token, session.csrf):
        return None
    return form


def _refused() -> Response:
    return PlainTextResponse("bad or missing CSRF token", status_code=403, headers=HEADERS)


async def logout(request: Request) -> Response:
    """``POST /dashboard/logout``: needs the session's CSRF token; ends the session."""
    auth = cast(Dashboard, request.state.dashboard).auth
    if await _checked_form(request) is None:
        return _refused()
    dashboard: Dashboard = request.state.dashboard
    session: Session = request.state.session
    now = dashboard.clock()
    auth.revoke(session, now)
    await dashboard.store.revoke_session(session.id, now, now + auth.session_s)
    response = RedirectResponse("/dashboard/login", status_code=303, headers=HEADERS)
    auth.clear_cookie(response)
    return response


routes = [
    Route("/dashboard", page),
    Route("/dashboard/flows", flows),
    Route("/dashboard/flows/{name}", flow),
    Route("/dashboard/people", people),
    Route("/dashboard/messages", messages),
    Route("/dashboard/messages/preview/{template}", preview),
    Route("/dashboard/system", system),
    Route("/dashboard/stream", stream),
    Route("/dashboard/send-time", send_time),
    Route("/dashboard/person/{person_id:path}/forget", forget, methods=["POST"]),
    Route("/dashboard/person/{person_id:path}", person),
    Route("/dashboard/mail/{sunk_id:int}", mail),
    Route("/dashboard/login", login, methods=["GET", "POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Mount("/dashboard/static", StaticFiles(directory=str(HERE / "static")), name="static"),
]
