"""Dashboard login: the password (kept only as an scrypt hash), signed session cookies, CSRF
tokens, login throttling per client address, and the middleware that guards ``/dashboard``.

The password comes from ``dashboard.password`` (``RTSERVER_DASHBOARD_PASSWORD``); when none is
set, one is generated on first start, only its hash is kept (in the store's secrets), and the
password is logged once, then never again. A session is a cookie signed with itsdangerous
(key generated once, kept in the store): ``HttpOnly``, ``SameSite=Strict``, ``Path=/dashboard``,
``Secure`` when ``server.public_url`` is https. It carries its own CSRF token, which every POST
must send back, and a fingerprint of the password hash, so changing the password ends every
session. Logging out revokes the session, in this process and in the store (so it stays
revoked after a restart, until it would have expired). Failed logins are counted per client
address (the proxy's ``X-Forwarded-For`` only from ``server.trusted_proxies``, as uvicorn
resolves it): past ``dashboard.login_attempts`` in 15 minutes, logins are refused with 429.
An attempt is counted before its password is checked (and forgiven once it succeeds), one
address has at most one check in flight, and at most ``MAX_CHECKS`` scrypt checks (16 MiB
each) run at once: parallel guesses get no more checks than the throttle allows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import urllib.parse
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from rtserver.clock import Clock
from rtserver.config import Config
from rtserver.store import Store

__all__ = ["Auth", "RequireLogin", "Session", "hash_password", "resolve_auth", "verify_password"]

logger = logging.getLogger(__name__)


COOKIE = "rt_dashboard"
PREFIX = "/dashboard"
OPEN_PATHS = ("/dashboard/login",)
OPEN_PREFIXES = ("/dashboard/static/",)
"""Under ``/dashboard``, what needs no session: the login page, and the static files (the
dashboard's own script and style, and uPlot: public code, no data)."""
THROTTLE_WINDOW_S = 900.0
MAX_ADDRESSES = 10000
MAX_CHECKS = 4
"""Password checks running at once, all addresses together (each holds 16 MiB)."""
"""Client addresses whose failures are remembered (the oldest are forgotten first)."""
MAX_REVOKED = 10000
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""scrypt cost (about 16 MiB and some tens of ms per check, in a thread)."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    encode = base64.b64encode
    n, r, p = SCRYPT["n"], SCRYPT["r"], SCRYPT["p"]
    return f"scrypt${n}${r}${p}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` hashes to ``encoded`` (constant-time compare; False if malformed)."""
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(expected),
        )  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in dashboard session: its id and its CSRF token."""

    id: str
    csrf: str


class Auth:
    """Checks passwords, issues and reads session cookies, throttles failed logins."""

    def __init__(
        self,
        password_hash: str,
        session_key: str,
        *,
        secure: bool,
        session_s: float,
        attempts: int,
        clock: Clock,
    ) -> None:
        self.password_hash = password_hash
        self.secure = secure
        self.session_s = session_s
        self.attempts = attempts
        self.clock = clock
        self._serializer = URLSafeSerializer(session_key, salt="rtserver.dashboard")
        self._fingerprint = hashlib.sha256(password_hash.encode()).hexdigest()[:16]
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._checking: set[str] = set()
        """Addresses with a password check in flight."""
        self._revoked: OrderedDict[str, float] = OrderedDict()

    async def check_password(self, password: str) -> bool:
        """Whether ``password`` is the dashboard's (hashed in a thread: it takes a while)."""
        return await asyncio.to_thread(verify_password, password, self.password_hash)

    def admit(self, address: str) -> tuple[float, str] | None:
        """Let ``address`` have its password checked now (None), or say how long to wait and
        why. An admitted attempt is counted as failed until :meth:`check` says otherwise."""
        wait_s = self.retry_after(address)
        if wait_s is not None:
            return wait_s, f"Too many failed logins: try again in {wait_s / 60:.0f} min."
        if address in self._checking:
            return 1.0, "A login from your address is being checked: try again in a moment."
        if len(self._checking) >= MAX_CHECKS:
            return 1.0, "The dashboard is busy checking logins: try again in a moment."
        self.failed(address)
        self._checking.add(address)
        return None

    async def check(self, address: str, password: str) -> bool:
        """Check the password of an admitted attempt; a right one is not counted as failed."""
        try:
            ok = await self.check_password(password)
        finally:
            self._checking.discard(address)
        if ok:
            failures = self._failures.get(address)
            if failures:
                failures.pop()
        return ok

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and failures[0] <= now - THROTTLE_WINDOW_S:
            failures.popleft()
        if len(failures) < self.attempts:
            return None
        return max(1.0, failures[0] + THROTTLE_WINDOW_S - now)

    def failed(self, address: str) -> None:
        """Count a failed login of ``address``."""
        failures = self._failures.pop(address, None) or deque(maxlen=self.attempts)
        failures.append(self.clock())
        self._failures[address] = failures
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def issue(self) -> tuple[str, Session]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(16), secrets.token_urlsafe(24))
        payload = {"s": session.id, "c": session.csrf, "p": self._fingerprint, "t": self.clock()}
        return self._serializer.dumps(payload), session

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie value carries, or None (bad signature, expired, revoked, or
        issued under another password)."""
        if not cookie:
            return None
        try:
            payload: Any = self._serializer.loads(cookie)
            session = Session(str(payload["s"]), str(payload["c"]))
            fresh = self.clock() - float(payload["t"]) < self.session_s
            same_password = hmac.compare_digest(str(payload["p"]), self._fingerprint)
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        if not fresh or not same_password or session.id in self._revoked:
            return None
        return session

    def revoke(self, session: Session, at: float | None = None) -> None:
        """End ``session`` (logout; the store keeps it ended across restarts)."""
        self._revoked[session.id] = self.clock() if at is None else at
        while len(self._revoked) > MAX_REVOKED:
            self._revoked.popitem(last=False)

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE, value, max_age=int(self.session_s), path=PREFIX, secure=self.secure,
            httponly=True, samesite="strict",
        )  # fmt: skip

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path=PREFIX, secure=self.secure, httponly=True, samesite="strict"
        )


async def resolve_auth(config: Config, store: Store, now: float, clock: Clock) -> Auth:
    """The dashboard's :class:`Auth`: the configured password's hash, else a generated one's
    (kept in the store; the password is logged this once), and the session key."""
    generated: list[str] = []

    def generate() -> str:
        password = secrets.token_urlsafe(12)
        generated.append(password)
        return hash_password(password)

    dashboard = config.dashboard
    if dashboard.password is not None:
        # The kept hash while it still matches: a fresh salt at every start would end every
        # session at every restart (they are bound to the hash).
        plain = dashboard.password.reveal()
        password_hash = await store.secret("dashboard_password", lambda: "", now)
        if not password_hash or not await asyncio.to_thread(verify_password, plain, password_hash):
            password_hash = await asyncio.to_thread(hash_password, plain)
            await store.replace_secret("dashboard_password", password_hash, now)
    else:
        password_hash = await store.secret("dashboard_password", generate, now)
    if generated:
        logger.warning(
            "dashboard password (generated, shown only this once): %s  "
            "(set RTSERVER_DASHBOARD_PASSWORD to choose one)",
            generated[0],
        )
    key = await store.secret("dashboard_session_key", lambda: secrets.token_urlsafe(32), now)
    auth = Auth(
        password_hash,
        key,
        secure=config.server.public_url.startswith("https://"),
        session_s=dashboard.session,
        attempts=dashboard.login_attempts,
        clock=clock,
    )
    for session_id, at in await store.revoked_sessions(now):
        auth.revoke(Session(session_id, ""), at)
    return auth


class RequireLogin:
    """ASGI middleware: every request under ``/dashboard`` but the login page needs a session
    (pages redirect to the login, anything else gets 401); the session is put in
    ``scope["state"]["session"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        guarded = path == PREFIX or path.startswith(PREFIX + "/")
        open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if scope["type"] != "http" or not guarded or open_path:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        auth: Auth | None = scope.get("state", {}).get("auth")
        session = auth.session(connection.cookies.get(COOKIE)) if auth is not None else None
        if session is None:
            response: Response
            wants_page = scope["method"] == "GET" and "text/html" in connection.headers.get(
                "accept", ""
            )
            if wants_page and path != PREFIX + "/stream":
                target = urllib.parse.quote(
                    path + ("?" + qs if (qs := connection.url.query) else "")
                )
                response = RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
            else:
                response = PlainTextResponse("login required", status_code=401)
            response.headers["Cache-Control"] = "no-store"
            await response(scope, receive, send)
            return
        scope["state"]["session"] = session
        await self.app(scope, receive, send)
