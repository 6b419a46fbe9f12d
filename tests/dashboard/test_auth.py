"""Dashboard login: password hashing, signed sessions, throttling, the generated password, the
cookie's flags and the middleware that guards /dashboard."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from rtserver.dashboard import auth as auth_module
from rtserver.dashboard.auth import Auth, RequireLogin, hash_password, resolve_auth, verify_password
from rtserver.store.database import Store
from tests.support.server import FakeClock, make_config

HOUR = 3600.0


def make_auth(clock: FakeClock, password: str = "correct horse battery", **kw: object) -> Auth:
    options: dict[str, object] = {"secure": False, "session_s": 12 * HOUR, "attempts": 3}
    options.update(kw)
    return Auth(hash_password(password), "k" * 32, clock=clock, **options)  # type: ignore[arg-type]


def test_password_hash_round_trip() -> None:
    """scrypt with a random salt: the right password verifies, anything else does not."""
    encoded = hash_password("s3cret password")
    assert encoded.startswith("scrypt$16384$8$1$") and "s3cret" not in encoded
    assert hash_password("s3cret password") != encoded  # salted
    assert verify_password("s3cret password", encoded)
    assert not verify_password("s3cret passwore", encoded)
    assert not verify_password("x", "md5$1$2$3$4$5")
    assert not verify_password("x", "scrypt$nope")
    assert not verify_password("x", "scrypt$16384$8$1$!!$!!")


async def test_check_password_runs_off_the_loop() -> None:
    """The async check gives the same answer as the hash."""
    auth = make_auth(FakeClock())
    assert await auth.check_password("correct horse battery")
    assert not await auth.check_password("wrong")


def test_session_cookie_round_trip_and_rejections() -> None:
    """A cookie reads back as its session; tampered, expired, revoked, foreign ones do not."""
    clock = FakeClock()
    auth = make_auth(clock)
    value, session = auth.issue()
    assert auth.session(value) == session and len(session.csrf) >= 24
    assert auth.session(None) is None and auth.session("") is None
    assert auth.session(value[:-2] + "xx") is None
    other = Auth(hash_password("another password!"), "k" * 32, secure=False,
                 session_s=12 * HOUR, attempts=3, clock=clock)  # fmt: skip
    assert other.session(value) is None  # the password changed: sessions end
    forged = auth._serializer.dumps({"s": 1})  # signed, but not a session
    assert auth.session(forged) is None
    clock.advance(12 * HOUR - 1)
    assert auth.session(value) == session
    clock.advance(2)
    assert auth.session(value) is None  # expired


def test_revoked_sessions_stay_revoked_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logout revokes a session; the revocation list keeps only the newest ones."""
    monkeypatch.setattr(auth_module, "MAX_REVOKED", 2)
    auth = make_auth(FakeClock())
    issued = [auth.issue() for _ in range(3)]
    for _, session in issued:
        auth.revoke(session)
    assert auth.session(issued[2][0]) is None and auth.session(issued[1][0]) is None
    assert auth.session(issued[0][0]) is not None  # forgotten (a bounded list)


def test_failed_logins_are_throttled_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``attempts`` failures in 15 minutes an address waits; others do not; it passes."""
    clock = FakeClock()
    auth = make_auth(clock, attempts=3)
    assert auth.retry_after("10.0.0.1") is None
    for _ in range(3):
        auth.failed("10.0.0.1")
    wait = auth.retry_after("10.0.0.1")
    assert wait is not None and 899 <= wait <= 900
    assert auth.retry_after("10.0.0.2") is None
    clock.advance(600)
    assert auth.retry_after("10.0.0.1") == pytest.approx(300)
    clock.advance(301)
    assert auth.retry_after("10.0.0.1") is None
    monkeypatch.setattr(auth_module, "MAX_ADDRESSES", 2)
    for address in ("a", "b", "c"):
        auth.failed(address)
    assert set(auth._failures) == {"b", "c"}


@pytest.mark.parametrize("secure", [False, True])
def test_cookie_flags(secure: bool) -> None:
    """HttpOnly, SameSite=Strict, Path=/dashboard, and Secure behind https."""
    auth = make_auth(FakeClock(), secure=secure)
    response = Response()
    auth.set_cookie(response, "value")
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/dashboard" in header
    assert ("Secure" in header) is secure
    cleared = Response()
    auth.clear_cookie(cleared)
    assert 'rt_dashboard=""' in cleared.headers["set-cookie"]


async def test_generated_password_is_logged_once_and_only_hashed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No password configured: one is generated at first start, logged that once, and only its
    hash is stored; the next start reuses it silently."""
    config = make_config(tmp_path)
    caplog.set_level(logging.WARNING, "rtserver.dashboard.auth")
    store = await Store.open(config.store.path)
    try:
        first = await resolve_auth(config, store, 0.0, FakeClock())
        (record,) = [r for r in caplog.records if "dashboard password" in r.getMessage()]
        password = str(record.args[0])  # type: ignore[index]
        assert verify_password(password, first.password_hash)
        assert password not in first.password_hash
        caplog.clear()
        second = await resolve_auth(config, store, 1.0, FakeClock())
        assert "dashboard password" not in caplog.text
        assert second.password_hash == first.password_hash
        value, session = first.issue()
        assert second.session(value) == session  # the session key is kept too
    finally:
        await store.close()


async def test_configured_password_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A configured password is hashed at start; nothing is generated or logged; https
    public URLs make the cookie Secure."""
    config = make_config(
        tmp_path,
        dashboard={"password": "configured password"},
        server={"public_url": "https://shop.example"},
    )
    store = await Store.open(config.store.path)
    try:
        auth = await resolve_auth(config, store, 0.0, FakeClock())
    finally:
        await store.close()
    assert verify_password("configured password", auth.password_hash)
    assert auth.secure and "dashboard password" not in caplog.text


async def test_sessions_survive_a_restart_with_the_same_configured_password(
    tmp_path: Path,
) -> None:
    """The configured password's hash is kept while it matches, so a restart keeps everyone
    logged in; another configured password ends the old sessions."""
    config = make_config(tmp_path, dashboard={"password": "configured password"})
    changed = make_config(tmp_path, dashboard={"password": "another password!"})
    store = await Store.open(config.store.path)
    try:
        first = await resolve_auth(config, store, 0.0, FakeClock())
        value, session = first.issue()
        again = await resolve_auth(config, store, 1.0, FakeClock())
        assert again.password_hash == first.password_hash and again.session(value) == session
        other = await resolve_auth(changed, store, 2.0, FakeClock())
        assert verify_password("another password!", other.password_hash)
        assert other.session(value) is None
    finally:
        await store.close()


def test_password_from_the_environment_must_not_be_short(tmp_path: Path) -> None:
    """RTSERVER_DASHBOARD_PASSWORD is read as a secret; a short one is refused."""
    from rtserver.config.schema import load_config
    from rtserver.errors import ConfigError

    config = load_config(None, env={"RTSERVER_DASHBOARD_PASSWORD": "a long enough one"})
    assert config.dashboard.password is not None
    assert "long" not in repr(config.dashboard)
    with pytest.raises(ConfigError, match="dashboard.password: password too short"):
        load_config(None, env={"RTSERVER_DASHBOARD_PASSWORD": "short"})


async def test_middleware_without_auth_state_refuses() -> None:
    """An app whose lifespan has not set up the auth refuses every guarded path; other paths
    and the open ones pass."""

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/dashboard", ok), Route("/dashboard/login", ok), Route("/other", ok)],
        middleware=[Middleware(RequireLogin)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/dashboard")).status_code == 401
        page = await client.get("/dashboard", headers={"accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login?next=/dashboard"
        assert (await client.get("/dashboard/login")).status_code == 200
        assert (await client.get("/other")).status_code == 200
        assert (await client.get("/dashboardx")).status_code == 404


async def test_an_attempt_is_counted_before_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """admit() counts the attempt before the password is checked, lets one check per address
    run at a time and at most MAX_CHECKS in all; a right password is forgiven its count."""
    auth = make_auth(FakeClock(), attempts=3)
    assert auth.admit("10.0.0.1") is None
    refused = auth.admit("10.0.0.1")  # its first check is still in flight
    assert refused is not None and "being checked" in refused[1]
    assert await auth.check("10.0.0.1", "wrong") is False
    assert auth.admit("10.0.0.1") is None and await auth.check("10.0.0.1", "nope") is False
    assert auth.admit("10.0.0.1") is None
    assert await auth.check("10.0.0.1", "correct horse battery") is True  # forgiven
    assert auth.admit("10.0.0.1") is None and await auth.check("10.0.0.1", "no") is False
    refused = auth.admit("10.0.0.1")  # three failures now: throttled
    assert refused is not None and "Too many failed logins" in refused[1]
    monkeypatch.setattr(auth_module, "MAX_CHECKS", 2)
    assert auth.admit("a") is None and auth.admit("b") is None
    busy = auth.admit("c")
    assert busy is not None and "busy" in busy[1]
