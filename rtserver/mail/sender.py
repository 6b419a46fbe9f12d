"""The outbox drain: claim due mails, render them, hand them to SMTP, record each outcome.

One task, :meth:`Sender.run`. Each round it recovers leases left ``sending`` by a crash (at
start, then every ``RECOVER_EVERY_S``), claims up to ``BATCH`` due mails within the rate and
daily budgets (the claim itself ends suppressed, unconsented and expired ones), and sends them
one after the other on the one long-lived :class:`~rtserver.mail.render.Relay` connection. The
batch's contexts (cart, recommendations) are read at once when it is claimed; each next mail
is rendered while the relay digests the current one's content (the longest wait of an SMTP
transaction), and the outcomes of a batch are written in one transaction at its end. So a
crash can leave at most one batch delivered but still ``sending``; those turn ``ambiguous``.

Outcomes (the relay classifies SMTP replies: :func:`rtserver.mail.smtp.classify`)::

    relay says   outbox row                                        counted as
    sent         sent                                              sent
    retry        retry_wait, next try after mail.retry[n] ±20 %    retried
                 (marketing past mail.max_age by then: failed)     expired
    suppress     failed, and the recipient suppressed (5.1.x)      suppressed
    failed       failed (5.7.x / 554 also logs an operator alert)  failed
    ambiguous    ambiguous: 'resend' tries again at once after a    ambiguous
                 first attempt, with the backoff after later ones;
                 'drop' never tries again
    (render)     failed with the template error                    failed

A retry without any SMTP reply (connection refused, a timeout: the relay is down or hung)
gives the rest of its batch back untried, due with it, so a hung relay costs one timeout a
batch, not one a mail.

Waiting never sleeps blindly: the task waits on an event (:meth:`Sender.wake`) with a timeout
computed from the injected clock (the next due mail, the rate budget, the next UTC day), capped
at ``MAX_WAIT_S`` so a wall clock that jumps is noticed, as the timer driver does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from rtserver.clock import Clock
from rtserver.config import MailConfig
from rtserver.errors import MailError, StoreError
from rtserver.mail.contexts import Contexts
from rtserver.mail.mime import RawMail
from rtserver.mail.render import MailContext, Mailer
from rtserver.mail.smtp import Outcome, Relay
from rtserver.store import NEVER, Claim, Dropped, Store

__all__ = ["Sender", "SenderStats", "retry_delay", "wake_on"]

logger = logging.getLogger(__name__)


BATCH = 32
"""Most mails claimed per round (their outcomes are written together)."""
MAX_WAIT_S = 60.0
"""Longest wait without looking at the clock again."""
ERROR_WAIT_S = 5.0
"""Wait after a round failed (the store unavailable, say) before trying again."""
RECOVER_EVERY_S = 60.0
"""How often leases left ``sending`` are looked for (besides at start)."""
JITTER = 0.2
"""Retry waits vary by up to this fraction either way, so retries do not come in waves."""
DAY_S = 86400.0
ORIGINAL_TO = "X-RT-Original-To"
"""Header keeping the real recipient of a mail rerouted to ``mail.test_recipients``."""
_POLICY_BLOCK = re.compile(r"\b5\.7\.\d{1,3}\b")


def retry_delay(mail_id: str, attempt: int, waits: Sequence[float]) -> float:
    """The wait after failed attempt ``attempt`` (1-based): ``waits[attempt - 1]``, the last
    one repeating, ±``JITTER``; the jitter is seeded by the mail and attempt (deterministic)."""
    base = waits[min(max(attempt, 1), len(waits)) - 1]
    return base * (1.0 + random.Random(f"{mail_id}:{attempt}").uniform(-JITTER, JITTER))


@dataclass(slots=True)
class SenderStats:
    """Counters since start (``/metrics``)."""

    sent: int = 0
    retried: int = 0
    """Attempts that ended in ``retry_wait``."""
    failed: int = 0
    """Mails that failed after an attempt (5xx, a template error), expired ones not included."""
    suppressed: int = 0
    """Mails whose recipient bounced for good (5.1.x), and is now suppressed."""
    ambiguous: int = 0
    """Attempts whose delivery is in doubt (lost after DATA, or a lease that ran out)."""
    dropped: int = 0
    """Mails ended at claim without an attempt: suppressed address, no consent, no email."""
    expired: int = 0
    """Marketing mails failed as ``expired`` (past ``mail.max_age``)."""


class _Bucket:
    """A token bucket on the injected clock: ``rate`` a second, bursts of ``max(1, rate)``."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = now

    def available(self, now: float) -> float:
        # A clock that went back adds nothing; time counts again from there.
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def wait_s(self) -> float:
        """Seconds until one token is there (after :meth:`available`)."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class Sender:
    """Drains the outbox through ``mailer`` and ``relay``; one :meth:`run` task per server."""

    def __init__(
        self, store: Store, mailer: Mailer, relay: Relay, config: MailConfig, clock: Clock
    ) -> None:
        self.store = store
        self.mailer = mailer
        self.relay = relay
        self.config = config
        self.clock = clock
        self.stats = SenderStats()
        self.waiting: str | None = None
        """Why the sender waits: 'nothing queued', 'next due', 'rate limit', 'daily limit',
        'store failed' or 'error'; None while it works."""
        self.in_flight = 0
        """Mails claimed and not yet tried."""
        self.progress = asyncio.Condition()
        """Notified when mails are claimed, when outcomes are recorded and when the sender
        starts waiting (tests and the dashboard wait on it)."""
        self._waits: list[float] = list(config.retry)
        self._max_age_s: float = config.max_age
        self._wake = asyncio.Event()
        self._bucket = _Bucket(config.rate_per_s, clock())
        self._day = -1.0
        self._sent_today = 0
        self._next_recover = -math.inf
        self.contexts = Contexts(store, mailer, config)
        """Builds each mail's context (cart, recommendations), with its product caches."""
        self._outcomes: list[tuple[Any, ...]] = []
        self._shown: list[tuple[Any, ...]] = []
        """The products the mails sent since the last flush showed (mail, person, id, url)."""

    def wake(self) -> None:
        """Look again now: mails were queued, or the clock moved."""
        self.waiting = None
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send due mails until ``stop`` is set; a failed round is logged and retried."""
        watcher = asyncio.create_task(wake_on(stop, self._wake), name="sender-stop")
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    delay, why = await self._round(stop)
                except StoreError as exc:
                    logger.warning("sender: the store failed, trying again: %s", exc)
                    delay, why = ERROR_WAIT_S, "store failed"
                except Exception:  # the task boundary: log it and keep sending
                    logger.exception("sender round failed")
                    delay, why = ERROR_WAIT_S, "error"
                if delay > 0:
                    await self._wait(delay, why)
            try:
                await self._flush()  # what a failed write left over, if it can be written now
            except StoreError as exc:
                logger.error("sender stopped with outcomes it could not record: %s", exc)
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])

    async def _wait(self, delay: float, why: str) -> None:
        self.waiting = why
        await self._notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), min(delay, MAX_WAIT_S))
        self.waiting = None

    async def _round(self, stop: asyncio.Event) -> tuple[float, str]:
        """Claim and send one batch; return how long to wait next (0: go on) and why."""
        await self._flush()  # outcomes a failed write left over
        now = self.clock()
        if now >= self._next_recover or now < self._next_recover - RECOVER_EVERY_S:
            recovered = await self.store.mail.recover(now, self.config.ambiguous == "resend")
            self._next_recover = now + RECOVER_EVERY_S
            if recovered:
                self.stats.ambiguous += recovered
                logger.warning("%d mails were left sending past their lease: ambiguous", recovered)
        day = math.floor(now / DAY_S) * DAY_S
        if day != self._day:
            self._day, self._sent_today = day, await self.store.mail.sent_since(day)
        remaining = self.config.daily_limit - self._sent_today
        if remaining <= 0:
            return day + DAY_S - now, "daily limit"
        tokens = self._bucket.available(now)
        if tokens < 1.0:
            due = await self.store.mail.next_due()
            if due is None:
                return MAX_WAIT_S, "nothing queued"
            if due - now > self._bucket.wait_s():
                return due - now, "next due"
            return self._bucket.wait_s(), "rate limit"
        limit = min(BATCH, int(tokens), remaining)
        claims, dropped = await self.store.mail.claim(
            now, limit, self.config.lease_s, self._max_age_s
        )
        self._count_dropped(dropped)
        if claims:
            self._bucket.tokens -= len(claims)
            self.in_flight = len(claims)
            await self._notify()
            await self._deliver(claims, stop)
            return 0.0, ""
        if dropped:
            return 0.0, ""
        due = await self.store.mail.next_due()
        if due is None:
            return MAX_WAIT_S, "nothing queued"
        return max(0.0, due - now), "next due"

    def _count_dropped(self, dropped: Iterable[Dropped]) -> None:
        for mail in dropped:
            if mail.reason == "expired":
                self.stats.expired += 1
            else:
                self.stats.dropped += 1
            logger.info("mail %s not sent: %s (%s)", mail.id, mail.state, mail.reason)

    async def _deliver(self, claims: Sequence[Claim], stop: asyncio.Event) -> None:
        """Send ``claims`` in order, rendering each next one while the relay digests the
        current one."""
        # Every mail's products are read at once: the store's reader thread then works
        # through the batch's queries in one go, instead of being woken (and waiting to be
        # scheduled, on a box whose other core runs the relay) twice for each mail.
        now = self.clock()
        contexts = [asyncio.ensure_future(self.contexts.build(claim, now)) for claim in claims]
        rendered: dict[int, RawMail | Outcome] = {}

        def render_ahead(index: int) -> None:
            # Called by the relay once a mail's content is written: the relay (and so this
            # task) waits for the final reply, which is the longest wait of a transaction.
            if index < len(claims) and index not in rendered and contexts[index].done():
                rendered[index] = self._render(claims[index], contexts[index])

        try:
            for index, claim in enumerate(claims):
                if stop.is_set():
                    self._give_back(claims[index:], "queued", self.clock(), "")
                    break
                mail = rendered.pop(index, None)
                if mail is None:
                    await asyncio.wait([contexts[index]])
                    mail = self._render(claim, contexts[index])
                if not isinstance(mail, RawMail):
                    self._record(claim, mail, self.clock())
                    self.in_flight -= 1
                    continue
                outcome = await self._send(claim, mail, partial(render_ahead, index + 1))
                now = self.clock()
                self._record(claim, outcome, now)
                if outcome.state == "sent":
                    self._note_shown(claim, contexts[index].result(), now)
                self.in_flight -= 1
                if outcome.state == "retry" and outcome.code is None and index + 1 < len(claims):
                    # No reply at all (refused, timed out): the relay is down or hung. The rest
                    # of the batch waits with this mail instead of each waiting out a timeout.
                    rest = claims[index + 1 :]
                    logger.warning(
                        "relay unreachable, %d more mails wait: %s", len(rest), outcome.reason
                    )
                    later = now + retry_delay(claim.id, claim.attempts, self._waits)
                    self._give_back(rest, "retry_wait", later, f"not tried: {outcome.reason}")
                    break
        finally:
            # Reads the batch did not get to (it stopped short) are cancelled; one that failed
            # meanwhile was for a mail given back, so its error is let go.
            for future in contexts:
                future.cancel()
            await asyncio.wait(contexts)
            for future in contexts:
                if not future.cancelled():
                    future.exception()
            self.in_flight = 0
        await self._flush()

    def _render(self, claim: Claim, context: asyncio.Future[MailContext]) -> RawMail | Outcome:
        """The rendered mail (to ``mail.test_recipients`` when set, the real recipient kept in
        ``X-RT-Original-To``), or the outcome that stands for it when it cannot be made."""
        try:
            mail = self.mailer.render_bytes(claim.template, context.result())
            if self.config.test_recipients:
                mail = mail.with_header(ORIGINAL_TO, claim.recipient)
        except StoreError as exc:
            return Outcome("retry", None, f"reading the mail's products failed: {exc}")
        except MailError as exc:
            return Outcome("failed", None, f"render failed: {exc}")
        except Exception as exc:  # a bug in one mail must not stop the others
            logger.exception("mail %s could not be prepared", claim.id)
            return Outcome("failed", None, f"render failed: {exc!r}")
        return mail

    async def _send(self, claim: Claim, mail: RawMail, handed: Callable[[], None]) -> Outcome:
        try:
            return await self.relay.send(mail, handed=handed)
        except Exception as exc:  # the relay should not raise; whether it left is unknown
            logger.exception("relay failed on mail %s", claim.id)
            return Outcome("ambiguous", None, f"relay error: {exc!r}")

    def _record(self, claim: Claim, outcome: Outcome, now: float) -> None:
        """Count and log an attempt's outcome; queue its row update for the batch's write."""
        stats, code, reason = self.stats, outcome.code, outcome.reason
        state, next_at, suppress = "failed", None, None
        if outcome.state == "sent":
            state = "sent"
            stats.sent += 1
            self._sent_today += 1
            logger.info("mail %s sent (%s, attempt %d)", claim.id, claim.template, claim.attempts)
        elif outcome.state == "retry":
            next_at = now + retry_delay(claim.id, claim.attempts, self._waits)
            if claim.marketing and next_at - claim.created_at > self._max_age_s:
                stats.expired += 1
                reason, next_at = "expired", None
                logger.warning("mail %s expired after %s: %s", claim.id, code, outcome.reason)
            else:
                state = "retry_wait"
                stats.retried += 1
                logger.warning(
                    "mail %s deferred (%s %s), next try in %.0fs",
                    claim.id, code, reason, next_at - now,
                )  # fmt: skip
        elif outcome.state == "suppress":
            suppress = "hard_bounce"
            stats.suppressed += 1
            logger.warning("mail %s bounced, recipient suppressed: %s %s", claim.id, code, reason)
        elif outcome.state == "ambiguous":
            state = "ambiguous"
            next_at = NEVER
            if self.config.ambiguous == "resend":
                # At once after a first attempt; after repeated trouble with the backoff, so a
                # relay that keeps dropping after DATA cannot cause a storm of duplicates.
                retry = claim.attempts > 1
                next_at = now + retry_delay(claim.id, claim.attempts, self._waits) if retry else now
            stats.ambiguous += 1
            logger.warning(
                "mail %s delivery in doubt (%s), %s: %s",
                claim.id, code, "dropped" if next_at == NEVER else "resent", reason,
            )  # fmt: skip
        else:
            stats.failed += 1
            if code == 554 or _POLICY_BLOCK.search(reason):
                logger.error(
                    "operator alert: mail %s refused by policy: %s %s", claim.id, code, reason
                )
            else:
                logger.warning("mail %s failed: %s %s", claim.id, code, reason)
        self._outcomes.append((claim.id, state, now, code, reason, next_at, suppress))

    def _give_back(self, claims: Sequence[Claim], state: str, due: float, reason: str) -> None:
        """End the lease of mails claimed but not tried, due again at ``due``."""
        now = self.clock()
        for claim in claims:
            self._outcomes.append((claim.id, state, now, None, reason, due, None))

    def _note_shown(self, claim: Claim, context: MailContext, now: float) -> None:
        """Remember the products a sent mail picked for its reader (the run's product and the
        recommendations), with the link each had: picks shown again and again without a click
        rank lower, and a click on one is known as that product's."""
        products = context.recommendations
        if context.product is not None:
            products = (context.product, *products)
        for product in products:
            self._shown.append((claim.id, claim.person_id, product.id, product.url, now))

    async def _flush(self) -> None:
        if self._outcomes:
            outcomes, self._outcomes = self._outcomes, []
            shown, self._shown = self._shown, []
            try:
                await self.store.mail.finish_many(outcomes, shown)
            except BaseException:
                self._outcomes[:0] = outcomes  # written at the next round
                self._shown[:0] = shown
                raise
            await self._notify()

    async def _notify(self) -> None:
        async with self.progress:
            self.progress.notify_all()


async def wake_on(stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Set ``wake`` once ``stop`` is set, so a task waiting on ``wake`` sees the stop."""
    await stop.wait()
    wake.set()
