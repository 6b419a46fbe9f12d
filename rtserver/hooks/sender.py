"""Outbound webhooks: deliver what ``webhook`` steps decided, signed, at least once.

One task, :meth:`Courier.run`. Each round it leases due deliveries (a lease a crash left
behind counts as due, so nothing decided is lost) and POSTs each one with httpx:

- the body is the stored payload (``{"type", "timestamp", "data"}``), signed the Standard
  Webhooks way with ``keys.hooks_secret`` (``webhook-id`` is the delivery's id on every
  attempt, so receivers drop repeats; ``webhook-timestamp`` is the attempt's time);
- the host is resolved and every address checked (:mod:`rtserver.hooks.destinations`) before any
  byte is sent, and the request goes to the address checked (the URL's host stays in ``Host``
  and in TLS's SNI and certificate check): a DNS answer cannot change between check and use;
- redirects are never followed; one attempt lasts at most ``hooks.timeout_s``.

Answers::

    2xx                          delivered
    410 Gone                     failed, and the endpoint disabled for every later delivery
    429, 503 with Retry-After    retry after what the receiver asked (at most a day)
    3xx, 408, 425, 429, 5xx,     retry after hooks.retry[n] ±20 %; once the list is used up:
    timeouts, connection errors  failed
    other 4xx                    failed (the receiver refuses this payload; retrying is moot)
    a refused address            failed, no traffic

Waiting never sleeps blindly: the task waits on :meth:`Courier.wake` with a timeout computed
from the injected clock (the next due delivery), capped at ``MAX_WAIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from rtserver import __version__
from rtserver.clock import Clock
from rtserver.config import HooksConfig
from rtserver.errors import StoreError
from rtserver.hooks.destinations import (
    MAX_ANSWER_BYTES,
    AsyncResolve,
    allowed,
    pinned,
    resolve_async,
    target,
    unsafe,
)
from rtserver.hooks.signatures import sign
from rtserver.mail import redact, retry_delay, wake_on
from rtserver.store import Delivery, Store

__all__ = ["Courier", "CourierStats"]

logger = logging.getLogger(__name__)

BATCH = 16
MAX_WAIT_S = 60.0
ERROR_WAIT_S = 5.0
MAX_RETRY_AFTER_S = 86400.0
RETRYABLE = frozenset({408, 425, 429})
CLIENTS = 32
"""Destinations whose connections are kept open at once."""

Outcome = tuple[str, int | None, str, float | None, str | None]
"""(state, HTTP status, error, next attempt, disable reason)."""


@dataclass(slots=True)
class CourierStats:
    """Counters since start (``/metrics``)."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    disabled: int = 0
    """Endpoints disabled by a 410."""


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER_S)


async def _drain(response: httpx.Response) -> None:
    """Read at most ``MAX_ANSWER_BYTES`` of an answer's body (only its status counts), so
    a receiver that streams without end cannot fill the memory."""
    read = 0
    with contextlib.suppress(httpx.StreamConsumed):  # an answer made in memory (tests)
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_ANSWER_BYTES:
                break


class Courier:
    """Delivers the store's due webhook deliveries until stopped."""

    def __init__(
        self,
        store: Store,
        config: HooksConfig,
        secret: str,
        clock: Clock,
        *,
        resolve: AsyncResolve = resolve_async,
        transports: Callable[[], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.stats = CourierStats()
        self.progress = asyncio.Condition()
        """Notified after every recorded attempt (tests and the dashboard wait on it)."""
        self._secret = secret
        self._resolve = resolve
        self._waits: list[float] = list(config.retry)
        self._wake = asyncio.Event()
        self._transports = transports
        """Makes each destination's transport (tests); None: httpx's own, one per client."""
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}
        """One client (so one connection pool) per destination scheme, host and port: a
        connection made and verified for one host is never reused for another that happens
        to share its address."""

    def wake(self) -> None:
        """Look again now: deliveries were queued, or the clock moved."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a failed round is logged and retried."""
        watcher = asyncio.create_task(wake_on(stop, self._wake), name="courier-stop")
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    delay = await self._round(stop)
                except StoreError as exc:
                    logger.warning("courier: the store failed, trying again: %s", exc)
                    delay = ERROR_WAIT_S
                except Exception:  # the task boundary: log it and keep delivering
                    logger.exception("courier round failed")
                    delay = ERROR_WAIT_S
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(delay, MAX_WAIT_S))
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
            for client in self._clients.values():
                await client.aclose()
            self._clients.clear()

    async def _client(self, scheme: str, host: str, port: int) -> httpx.AsyncClient:
        """The client for one destination (the least recently used of ``CLIENTS`` closes)."""
        key = (scheme, host, port)
        client = self._clients.pop(key, None)
        if client is None:
            client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=self.config.timeout_s,
                transport=self._transports() if self._transports is not None else None,
                headers={"User-Agent": f"rtserver/{__version__}"},
                trust_env=False,
            )
            if len(self._clients) >= CLIENTS:
                oldest = next(iter(self._clients))
                await self._clients.pop(oldest).aclose()
        self._clients[key] = client
        return client

    async def _round(self, stop: asyncio.Event) -> float:
        """Deliver one batch, then record its outcomes in one transaction (a crash before
        that re-sends them: at least once, the same ``webhook-id``); how long to wait next
        (0: go on)."""
        now = self.clock()
        leased = await self.store.deliveries.claim(now, BATCH, self.config.lease_s)
        gone: dict[str, str] = {}  # URLs that answered 410 in this batch
        tried: list[tuple[Delivery, Outcome]] = []
        for index, delivery in enumerate(leased):
            if stop.is_set():
                # Not tried: back to the queue as they were, due at once after a restart.
                await self.store.deliveries.release([d.id for d in leased[index:]], self.clock())
                break
            if delivery.url in gone:
                error = f"endpoint disabled: {gone[delivery.url]}"
                outcome: Outcome = "failed", None, error, None, None
            else:
                outcome = await self._try(delivery)
            if outcome[4] is not None:
                gone[delivery.url] = outcome[4]
            tried.append((delivery, outcome))
        if tried:
            at = self.clock()
            await self.store.deliveries.finish_many(
                [(d.id, state, at, status, error, next_at, disable)
                 for d, (state, status, error, next_at, disable) in tried]
            )  # fmt: skip
            for delivery, (state, status, error, _, disable) in tried:
                self._count(delivery, state, status, error, disable)
            async with self.progress:
                self.progress.notify_all()
        if leased:
            return 0.0
        due = await self.store.deliveries.next_due()
        return MAX_WAIT_S if due is None else max(0.0, due - now)

    def _count(
        self, delivery: Delivery, state: str, status: int | None, error: str, disable: str | None
    ) -> None:
        stats = self.stats
        if state == "delivered":
            stats.delivered += 1
            logger.info(
                "webhook %s delivered (%s, attempt %d)", delivery.id, status, delivery.attempts
            )
        elif state == "retry_wait":
            stats.retried += 1
            logger.warning("webhook %s deferred: %s", delivery.id, error)
        else:
            stats.failed += 1
            stats.disabled += disable is not None
            logger.warning("webhook %s failed: %s", delivery.id, error)

    def _retry(
        self, delivery: Delivery, error: str, status: int | None = None, wait: float | None = None
    ) -> Outcome:
        """Try again later, after ``wait`` or the backoff; failed once the retries ran out."""
        if delivery.attempts > len(self._waits):
            error = f"{error}; gave up after {delivery.attempts} attempts"
            return "failed", status, error, None, None
        if wait is None:
            wait = retry_delay(delivery.id, delivery.attempts, self._waits)
        return "retry_wait", status, error, self.clock() + wait, None

    async def _try(self, delivery: Delivery) -> Outcome:
        """:meth:`_attempt`, and whatever it raises unforeseen made a retry (logged), so one
        delivery can never stop the others of its batch."""
        try:
            return await self._attempt(delivery)
        except Exception as exc:  # the boundary of one delivery
            logger.exception("webhook %s: unexpected error", delivery.id)
            return self._retry(delivery, f"unexpected error: {type(exc).__name__}")

    async def _attempt(self, delivery: Delivery) -> Outcome:
        """One POST of ``delivery``, and what it means."""
        try:
            host, port = target(delivery.url)
            host = host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError) as exc:
            return "failed", None, f"bad destination: {exc}", None, None
        if not allowed(delivery.url, self.config.allow):
            return "failed", None, "destination no longer in hooks.allow", None, None
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            return self._retry(delivery, f"cannot resolve {host}: {exc}")
        refused = unsafe(addresses, self.config.allow_private) if addresses else "no address"
        if refused is not None:
            return "failed", None, f"destination refused: {refused}", None, None
        parts = urllib.parse.urlsplit(delivery.url)
        name = f"[{host}]" if ":" in host else host
        headers = {
            **sign(self._secret, delivery.id, math.floor(self.clock()), delivery.payload),
            "content-type": "application/json",
            "host": name if parts.port is None else f"{name}:{parts.port}",
        }
        auth = None
        if parts.username is not None:  # credentials in the URL: Basic auth, never the Host
            password = urllib.parse.unquote(parts.password or "")
            auth = httpx.BasicAuth(urllib.parse.unquote(parts.username), password)
        extensions: dict[str, Any] = {"sni_hostname": host}
        client = await self._client(parts.scheme, host, port)
        request = client.build_request(
            "POST",
            pinned(delivery.url, addresses[0]),
            content=delivery.payload,
            headers=headers,
            extensions=extensions,
        )
        try:
            async with asyncio.timeout(self.config.timeout_s):  # the whole attempt, not a read
                response = await client.send(
                    request, auth=auth or httpx.USE_CLIENT_DEFAULT, stream=True
                )
                try:
                    await _drain(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            return self._retry(delivery, f"no answer within {self.config.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return self._retry(delivery, redact(f"{type(exc).__name__}: {exc}"))
        return self._answer(delivery, response)

    def _answer(self, delivery: Delivery, response: httpx.Response) -> Outcome:
        status = response.status_code
        said = f"{status} {response.reason_phrase}".strip()
        if 200 <= status < 300:
            return "delivered", status, "", None, None
        if status == 410:
            return "failed", status, f"{said}: endpoint disabled", None, said
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            return self._retry(delivery, f"{said} to {location!r}, not followed", status)
        if status in (429, 503):
            wait = _retry_after(response.headers.get("retry-after"), self.clock())
            return self._retry(delivery, said, status, wait)
        if status >= 500 or status in RETRYABLE:
            return self._retry(delivery, said, status)
        return "failed", status, said, None, None
