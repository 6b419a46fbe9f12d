"""The Segment-compatible HTTP API and the beacon, against a real uvicorn server.

The official Segment library (``segment-analytics-python``) and httpx talk to a live server; the
assertions read the store. No mocks, no sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from segment.analytics import Client
from segment.analytics.request import APIError, parse_retry_after

from rtserver.model.events import sign_identity
from tests.support.events import event
from tests.support.server import (
    IDENTITY_SECRET,
    ORIGIN,
    TIMEOUT_UNIT,
    WRITE_KEY,
    LiveServer,
    leave_mid_body,
    make_config,
    run_server,
)

FOREIGN_ORIGIN = "http://evil.test"
PUBLIC_KEY = "pk_dev"


def basic(key: str) -> dict[str, str]:
    """The Authorization header Segment libraries send: the key as the Basic user."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def post(
    live: LiveServer,
    path: str,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``body`` as JSON (or raw ``content``) and return the response."""
    data = content if content is not None else orjson.dumps(body)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    async with live.http() as client:
        return await client.post(path, content=data, headers=all_headers, params=params)


async def post_batch(live: LiveServer, events: list[Any], **body: Any) -> httpx.Response:
    """POST ``{"batch": events}`` with the write key as the Basic user."""
    return await post(live, "/v1/batch", {"batch": events, **body}, headers=basic(WRITE_KEY))


def browser() -> dict[str, Any]:
    """Request options of a browser on the allowed origin using the public key."""
    return {"headers": {"Origin": ORIGIN}, "params": {"key": PUBLIC_KEY}}


async def sources(live: LiveServer) -> dict[str, tuple[str, str]]:
    """messageId -> (source, person_id) of every stored event."""
    rows = await live.runtime.store._ro.execute_fetchall(
        "SELECT message_id, source, person_id FROM events"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def started(live: LiveServer) -> None:
    """Wait for the lifespan (``live.runtime`` exists only once a request was served)."""
    async with live.http() as client:
        assert (await client.get("/healthz")).status_code == 200


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A live server whose request bodies are capped at 4 KiB."""
    async with run_server(make_config(tmp_path, ingest={"max_request_bytes": 4096})) as server:
        yield server


# The official Segment library


class Recorder:
    """The ``on_error`` callback of a Segment client: collects what the library reports."""

    def __init__(self) -> None:
        self.errors: list[tuple[Exception, list[dict[str, Any]]]] = []

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        self.errors.append((error, batch))


def segment_client(live: LiveServer, on_error: Recorder, **options: Any) -> Any:
    """A Segment client pointed at the live server."""
    return Client(
        write_key=options.pop("write_key", WRITE_KEY),
        host=live.http_url,
        on_error=on_error,
        timeout=TIMEOUT_UNIT,
        max_retries=0,
        **options,
    )


def every_call(client: Any) -> list[str]:
    """Send one message of every type through ``client``; return their messageIds in order."""
    calls: list[Callable[[], tuple[bool, dict[str, Any]]]] = [
        lambda: client.track(anonymous_id="anon-lib", event="Product Viewed"),
        lambda: client.page(anonymous_id="anon-lib", name="Home", properties={"path": "/"}),
        lambda: client.identify(
            user_id="user-lib", anonymous_id="anon-lib", traits={"email": "Lib@Example.com"}
        ),
        lambda: client.track(
            user_id="user-lib",
            event="Order Completed",
            properties={"order_id": "o-1", "total": 30.5, "products": [{"product_id": "p1"}]},
        ),
        lambda: client.screen(user_id="user-lib", name="Cart"),
        lambda: client.group(user_id="user-lib", group_id="g-1", traits={"name": "Acme"}),
        lambda: client.alias(previous_id="anon-old", user_id="user-lib"),
    ]
    ids = []
    for call in calls:
        ok, message = call()
        assert ok
        ids.append(message["messageId"])
    return ids


async def assert_stitched(live: LiveServer, ids: list[str]) -> None:
    """Every message is stored once and the identify stitched the anonymous history."""
    store = live.runtime.store
    assert await store.stored_message_ids() == ids
    assert await store.person_of("anon-lib") == "u:user-lib"
    history = await store.events_of("u:user-lib")
    assert [e["messageId"] for e in history] == ids[::-1]
    order = next(e for e in history if e.get("event") == "Order Completed")
    assert order["properties"]["total"] == 30.5
    profile = await store.profile("u:user-lib")
    assert profile is not None
    assert profile["email"] == "lib@example.com"


async def test_segment_library_sync_mode_stores_every_message_once(live: LiveServer) -> None:
    """The official library in sync mode: every call is stored once and the profile stitched."""
    errors = Recorder()
    client = segment_client(live, errors, sync_mode=True)
    ids = await asyncio.to_thread(every_call, client)
    await assert_stitched(live, ids)
    assert errors.errors == []


async def test_segment_library_thread_mode_with_gzip_flushes_without_error(
    live: LiveServer,
) -> None:
    """The official library's background consumer, gzip on: one flush stores every message."""
    errors = Recorder()
    client = segment_client(live, errors, gzip=True, upload_interval=0.05)
    try:
        ids = every_call(client)
        await asyncio.to_thread(client.flush)
    finally:
        await asyncio.to_thread(client.join)
    await assert_stitched(live, ids)
    assert errors.errors == []


async def test_segment_library_sync_mode_with_gzip(live: LiveServer) -> None:
    """The official library's gzip bodies are inflated and stored."""
    client = segment_client(live, Recorder(), sync_mode=True, gzip=True)
    ok, message = await asyncio.to_thread(
        client.track, user_id="u-gz", event="Checkout Started", properties={"total": 9}
    )
    assert ok
    assert await live.runtime.store.stored_message_ids() == [message["messageId"]]


async def test_segment_library_alias_moves_anonymous_history(live: LiveServer) -> None:
    """A server-side alias moves the previous anonymous id's events to the user."""
    client = segment_client(live, Recorder(), sync_mode=True)
    _, viewed = await asyncio.to_thread(client.track, anonymous_id="anon-a", event="Cart Viewed")
    _, alias = await asyncio.to_thread(client.alias, previous_id="anon-a", user_id="user-a")
    store = live.runtime.store
    assert await store.person_of("anon-a") == "u:user-a"
    history = [e["messageId"] for e in await store.events_of("u:user-a")]
    assert history == [alias["messageId"], viewed["messageId"]]


async def test_segment_library_retried_message_is_stored_once(live: LiveServer) -> None:
    """The same messageId sent twice by the library is stored once, and both calls succeed."""
    client = segment_client(live, Recorder(), sync_mode=True)
    for _ in range(2):
        ok, _ = await asyncio.to_thread(
            client.track, user_id="u-dup", event="Order Completed", message_id="order-o-9"
        )
        assert ok
    assert await live.runtime.store.stored_message_ids() == ["order-o-9"]


async def test_segment_library_reports_a_wrong_write_key(live: LiveServer) -> None:
    """A wrong write key reaches the library's on_error as a non-retried 401."""
    errors = Recorder()
    client = segment_client(live, errors, write_key="wk_wrong", upload_interval=0.05)
    try:
        client.track(user_id="u-1", event="Order Completed")
        await asyncio.to_thread(client.flush)
    finally:
        await asyncio.to_thread(client.join)
    [(error, batch)] = errors.errors
    assert isinstance(error, APIError)
    assert error.status == 401
    assert "invalid write key" in str(error)
    assert len(batch) == 1
    assert await live.runtime.store.count_events() == 0


async def test_segment_library_sees_retry_after_when_storage_is_full(live: LiveServer) -> None:
    """Disk full answers 503 with a Retry-After the library parses, and nothing is stored."""
    client = segment_client(live, Recorder(), sync_mode=True)
    async with disk_full(live):
        with pytest.raises(APIError) as caught:
            await asyncio.to_thread(
                client.track, user_id="u-1", event="Order Completed", properties=bulky()
            )
    assert caught.value.status == 503
    assert parse_retry_after(caught.value.response) == 1
    assert await live.runtime.store.count_events() == 0


# Authentication


async def test_basic_auth_answers_success_after_commit(live: LiveServer) -> None:
    """Basic auth with the write key: 200 {"success": true}, and the rows are already there."""
    raws = [event(), event("identify", userId="u-1", traits={"plan": "pro"})]
    response = await post_batch(live, raws)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert await live.runtime.store.stored_message_ids() == [r["messageId"] for r in raws]


async def test_write_key_in_body_is_accepted_and_not_stored(live: LiveServer) -> None:
    """writeKey in the body authenticates, and the secret never reaches the stored event."""
    raw = event("identify", userId="u-1")
    response = await post(live, "/v1/identify", {**raw, "writeKey": WRITE_KEY})
    assert response.status_code == 200
    tracked = {**event(anonymousId="anon-2"), "writeKey": WRITE_KEY}
    response = await post(live, "/v1/batch", {"batch": [tracked], "writeKey": WRITE_KEY})
    assert response.status_code == 200
    [identify] = await live.runtime.store.events_of("u:u-1")
    [track] = await live.runtime.store.events_of("a:anon-2")
    assert identify["messageId"] == raw["messageId"]
    assert "writeKey" not in identify
    assert "writeKey" not in track


async def test_wrong_write_key_is_401(live: LiveServer) -> None:
    """A wrong key (Basic or body) is refused with a JSON 401 and nothing is stored."""
    as_basic = await post(live, "/v1/batch", {"batch": [event()]}, headers=basic("wk_wrong"))
    in_body = await post(live, "/v1/batch", {"batch": [event()], "writeKey": "wk_wrong"})
    for response in (as_basic, in_body):
        assert response.status_code == 401
        assert response.json() == {"success": False, "error": "invalid write key"}
    assert await live.runtime.store.count_events() == 0


async def test_missing_key_is_401(live: LiveServer) -> None:
    """No key at all, or a non-Basic Authorization, is a 401."""
    for headers in ({}, {"Authorization": "Bearer token"}, {"Authorization": "Basic"}):
        response = await post(live, "/v1/batch", {"batch": [event()]}, headers=headers)
        assert response.status_code == 401


async def test_malformed_authorization_is_401(live: LiveServer) -> None:
    """A Basic header that is not base64 (or not UTF-8) is a 401 naming the header."""
    bad_utf8 = base64.b64encode(b"\xff\xfe:").decode()
    for value in ("Basic !!!not-base64", f"Basic {bad_utf8}"):
        response = await post(
            live, "/v1/batch", {"batch": [event()]}, headers={"Authorization": value}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "malformed authorization header"


async def test_write_key_in_query_string_is_refused(live: LiveServer) -> None:
    """The secret write key is not taken from the URL (it would end up in access logs)."""
    response = await post(live, "/v1/batch", {"batch": [event()]}, params={"key": WRITE_KEY})
    assert response.status_code == 401


# The public key: browser events


async def test_public_key_with_allowed_origin_stores_browser_events(live: LiveServer) -> None:
    """?key=<public key> from an allowed Origin: 200, stored as browser events."""
    raw = event()
    response = await post(live, "/v1/batch", {"batch": [raw]}, **browser())
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert await sources(live) == {raw["messageId"]: ("browser", "a:anon-1")}


async def test_public_key_in_body_with_allowed_origin(live: LiveServer) -> None:
    """writeKey=<public key> in the body from an allowed Origin is a browser request."""
    raw = event()
    response = await post(
        live,
        "/v1/batch",
        {"batch": [raw], "writeKey": PUBLIC_KEY},
        headers={"Origin": ORIGIN},
    )
    assert response.status_code == 200
    assert await sources(live) == {raw["messageId"]: ("browser", "a:anon-1")}


async def test_browser_unverified_user_id_does_not_stitch(live: LiveServer) -> None:
    """A browser identify without userHash neither links the user nor makes the email mailable."""
    raw = event("identify", userId="victim", traits={"email": "victim@example.com"})
    response = await post(live, "/v1/identify", raw, **browser())
    assert response.status_code == 200
    store = live.runtime.store
    assert await store.person_of("anon-1") is None
    assert await store.profile("u:victim") is None
    profile = await store.profile("a:anon-1")
    assert profile is not None
    assert profile["user_id"] is None
    assert profile["email"] is None
    assert profile["claimed_email"] == "victim@example.com"


async def test_browser_user_hash_verifies_and_stitches(live: LiveServer) -> None:
    """A browser identify with a valid context.userHash and emailHash stitches the profile."""
    viewed = event()
    await post(live, "/v1/batch", {"batch": [viewed]}, **browser())
    context = {
        "userHash": sign_identity(IDENTITY_SECRET, "shopper"),
        "emailHash": sign_identity(IDENTITY_SECRET, "shopper@example.com"),
    }
    raw = event(
        "identify", userId="shopper", traits={"email": "Shopper@Example.com"}, context=context
    )
    response = await post(live, "/v1/identify", raw, **browser())
    assert response.status_code == 200
    store = live.runtime.store
    assert await store.person_of("anon-1") == "u:shopper"
    profile = await store.profile("u:shopper")
    assert profile is not None
    assert profile["email"] == "shopper@example.com"
    history = [e["messageId"] for e in await store.events_of("u:shopper")]
    assert history == [raw["messageId"], viewed["messageId"]]


async def test_browser_event_without_anonymous_id_is_rejected(live: LiveServer) -> None:
    """A browser event must carry its own anonymousId."""
    raw = event(userId="u-1")
    del raw["anonymousId"]
    response = await post(live, "/v1/batch", {"batch": [raw]}, **browser())
    assert response.status_code == 400
    assert response.json()["error"] == "browser events need an anonymousId"


async def test_public_key_from_foreign_or_missing_origin_is_403(live: LiveServer) -> None:
    """The public key from a foreign Origin, or with none, is a 403 and nothing is stored."""
    for headers in ({"Origin": FOREIGN_ORIGIN}, {}):
        response = await post(
            live, "/v1/batch", {"batch": [event()]}, headers=headers, params={"key": PUBLIC_KEY}
        )
        assert response.status_code == 403
        assert response.json()["error"] == "origin not allowed for the public key"
    assert await live.runtime.store.count_events() == 0


async def test_beacon_text_plain_is_accepted(live: LiveServer) -> None:
    """navigator.sendBeacon: a text/plain batch with ?key= and Origin is stored."""
    raw = event("page", name="Checkout")
    response = await post(
        live,
        "/v1/batch",
        content=orjson.dumps({"batch": [raw]}),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN},
        params={"key": PUBLIC_KEY},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert await sources(live) == {raw["messageId"]: ("browser", "a:anon-1")}


# Bodies: encoding and size


async def test_gzip_body_is_inflated(live: LiveServer) -> None:
    """A gzip-encoded body (Content-Encoding: gzip) is accepted."""
    raw = event()
    for encoding in ("gzip", "x-gzip"):
        response = await post(
            live,
            "/v1/batch",
            content=gzip.compress(orjson.dumps({"batch": [raw]})),
            headers={**basic(WRITE_KEY), "Content-Encoding": encoding},
        )
        assert response.status_code == 200
    assert await live.runtime.store.stored_message_ids() == [raw["messageId"]]


async def test_multi_member_gzip_body_is_inflated(live: LiveServer) -> None:
    """A gzip body of several members (RFC 1952) inflates to their concatenation."""
    raw = event()
    text = orjson.dumps({"batch": [raw]})
    body = gzip.compress(text[:10]) + gzip.compress(text[10:])
    response = await post(
        live,
        "/v1/batch",
        content=body,
        headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert await live.runtime.store.stored_message_ids() == [raw["messageId"]]


async def test_gzip_bomb_is_413(live: LiveServer) -> None:
    """A small gzip body that inflates past max_request_bytes is a 413."""
    limit = live.config.ingest.max_request_bytes
    text = b'{"batch": [' + b" " * (limit * 4) + b"]}"
    bomb = gzip.compress(text)
    assert len(bomb) < limit // 50
    response = await post(
        live, "/v1/batch", content=bomb, headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == f"body larger than {limit} bytes unzipped"


async def test_gzip_inflating_to_just_over_the_limit_is_413(small: LiveServer) -> None:
    """A gzip body one byte over the limit unzipped is a 413; exactly at the limit is not."""
    raw = event()
    text = orjson.dumps({"batch": [raw]})
    padded = text[:-1] + b" " * (4096 - len(text)) + b"}"
    assert len(padded) == 4096
    headers = {**basic(WRITE_KEY), "Content-Encoding": "gzip"}
    over = padded[:-1] + b" }"
    response = await post(small, "/v1/batch", content=gzip.compress(over), headers=headers)
    assert response.status_code == 413
    response = await post(small, "/v1/batch", content=gzip.compress(padded), headers=headers)
    assert response.status_code == 200


async def test_body_over_limit_with_content_length_is_413(small: LiveServer) -> None:
    """A body whose Content-Length is over max_request_bytes is a 413."""
    raw = event(properties={"note": "x" * 5000})
    response = await post_batch(small, [raw])
    assert response.status_code == 413
    assert response.json()["error"] == "body larger than 4096 bytes"
    assert await small.runtime.store.count_events() == 0


async def test_streamed_body_over_limit_is_413(small: LiveServer) -> None:
    """A chunked body (no Content-Length) is cut off once it passes max_request_bytes."""
    body = orjson.dumps({"batch": [event(properties={"note": "x" * 5000})]})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    async with small.http() as client:
        response = await client.post(
            "/v1/batch",
            content=chunks(),
            headers={**basic(WRITE_KEY), "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert await small.runtime.store.count_events() == 0


async def test_streamed_body_under_limit_is_accepted(small: LiveServer) -> None:
    """A chunked body under the limit is read whole and stored."""
    raw = event()
    body = orjson.dumps({"batch": [raw]})

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:20]
        yield body[20:]

    async with small.http() as client:
        response = await client.post("/v1/batch", content=chunks(), headers=basic(WRITE_KEY))
    assert response.status_code == 200
    assert await small.runtime.store.stored_message_ids() == [raw["messageId"]]


async def test_unsupported_content_encoding_is_415(live: LiveServer) -> None:
    """A Content-Encoding other than gzip or identity is a 415."""
    response = await post(
        live,
        "/v1/batch",
        {"batch": [event()]},
        headers={**basic(WRITE_KEY), "Content-Encoding": "br"},
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported content-encoding 'br'"


async def test_malformed_gzip_is_400(live: LiveServer) -> None:
    """A body that is not gzip, truncated gzip, or gzip followed by junk is a 400."""
    whole = gzip.compress(orjson.dumps({"batch": [event()]}))
    for body in (b"not gzip at all", whole[:-4], whole + b"junk", b""):
        response = await post(
            live,
            "/v1/batch",
            content=body,
            headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 400, body
        assert response.json()["error"] == "malformed gzip body"
    assert await live.runtime.store.count_events() == 0


# Bodies: JSON and events


async def test_malformed_json_is_400(live: LiveServer) -> None:
    """A body that is not JSON is a 400 naming the parser's reason."""
    response = await post(live, "/v1/batch", content=b'{"batch": [', headers=basic(WRITE_KEY))
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed json")


async def test_non_object_body_is_400(live: LiveServer) -> None:
    """A JSON body that is not an object is a 400."""
    response = await post(live, "/v1/batch", [event()], headers=basic(WRITE_KEY))
    assert response.status_code == 400
    assert response.json()["error"] == "body must be a json object"


async def test_batch_route_needs_a_batch_list(live: LiveServer) -> None:
    """/v1/batch without a "batch" list is a 400."""
    for body in ({}, {"batch": event()}):
        response = await post(live, "/v1/batch", body, headers=basic(WRITE_KEY))
        assert response.status_code == 400
        assert response.json()["error"] == 'expected {"batch": [...]}'


async def test_empty_batch_is_400(live: LiveServer) -> None:
    """An empty batch has nothing to store: 400."""
    response = await post_batch(live, [])
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": "empty batch", "rejected": []}


async def test_event_over_32kb_is_400_with_reason(live: LiveServer) -> None:
    """A single event over 32 KB is refused with the reason."""
    raw = event(properties=bulky(40_000))
    response = await post(live, "/v1/track", raw, headers=basic(WRITE_KEY))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "event larger than 32768 bytes"
    assert body["rejected"] == [
        {"messageId": raw["messageId"], "error": "event larger than 32768 bytes"}
    ]


async def test_mixed_batch_stores_good_and_lists_rejected(live: LiveServer) -> None:
    """A batch with bad events: 200, the good ones stored, the bad ones listed by messageId."""
    good = [event(), event("page")]
    no_id = event(type="track")
    del no_id["anonymousId"]
    bad_type = event(type="launch")
    response = await post_batch(live, [good[0], no_id, bad_type, "not an event", good[1]])
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "rejected": [
            {"messageId": no_id["messageId"], "error": "anonymousId or userId is required"},
            {"messageId": bad_type["messageId"], "error": "unknown event type 'launch'"},
            {"messageId": None, "error": "event must be an object"},
        ],
    }
    assert await live.runtime.store.stored_message_ids() == [r["messageId"] for r in good]


async def test_all_invalid_batch_is_400(live: LiveServer) -> None:
    """A batch where nothing is valid is a 400 listing every rejection."""
    bad = [event(timestamp="yesterday"), event(event=None)]
    response = await post_batch(live, bad)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "timestamp must be an ISO-8601 string"
    assert [r["messageId"] for r in body["rejected"]] == [r["messageId"] for r in bad]
    assert await live.runtime.store.count_events() == 0


@pytest.mark.parametrize("kind", ["track", "identify", "page", "alias", "screen", "group"])
async def test_single_route_infers_the_type(live: LiveServer, kind: str) -> None:
    """POST /v1/<type> with a body without "type" stores an event of that type."""
    raw = event(kind, userId="u-1", previousId="anon-1", groupId="g-1")
    del raw["type"]
    response = await post(live, f"/v1/{kind}", raw, headers=basic(WRITE_KEY))
    assert response.status_code == 200
    assert response.json() == {"success": True}
    [stored] = await live.runtime.store.events_of("u:u-1")
    assert stored["messageId"] == raw["messageId"]
    rows = await live.runtime.store._ro.execute_fetchall("SELECT type FROM events")
    assert [r[0] for r in rows] == [kind]


async def test_single_route_with_mismatched_type_is_400(live: LiveServer) -> None:
    """A body whose "type" disagrees with the route is a 400."""
    response = await post(live, "/v1/track", event("page"), headers=basic(WRITE_KEY))
    assert response.status_code == 400
    assert response.json()["error"] == "type 'page' sent to the track endpoint"


async def test_unknown_route_is_404(live: LiveServer) -> None:
    """POST /v1/whatever is a JSON 404."""
    response = await post(live, "/v1/whatever", event(), headers=basic(WRITE_KEY))
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "not found"}


async def test_batch_context_is_merged_under_the_events_own(live: LiveServer) -> None:
    """A batch-level "context" is merged into each event; the event's own keys win."""
    own = event(context={"locale": "de-DE", "ip": "10.0.0.2"})
    bare = event(anonymousId="anon-2")
    context = {"ip": "10.0.0.1", "library": {"name": "analytics-python"}}
    response = await post_batch(live, [own, bare], context=context)
    assert response.status_code == 200
    [stored_own] = await live.runtime.store.events_of("a:anon-1")
    [stored_bare] = await live.runtime.store.events_of("a:anon-2")
    assert stored_own["context"] == {**context, "locale": "de-DE", "ip": "10.0.0.2"}
    assert stored_bare["context"] == context


async def test_duplicate_message_ids_are_stored_once(live: LiveServer) -> None:
    """The same messageId within a batch and across requests is stored once; all succeed."""
    raw = event()
    for _ in range(2):
        response = await post_batch(live, [raw, raw])
        assert response.status_code == 200
        assert response.json() == {"success": True}
    assert await live.runtime.store.stored_message_ids() == [raw["messageId"]]


# CORS


async def test_cors_preflight_answers_allowed_origins_only(live: LiveServer) -> None:
    """A preflight from an allowed Origin gets Access-Control-Allow-Origin; a foreign one not."""
    async with live.http() as client:
        allowed, foreign = [
            await client.options(
                "/v1/batch",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            )
            for origin in (ORIGIN, FOREIGN_ORIGIN)
        ]
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in foreign.headers


# Storage failures


def bulky(size: int = 24_000) -> dict[str, str]:
    """Properties of about ``size`` bytes, in strings under the per-string limit."""
    return {f"k{i}": "x" * 6000 for i in range(size // 6000)}


@contextlib.asynccontextmanager
async def disk_full(live: LiveServer) -> AsyncIterator[None]:
    """Make the store's file unable to grow (SQLITE_FULL) for the duration."""
    await started(live)
    db = live.runtime.store._db
    [(pages,)] = await db.execute_fetchall("PRAGMA page_count")
    await db.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        await db.execute("PRAGMA max_page_count = 4294967294")


async def test_storage_full_is_503_with_retry_after_then_recovers(live: LiveServer) -> None:
    """Disk full: 503 with Retry-After and nothing stored; once space returns, a retry is 200."""
    raw = event(properties=bulky())
    async with disk_full(live):
        response = await post_batch(live, [raw])
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"success": False, "error": "storage unavailable, retry later"}
    assert await live.runtime.store.count_events() == 0
    response = await post_batch(live, [raw])
    assert response.status_code == 200
    assert await live.runtime.store.stored_message_ids() == [raw["messageId"]]


async def test_retry_after_follows_the_configured_nack_delay(tmp_path: Path) -> None:
    """Retry-After is ingest.retry_after_ms rounded up to whole seconds."""
    config = make_config(tmp_path, ingest={"retry_after_ms": 2500})
    async with run_server(config) as live:
        async with disk_full(live):
            response = await post_batch(live, [event(properties=bulky())])
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"


async def test_permanent_storage_failure_is_500(live: LiveServer) -> None:
    """A store error that is not transient is a 500 without Retry-After."""
    await started(live)
    db = live.runtime.store._db
    await db.execute("ALTER TABLE events RENAME TO events_away")
    try:
        response = await post_batch(live, [event()])
    finally:
        await db.execute("ALTER TABLE events_away RENAME TO events")
    assert response.status_code == 500
    assert response.json() == {"success": False, "error": "storage failed"}
    assert "retry-after" not in response.headers


async def test_overload_is_503_with_retry_after(tmp_path: Path) -> None:
    """While the writer is stuck and the queue stays full, a further request gets 503."""
    config = make_config(tmp_path, ingest={"max_queue": 1, "queue_timeout_s": TIMEOUT_UNIT / 25})
    async with run_server(config) as live:
        raws = [event() for _ in range(3)]
        await started(live)
        async with live.runtime.store._write_lock:
            tasks = [asyncio.create_task(post_batch(live, [raw])) for raw in raws]
            done, _ = await asyncio.wait(
                tasks, timeout=4 * TIMEOUT_UNIT, return_when=asyncio.FIRST_COMPLETED
            )
            [refused] = done
            assert refused.result().status_code == 503
            assert refused.result().headers["retry-after"] == "1"
        responses = await asyncio.gather(*tasks)
        assert sorted(r.status_code for r in responses) == [200, 200, 503]
        stored = await live.runtime.store.stored_message_ids()
    assert len(stored) == 2


async def test_client_leaving_mid_body_is_not_an_error(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that goes away before its whole body arrived is not logged as an app error."""
    await started(live)
    auth = basic(WRITE_KEY)["Authorization"]
    head = (
        b"POST /v1/batch HTTP/1.1\r\nHost: rtserver\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\nExpect: 100-continue\r\n"
        + f"Authorization: {auth}\r\n\r\n".encode()
    )
    await leave_mid_body(live.port, head, b'{"batch": [')
    await live.stop()  # returns once the endpoint has finished
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert live.task.done()
