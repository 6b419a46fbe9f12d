"""The event routes as plain ASGI endpoints: the same answers as starlette's route and CORS
middleware gave them (compared with a route still under the ``/v1`` mount's middleware), gzip
inflated as the body arrives, against a real uvicorn server.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from rtserver.ingest.segment import HTTPFailure, _read
from tests.ingest.test_segment import FOREIGN_ORIGIN, PUBLIC_KEY, basic, post
from tests.support.events import event
from tests.support.server import ORIGIN, WRITE_KEY, LiveServer, make_config, run_server

UNDER_THE_MOUNT = "/v1/nosuchtype"
"""A path that still goes through the ``/v1`` mount's CORS middleware (a 404)."""
EVENT_PATHS = ("/v1/batch", "/v1/track", "/v1/t", "/v1/b")


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    """``body`` in chunks of ``size`` bytes, as a request body arrives."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A live server whose request bodies are capped at 4 KiB."""
    async with run_server(make_config(tmp_path, ingest={"max_request_bytes": 4096})) as server:
        yield server


def cors_of(response: httpx.Response) -> dict[str, str]:
    """The headers CORS adds or decides."""
    names = [n for n in response.headers if n.startswith("access-control-") or n == "vary"]
    return {name: response.headers[name] for name in names}


# gzip as it arrives


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
async def test_gzip_members_split_anywhere_are_inflated(size: int) -> None:
    """Members cut at any chunk boundary (inside a member, or where one ends) inflate whole."""
    text = orjson.dumps({"batch": [event() for _ in range(3)]})
    body = gzip.compress(text[:100]) + gzip.compress(text[100:300]) + gzip.compress(text[300:])
    assert await _read(pieces(body, size), "gzip", None, 1 << 20) == text


async def test_gzip_failures_wait_for_the_size_of_the_body() -> None:
    """Junk or a bomb found early is still a 413 when the body itself is over the limit, as
    when the body was read whole before inflating; under it, the failure found."""
    limit = 4096
    junk = b"not gzip" * 1000
    bomb = gzip.compress(b" " * (limit * 10)) + os.urandom(limit)
    cases = [
        (junk, "body larger than 4096 bytes"),
        (bomb, "body larger than 4096 bytes"),
        (junk[:limit], "malformed gzip body"),
        (bomb[: -limit + 100], "body larger than 4096 bytes unzipped"),
    ]
    for body, error in cases:
        with pytest.raises(HTTPFailure) as caught:
            await _read(pieces(body, 512), "gzip", None, limit)
        assert caught.value.body["error"] == error


async def test_streamed_gzip_is_stored(small: LiveServer) -> None:
    """A chunked gzip body is inflated as it arrives and stored."""
    raw = event()
    body = gzip.compress(orjson.dumps({"batch": [raw]}))
    async with small.http() as client:
        response = await client.post(
            "/v1/batch",
            content=pieces(body, 50),
            headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"},
        )
    assert response.status_code == 200
    assert response.content == b'{"success":true}'
    assert await small.runtime.store.stored_message_ids() == [raw["messageId"]]


async def test_streamed_junk_over_the_limit_is_413(small: LiveServer) -> None:
    """A chunked body that is not gzip and passes the limit: 413, not 400 (as before)."""
    async with small.http() as client:
        response = await client.post(
            "/v1/batch",
            content=pieces(b"not gzip" * 1000, 1024),
            headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"},
        )
    assert response.status_code == 413
    assert response.json() == {"success": False, "error": "body larger than 4096 bytes"}


# Methods and CORS: what the route and the middleware answered


@pytest.mark.parametrize("path", EVENT_PATHS)
async def test_other_methods_are_405(live: LiveServer, path: str) -> None:
    """GET, PUT and an OPTIONS that is no preflight get starlette's 405, without CORS."""
    async with live.http() as client:
        for method in ("GET", "PUT", "OPTIONS"):
            response = await client.request(method, path, headers={"Origin": ORIGIN})
            assert response.status_code == 405
            assert response.text == "Method Not Allowed"
            assert response.headers["allow"] == "POST"
            assert cors_of(response) == {}


@pytest.mark.parametrize(
    "preflight",
    [
        {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
        },
        {"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": "POST"},
        {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"},
        {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-secret",
        },
    ],
)
async def test_preflights_get_the_middleware_answer(
    live: LiveServer, preflight: dict[str, str]
) -> None:
    """Allowed or refused (origin, method, headers): the same status, body and headers as the
    middleware gives on the rest of /v1."""
    async with live.http() as client:
        expected = await client.options(UNDER_THE_MOUNT, headers=preflight)
        for path in EVENT_PATHS:
            response = await client.options(path, headers=preflight)
            assert response.status_code == expected.status_code
            assert response.text == expected.text
            assert {**response.headers, "date": ""} == {**expected.headers, "date": ""}


@pytest.mark.parametrize("origin", [None, ORIGIN, FOREIGN_ORIGIN])
async def test_answers_carry_the_middleware_headers(live: LiveServer, origin: str | None) -> None:
    """Success (plain and with refused events) and failures, with no, an allowed or a foreign
    Origin: the CORS headers the middleware adds on the rest of /v1."""
    headers = {"Origin": origin} if origin else {}
    async with live.http() as client:
        expected = cors_of(await client.post(UNDER_THE_MOUNT, headers=headers, content=b"{}"))
    assert expected["vary"] == "Origin"
    assert ("access-control-allow-origin" in expected) is (origin == ORIGIN)
    assert ("access-control-expose-headers" in expected) is (origin is not None)
    bodies = [{"batch": [event()]}, {"batch": [event(), {"type": "nope"}]}, {"batch": []}]
    for body in bodies:
        response = await post(live, "/v1/batch", body, headers={**headers, **basic(WRITE_KEY)})
        assert cors_of(response) == expected
    refused = await post(live, "/v1/t", {"type": "track"}, headers=headers)
    assert refused.status_code == 401
    assert cors_of(refused) == expected


async def test_any_origin_gets_the_star(tmp_path: Path) -> None:
    """``allowed_origins = ["*"]``: every Origin gets ``*``, as from the middleware."""
    config = make_config(tmp_path, server={"allowed_origins": ["*"]})
    async with run_server(config) as live:
        async with live.http() as client:
            expected = cors_of(
                await client.post(UNDER_THE_MOUNT, headers={"Origin": FOREIGN_ORIGIN})
            )
            response = await client.post(
                "/v1/batch",
                content=orjson.dumps({"batch": [event()]}),
                headers={"Origin": FOREIGN_ORIGIN, "Content-Type": "text/plain"},
                params={"key": PUBLIC_KEY},
            )
    assert response.status_code == 200
    assert expected["access-control-allow-origin"] == "*"
    assert cors_of(response) == expected
