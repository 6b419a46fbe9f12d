"""``GET /rt.js`` (ETag, 304, gzip, caching) and the snippet itself: its size budget, the
committed build matching its sources, and its JavaScript unit tests (``npm test``)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rtserver.app import create_app
from rtserver.ingest.snippet import MAX_AGE_S
from tests.support.server import TIMEOUT_UNIT, make_config

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client-js"
BUILT = ROOT / "rtserver" / "static" / "rt.js"
BUDGET_BYTES = 3 * 1024
"""The snippet's size budget, minified and gzipped."""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process (no lifespan: serving the file needs none of it)."""
    transport = httpx.ASGITransport(app=create_app(make_config(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://rt.test") as client:
        yield client


def _node() -> str:
    """The node binary; the test command installs it (scripts/install), so it must be there."""
    node = shutil.which("node")
    assert node, "node is missing: run ./scripts/install"
    return node


async def test_serves_the_snippet_with_caching_headers(client: httpx.AsyncClient) -> None:
    """The built file, as JavaScript, public for an hour, with a strong ETag."""
    response = await client.get("/rt.js", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.headers["cache-control"] == f"public, max-age={MAX_AGE_S}"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in response.headers
    assert response.content == BUILT.read_bytes()
    etag = response.headers["etag"]
    assert etag == '"' + hashlib.sha256(BUILT.read_bytes()).hexdigest()[:32] + '"'


async def test_serves_it_gzipped_to_clients_that_accept_gzip(client: httpx.AsyncClient) -> None:
    """Accept-Encoding gzip: the gzipped file, with its own ETag."""
    response = await client.get("/rt.js", headers={"Accept-Encoding": "br, gzip;q=0.8"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == BUILT.read_bytes()  # httpx decoded it
    assert response.headers["etag"].endswith('-gzip"')
    refused = await client.get("/rt.js", headers={"Accept-Encoding": "gzip; q=0"})
    assert "content-encoding" not in refused.headers
    other = await client.get("/rt.js", headers={"Accept-Encoding": "deflate"})
    assert "content-encoding" not in other.headers


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_a_matching_if_none_match_gets_304(client: httpx.AsyncClient, encoding: str) -> None:
    """Revalidation: 304 with no body and the same caching headers, for each encoding."""
    headers = {"Accept-Encoding": encoding}
    first = await client.get("/rt.js", headers=headers)
    etag = first.headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get("/rt.js", headers={**headers, "If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == first.headers["cache-control"]


async def test_a_stale_if_none_match_gets_the_file(client: httpx.AsyncClient) -> None:
    """An ETag of another version (or of the other encoding) is not a match."""
    plain = await client.get("/rt.js", headers={"Accept-Encoding": "identity"})
    for stale in ('"0123456789abcdef"', plain.headers["etag"]):
        response = await client.get(
            "/rt.js", headers={"Accept-Encoding": "gzip", "If-None-Match": stale}
        )
        assert response.status_code == 200
        assert response.content == BUILT.read_bytes()


def test_snippet_fits_its_size_budget() -> None:
    """rt.js is at most 3 KB minified and gzipped."""
    size = len(gzip.compress(BUILT.read_bytes(), compresslevel=9))
    print(f"\nrt.js: {BUILT.stat().st_size} bytes minified, {size} gzipped")
    assert size <= BUDGET_BYTES


def test_committed_build_matches_the_sources(tmp_path: Path) -> None:
    """Building client-js/ with esbuild gives exactly the committed rtserver/static/rt.js."""
    assert (CLIENT / "node_modules" / "esbuild").is_dir(), "run ./scripts/install (npm ci)"
    out = tmp_path / "rt.js"
    result = subprocess.run(
        [_node(), "build.js", str(out)],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=12 * TIMEOUT_UNIT,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == BUILT.read_bytes(), "rebuild it: cd client-js && npm run build"


def test_snippet_javascript_unit_tests_pass() -> None:
    """``npm test`` (node's test runner over client-js/test) passes."""
    npm = shutil.which("npm")
    assert npm, "npm is missing: run ./scripts/install"
    result = subprocess.run(
        [npm, "test", "--silent"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=24 * TIMEOUT_UNIT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    counts = (line[2:].split(" ", 1) for line in output.splitlines() if line.startswith("# "))
    summary = {words[0]: words[1] for words in counts if len(words) == 2}
    print(f"\nclient-js: {summary.get('pass')} passed, {summary.get('fail')} failed")
    assert int(summary["pass"]) >= 40
    assert summary["fail"] == "0"
