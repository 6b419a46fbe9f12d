"""analytics.js (``@segment/analytics-next``) routes of the Segment API, with httpx against a real
uvicorn server: the one-letter paths ``/v1/t``, ``/v1/p``, ``/v1/i``, ``/v1/a``, ``/v1/g``,
``/v1/s``, the batch path ``/v1/b``, and the settings document ``/v1/projects/<key>/settings``.

The bodies are shaped as analytics-next 1.84 sends them: the key in the body (and as the Basic
user), ``text/plain``, ``sentAt``, ``integrations``; the assertions read the store. Chromium
running the library itself is in ``test_segment_sdk_browser.py``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from rtserver.ingest.segment import SDK_PATHS, settings_document
from rtserver.model.events import sign_identity
from tests.support.events import event
from tests.support.server import (
    IDENTITY_SECRET,
    ORIGIN,
    TIMEOUT_UNIT,
    WRITE_KEY,
    LiveServer,
    make_config,
    run_server,
)

PUBLIC_KEY = "pk_dev"
FOREIGN_ORIGIN = "http://evil.test"
LIBRARY = {"name": "analytics.js", "version": "npm:next-1.84.3"}
SINGLE = {path: kind for path, kind in SDK_PATHS.items() if kind is not None}


def sdk_message(kind: str, key: str = PUBLIC_KEY, **fields: Any) -> dict[str, Any]:
    """One message as analytics-next posts it to a one-letter path."""
    raw = event(kind, **fields)
    raw.setdefault("context", {})["library"] = LIBRARY
    if kind == "group":
        raw.setdefault("groupId", "g-1")
    return {**raw, "integrations": {}, "writeKey": key, "sentAt": "2026-11-25T10:00:01.000Z"}


def sdk_headers(key: str = PUBLIC_KEY, origin: str | None = ORIGIN) -> dict[str, str]:
    """analytics-next's headers: text/plain and the key as the Basic user; the page's Origin."""
    headers = {
        "Content-Type": "text/plain",
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def sdk_post(
    live: LiveServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with live.http() as http:
        return await http.post(
            f"/v1/{path}",
            content=orjson.dumps(body),
            headers=sdk_headers() if headers is None else headers,
        )


async def sources(live: LiveServer) -> dict[str, tuple[str, str]]:
    """messageId -> (source, person_id) of every stored event."""
    rows = await live.runtime.store._ro.execute_fetchall(
        "SELECT message_id, source, person_id FROM events"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


# The one-letter paths


@pytest.mark.parametrize("path", ["t", "p", "i", "g", "s"])
async def test_each_path_stores_a_browser_event_once(live: LiveServer, path: str) -> None:
    """The public key in a text/plain body from an allowed Origin: 200 after the commit, CORS
    headers, stored once as a browser event of the path's type, without the key; a resend is
    acked and not stored again."""
    raw = sdk_message(SINGLE[path])
    for _ in range(2):
        response = await sdk_post(live, path, raw)
        assert response.status_code == 200 and response.json() == {"success": True}
        assert response.headers["access-control-allow-origin"] == ORIGIN
    assert await sources(live) == {raw["messageId"]: ("browser", "a:anon-1")}
    [stored] = await live.runtime.store.events_of("a:anon-1")
    assert stored["type"] == SINGLE[path]
    assert "writeKey" not in stored
    assert stored["context"]["library"] == LIBRARY


async def test_the_key_in_the_body_alone_is_enough(live: LiveServer) -> None:
    """Without the Authorization header (older analytics.js) the body's writeKey decides."""
    raw = sdk_message("track")
    headers = {"Content-Type": "text/plain", "Origin": ORIGIN}
    assert (await sdk_post(live, "t", raw, headers)).status_code == 200
    assert await sources(live) == {raw["messageId"]: ("browser", "a:anon-1")}


async def test_a_type_sent_to_another_path_is_400(live: LiveServer) -> None:
    """/v1/t takes tracks only: a page there is refused and nothing is stored."""
    response = await sdk_post(live, "t", sdk_message("page"))
    assert response.status_code == 400
    assert response.json()["error"] == "type 'page' sent to the track endpoint"
    assert await live.runtime.store.count_events() == 0


async def test_public_key_from_a_foreign_or_missing_origin_is_403(live: LiveServer) -> None:
    for origin in (FOREIGN_ORIGIN, None):
        response = await sdk_post(live, "t", sdk_message("track"), sdk_headers(origin=origin))
        assert response.status_code == 403
        assert response.json()["error"] == "origin not allowed for the public key"
        assert "access-control-allow-origin" not in response.headers
    assert await live.runtime.store.count_events() == 0


async def test_unknown_key_is_401(live: LiveServer) -> None:
    response = await sdk_post(
        live, "t", sdk_message("track", key="pk_nope"), sdk_headers(key="pk_nope")
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid write key"
    assert await live.runtime.store.count_events() == 0


async def test_write_key_is_a_trusted_server_call(live: LiveServer) -> None:
    """The write key (a server-side Segment library, or a backend using these paths) is
    trusted as on /v1/identify: its userId is the person, with no userHash and no Origin."""
    raw = sdk_message("identify", key=WRITE_KEY, userId="u-7", traits={"email": "a@b.example"})
    response = await sdk_post(live, "i", raw, sdk_headers(key=WRITE_KEY, origin=None))
    assert response.status_code == 200
    assert await sources(live) == {raw["messageId"]: ("server", "u:u-7")}
    profile = await live.runtime.store.profile("u:u-7")
    assert profile is not None and profile["email"] == "a@b.example"


async def test_identify_without_user_hash_stays_anonymous(live: LiveServer) -> None:
    """analytics.identify('victim', {email}) from a page, without the shop's userHash: stored
    for the browser's anonymous person; the user is neither linked nor described."""
    raw = sdk_message("identify", userId="victim", traits={"email": "victim@example.com"})
    assert (await sdk_post(live, "i", raw)).status_code == 200
    store = live.runtime.store
    assert await sources(live) == {raw["messageId"]: ("browser", "a:anon-1")}
    assert await store.person_of("anon-1") is None
    assert await store.profile("u:victim") is None


async def test_identify_with_user_hash_stitches(live: LiveServer) -> None:
    """analytics.identify(id, traits, {userHash}) puts userHash in the context: the browser's
    history moves to the user."""
    viewed = sdk_message("page", name="Home")
    assert (await sdk_post(live, "p", viewed)).status_code == 200
    context = {"userHash": sign_identity(IDENTITY_SECRET, "shopper"), "library": LIBRARY}
    raw = sdk_message("identify", userId="shopper", context=context)
    assert (await sdk_post(live, "i", raw)).status_code == 200
    store = live.runtime.store
    assert await store.person_of("anon-1") == "u:shopper"
    history = [e["messageId"] for e in await store.events_of("u:shopper")]
    assert history == [raw["messageId"], viewed["messageId"]]


async def test_alias_from_a_page_needs_the_user_hash(live: LiveServer) -> None:
    """/v1/a: a browser may alias only its own anonymousId, to a user it proves."""
    unproved = sdk_message("alias", userId="u-9", previousId="anon-1")
    response = await sdk_post(live, "a", unproved)
    assert response.status_code == 400
    assert response.json()["error"] == "alias from a browser needs a valid context.userHash"
    context = {"userHash": sign_identity(IDENTITY_SECRET, "u-9")}
    proved = sdk_message("alias", userId="u-9", previousId="anon-1", context=context)
    assert (await sdk_post(live, "a", proved)).status_code == 200
    assert await live.runtime.store.person_of("anon-1") == "u:u-9"


# The batch path


def sdk_batch(*events: dict[str, Any], key: str = PUBLIC_KEY) -> dict[str, Any]:
    """analytics-next's batching body: each event keeps its writeKey, loses its sentAt."""
    batch = [{k: v for k, v in e.items() if k != "sentAt"} for e in events]
    return {"writeKey": key, "batch": batch, "sentAt": "2026-11-25T10:00:05.000Z"}


async def test_batch_path_stores_every_event_once_as_browser_events(live: LiveServer) -> None:
    page, track = sdk_message("page", name="Home"), sdk_message("track")
    body = sdk_batch(page, track)
    for _ in range(2):
        response = await sdk_post(live, "b", body)
        assert response.status_code == 200 and response.json() == {"success": True}
        assert response.headers["access-control-allow-origin"] == ORIGIN
    assert await sources(live) == {
        page["messageId"]: ("browser", "a:anon-1"),
        track["messageId"]: ("browser", "a:anon-1"),
    }
    assert not any("writeKey" in e for e in await live.runtime.store.events_of("a:anon-1"))


async def test_batch_path_lists_the_events_it_refused(live: LiveServer) -> None:
    good, bad = sdk_message("track"), sdk_message("track")
    del bad["event"]
    response = await sdk_post(live, "b", sdk_batch(good, bad))
    assert response.status_code == 200
    assert response.json()["rejected"] == [
        {"messageId": bad["messageId"], "error": "track needs an event name"}
    ]
    assert list(await sources(live)) == [good["messageId"]]


async def test_batch_path_with_the_write_key_is_trusted(live: LiveServer) -> None:
    raw = sdk_message("track", key=WRITE_KEY, userId="u-7")
    body = sdk_batch(raw, key=WRITE_KEY)
    response = await sdk_post(live, "b", body, sdk_headers(key=WRITE_KEY, origin=None))
    assert response.status_code == 200
    assert await sources(live) == {raw["messageId"]: ("server", "u:u-7")}


async def test_batch_path_needs_a_batch_list(live: LiveServer) -> None:
    response = await sdk_post(live, "b", {"writeKey": PUBLIC_KEY, "batch": {}})
    assert response.status_code == 400
    assert response.json()["error"] == 'expected {"batch": [...]}'


async def test_the_paths_spend_the_address_budget(tmp_path: Path) -> None:
    """A page's events spend its address's budget like the snippet's: over it, 429 with a
    Retry-After that the page may read (exposed to CORS)."""
    ingest = {"budget_exempt": [], "address_events_per_s": 1.0, "address_events_burst": 3}
    async with run_server(make_config(tmp_path, ingest=ingest)) as live:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(
            base_url=live.http_url, transport=transport, timeout=TIMEOUT_UNIT
        ) as http:

            async def send(path: str, body: dict[str, Any]) -> httpx.Response:
                return await http.post(
                    f"/v1/{path}", content=orjson.dumps(body), headers=sdk_headers()
                )

            batch = sdk_batch(sdk_message("track"), sdk_message("track"))
            assert (await send("b", batch)).status_code == 200
            assert (await send("t", sdk_message("track"))).status_code == 200
            refused = await send("p", sdk_message("page"))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
        assert await live.runtime.store.count_events() == 3


# CORS


async def test_preflight_allows_the_headers_analytics_js_sends(live: LiveServer) -> None:
    """analytics-next sends Authorization (and X-Retry-Count on a retry), so the browser asks
    first; an allowed Origin may, a foreign one gets no CORS answer."""
    async with live.http() as http:
        allowed, foreign = [
            await http.options(
                "/v1/t",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
                },
            )
            for origin in (ORIGIN, FOREIGN_ORIGIN)
        ]
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "x-retry-count"} <= set(allowed_headers.split(", "))
    assert "access-control-allow-origin" not in foreign.headers


# The settings document


def test_settings_document_points_the_library_at_public_url() -> None:
    """apiHost is host[:port][/path]/v1 without the scheme (the library puts protocol:// in
    front); nothing else is loaded, and the library's own metrics are off."""
    document = settings_document("pk_live_1", "https://rt.shop.example")
    segment = document["integrations"]["Segment.io"]
    assert segment["apiKey"] == "pk_live_1"
    assert (segment["apiHost"], segment["protocol"]) == ("rt.shop.example/v1", "https")
    assert list(document["integrations"]) == ["Segment.io"]
    assert document["metrics"]["sampleRate"] == 0
    assert document["remotePlugins"] == [] and document["enabledMiddleware"] == {}
    assert document["middlewareSettings"] == {} and document["edgeFunction"] == {}
    assert document["analyticsNextEnabled"] is True
    assert document["legacyVideoPluginsEnabled"] is False
    assert document["plan"]["track"]["__default"]["enabled"] is True
    behind = settings_document("pk_live_1", "http://shop.example:8080/rt/")
    api_host = behind["integrations"]["Segment.io"]["apiHost"]
    assert (api_host, behind["integrations"]["Segment.io"]["protocol"]) == (
        "shop.example:8080/rt/v1",
        "http",
    )


async def test_settings_are_served_for_the_public_key(tmp_path: Path) -> None:
    config = make_config(tmp_path, server={"public_url": "https://rt.shop.example"})
    async with run_server(config) as live, live.http() as http:
        response = await http.get(f"/v1/projects/{PUBLIC_KEY}/settings", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["cache-control"] == "max-age=300"
    assert response.json() == settings_document(PUBLIC_KEY, "https://rt.shop.example")


@pytest.mark.parametrize("key", [WRITE_KEY, "pk_other"])
async def test_settings_for_any_other_key_are_404(live: LiveServer, key: str) -> None:
    async with live.http() as http:
        response = await http.get(f"/v1/projects/{key}/settings")
    assert response.status_code == 404
    assert key not in response.text
