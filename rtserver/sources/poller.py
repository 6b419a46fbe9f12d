"""One polling source's cycle: ask the API page by page, map each item to an event, commit the
page's events, and only then move the cursor on.

A cycle reads pages until the source has nothing newer (then it waits ``every``), until the
rate runs out (then it waits for the next token), or until a request fails (then it waits
until the answer's ``Retry-After``, or backs off exponentially when there is none). Each page's
events go through the pipeline as trusted server events and the cursor is saved after their
commit: a crash between the two re-reads that one page, and its messageIds
(``poll-<name>-<id>``) are dropped as duplicates. Where the source stands lives in the store
(``store.polls``), so a restart resumes there, and honours a ``Retry-After`` it had been given.

Every request goes through the outbound guard (:func:`rtserver.hooks.fetch_into`): public
addresses only unless ``allow_private``, no redirects, a bounded body. A ``Link`` header's next
page must stay on the source's own scheme, host and port (the credentials go with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import io
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from rtserver.clock import Clock
from rtserver.errors import InvalidEvent, StoreError
from rtserver.hooks import AsyncResolve, DestinationRefused, fetch_into, resolve_async
from rtserver.model import Event, Limits, Submit, parse_event
from rtserver.sources.backoff import Bucket, backoff_s, retry_after_s
from rtserver.sources.definitions import PollSource
from rtserver.store import PollState, Store

__all__ = ["MAX_PAGE_BYTES", "MAX_PAGES", "Cycle", "Mapped", "Poller", "Pollers"]

logger = logging.getLogger(__name__)

MAX_PAGE_BYTES = 16 * 1024 * 1024
"""The largest page read; a larger answer is an error."""
MAX_PAGES = 1000
"""Pages one cycle reads at most (then the next cycle goes on from the cursor)."""
TIMEOUT_S = 30.0
"""Each connect and read of a request."""
BATCH = 500
"""Events per submission to the pipeline."""
MAX_WAIT_S = 60.0
"""The longest the run loop sleeps between looks (a clock that jumps is noticed)."""
MIN_WAIT_S = 0.05


class PageError(Exception):
    """A page that cannot be read as the source says (not JSON, items not a list, a bad
    cursor); the cycle backs off as for a failed request."""


@dataclass(frozen=True, slots=True)
class Mapped:
    """An item turned into an event; ``stored`` says whether it was new (False: its
    messageId was stored already, a duplicate)."""

    message_id: str
    event: str
    user_id: str | None
    anonymous_id: str | None
    properties: Mapping[str, Any]
    stored: bool


@dataclass(slots=True)
class Cycle:
    """What one call of :meth:`Poller.cycle` did."""

    requests: int = 0
    pages: int = 0
    mapped: list[Mapped] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Items that could not be mapped, each with its reason (the cycle goes on)."""
    error: str | None = None
    """Why the cycle stopped early (it backs off), or None."""
    caught_up: bool = False
    """Whether it read to the end of the source."""
    due: bool = True
    """False when the source was not due: nothing was asked."""


def _query(url: str, param: str, value: Any) -> str:
    """``url`` with its query parameter ``param`` set to ``value``."""
    parts = urllib.parse.urlsplit(url)
    pairs = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k != param]  # fmt: skip
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    pairs.append((param, text))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(pairs)))


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _iso(value: Any) -> Any:
    """A number of seconds since the epoch as an ISO-8601 string; anything else as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()
    return value


def _id(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InvalidEvent(f"id must be a non-empty string or integer, got {value!r}")
    return str(value)


class Poller:
    """One configured source: its cycles, its rate, and its status of the moment."""

    def __init__(
        self,
        source: PollSource,
        store: Store,
        submit: Submit,
        limits: Limits,
        clock: Clock,
        *,
        resolve: AsyncResolve = resolve_async,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.submit = submit
        self.limits = limits
        self.clock = clock
        self.bucket = Bucket(source.rate_per_minute, clock())
        self._resolve = resolve
        self._transport = transport
        self.state: PollState | None = None
        """The state as last read or saved (None before the first cycle)."""
        self.requests = 0
        self.errors = 0
        self.events = 0
        """Requests, failed requests or pages, and new events stored, by this process."""

    def due(self, now: float) -> bool:
        """Whether the source may be asked at ``now`` (as far as this process knows)."""
        return self.state is None or self.state.next_run is None or self.state.next_run <= now

    def status(self, now: float) -> dict[str, Any]:
        """The source's status for the dashboard and ``/metrics``."""
        state = self.state or PollState(self.source.name)
        caught_up = state.caught_up_at
        return {
            "name": self.source.name,
            "last_run": state.last_run,
            "last_error": state.last_error,
            "next_run": state.next_run,
            "lag_s": None if caught_up is None else round(max(now - caught_up, 0.0), 3),
            "failures": state.failures,
            "requests": self.requests,
            "errors": self.errors,
            "events": self.events,
        }

    def hold(self, now: float) -> None:
        """Not due again before a backoff (after a cycle that failed unexpectedly)."""
        state = self.state or PollState(self.source.name)
        self.state = dataclasses.replace(
            state, next_run=now + backoff_s(self.source.name, state.failures + 1)
        )

    async def _save(self, state: PollState) -> None:
        await self.store.polls.save(state, self.clock())
        self.state = state

    async def cycle(self, *, force: bool = False) -> Cycle:
        """Read the source from its saved cursor as far as it may now; what it did.

        Not due (a wait or a ``Retry-After`` not over yet): nothing is asked, unless ``force``.

        Raises:
            StoreError: the state could not be read or saved (nothing is lost: the cursor
                stays where the last commit left it).
        """
        result = Cycle()
        state = await self.store.polls.state(self.source.name) or PollState(self.source.name)
        self.state = state
        if not force and not self.due(self.clock()):
            result.due = False
            return result
        for _ in range(MAX_PAGES):
            wait_s = self.bucket.take(self.clock())
            if wait_s > 0:
                await self._save(dataclasses.replace(state, next_run=self.clock() + wait_s))
                return result
            result.requests += 1
            self.requests += 1
            try:
                url = self._url(state.cursor)
                response, headers = await self._get(url)
                result.pages += 1
                cursor, end = await self._page(url, response, headers, state.cursor, result)
            except (DestinationRefused, OSError, httpx.HTTPError, TimeoutError, PageError,
                    StoreError) as exc:  # fmt: skip
                await self._failed(state, exc, result)
                return result
            state = dataclasses.replace(state, cursor=cursor, last_run=self.clock(),
                                        last_error=None, failures=0, next_run=None)  # fmt: skip
            if end:
                now = self.clock()
                state = dataclasses.replace(
                    state, caught_up_at=now, next_run=now + self.source.every_s
                )
                await self._save(state)
                result.caught_up = True
                return result
            await self._save(state)
        # MAX_PAGES read: the next cycle goes on from the cursor at once.
        return result

    async def _failed(self, state: PollState, exc: BaseException, result: Cycle) -> None:
        """Back off: until the answer's ``Retry-After`` when it has one, else exponentially
        with seeded jitter."""
        self.errors += 1
        now = self.clock()
        failures = state.failures + 1
        wait_s = backoff_s(self.source.name, failures)
        if isinstance(exc, DestinationRefused) and exc.retry_after is not None:
            # The API said when: exactly then (a 429's Retry-After is its own backoff).
            wait_s = retry_after_s(exc.retry_after, now) or wait_s
        reason = str(exc) or type(exc).__name__
        result.error = reason
        logger.warning("poll %s: %s; trying again in %.0fs", self.source.name, reason, wait_s)
        await self._save(
            dataclasses.replace(
                state, last_run=now, last_error=reason, failures=failures, next_run=now + wait_s
            )  # fmt: skip
        )

    def _url(self, cursor: Any) -> str:
        source = self.source
        if cursor is None or source.pagination == "":
            return source.url
        if source.pagination == "link":
            return str(cursor)
        return _query(source.url, source.cursor_param, cursor)

    async def _get(self, url: str) -> tuple[Any, httpx.Headers]:
        """The decoded JSON of one page, and its headers."""
        sink = io.BytesIO()
        headers = {"accept": "application/json", "accept-encoding": "identity",
                   **self.source.headers}  # fmt: skip
        answer = await fetch_into(
            url,
            sink,
            headers=headers,
            allow_private=self.source.allow_private,
            timeout_s=TIMEOUT_S,
            max_bytes=MAX_PAGE_BYTES,
            resolve=self._resolve,
            transport=self._transport,
        )
        if answer is None:  # a 304 to a request without validators: nothing to read
            raise PageError("304 Not Modified to a request without validators")
        try:
            return orjson.loads(sink.getvalue()), answer
        except orjson.JSONDecodeError as exc:
            raise PageError(f"the page is not JSON: {exc}") from None

    async def _page(
        self, url: str, response: Any, headers: httpx.Headers, cursor: Any, result: Cycle
    ) -> tuple[Any, bool]:
        """Map and commit one page; the cursor to save and whether the source is read to
        its end.

        Raises:
            PageError: the items are not a list, or the next cursor cannot be read.
            StoreError, TimeoutError: the commit failed (the cursor stays).
        """
        source = self.source
        try:
            items = source.items({"response": response})
        except ValueError as exc:
            raise PageError(f"items: {exc}") from None
        if items is None:
            items = []
        if not isinstance(items, list):
            raise PageError(f"items: expected a list, got {type(items).__name__}")
        events = self._map(items, response, result)
        await self._commit(events, result)
        if source.pagination == "":
            return None, True
        if source.pagination == "link":
            next_url = self._next_link(url, headers)
            return (url, True) if next_url is None else (next_url, False)
        if source.pagination == "cursor":
            assert source.cursor is not None
            try:
                value = source.cursor({"response": response})
            except ValueError as exc:
                raise PageError(f"cursor: {exc}") from None
            if value is None or value == "" or value == cursor or not items:
                return cursor, True
            return value, False
        return self._since(items, response, cursor)

    def _since(self, items: list[Any], response: Any, since: Any) -> tuple[Any, bool]:
        """The newest timestamp of the items (``pagination = "since"``)."""
        assert self.source.cursor is not None
        newest = since
        try:
            for item in items:
                value = self.source.cursor({"item": item, "response": response})
                if value is not None and (newest is None or value > newest):
                    newest = value
        except (ValueError, TypeError) as exc:
            raise PageError(f"cursor: {exc}") from None
        return newest, newest == since

    def _next_link(self, url: str, headers: httpx.Headers) -> str | None:
        links = httpx.Response(200, headers=headers).links
        target = links.get("next", {}).get("url")
        if not target:
            return None
        target = urllib.parse.urljoin(url, target)
        if _origin(target) != _origin(self.source.url):
            raise PageError(f"the next page {target!r} is not on the source's host")
        return target if target != url else None

    def _map(self, items: Sequence[Any], response: Any, result: Cycle) -> list[Event]:
        events: list[Event] = []
        for index, item in enumerate(items):
            try:
                events.append(self._event(item, response))
            except (ValueError, InvalidEvent) as exc:
                reason = f"item {index} of page {result.pages}: {exc}"
                result.skipped.append(reason)
                logger.warning("poll %s: %s", self.source.name, reason)
        return events

    def _event(self, item: Any, response: Any) -> Event:
        source = self.source
        names = {"item": item, "response": response}
        name = source.event(names)
        raw: dict[str, Any] = {
            "type": "track",
            "messageId": f"poll-{source.name}-{_id(source.id(names))}",
            "event": name,
            "properties": {key: value(names) for key, value in source.properties},
            "context": {"source": f"poll:{source.name}"},
        }
        for key, expression in (("userId", source.user_id), ("anonymousId", source.anonymous_id),
                                ("timestamp", source.timestamp)):  # fmt: skip
            if expression is not None:
                value = expression(names)
                if value is not None and value != "":
                    raw[key] = _iso(value) if key == "timestamp" else value
        if not isinstance(name, str):
            raise InvalidEvent(f"event must be a string, got {name!r}")
        return parse_event(raw, self.limits, source="server")

    async def _commit(self, events: list[Event], result: Cycle) -> None:
        if not events:
            return
        known = await self.store.polls.stored(e.message_id for e in events)
        for start in range(0, len(events), BATCH):
            await (await self.submit(events[start : start + BATCH], self.clock()))
        fresh = 0
        for event in events:
            new = event.message_id not in known
            fresh += new
            known.add(event.message_id)  # the same id twice on a page is stored once
            result.mapped.append(
                Mapped(
                    event.message_id,
                    event.name or "",
                    event.user_id,
                    event.anonymous_id,
                    event.properties,
                    new,
                )  # fmt: skip
            )
        self.events += fresh


class Pollers:
    """Every configured source, run by one task (``pollers``)."""

    def __init__(self, pollers: Sequence[Poller], clock: Clock) -> None:
        self.pollers = tuple(pollers)
        self.clock = clock
        self.cycles = 0
        """Cycles run by :meth:`run` (tests wait on :attr:`progress`)."""
        self.progress = asyncio.Condition()

    def status(self) -> list[dict[str, Any]]:
        """Each source's status, in the config's order."""
        now = self.clock()
        return [poller.status(now) for poller in self.pollers]

    async def run(self, stop: asyncio.Event) -> None:
        """Run each source's cycle whenever it is due, until ``stop`` is set."""
        while not stop.is_set():
            for poller in self.pollers:
                if stop.is_set():
                    return
                if not poller.due(self.clock()):
                    continue
                try:
                    await poller.cycle()
                except StoreError as exc:
                    logger.warning("poll %s: the store failed: %s", poller.source.name, exc)
                except Exception:  # one source's bug must never stop the others or the server
                    logger.exception("poll %s: the cycle failed", poller.source.name)
                    poller.hold(self.clock())
                async with self.progress:
                    self.cycles += 1
                    self.progress.notify_all()
            now = self.clock()
            upcoming = [p.state.next_run for p in self.pollers if p.state and p.state.next_run]
            wait_s = min(upcoming, default=now + MAX_WAIT_S) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(max(wait_s, MIN_WAIT_S), MAX_WAIT_S))
