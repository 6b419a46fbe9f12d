"""Outbound webhooks against a real HTTP receiver.

The courier runs on a real store and POSTs with httpx to pytest-httpserver
(tests/support/receiver.py) over loopback: what each answer does to a delivery (2xx, 410, 3xx,
408/425/429/5xx, other 4xx, ``Retry-After``), timeouts and refused connections, the Standard
Webhooks signature and the stable ``webhook-id``, the destination checks (a resolver stub, no
traffic), a real server end to end, and a ``kill -9`` mid-delivery of a real ``rtserver serve``
child.

Time is a fake clock that the tests move, then :meth:`Courier.wake`; the tests wait on the
courier's ``progress`` (notified after every recorded attempt), on the receiver's arrivals, on
log records or on the store, always under ``asyncio.timeout``. No sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import logging
import math
import socket
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from standardwebhooks import Webhook
from werkzeug import Request, Response

from rtserver import __version__
from rtserver.config.schema import HooksConfig, durations
from rtserver.errors import ConfigError, InvalidSignature
from rtserver.hooks.sender import Courier, CourierStats
from rtserver.hooks.signatures import verify
from rtserver.mail.sender import retry_delay
from rtserver.model.actions import CallWebhook
from rtserver.model.facts import Person
from rtserver.runtime import load_rules
from rtserver.store.database import Store
from rtserver.store.deliveries import delivery_row
from rtserver.store.schema import INSERT_DELIVERY
from tests.support.events import event
from tests.support.receiver import KeepAlive, Receiver
from tests.support.server import ORIGIN, TIMEOUT_UNIT, WRITE_KEY, FakeClock, make_config, run_server
from tests.support.server_process import ServerProcess, free_port

NOW = 1_800_000_000.0
HOOKS_SECRET = "whsec_" + base64.b64encode(b"rtserver-courier-test-secret-32b").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"someone-else-s-secret-0123456789").decode()
ANN = Person("u:ann", "ann@shop.test", {"first_name": "Ann"})
WAITS = durations("5s", "1m")
WAITS_S = [5.0, 60.0]

# Helpers.


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver.running() as running_receiver:
        yield running_receiver


def hooks(**overrides: Any) -> HooksConfig:
    """Any URL and loopback allowed, short retries, and a timeout no loopback answer comes
    near."""
    values: dict[str, Any] = {
        "allow": ("http://", "https://"),
        "allow_private": True,
        "retry": WAITS,
        "timeout_s": TIMEOUT_UNIT,
        "lease_s": 60.0,
    }
    return HooksConfig(**{**values, **overrides})


def make_courier(
    store: Store, clock: Callable[[], float], config: HooksConfig | None = None, **kw: Any
) -> Courier:
    return Courier(store, config or hooks(), HOOKS_SECRET, clock, **kw)


async def queue(
    store: Store, url: str, *, run: str = "run-1", at: float = NOW, **payload: Any
) -> tuple[Any, ...]:
    """Queue a delivery as a decided ``webhook`` step would; its ``INSERT_DELIVERY`` row
    (``row[0]`` is its id, ``row[6]`` the payload bytes)."""
    action = CallWebhook(run, 0, ANN.id, url, payload or {"tier": "gold"})
    row = delivery_row(action, "crm", ANN, at)
    await store._db.executemany(INSERT_DELIVERY, [row])
    return row


@contextlib.asynccontextmanager
async def running(courier: Courier) -> AsyncIterator[asyncio.Event]:
    """The courier's task; stopped (its client closed) on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(courier.run(stop), name="courier")
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(2 * TIMEOUT_UNIT):
            await task


def recorded(stats: CourierStats) -> int:
    return stats.delivered + stats.retried + stats.failed


async def attempts(courier: Courier, count: int) -> None:
    """Wait until ``count`` attempts are recorded in all."""
    async with asyncio.timeout(TIMEOUT_UNIT), courier.progress:
        await courier.progress.wait_for(lambda: recorded(courier.stats) >= count)


async def again(courier: Courier, clock: FakeClock, at: float, count: int) -> None:
    """Move the clock to ``at`` (a retry is due), wake the courier, wait for attempt ``count``."""
    clock.now = at
    courier.wake()
    await attempts(courier, count)


async def state(store: Store, delivery: str) -> dict[str, Any]:
    """The delivery's row, with ``next_attempt_at`` and the decoded payload."""
    (row,) = [r for r in await store.deliveries.recent() if r["id"] == delivery]
    full = await store.deliveries.get(delivery)
    assert full is not None
    return {**row, "payload": full["payload"]}


def signed(request: Request, delivery: str, at: float) -> Any:
    """Check the request a delivery made at ``at``; its JSON body."""
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"rtserver/{__version__}"
    assert request.headers["webhook-id"] == delivery
    assert request.headers["webhook-timestamp"] == str(math.floor(at))
    body = request.get_data()
    assert verify([HOOKS_SECRET], headers_of(request), body, at) == delivery
    return orjson.loads(body)


def headers_of(request: Request) -> dict[str, str]:
    """The request's headers, names in lower case (as ``verify`` looks them up)."""
    return {name.lower(): value for name, value in request.headers.items()}


def answer(status: int, **headers: str) -> Response:
    return Response(f"answer {status}", status=status, headers=headers)


class Resolver:
    """A resolver stub: the addresses it was told, and every lookup asked of it."""

    def __init__(self, *addresses: str, error: OSError | None = None) -> None:
        self.addresses = list(addresses)
        self.error = error
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if self.error is not None:
            raise self.error
        return list(self.addresses)

    def sync(self, host: str, port: int) -> list[str]:
        """The same, for configuration time (``load_rules``)."""
        self.calls.append((host, port))
        return list(self.addresses)


class Recording(httpx.AsyncBaseTransport):
    """The real transport, noting every request handed to it (none must be, when refused)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Logged(logging.Handler):
    """The courier's log records, and an event set on each (it logs on the loop's thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    async def first(self, predicate: Callable[[str], bool]) -> logging.LogRecord:
        """The first record whose message matches, once logged."""
        async with asyncio.timeout(TIMEOUT_UNIT):
            while True:
                for record in self.records:
                    if predicate(record.getMessage()):
                        return record
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def courier_log() -> Iterator[Logged]:
    logger = logging.getLogger("rtserver.hooks.sender")
    handler, level = Logged(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# 2xx: delivered, signed, the stored payload.


async def test_a_2xx_is_delivered_signed_with_the_stored_payload(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    """The body is the stored payload byte for byte; the headers carry the delivery's id as
    ``webhook-id``, the attempt's time and a Standard Webhooks signature over the raw body."""
    receiver.expect_ordered_request("/h", method="POST").respond_with_response(answer(200))
    row = await queue(store, receiver.url_for("/h"))
    courier = make_courier(store, clock)  # the real resolver: 127.0.0.1 is an address already
    async with running(courier):
        await attempts(courier, 1)
    (request,) = receiver.arrived
    body = signed(request, row[0], NOW)
    assert request.get_data() == row[6]
    assert body["type"] == "workflow.webhook" and body["timestamp"] == "2027-01-15T08:00:00Z"
    assert body["data"]["tier"] == "gold" and body["data"]["workflow"] == "crm"
    assert body["data"]["person"] == {
        "id": "u:ann",
        "email": "ann@shop.test",
        "traits": {"first_name": "Ann"},
    }
    after = await state(store, row[0])
    assert after["state"] == "delivered" and after["last_status"] == 200
    assert after["attempts"] == 1 and after["last_error"] == ""
    assert after["delivered_at"] == NOW and after["payload"] == body
    assert courier.stats == CourierStats(delivered=1)
    # The signature is the secret's: another secret, another body or another id do not verify.
    headers, raw = headers_of(request), request.get_data()
    with pytest.raises(InvalidSignature, match="no valid signature"):
        verify([OTHER_SECRET], headers, raw, NOW)
    with pytest.raises(InvalidSignature, match="no valid signature"):
        verify([HOOKS_SECRET], headers, raw.replace(b"gold", b"lead"), NOW)
    with pytest.raises(InvalidSignature, match="no valid signature"):
        verify([HOOKS_SECRET], {**headers, "webhook-id": "run-2-0"}, raw, NOW)
    assert verify([OTHER_SECRET, HOOKS_SECRET], headers, raw, NOW) == row[0]  # a rotation
    with pytest.raises(InvalidSignature, match="from now"):
        verify([HOOKS_SECRET], headers, raw, NOW + 301)  # signed at the attempt's time
    assert verify([HOOKS_SECRET], headers, raw, NOW + 300) == row[0]


async def test_the_reference_library_verifies_what_the_courier_signs(
    store: Store, receiver: Receiver
) -> None:
    """Interop: ``standardwebhooks.Webhook.verify`` (on the wall clock) accepts the request."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(204))
    wall = FakeClock(time.time())
    row = await queue(store, receiver.url_for("/h"), at=wall())
    courier = make_courier(store, wall)
    async with running(courier):
        await attempts(courier, 1)
    (request,) = receiver.arrived
    payload = Webhook(HOOKS_SECRET).verify(request.get_data(), headers_of(request))
    assert payload == orjson.loads(row[6])
    assert (await state(store, row[0]))["state"] == "delivered"


# Scripted answers: 500, 429 and 503 with Retry-After, 410, redirects, other 4xx.


async def test_a_scripted_mix_is_delivered_with_one_webhook_id(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    """500 (backoff: hooks.retry[0] ±20 %), 429 ``Retry-After: 120`` (120 s, not the backoff),
    503 with an HTTP-date ``Retry-After``, then 200: delivered after 4 attempts, all with the
    delivery's id as ``webhook-id`` and each signed at its own time."""
    waits = durations("5s", "1m", "10m")
    url = receiver.url_for("/h")
    delivery = str((await queue(store, url))[0])
    backoff = retry_delay(delivery, 1, [5.0, 60.0, 600.0])
    assert 4.0 <= backoff <= 6.0
    second = float(math.ceil(NOW + backoff))  # when the clock is moved on, past the backoff
    third = second + 120
    fourth = third + 300
    date = email.utils.formatdate(fourth, usegmt=True)
    receiver.expect_ordered_request("/h").respond_with_response(answer(500))
    receiver.expect_ordered_request("/h").respond_with_response(
        answer(429, **{"Retry-After": "120"})
    )
    receiver.expect_ordered_request("/h").respond_with_response(
        answer(503, **{"Retry-After": date})
    )
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    courier = make_courier(store, clock, hooks(retry=waits))
    async with running(courier):
        await attempts(courier, 1)
        after = await state(store, delivery)
        assert (after["state"], after["last_status"]) == ("retry_wait", 500)
        assert after["last_error"] == "500 INTERNAL SERVER ERROR"
        assert after["next_attempt_at"] == NOW + backoff

        await again(courier, clock, second, 2)
        after = await state(store, delivery)
        assert (after["state"], after["last_status"]) == ("retry_wait", 429)
        assert after["next_attempt_at"] == third  # Retry-After, not retry_delay(.., 2, ..)
        assert third - second != pytest.approx(retry_delay(delivery, 2, [5.0, 60.0, 600.0]))

        await again(courier, clock, third, 3)
        after = await state(store, delivery)
        assert (after["state"], after["last_status"]) == ("retry_wait", 503)
        assert after["next_attempt_at"] == fourth

        await again(courier, clock, fourth, 4)
    after = await state(store, delivery)
    assert (after["state"], after["last_status"], after["attempts"]) == ("delivered", 200, 4)
    assert courier.stats == CourierStats(delivered=1, retried=3)
    requests = receiver.arrived
    assert len(requests) == 4
    for request, at in zip(requests, (NOW, second, third, fourth), strict=True):
        signed(request, delivery, at)  # the same webhook-id, each signed at its own time
    assert len({request.get_data() for request in requests}) == 1  # the same payload


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"),
    [
        (503, "86400000", 86400.0),  # at most a day
        (429, "3600", 3600.0),
        (503, "soon", None),  # not a Retry-After: the backoff
        (503, "-5", None),
        (429, "", None),
        (503, None, None),
    ],
)
async def test_retry_after_is_honoured_within_bounds(
    store: Store,
    clock: FakeClock,
    receiver: Receiver,
    status: int,
    retry_after: str | None,
    wait: float | None,
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    receiver.expect_ordered_request("/h").respond_with_response(answer(status, **headers))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
    after = await state(store, delivery)
    assert (after["state"], after["last_status"]) == ("retry_wait", status)
    expected = retry_delay(delivery, 1, WAITS_S) if wait is None else wait
    assert after["next_attempt_at"] == NOW + expected


@pytest.mark.parametrize(
    "retry_after", ["0", email.utils.formatdate(NOW - 3600, usegmt=True)], ids=["0", "past"]
)
async def test_retry_after_now_retries_at_once(
    store: Store, clock: FakeClock, receiver: Receiver, retry_after: str
) -> None:
    """``Retry-After: 0`` (or a date gone by): tried again without the clock moving."""
    receiver.expect_ordered_request("/h").respond_with_response(
        answer(429, **{"Retry-After": retry_after})
    )
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 2)
    after = await state(store, delivery)
    assert (after["state"], after["attempts"], after["delivered_at"]) == ("delivered", 2, NOW)
    assert [r.headers["webhook-timestamp"] for r in receiver.arrived] == [str(int(NOW))] * 2


async def test_410_disables_the_endpoint_until_enabled(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    """410 Gone fails the delivery and disables its URL: a later delivery there fails when
    claimed, without a request; ``enable`` turns the endpoint back on."""
    url, other = receiver.url_for("/h"), receiver.url_for("/other")
    receiver.expect_ordered_request("/h").respond_with_response(answer(410))
    receiver.expect_ordered_request("/other").respond_with_response(answer(200))
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    first = str((await queue(store, url))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
        after = await state(store, first)
        assert (after["state"], after["last_status"]) == ("failed", 410)
        assert after["last_error"] == "410 GONE: endpoint disabled"
        assert await store.deliveries.disabled() == {url: "410 GONE"}
        assert courier.stats == CourierStats(failed=1, disabled=1)

        # A second delivery to the disabled URL, and one elsewhere (claimed in the same
        # transaction: once that one is recorded, the first was dealt with).
        second = str((await queue(store, url, run="run-2"))[0])
        elsewhere = str((await queue(store, other, run="run-3"))[0])
        courier.wake()
        await attempts(courier, 2)
        assert receiver.paths == ["/h", "/other"]
        after = await state(store, second)
        assert (after["state"], after["attempts"]) == ("failed", 0)
        assert after["last_error"] == "endpoint disabled: 410 GONE"
        assert (await state(store, elsewhere))["state"] == "delivered"

        assert await store.deliveries.enable(url) is True
        assert await store.deliveries.enable(url) is False
        assert await store.deliveries.disabled() == {}
        third = str((await queue(store, url, run="run-4"))[0])
        courier.wake()
        await attempts(courier, 3)
    assert receiver.paths == ["/h", "/other", "/h"]
    assert (await state(store, third))["state"] == "delivered"
    assert (await state(store, second))["state"] == "failed"  # enabling revives nothing
    assert await store.deliveries.get("run-9-0") is None
    assert await store.deliveries.counts() == {"delivered": 2, "failed": 2}


async def test_after_a_410_no_request_of_the_same_batch_goes_to_the_endpoint(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    url = receiver.url_for("/h")
    receiver.expect_request("/h").respond_with_response(answer(410))
    receiver.expect_request("/other").respond_with_response(answer(200))
    clock.now = NOW + 1
    gone = str((await queue(store, url, at=NOW))[0])
    later = str((await queue(store, url, run="run-2", at=NOW + 0.25))[0])
    marker = str((await queue(store, receiver.url_for("/other"), run="run-3", at=NOW + 0.5))[0])
    courier = make_courier(store, clock)
    async with running(courier), asyncio.timeout(TIMEOUT_UNIT), courier.progress:
        # One claim leases all three, in due order: the marker's outcome comes last.
        while (await state(store, marker))["state"] != "delivered":
            await courier.progress.wait()
    assert (await state(store, gone))["state"] == "failed"
    assert (await state(store, later))["state"] == "failed"
    assert receiver.paths == ["/h", "/other"]  # not a second "/h" after the 410


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed(
    store: Store, clock: FakeClock, receiver: Receiver, status: int
) -> None:
    """A ``Location:`` elsewhere on the receiver is never requested; the delivery retries."""
    moved = receiver.url_for("/moved")
    receiver.expect_request("/h").respond_with_response(answer(status, Location=moved))
    receiver.expect_request("/moved").respond_with_response(answer(200))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
    assert receiver.paths == ["/h"]
    after = await state(store, delivery)
    assert (after["state"], after["last_status"]) == ("retry_wait", status)
    assert "not followed" in after["last_error"] and repr(moved) in after["last_error"]
    assert after["next_attempt_at"] == NOW + retry_delay(delivery, 1, WAITS_S)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422])
async def test_other_4xx_fail_at_once(
    store: Store, clock: FakeClock, receiver: Receiver, status: int
) -> None:
    """The receiver refuses the payload: failed after one attempt, never tried again (a later
    delivery elsewhere goes, the failed one does not come back)."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(status))
    receiver.expect_ordered_request("/marker").respond_with_response(answer(200))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
        clock.advance(86400)
        await queue(store, receiver.url_for("/marker"), run="run-2", at=clock())
        courier.wake()
        await attempts(courier, 2)
    after = await state(store, delivery)
    assert (after["state"], after["last_status"], after["attempts"]) == ("failed", status, 1)
    assert after["last_error"].startswith(f"{status} ")
    assert receiver.paths == ["/h", "/marker"]
    assert courier.stats == CourierStats(delivered=1, failed=1)


@pytest.mark.parametrize("status", [408, 425, 500, 502, 504])
async def test_408_425_and_5xx_are_retried(
    store: Store, clock: FakeClock, receiver: Receiver, status: int
) -> None:
    receiver.expect_ordered_request("/h").respond_with_response(answer(status))
    receiver.expect_ordered_request("/h").respond_with_response(answer(201))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
        after = await state(store, delivery)
        assert (after["state"], after["last_status"]) == ("retry_wait", status)
        due = NOW + retry_delay(delivery, 1, WAITS_S)
        assert after["next_attempt_at"] == due
        await again(courier, clock, due, 2)
    after = await state(store, delivery)
    assert (after["state"], after["last_status"], after["attempts"]) == ("delivered", 201, 2)
    assert [r.headers["webhook-id"] for r in receiver.arrived] == [delivery, delivery]


async def test_backoff_follows_hooks_retry_then_gives_up(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    """Each wait is hooks.retry[n] ±20 %; after the list, the next failure is final."""
    for _ in range(3):
        receiver.expect_ordered_request("/h").respond_with_response(answer(500))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
        first = (await state(store, delivery))["next_attempt_at"]
        assert first == NOW + retry_delay(delivery, 1, WAITS_S)
        assert 4.0 <= first - NOW <= 6.0
        await again(courier, clock, first, 2)
        second = (await state(store, delivery))["next_attempt_at"]
        assert second == first + retry_delay(delivery, 2, WAITS_S)
        assert 48.0 <= second - first <= 72.0
        await again(courier, clock, second, 3)
    after = await state(store, delivery)
    assert (after["state"], after["attempts"]) == ("failed", 3)
    assert after["last_error"] == "500 INTERNAL SERVER ERROR; gave up after 3 attempts"
    assert courier.stats == CourierStats(retried=2, failed=1)


@pytest.mark.parametrize(
    "last", [answer(500), answer(429, **{"Retry-After": "30"})], ids=["500", "429"]
)
async def test_retries_exhausted_fail(
    store: Store, clock: FakeClock, receiver: Receiver, last: Response
) -> None:
    """With ``retry = ["5s"]`` the second failure is final, ``Retry-After`` or not."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(500))
    receiver.expect_ordered_request("/h").respond_with_response(last)
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock, hooks(retry=durations("5s")))
    async with running(courier):
        await attempts(courier, 1)
        due = (await state(store, delivery))["next_attempt_at"]
        assert due == NOW + retry_delay(delivery, 1, [5.0])
        await again(courier, clock, due, 2)
    after = await state(store, delivery)
    assert (after["state"], after["attempts"]) == ("failed", 2)
    assert after["last_error"].endswith("; gave up after 2 attempts")
    assert after["last_status"] == last.status_code


# Network failures: a hung receiver, nothing listening.


async def test_a_hung_receiver_times_out_and_retries(store: Store, clock: FakeClock) -> None:
    async with Receiver.running() as receiver:
        handler, gate = receiver.held(answer(200))
        receiver.expect_ordered_request("/h").respond_with_handler(handler)
        delivery = str((await queue(store, receiver.url_for("/h")))[0])
        courier = make_courier(store, clock, hooks(timeout_s=0.2))
        try:
            async with running(courier):
                await attempts(courier, 1)
        finally:
            gate.set()  # the handler ends, and so can the server
    after = await state(store, delivery)
    assert (after["state"], after["last_status"]) == ("retry_wait", None)
    assert after["last_error"] == "no answer within 0.2 s"  # the whole attempt, not a read
    assert after["next_attempt_at"] == NOW + retry_delay(delivery, 1, WAITS_S)
    assert courier.stats == CourierStats(retried=1)


async def test_connection_refused_retries(store: Store, clock: FakeClock) -> None:
    delivery = str((await queue(store, f"http://127.0.0.1:{free_port()}/h"))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        await attempts(courier, 1)
    after = await state(store, delivery)
    assert (after["state"], after["last_status"]) == ("retry_wait", None)
    assert after["last_error"].startswith("ConnectError")
    assert after["next_attempt_at"] == NOW + retry_delay(delivery, 1, WAITS_S)


# Destinations: checked before any byte is sent, and the request goes to the address checked.


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["169.254.169.254"], "169.254.169.254 is a link-local address"),
        (["10.0.0.1"], "10.0.0.1 is a private address"),
        (["127.0.0.1"], "127.0.0.1 is a loopback address"),
        (["::ffff:10.0.0.1"], "::ffff:10.0.0.1 is a private address"),
        (["100.100.100.200"], "100.100.100.200 is not a global address"),  # shared, 100.64/10
        (["93.184.216.34", "10.0.0.1"], "10.0.0.1 is a private address"),
        ([], "no address"),
    ],
)
async def test_a_refused_destination_fails_without_traffic(
    store: Store, clock: FakeClock, receiver: Receiver, addresses: list[str], reason: str
) -> None:
    """Resolved to a private, loopback or link-local address (or to none): failed, and no
    request is even handed to the transport (the receiver, on 127.0.0.1, sees nothing)."""
    resolver, transport = Resolver(*addresses), Recording()
    url = f"http://hooks.test:{receiver.port}/h"
    delivery = str((await queue(store, url))[0])
    courier = make_courier(
        store, clock, hooks(allow_private=False), resolve=resolver, transports=lambda: transport
    )
    async with running(courier):
        await attempts(courier, 1)
    after = await state(store, delivery)
    assert (after["state"], after["attempts"]) == ("failed", 1)
    assert after["last_error"] == f"destination refused: {reason}"
    assert resolver.calls == [("hooks.test", receiver.port)]
    assert transport.requests == [] and receiver.arrived == []


@pytest.mark.parametrize(
    "url",
    ["http://hooks.test:99999/h", "http://hooks.test:port/h", "ftp://hooks.test/h", "http:///h"],
)
async def test_a_malformed_url_fails_without_a_lookup(
    store: Store, clock: FakeClock, url: str
) -> None:
    resolver, transport = Resolver("127.0.0.1"), Recording()
    delivery = str((await queue(store, url))[0])
    courier = make_courier(store, clock, resolve=resolver, transports=lambda: transport)
    async with running(courier):
        await attempts(courier, 1)
    after = await state(store, delivery)
    assert (after["state"], after["attempts"]) == ("failed", 1)
    assert after["last_error"].startswith("bad destination: ")
    assert resolver.calls == [] and transport.requests == []


async def test_a_host_that_does_not_resolve_retries(store: Store, clock: FakeClock) -> None:
    resolver = Resolver(error=socket.gaierror(-2, "Name or service not known"))
    delivery = str((await queue(store, "https://hooks.test/h"))[0])
    courier = make_courier(store, clock, resolve=resolver, transports=Recording)
    async with running(courier):
        await attempts(courier, 1)
    after = await state(store, delivery)
    assert after["state"] == "retry_wait"
    assert after["last_error"] == "cannot resolve hooks.test: [Errno -2] Name or service not known"
    assert after["next_attempt_at"] == NOW + retry_delay(delivery, 1, WAITS_S)
    assert resolver.calls == [("hooks.test", 443)]


async def test_the_request_goes_to_the_checked_address_with_the_host_kept(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    """``hooks.test`` resolves (stub) to 127.0.0.1: the connection goes there, and the URL's
    host and port stay in ``Host``."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    resolver = Resolver("127.0.0.1")
    delivery = str((await queue(store, f"http://hooks.test:{receiver.port}/h"))[0])
    courier = make_courier(store, clock, resolve=resolver)
    async with running(courier):
        await attempts(courier, 1)
    (request,) = receiver.arrived
    assert request.headers["host"] == f"hooks.test:{receiver.port}"
    signed(request, delivery, NOW)
    assert resolver.calls == [("hooks.test", receiver.port)]
    assert (await state(store, delivery))["state"] == "delivered"


async def test_an_ipv6_address_is_pinned_in_brackets(store: Store, clock: FakeClock) -> None:
    async with Receiver.running("::1") as receiver:
        receiver.expect_ordered_request("/h").respond_with_response(answer(200))
        delivery = str((await queue(store, f"http://hooks.test:{receiver.port}/h"))[0])
        courier = make_courier(store, clock, resolve=Resolver("::1"))
        async with running(courier):
            await attempts(courier, 1)
    (request,) = receiver.arrived
    assert request.headers["host"] == f"hooks.test:{receiver.port}"
    assert request.remote_addr == "::1"
    assert (await state(store, delivery))["state"] == "delivered"


async def test_a_public_address_is_called_without_allow_private(
    store: Store, clock: FakeClock
) -> None:
    """A public address passes the check; the URL (default port) is pinned to it. (A mock
    transport answers: no traffic leaves the machine.)"""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    delivery = str((await queue(store, "http://hooks.test/h?x=1"))[0])
    courier = make_courier(
        store,
        clock,
        hooks(allow_private=False),
        resolve=Resolver("93.184.216.34"),
        transports=lambda: httpx.MockTransport(handler),
    )
    async with running(courier):
        await attempts(courier, 1)
    (request,) = seen
    assert str(request.url) == "http://93.184.216.34/h?x=1"
    assert request.headers["host"] == "hooks.test"
    assert (await state(store, delivery))["state"] == "delivered"


@dataclass
class TLS:
    """A throwaway CA and a certificate it issued for one host name."""

    server: ssl.SSLContext
    """Serves the certificate; notes the SNI name of every handshake in :attr:`names`."""
    client: ssl.SSLContext
    """Trusts the CA only."""
    names: list[str | None]


def tls_for(folder: Path, host: str) -> TLS:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "courier test CA")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + day)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        cert("courier test CA", ca_key, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        cert(host, key, ca_key)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "leaf.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    names: list[str | None] = []
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    server.sni_callback = lambda _sock, name, _ctx: names.append(name)
    client = ssl.create_default_context(cafile=folder / "ca.pem")
    return TLS(server, client, names)


def tls_courier(store: Store, clock: FakeClock, tls: TLS) -> Courier:
    """A courier trusting ``tls``'s CA, every name resolving to 127.0.0.1."""
    return make_courier(
        store,
        clock,
        resolve=Resolver("127.0.0.1"),
        transports=lambda: httpx.AsyncHTTPTransport(verify=tls.client),
    )


async def test_https_checks_the_certificate_against_the_urls_host(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    """Connected to the checked address, the TLS handshake still names the URL's host (SNI)
    and checks the certificate against it: a certificate for another host is refused."""
    tls = tls_for(tmp_path, "crm.test")
    async with Receiver.running(ssl_context=tls.server) as receiver:
        receiver.expect_ordered_request("/h").respond_with_response(answer(200))
        clock.now = NOW + 1
        wrong = str((await queue(store, f"https://evil.test:{receiver.port}/h", at=NOW))[0])
        right = f"https://crm.test:{receiver.port}/h"
        good = str((await queue(store, right, run="run-2", at=NOW + 0.5))[0])
        courier = tls_courier(store, clock, tls)
        async with running(courier):
            await attempts(courier, 2)
    after = await state(store, wrong)
    assert after["state"] == "retry_wait" and "CERTIFICATE_VERIFY_FAILED" in after["last_error"]
    assert (await state(store, good))["state"] == "delivered"
    (request,) = receiver.arrived
    assert request.headers["host"] == f"crm.test:{receiver.port}"
    assert tls.names == ["evil.test", "crm.test"]


async def test_https_does_not_reuse_a_connection_verified_for_another_host(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    """Two hosts on one address and port (shared hosting, a CDN), the certificate for the
    first only: the second host's delivery must not ride the first one's TLS connection."""
    tls = tls_for(tmp_path, "crm.test")
    async with KeepAlive.running(ssl_context=tls.server) as receiver:
        clock.now = NOW + 1
        await queue(store, f"https://crm.test:{receiver.port}/h", at=NOW)
        other = f"https://evil.test:{receiver.port}/h"
        wrong = str((await queue(store, other, run="run-2", at=NOW + 0.5))[0])
        courier = tls_courier(store, clock, tls)
        async with running(courier):
            await attempts(courier, 2)
    assert receiver.requests[0] == (1, f"crm.test:{receiver.port}")
    assert tls.names == ["crm.test", "evil.test"]  # a handshake of its own
    after = await state(store, wrong)
    assert after["state"] == "retry_wait"
    assert "CERTIFICATE_VERIFY_FAILED" in after["last_error"]


async def test_a_url_no_longer_in_hooks_allow_is_not_called(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.expect_request("/h").respond_with_response(answer(200))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])  # queued under old config
    config = hooks(allow=(receiver.url_for("/other/"),))  # the admin took /h off the list
    courier = make_courier(store, clock, config)
    async with running(courier):
        await attempts(courier, 1)
    assert receiver.arrived == []
    assert (await state(store, delivery))["state"] == "failed"


async def test_userinfo_is_not_sent_in_the_host_header(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.expect_request("/h").respond_with_response(answer(200))
    await queue(store, f"http://crm:s3cret@hooks.test:{receiver.port}/h")
    courier = make_courier(store, clock, resolve=Resolver("127.0.0.1"))
    async with running(courier):
        await attempts(courier, 1)
    (request,) = receiver.arrived
    assert request.headers["host"] == f"hooks.test:{receiver.port}"


async def test_an_idn_host_does_not_crash_the_round(
    store: Store, clock: FakeClock, receiver: Receiver, courier_log: Logged
) -> None:
    """A delivery to a non-ASCII host gets an outcome, and the one due after it is delivered."""
    receiver.expect_request("/h").respond_with_response(answer(200))
    clock.now = NOW + 1
    idn = f"http://bücher.test:{receiver.port}/h"
    await queue(store, idn, at=NOW)
    normal = str((await queue(store, receiver.url_for("/h"), run="run-2", at=NOW + 0.5))[0])
    courier = make_courier(store, clock, resolve=Resolver("127.0.0.1"))
    async with running(courier):
        # The next delivery's outcome is logged with its id, or the round's failure is.
        record = await courier_log.first(lambda m: normal in m or "round failed" in m)
    assert "round failed" not in record.getMessage()  # the round itself went on
    assert (await state(store, normal))["state"] == "delivered"


# Rounds: a failing store, a stop between two deliveries.


async def test_a_failing_store_is_retried(
    store: Store, clock: FakeClock, receiver: Receiver, courier_log: Logged
) -> None:
    """A claim that fails in SQLite is logged and tried again; nothing is lost."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    await store._db.execute(
        "CREATE TRIGGER no_lease BEFORE UPDATE ON deliveries WHEN NEW.state = 'sending' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    courier = make_courier(store, clock)
    async with running(courier):
        record = await courier_log.first(lambda m: "the store failed" in m)
        assert "injected failure" in record.getMessage()
        assert (await state(store, delivery))["state"] == "queued"  # the claim rolled back
        await store._db.execute("DROP TRIGGER no_lease")
        courier.wake()
        await attempts(courier, 1)
    assert (await state(store, delivery))["state"] == "delivered"


async def test_an_unexpected_error_is_logged_and_the_courier_goes_on(
    store: Store, clock: FakeClock, receiver: Receiver, courier_log: Logged
) -> None:
    """A delivery whose attempt raises (here the resolver, with something other than OSError)
    is logged and retried after its backoff; the others of its batch and the task go on."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    calls: list[str] = []

    async def flaky(host: str, port: int) -> list[str]:
        calls.append(host)
        if len(calls) == 1:
            raise RuntimeError("resolver bug")
        return ["127.0.0.1"]

    delivery = str((await queue(store, f"http://hooks.test:{receiver.port}/h"))[0])
    courier = make_courier(store, clock, hooks(lease_s=30.0), resolve=flaky)
    async with running(courier):
        record = await courier_log.first(lambda m: "unexpected error" in m)
        assert record.exc_info is not None and "resolver bug" in str(record.exc_info[1])
        await attempts(courier, 1)
        waiting = await state(store, delivery)
        assert (waiting["state"], waiting["attempts"]) == ("retry_wait", 1)
        assert waiting["last_error"] == "unexpected error: RuntimeError"
        clock.advance(retry_delay(delivery, 1, WAITS_S))
        courier.wake()
        await attempts(courier, 2)
    after = await state(store, delivery)
    assert (after["state"], after["attempts"]) == ("delivered", 2)
    assert calls == ["hooks.test", "hooks.test"] and len(receiver.arrived) == 1


async def test_a_stop_between_deliveries_leaves_the_rest_leased(
    store: Store, clock: FakeClock
) -> None:
    """Stopped during the first delivery of a batch: that one is recorded, the next is given
    back untried (queued, its attempt not counted, due at once), and a new courier delivers
    it."""
    async with Receiver.running() as receiver:
        handler, gate = receiver.held(answer(200))
        receiver.expect_ordered_request("/first").respond_with_handler(handler)
        receiver.expect_ordered_request("/second").respond_with_response(answer(200))
        clock.now = NOW + 1
        first = str((await queue(store, receiver.url_for("/first"), at=NOW))[0])
        second = str(
            (await queue(store, receiver.url_for("/second"), run="run-2", at=NOW + 0.5))[0]
        )
        courier = make_courier(store, clock)
        async with running(courier) as stop:
            await receiver.arrivals(1)
            stop.set()
            gate.set()
            await attempts(courier, 1)
        assert (await state(store, first))["state"] == "delivered"
        given_back = await state(store, second)
        assert (given_back["state"], given_back["attempts"]) == ("queued", 0)
        assert await store.deliveries.next_due() == NOW + 1
        assert receiver.paths == ["/first"]

        restarted = make_courier(store, clock)
        async with running(restarted):
            await attempts(restarted, 1)
    assert receiver.paths == ["/first", "/second"]
    after = await state(store, second)
    assert (after["state"], after["attempts"]) == ("delivered", 1)
    assert await store.deliveries.next_due() is None


# Configuration time: no traffic, a resolver stub.


def hooked(tmp_path: Path, url: str, allow: list[str], allow_private: bool = False) -> Any:
    return make_config(
        tmp_path,
        hooks={"allow": allow, "allow_private": allow_private},
        workflow=[{"name": "crm", "trigger": "Order Completed", "step": [{"webhook": url}]}],
    )


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every real lookup or connection attempt is recorded and refused."""
    tried: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            tried.append(what)
            raise OSError(f"no {what} in this test")

        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    return tried


@pytest.mark.parametrize(
    ("url", "addresses", "named"),
    [
        ("http://169.254.169.254/latest", ["169.254.169.254"], "169.254.169.254 is a link-local"),
        ("http://10.0.0.1/x", ["10.0.0.1"], "10.0.0.1 is a private"),
        ("http://metadata.test/latest", ["169.254.169.254"], "169.254.169.254 is a link-local"),
        ("http://crm.test:8080/x", ["93.184.216.34", "10.0.0.1"], "10.0.0.1 is a private"),
    ],
)
def test_a_refused_address_is_a_config_error(
    tmp_path: Path, no_network: list[str], url: str, addresses: list[str], named: str
) -> None:
    """A refused address is rejected at configuration time, without any traffic."""
    host = url.split("/")[2]
    allow = [f"http://{host}/"]
    resolver = Resolver(*addresses)
    with pytest.raises(ConfigError, match=named) as caught:
        load_rules(hooked(tmp_path, url, allow), resolve=resolver.sync)
    assert "workflow 'crm' step 1" in str(caught.value) and url in str(caught.value)
    hostname, _, port = host.partition(":")
    assert resolver.calls == [(hostname, int(port or 80))]
    assert no_network == []


def test_a_url_outside_hooks_allow_is_a_config_error_before_any_lookup(
    tmp_path: Path, no_network: list[str]
) -> None:
    resolver = Resolver("93.184.216.34")
    for url in ("http://evil.test/x", "http://crm.test.evil.test/x", "https://crm.test/x"):
        with pytest.raises(ConfigError, match=r"not in hooks\.allow \('http://crm\.test'\)"):
            load_rules(hooked(tmp_path, url, ["http://crm.test"]), resolve=resolver.sync)
    assert resolver.calls == [] and no_network == []
    # Allowed, public: accepted; and private addresses pass only with allow_private.
    load_rules(hooked(tmp_path, "http://crm.test/x", ["http://crm.test"]), resolve=resolver.sync)
    private = Resolver("10.0.0.1")
    config = hooked(tmp_path, "http://crm.test/x", ["http://crm.test"], allow_private=True)
    load_rules(config, resolve=private.sync)
    assert resolver.calls == [("crm.test", 80)] and private.calls == [("crm.test", 80)]
    assert no_network == []


def test_config_time_edge_cases(tmp_path: Path, no_network: list[str]) -> None:
    """A URL equal to an allowed prefix is allowed; a host that does not resolve now is a
    warning (checked again before each delivery), not an error; a bad port is an error."""
    calls: list[tuple[str, int]] = []

    def unresolvable(host: str, port: int) -> list[str]:
        calls.append((host, port))
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    _, warnings = load_rules(
        hooked(tmp_path, "http://crm.test/hook", ["http://crm.test/hook"]), resolve=unresolvable
    )
    assert any("crm.test does not resolve now" in w for w in warnings)
    assert calls == [("crm.test", 80)]
    with pytest.raises(ConfigError, match="Port out of range"):
        load_rules(
            hooked(tmp_path, "http://crm.test:99999/x", ["http://crm.test:99999"]),
            resolve=unresolvable,
        )
    assert calls == [("crm.test", 80)] and no_network == []


# End to end: a real server, then a real child process killed mid-delivery.


def crm_workflow(url: str) -> dict[str, Any]:
    return {
        "name": "crm",
        "trigger": "Order Completed",
        "step": [{"webhook": url, "properties": {"tier": "gold"}}],
    }


def order(user: str = "u1") -> dict[str, Any]:
    properties = {"revenue": 42.0}
    return event(
        "track", event="Order Completed", userId=user, anonymousId=None, properties=properties
    )


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def test_an_order_reaches_the_crm_signed_through_a_real_server(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.expect_ordered_request("/crm").respond_with_response(answer(200))
    clock = FakeClock(NOW)
    config = make_config(
        tmp_path,
        keys={"hooks_secret": HOOKS_SECRET},
        hooks={"allow": [receiver.url_for("/")], "allow_private": True},
        workflow=[crm_workflow(receiver.url_for("/crm"))],
    )
    async with run_server(config, clock=clock) as live:
        runtime = live.runtime
        courier = runtime.courier
        assert courier is not None and runtime.keys.hooks_secret == HOOKS_SECRET
        async with live.http() as client:
            response = await client.post("/v1/track", json=order(), headers=basic(WRITE_KEY))
        assert response.status_code == 200, response.text
        await attempts(courier, 1)
        assert courier.stats == CourierStats(delivered=1)
        (row,) = await runtime.store.deliveries.recent()
        assert await runtime.store.deliveries.counts() == {"delivered": 1}
    (request,) = receiver.arrived
    body = signed(request, row["id"], NOW)
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    data = body["data"]
    assert data["tier"] == "gold" and data["workflow"] == "crm"
    assert data["person"]["id"] == "u:u1" and data["run"] == row["run_id"]


class Lines(list[str]):
    """A child's log lines (``ServerProcess.log``), awaitable as they come."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def append(self, line: str) -> None:
        super().append(line)
        self.changed.set()

    async def line(self, text: str, start: int = 0) -> str:
        async with asyncio.timeout(4 * TIMEOUT_UNIT):
            while True:
                for line in self[start:]:
                    if text in line:
                        return line
                self.changed.clear()
                await self.changed.wait()


def child_config(tmp_path: Path, port: int, receiver: Receiver) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
allowed_origins = ["{ORIGIN}"]
shutdown_timeout_s = 10.0

[store]
path = "{tmp_path / "rtserver.db"}"

[keys]
write = "{WRITE_KEY}"
hooks_secret = "{HOOKS_SECRET}"

[hooks]
allow = ["{receiver.url_for("/")}"]
allow_private = true
lease_s = 0.5

[[workflow]]
name = "crm"
trigger = "Order Completed"

[[workflow.step]]
webhook = "{receiver.url_for("/crm")}"
properties = {{ tier = "gold" }}
""",
        encoding="utf-8",
    )
    return path


async def test_kill_9_mid_delivery_delivers_again_with_the_same_webhook_id(
    tmp_path: Path,
) -> None:
    """The child is killed while the receiver holds its request; restarted, it
    claims the delivery again once the lease (0.5 s, the child's real clock) runs out: the
    receiver gets it again with the same ``webhook-id`` and body, and it ends delivered."""
    async with Receiver.running() as receiver:
        handler, gate = receiver.held(answer(200))
        receiver.expect_ordered_request("/crm").respond_with_handler(handler)
        receiver.expect_ordered_request("/crm").respond_with_response(answer(200))
        server = ServerProcess(child_config(tmp_path, free_port(), receiver))
        server.log = lines = Lines()
        try:
            url = await server.start()
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_UNIT) as client:
                response = await client.post("/v1/track", json=order(), headers=basic(WRITE_KEY))
            assert response.status_code == 200, response.text
            await receiver.arrivals(1, 4 * TIMEOUT_UNIT)  # held: mid-delivery
            assert await server.kill() == -9
            gate.set()  # its answer goes nowhere: the connection died with the child
            restarted_at = len(lines)
            await server.start()
            await receiver.arrivals(2, 4 * TIMEOUT_UNIT)
            await lines.line("delivered (200, attempt 2)", restarted_at)
            assert await server.terminate(4 * TIMEOUT_UNIT) == 0
        finally:
            await server.kill()
    first, second = receiver.arrived
    db = sqlite3.connect(tmp_path / "rtserver.db")
    try:
        rows = db.execute("SELECT id, state, attempts, last_status FROM deliveries").fetchall()
    finally:
        db.close()
    ((delivery, final, tries, status),) = rows
    assert (final, tries, status) == ("delivered", 2, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery
    assert first.get_data() == second.get_data()
    for request in (first, second):  # signed on the child's real clock: verify on ours
        assert verify([HOOKS_SECRET], headers_of(request), request.get_data(), time.time())
        Webhook(HOOKS_SECRET).verify(request.get_data(), headers_of(request))
    assert orjson.loads(first.get_data())["data"]["tier"] == "gold"


async def test_a_long_answer_is_read_only_so_far(store: Store, clock: FakeClock) -> None:
    """Only the status counts: of a 1 MiB answer at most MAX_ANSWER_BYTES are read, and the
    delivery is delivered."""
    async with Receiver.running() as receiver:
        big = Response(b"x" * (1 << 20), status=200)
        receiver.expect_ordered_request("/h").respond_with_response(big)
        delivery = str((await queue(store, receiver.url_for("/h")))[0])
        courier = make_courier(store, clock)
        async with running(courier):
            await attempts(courier, 1)
    assert (await state(store, delivery))["state"] == "delivered"


async def test_connections_are_kept_for_the_newest_destinations(
    store: Store, clock: FakeClock, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CLIENTS destinations, the least recently used one's connections close; every
    delivery still goes out."""
    monkeypatch.setattr("rtserver.hooks.sender.CLIENTS", 1)
    receiver.expect_request("/h").respond_with_response(answer(200))
    clock.now = NOW + 1
    for n, host in enumerate(("one.test", "two.test", "one.test")):
        await queue(store, f"http://{host}:{receiver.port}/h", run=f"run-{n}", at=NOW + n / 10)
    courier = make_courier(store, clock, resolve=Resolver("127.0.0.1"))
    async with running(courier):
        await attempts(courier, 3)
    assert courier.stats == CourierStats(delivered=3)
    hosts = [r.headers["host"].split(":")[0] for r in receiver.arrived]
    assert hosts == ["one.test", "two.test", "one.test"]


async def test_a_failed_round_is_logged_and_the_task_goes_on(
    store: Store, clock: FakeClock, receiver: Receiver, courier_log: Logged,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Anything a round raises besides a store error is logged with its traceback; the task
    waits a little and goes on."""
    receiver.expect_ordered_request("/h").respond_with_response(answer(200))
    delivery = str((await queue(store, receiver.url_for("/h")))[0])
    claim = store.deliveries.claim
    calls: list[float] = []

    async def flaky(now: float, limit: int, lease_s: float) -> Any:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("claim bug")
        return await claim(now, limit, lease_s)

    monkeypatch.setattr(store.deliveries, "claim", flaky)
    monkeypatch.setattr("rtserver.hooks.sender.ERROR_WAIT_S", 0.001)
    courier = make_courier(store, clock)
    async with running(courier):
        record = await courier_log.first(lambda m: "round failed" in m)
        assert record.exc_info is not None and "claim bug" in str(record.exc_info[1])
        await attempts(courier, 1)
    assert (await state(store, delivery))["state"] == "delivered"
