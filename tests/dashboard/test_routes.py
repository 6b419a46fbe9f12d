"""The dashboard's routes against a real server: login, logout and CSRF, every route guarded,
output escaped, the SSE stream (snapshot, batched updates, Last-Event-ID resume, viewer limit,
shutdown), the person view and the dev sink's mails."""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.routing import Mount, Route

from rtserver.dashboard.hub import HubClosed, Subscription
from rtserver.dashboard.routes import CSP, _clock_time, _next_path, _stamp, duration
from rtserver.model.events import person_event
from tests.support.dashboard import (  # noqa: F401 (sse_exit_flag_reset is autouse)
    PASSWORD,
    XSS,
    dashboard_config,
    login,
    sse_exit_flag_reset,
    stream,
)
from tests.support.events import event, shopper, tracked
from tests.support.server import (
    ORIGIN,
    TIMEOUT_UNIT,
    FakeClock,
    advance,
    run_server,
    send_batch,
    sent,
)


async def test_every_dashboard_route_needs_a_login(tmp_path: Path) -> None:
    """Each route under /dashboard (taken from the app's router, so a new one cannot slip
    through) answers 401 without a session, or 303 to the login for a browser's page."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        app = live.server.config.app
        guarded = [
            r
            for r in app.routes
            if r.path.startswith("/dashboard")  # type: ignore[attr-defined]
        ]
        assert {r.path for r in guarded} >= {"/dashboard", "/dashboard/stream"}  # type: ignore[attr-defined]
        for route in guarded:
            if isinstance(route, Mount) or route.path == "/dashboard/login":
                continue  # static files (public code) and the login page itself
            assert isinstance(route, Route)
            path = route.path.replace("{person_id:path}", "u:1").replace("{sunk_id:int}", "1")
            for method in sorted(route.methods or ()):
                response = await client.request(method, path)
                assert response.status_code == 401, (method, path, response.status_code)
        page = await client.get("/dashboard/person/u:1?x=1", headers={"accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login?next=/dashboard/person/u%3A1%3Fx%3D1"
        events = await client.get("/dashboard/stream", headers={"accept": "text/html"})
        assert events.status_code == 401  # a stream is never redirected
        assert (await client.get("/dashboard/static/dashboard.js")).status_code == 200


async def test_login_sets_a_strict_cookie_and_serves_the_page(tmp_path: Path) -> None:
    """A wrong password is refused; the right one sets an HttpOnly, SameSite=Strict cookie
    and the page comes with a strict CSP."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        form = await client.get("/dashboard/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        wrong = await client.post("/dashboard/login", data={"password": "nope"})
        assert wrong.status_code == 401 and "Wrong password" in wrong.text
        right = await client.post("/dashboard/login", data={"password": PASSWORD})
        assert right.status_code == 303 and right.headers["location"] == "/dashboard"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Path=/dashboard" in cookie and "Secure" not in cookie
        page = await client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
        assert page.headers["cache-control"] == "no-store"
        assert 'id="chart"' in page.text and "uPlot.iife.min.js" in page.text


async def test_login_is_throttled_per_address(tmp_path: Path) -> None:
    """After ``login_attempts`` failures even the right password waits (429, Retry-After)."""
    config = dashboard_config(tmp_path, dashboard={"login_attempts": 2})
    async with run_server(config) as live, live.http() as client:
        for _ in range(2):
            response = await client.post("/dashboard/login", data={"password": "guess"})
            assert response.status_code == 401
        throttled = await client.post("/dashboard/login", data={"password": PASSWORD})
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 800
        assert "Too many failed logins" in throttled.text


async def test_parallel_guesses_get_no_more_checks_than_the_throttle_allows(
    tmp_path: Path,
) -> None:
    """50 wrong passwords sent at once from one address: the attempt is counted before the
    password is checked, with at most one check in flight per address, so at most
    ``login_attempts`` are checked (401) and the rest are refused at once (429)."""
    config = dashboard_config(tmp_path, dashboard={"login_attempts": 5})
    async with run_server(config) as live, live.http() as client:
        guesses = [
            client.post("/dashboard/login", data={"password": f"guess-{i}"}) for i in range(50)
        ]
        codes = sorted(response.status_code for response in await asyncio.gather(*guesses))
    assert codes.count(401) <= 5 and codes.count(429) >= 45, codes
    assert set(codes) <= {401, 429}


async def test_cross_site_posts_are_refused(tmp_path: Path) -> None:
    """A login or logout POSTed from another origin is refused (login CSRF)."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        evil = {"Origin": "http://evil.test"}
        response = await client.post("/dashboard/login", data={"password": PASSWORD}, headers=evil)
        assert response.status_code == 403
        csrf = await login(client)
        response = await client.post("/dashboard/logout", data={"csrf": csrf}, headers=evil)
        assert response.status_code == 403
        own = {"Origin": live.http_url}
        response = await client.post("/dashboard/logout", data={"csrf": csrf}, headers=own)
        assert response.status_code == 303


async def test_logout_needs_the_csrf_token_and_ends_the_session(tmp_path: Path) -> None:
    """Logout without (or with a wrong) token is refused; with it the cookie is cleared and
    the old session no longer works."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        csrf = await login(client)
        old_cookie = client.cookies.get("rt_dashboard")
        assert (await client.post("/dashboard/logout")).status_code == 403
        assert (await client.post("/dashboard/logout", data={"csrf": "x" * 32})).status_code == 403
        too_big = await client.post("/dashboard/logout", data={"csrf": csrf, "pad": "x" * 5000})
        assert too_big.status_code == 403
        done = await client.post("/dashboard/logout", data={"csrf": csrf})
        assert done.status_code == 303 and done.headers["location"] == "/dashboard/login"
        assert 'rt_dashboard=""' in done.headers["set-cookie"]
        client.cookies.set("rt_dashboard", str(old_cookie), path="/dashboard")
        assert (await client.get("/dashboard")).status_code == 401


async def test_a_logged_out_session_stays_ended_after_a_restart(tmp_path: Path) -> None:
    """The logout is kept in the store: the old cookie does not work on the next server
    either, while a session that did not log out does."""
    config = dashboard_config(tmp_path)
    async with run_server(config) as live, live.http() as client, live.http() as other:
        csrf = await login(client)
        await login(other)
        ended = client.cookies.get("rt_dashboard")
        await client.post("/dashboard/logout", data={"csrf": csrf})
        kept = other.cookies.get("rt_dashboard")
    async with run_server(config) as live, live.http() as client, live.http() as other:
        client.cookies.set("rt_dashboard", str(ended), path="/dashboard")
        assert (await client.get("/dashboard/stream")).status_code == 401
        other.cookies.set("rt_dashboard", str(kept), path="/dashboard")
        assert (await other.get("/dashboard")).status_code == 200


async def test_login_goes_back_to_a_dashboard_page_only(tmp_path: Path) -> None:
    """``next`` leads back to a dashboard path; anything else goes to /dashboard."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        target = "/dashboard/person/u%3A1"
        form = await client.get("/dashboard/login", params={"next": target})
        assert f'value="{target}"' in form.text
        response = await client.post(
            "/dashboard/login", data={"password": PASSWORD, "next": target}
        )
        assert response.headers["location"] == target
    for bad in ("https://evil.test", "//evil.test", "/dashboard//evil", "/dashboard\\x", None,
                "/dashboard/login?next=x"):  # fmt: skip
        assert _next_path(bad) == "/dashboard"


async def test_event_data_renders_as_text(tmp_path: Path) -> None:
    """A property and an event name carrying HTML are shown escaped in the page, and the
    embedded snapshot cannot close its script element."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        name = '<img src=x onerror="alert(2)">'
        async with live.ws() as ws:
            await send_batch(ws, [event(event=name, properties={"note": XSS})])
        await login(client)
        page = (await client.get("/dashboard")).text
    assert XSS not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=" in page
    snapshot = page[page.index('id="snapshot">') :]
    assert snapshot.index("</script>") > snapshot.index("\\u003cscript\\u003e")


async def test_stream_starts_with_a_snapshot_and_batches_updates(tmp_path: Path) -> None:
    """The first frame is a snapshot; 40 events in 40 batches reach the viewer in far fewer
    updates, with every event counted and the newest listed, escaped in the payload."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        await login(client)
        async with stream(client) as sse:
            first = await sse.next()
            assert first is not None and first.event == "snapshot"
            assert first.id.startswith(live.runtime.hub.epoch)  # type: ignore[union-attr]
            async with live.ws() as ws:
                for i in range(40):
                    await send_batch(ws, [event(properties={"i": i, "note": XSS})])
            updates = []
            while not updates or updates[-1].data["counters"]["stored"] < 40:
                frame = await sse.next()
                assert frame is not None and frame.event == "update"
                updates.append(frame)
    listed = [e for u in updates for e in u.data["events"]]
    assert len(listed) == 40 and len(updates) < 40
    assert all(
        XSS not in u.raw and "\\u003cscript\\u003e" in u.raw for u in updates if u.data["events"]
    )
    assert [int(u.id.split("-")[1]) for u in updates] == sorted(
        int(u.id.split("-")[1]) for u in updates
    )


async def test_stream_resumes_from_last_event_id(tmp_path: Path) -> None:
    """A viewer reconnecting with Last-Event-ID gets what it missed as updates, not a
    snapshot; a first connection resumes from the page's ``since``."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        await login(client)
        async with stream(client) as sse:
            snapshot = await sse.next()
            assert snapshot is not None
        async with live.ws() as ws:
            await send_batch(ws, [event(event="While Away")])
        async with stream(client, last_id=snapshot.id) as sse:
            frame = await sse.until(lambda f: f.data["events"])
            assert frame.event == "update"
            assert [e["name"] for e in frame.data["events"]] == ["While Away"]
        async with stream(client, since=frame.id) as sse:
            nxt = await sse.next()
            assert nxt is not None and nxt.event == "update" and not nxt.data["events"]
        async with stream(client, last_id="garbage") as sse:
            again = await sse.next()
            assert again is not None and again.event == "snapshot"
            assert [e["name"] for e in again.data["events"]][:1] == ["While Away"]


async def test_viewer_limit_and_shutdown_end_streams(tmp_path: Path) -> None:
    """Past ``max_viewers`` a stream is refused with 503; at shutdown open streams end and the
    server stops (uvicorn would otherwise wait for them)."""
    config = dashboard_config(tmp_path, dashboard={"max_viewers": 1})
    async with run_server(config) as live, live.http() as client:
        await login(client)
        async with stream(client) as sse:
            assert await sse.next() is not None
            refused = await client.get("/dashboard/stream")
            assert refused.status_code == 503
            stopping = asyncio.create_task(live.stop())
            while await sse.next() is not None:
                pass  # the stream ends
            await asyncio.wait_for(stopping, 4 * TIMEOUT_UNIT)


async def test_person_view_shows_one_timeline(tmp_path: Path) -> None:
    """A person's page lists their events, runs and mails, newest first, escaped; an unknown
    person is a 404."""
    clock = FakeClock()
    config = dashboard_config(tmp_path)
    async with run_server(config, clock=clock) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "ann@example.com")])
            await send_batch(ws, [tracked("u1", "Product Added", cart_id="c-9", note=XSS)])
        await advance(live, clock, 1800)
        await sent(live)
        await login(client)
        page = await client.get("/dashboard/person/" + urllib.parse.quote("u:u1"))
        assert page.status_code == 200
        text = page.text
        assert XSS not in text and "&lt;script&gt;" in text
        for part in ("Product Added", "cart started", "key c-9", "mail cart_reminder sent",
                     "ann@example.com"):  # fmt: skip
            assert part in text, part
        assert text.index("mail cart_reminder sent") < text.index("Product Added")
        missing = await client.get("/dashboard/person/u:nobody")
        assert missing.status_code == 404 and "Unknown person" in missing.text


async def test_a_person_is_erased_from_their_page(tmp_path: Path) -> None:
    """Erasure as an admin action: the person page's Erase form (CSRF token, same origin, the
    box ticked) erases the address's persons and keeps a salted-hash suppression; without
    the token, from another origin or unticked it changes nothing."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "ann@example.com")])
            await send_batch(ws, [tracked("u1", "Product Added", cart_id="c-1")])
        csrf = await login(client)
        path = "/dashboard/person/" + urllib.parse.quote("u:u1")
        page = await client.get(path)
        assert f'action="{path}/forget"' in page.text and 'name="confirm"' in page.text
        store = live.runtime.store
        for form, headers, status in [
            ({"csrf": "wrong", "confirm": "yes"}, {}, 403),
            ({"csrf": csrf, "confirm": "yes"}, {"origin": "http://evil.test"}, 403),
            ({"csrf": csrf}, {}, 400),
        ]:
            refused = await client.post(path + "/forget", data=form, headers=headers)
            assert refused.status_code == status
            assert await store.profile("u:u1") is not None
        done = await client.post(path + "/forget", data={"csrf": csrf, "confirm": "yes"})
        assert done.status_code == 303 and done.headers["location"] == (
            "/dashboard/person/u%3Au1?erased=1"
        )
        assert await store.profile("u:u1") is None and await store.events_of("u:u1") == []
        assert await store.mail.suppressed("ann@example.com") == "erased"
        after = await client.get(done.headers["location"])
        assert after.status_code == 200 and "1 person(s) with this address erased" in after.text
        again = await client.post(path + "/forget", data={"csrf": csrf, "confirm": "yes"})
        assert again.status_code == 409  # no profile, no address left to erase by


async def test_sink_mail_is_served_for_a_sandboxed_frame(tmp_path: Path) -> None:
    """The dev sink's mail is served with a CSP sandbox (no scripts, no same origin; links
    open in a new tab), listed on the page with a link into the sandboxed iframe; an unknown
    id is a 404."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u2", "bo@example.com")])
            await send_batch(ws, [tracked("u2", "Signed Up")])
        await sent(live)
        (mail,) = await live.runtime.store.mail.sunk()
        await login(client)
        page = (await client.get("/dashboard/messages")).text
        assert f'href="/dashboard/mail/{mail["id"]}" target="mailview"' in page
        sandbox = 'sandbox="allow-popups allow-popups-to-escape-sandbox"'
        assert f'<iframe class="mail" name="mailview" title="mail preview" {sandbox}>' in page
        shown = await client.get(f"/dashboard/mail/{mail['id']}")
        assert shown.status_code == 200 and "<html" in shown.text.lower()
        csp = shown.headers["content-security-policy"]
        assert csp.startswith("sandbox allow-popups allow-popups-to-escape-sandbox;")
        assert "script-src" not in csp and "allow-scripts" not in csp
        assert '<base target="_blank">' in shown.text
        assert shown.headers["x-frame-options"] == "SAMEORIGIN"
        assert (await client.get("/dashboard/mail/999")).status_code == 404


async def test_text_only_sink_mail_is_escaped(tmp_path: Path) -> None:
    """A sink mail without an HTML part is shown as escaped text."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        body = b"Subject: hi\r\nContent-Type: text/plain\r\n\r\n<b>bold</b> & more\r\n"
        sunk = await live.runtime.store.mail.save_sunk(None, "a@x", ["b@x"], "hi", body, 0.0)
        await login(client)
        shown = await client.get(f"/dashboard/mail/{sunk}")
    assert "<pre>&lt;b&gt;bold&lt;/b&gt; &amp; more" in shown.text


@pytest.mark.parametrize("path", ["dashboard.js", "stream.js", "dashboard.css",
                                  "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css",
                                  "vendor/uPlot.LICENSE"])  # fmt: skip
async def test_static_files_are_served(tmp_path: Path, path: str) -> None:
    """The dashboard's script and style and the vendored uPlot (with its license)."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        response = await client.get(f"/dashboard/static/{path}")
    assert response.status_code == 200 and response.content


def test_page_scripts_never_write_html() -> None:
    """The page scripts set text only (no innerHTML), and the stream they share sends a viewer
    whose stream gets a 401 (never a redirect) to the login."""
    static = Path(__file__).resolve().parents[2] / "rtserver/static"
    for name in ("dashboard.js", "send_time.js", "stream.js"):
        assert "innerHTML" not in (static / name).read_text(), name
    assert "r.status === 401" in (static / "stream.js").read_text()


async def test_stream_that_loses_the_race_for_a_place_ends(tmp_path: Path) -> None:
    """A viewer admitted by the check but refused by the hub (it filled up or closed in
    between) gets a stream that ends at once, without data."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        await login(client)
        hub = live.runtime.hub
        assert hub is not None

        @contextlib.asynccontextmanager
        async def refuse(last_id: str | None = None) -> AsyncIterator[Subscription]:
            raise HubClosed("the server is shutting down")
            yield  # pragma: no cover

        hub.subscribe = refuse  # type: ignore[method-assign]
        async with stream(client) as sse:
            assert await sse.next() is None


def test_times_are_shown_in_utc() -> None:
    """The page's time format (the script uses the same), empty for no time."""
    assert _clock_time(1_800_000_000.0) == "01-15 08:00:00"
    assert _clock_time(None) == ""


async def test_disabled_webhook_endpoints_are_shown(tmp_path: Path) -> None:
    """An endpoint a 410 disabled is listed under the webhooks, escaped, with how to enable
    it again."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        await live.runtime.store._db.execute(
            "INSERT INTO disabled_endpoints VALUES (?, ?, 0)",
            ("https://crm.example/<x>", "410 Gone"),
        )
        await login(client)
        page = (await client.get("/dashboard/system")).text
    assert "disabled: https://crm.example/&lt;x&gt; (410 Gone;" in page
    assert "rtserver webhooks --enable URL" in page


SEND_TIME_FLOWS = [
    {
        "name": "welcome",
        "trigger": "Signed Up",
        "step": [{"send": "welcome", "send_time": "optimal", "within": "24h"}],
    },
    {
        "name": "cart",
        "trigger": "Product Added",
        "reentry": "always",
        "step": [
            {
                "variant": [{"send": "cart_reminder"}, {"send": "cart_reminder_2"}],
                "selection": "bandit",
                "floor": 0.1,
            }
        ],
    },
]


async def test_send_time_page_and_person_heatmap(tmp_path: Path) -> None:
    """A shopper who visits at 19:00 UTC: their page shows the engagement heatmap and the
    welcome mail waiting for 19:00; the send-time page shows the shop's heatmap, the optimal
    send against control, and the bandit step's arms with their chance of being best and
    their daily shares."""
    clock = FakeClock(1_800_000_000.0 - 1_800_000_000.0 % 86400 + 19 * 3600)  # 19:00 UTC
    config = dashboard_config(
        tmp_path,
        workflow=SEND_TIME_FLOWS,
        send_time={"control": 0.0, "exploration": 0.0},
    )
    async with run_server(config, clock=clock) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "ann@example.com")])
            for _ in range(5):  # a visit at 19:00 on five days
                await send_batch(ws, [tracked("u1", "Product Viewed", product_id="p1")])
                clock.advance(86400)
            clock.advance(-8 * 3600)  # 11:00 UTC
            await send_batch(ws, [tracked("u1", "Signed Up")])
            await send_batch(ws, [tracked("u1", "Product Added", cart_id="c1")])
        await sent(live)  # the bandit's cart mail goes at once
        await login(client)
        page = await client.get("/dashboard/person/" + urllib.parse.quote("u:u1"))
        assert page.status_code == 200
        text = page.text
        assert 'id="person-heatmap"' in text and "Busiest hours: " in text
        assert text.count("<rect ") == 7 * 24 and "19:00" in text
        pending = text[text.index('id="pending-sends"') :]
        assert "welcome" in pending and "optimal: " in pending
        assert _clock_time(clock.now + 8 * 3600) in pending  # goes at 19:00
        assert "<script" not in text.split("</main>")[0]
        await advance(live, clock, 8 * 3600)
        await sent(live, 2)
        view = await client.get("/dashboard/send-time")
        assert view.status_code == 200 and view.headers["content-security-policy"] == CSP
        text = view.text
        assert 'id="shop-heatmap"' in text
        comparison = text[text.index('id="send-time-comparison"') :]
        optimal = comparison[comparison.index("<td>optimal</td>") :].split("</tr>")[0]
        assert "<td>1</td>" in optimal and "<td>0.0%</td>" in optimal
        bandit = text[text.index('id="bandit-cart-1"') :]
        assert "goal: clicked" in bandit and "chance of being best" in bandit
        assert bandit.count('class="chance"') == 2 and "Share of sends per day" in bandit
        assert '<svg class="shares"' in bandit
        home = await client.get("/dashboard/flows")
        assert 'href="/dashboard/send-time"' in home.text


async def test_send_time_page_without_data(tmp_path: Path) -> None:
    """No engagement, no timed sends, no bandit step: the page says so."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        await login(client)
        text = (await client.get("/dashboard/send-time")).text
        assert 'id="shop-heatmap-empty"' in text and 'selection = "bandit"' in text
        person = await client.get("/dashboard/person/u:nobody-yet")
        assert person.status_code == 404


async def test_stream_carries_the_send_time_panel(tmp_path: Path) -> None:
    """The snapshot holds the Send time page's panel; after an engagement, an update holds it
    again, with the shop's heatmap no longer empty."""
    config = dashboard_config(tmp_path, workflow=SEND_TIME_FLOWS)
    async with run_server(config) as live, live.http() as client:
        await login(client)
        async with stream(client) as sse:
            first = await sse.next()
            assert first is not None and first.event == "snapshot"
            panel = first.data["send_time"]
            assert panel["shop"]["empty"] and panel["days"] == 30
            assert [p["workflow"] for p in panel["bandits"]] == ["cart"]
            async with live.ws(origin=ORIGIN) as ws:
                await send_batch(ws, [tracked("u1", "Product Viewed", product_id="p1")])
            # An idle update may carry the panel before the event does; within
            # SEND_TIME_EVERY_S of it, the next one carries the engagement.
            frame = await sse.until(
                lambda f: "send_time" in f.data and not f.data["send_time"]["shop"]["empty"]
            )
    assert frame.event == "update"


async def test_a_sink_mail_preview_records_nothing_of_the_customers(tmp_path: Path) -> None:
    """The preview has no open pixel; its click links lead straight to where they point (the
    shop, no /c/), a click link to a host outside the shop and the unsubscribe links are
    inert; the mail as sent still has them all."""
    async with run_server(dashboard_config(tmp_path)) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u2", "bo@example.com")])
            await send_batch(ws, [tracked("u2", "Signed Up")])
        await sent(live)
        (mail,) = await live.runtime.store.mail.sunk()
        public = live.config.server.public_url
        raw = mail["body"].decode()
        for kind in ("o", "c", "u"):
            assert f"{public}/{kind}/" in raw
        await login(client)
        shown = (await client.get(f"/dashboard/mail/{mail['id']}")).text
        for kind in ("o", "c", "u"):
            assert f"{public}/{kind}/" not in shown, kind
        brand = live.config.mail.brand.url.rstrip("/")
        assert re.search(rf'href="{re.escape(brand)}/?\?utm_source=rtserver&amp;', shown)
        assert 'title="inert in a preview"' in shown
        body = (
            b"Subject: hi\r\nContent-Type: text/html\r\n\r\n"
            + f'<a href="{public}/c/{live.runtime.tokens.click("m-1", "https://evil.example/")}">'
            f'x</a><img src="{public}/o/abc" alt=""></html>\r\n'.encode()
        )
        sunk = await live.runtime.store.mail.save_sunk(None, "a@x", ["b@x"], "hi", body, 0.0)
        other = (await client.get(f"/dashboard/mail/{sunk}")).text
        assert "evil.example" not in other and "/o/abc" not in other
        assert '<a title="inert in a preview">x</a>' in other


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "–"),
        (0.4, "< 1 s"),
        (5.482815980911255, "5 s"),
        (725, "12 min 5 s"),
        (720, "12 min"),
        (4320, "1 h 12 min"),
        (4314.5, "1 h 11 min"),
        (3600, "1 h"),
        (183_600, "2 d 3 h"),
        (86_460, "1 d"),
    ],
)
def test_durations_read_as_people_write_them(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_times_are_stamped_with_their_year_and_zone() -> None:
    assert _stamp(1_796_600_000.0) == "2026-12-06 23:33:20 UTC" and _stamp(None) == ""


async def test_the_funnel_shows_money_durations_and_its_time(tmp_path: Path) -> None:
    """The funnel's revenue carries the brand's currency (attributed and verified apart, and
    why verified can be 0), its times to click read as durations, and it says as of when."""
    clock = FakeClock()
    config = dashboard_config(tmp_path, mail={"brand": {"currency": "EUR"}})
    async with run_server(config, clock=clock) as live, live.http() as client:
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [shopper("u1", "ann@example.com")])
            await send_batch(ws, [tracked("u1", "Product Added", cart_id="c1", price=20)])
        await advance(live, clock, 1800)
        (mail,) = await sent(live)
        clock.advance(125.48)
        clicked = person_event("u:u1", "t-click", "Email Clicked", {"run_id": mail["run_id"]})
        ordered = person_event("u:u1", "t-order", "Order Completed", {"revenue": 49.5})
        await (await live.runtime.pipeline.submit([clicked], clock()))
        clock.advance(60)
        await (await live.runtime.pipeline.submit([ordered], clock()))
        await login(client)
        page = (await client.get("/dashboard")).text
    row = re.search(r"<tr><td>cart</td>.*?</tr>", page)
    assert row is not None
    assert "<td>49.50 EUR</td><td>49.50 EUR</td>" in row.group(0)
    assert "<td>2 min 5 s</td><td>3 min 5 s</td></tr>" in row.group(0)
    assert 'data-currency="EUR"' in page and "Revenue is in EUR" in page
    assert "verified revenue stays 0 until the backend sends its orders" in page
    assert re.search(r'<time id="funnel-at">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>', page)


async def test_sign_up_confirm_then_the_welcome(tmp_path: Path) -> None:
    """A browser's sign-up claims an address: its welcome waits ("waiting for confirmation" on
    the page) while only the double opt-in mail goes; confirming (the page's POST) sends the
    welcome, decided then (so mail.max_age counts from then), greeting by the name the reader
    typed and by nothing the browser sent."""
    clock = FakeClock()
    async with run_server(dashboard_config(tmp_path), clock=clock) as live, live.http() as client:
        claim = event(
            "identify", userId=None, anonymousId="anon-7",
            traits={"email": "eve@example.com", "first_name": "Mallory"},
        )  # fmt: skip
        signed_up = event(event="Signed Up", anonymousId="anon-7", properties={})
        async with live.ws(origin=ORIGIN) as ws:
            await send_batch(ws, [claim, signed_up])
        (confirmation,) = await sent(live)
        assert confirmation["template"] == "confirm"
        await login(client)
        page = (await client.get("/dashboard/flows")).text
        assert "0 send (waiting for confirmation)" in page
        clock.advance(3 * 86400)
        token = live.runtime.tokens.confirm("a:anon-7", "eve@example.com")
        done = await client.post(f"/confirm/{token}", data={"first_name": "Eve"})
        assert done.status_code == 200
        await advance(live, clock, 0)
        rows = await sent(live, 2)
        (welcome,) = [r for r in rows if r["template"] == "welcome"]
        assert welcome["created_at"] == clock() and welcome["recipient"] == "eve@example.com"
        sink = await live.runtime.store.mail.sunk()
        (mail,) = [m for m in sink if m["subject"].startswith("Welcome")]
        assert mail["subject"].endswith(", Eve") and b"Mallory" not in mail["body"]
