"""The engagement model: when each person engages, and the send time it suggests. Pure.

A person's human engagement (opens and clicks of their mail that no machine made, and their
visits to the site) is kept as an :class:`~rtserver.model.Engagement`: weights by hour of the
week in their own time zone (168 bins, 0 is Monday 00:00), halving every ``half_life_s``. The
decay is applied when the histogram is read, from the time its weights are as of, so adding an
engagement touches one bin. The shop's histogram (everyone's, each in their own local hours) is
the prior of every person's estimate, so a person with no history gets the shop's best hours.

The estimate has two Dirichlet levels, so a few engagements tell the hour of the day long before
they could tell an hour of the week; the second level only tells weekdays from weekends::

    P(hour)               = (W[h] + s * Q[h]) / (N + s)      s: the prior strength; Q: the shop's
                                                             shares by hour of the day
    P(weekend | hour)     = (V[h] + c * R[h]) / (W[h] + c)   c: DAY_TYPE_PRIOR; R: the shop's
                                                             weekend share of that hour
    score of a weekend hour = P(hour) * P(weekend | hour) / 2      (a weekday's: the rest / 5)

where ``W[h]`` is the person's decayed weight at hour ``h`` of the day (all days, blurred over
the neighbouring hours: ``BLUR``), ``V[h]`` its weekend part and ``N`` the total.
:func:`choose` picks, among the moments a send may go, the one whose hour scores best: the
posterior mean, or, for a share of the choices, a Thompson draw of ``P(hour)`` from its
Dirichlet posterior, so that hours the estimate underrates get tried. Two rules keep the
exploration from costing more than it teaches:

- The draw is of the unblurred hours (``Dirichlet(w[h] + s * q[h])``, ``w`` and ``q`` before
  ``BLUR``), blurred afterwards, as the mean is. Drawing the blurred counts treated each hour's
  smoothed count as independent evidence and made the draw about twice as noisy as the
  estimate it explores around (a blurred hour averages five hours' noise).
- The share shrinks with evidence: ``exploration * s / (s + N)``, the prior's share of the
  posterior. A person with no history explores at the full share; one whose history weighs
  four times the prior, at a fifth of it: their hours are mostly known, and their own mail and
  visits keep adding engagements anyway. (Thompson's draws do narrow as ``N`` grows, but
  over 24 hours with a few dozen engagements they still pick another hour half the time.)
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from rtserver.model import Engagement, Event

__all__ = [
    "HOURS_OF_WEEK",
    "UNIFORM",
    "Choice",
    "Prior",
    "SendTiming",
    "allowed_moments",
    "choose",
    "describe",
    "engaged",
    "engaged_one",
    "engagement_weight",
    "hour_label",
    "hour_of_week",
    "prior_of",
    "send_moments",
    "weights",
]

HOURS_OF_WEEK = 168
EPOCH_HOUR_OF_WEEK = 3 * 24
"""The hour of the week of the Unix epoch (a Thursday, 00:00 UTC)."""
OPEN_WEIGHT = 1.0
CLICK_WEIGHT = 1.25
"""A click says more than an open: it is surely a human's, where an open may be an image a
client fetched on its own without being flagged. Not much more: a weight is a count in the
posterior, and a click tells *when* the person reads no better than an open does, so a weight
of 2 counted each click as two readings at one moment. That made the histogram noisier than
its evidence: bench.send_time's hour recovery for 20+ engagements went from 77.1 % with 2 to
80.9 % with 1.25 (1.5: 79.6 %, 1: 81.1 %)."""
SESSION_WEIGHT = 0.5
"""A visit to the site: the person is online then, but not reading mail."""
SESSION_GAP_S = 1800.0
"""A browser event this long after the person's last one starts a new visit."""
BLUR = (1 / 9, 2 / 9, 3 / 9, 2 / 9, 1 / 9)
"""How a person's hours are blurred before they are read (up to two hours either side): habits
last an hour or more, and a single hour's count is mostly noise (bench/send_time.py)."""
WEEKEND = 5 * 24
"""The first hour of Saturday."""
DAY_TYPE_PRIOR = 14.0
"""``c``: how many engagements the shop's weekday/weekend split of an hour weighs as."""
REBASE_HALF_LIVES = 40.0
"""Weights are stored scaled to ``at``; past this many half-lives they are rescaled to now
(the scale would otherwise grow without bound), and bins that decayed to nothing dropped."""
FORGET_BELOW = 1e-4
PRIOR_FLOOR = 0.02
"""The share of the prior spread evenly over the hours (and over the weekdays of an hour)."""
TOP = 3
"""Hours kept in a choice's reason."""
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True, slots=True)
class SendTiming:
    """The settings of ``send_time = "optimal"`` (``[send_time]``)."""

    half_life_s: float = 60 * 86400.0
    prior_strength: float = 5.0
    exploration: float = 0.1
    control: float = 0.1


@dataclass(frozen=True, slots=True)
class Prior:
    """The shop's histogram as shares: of each hour of the day (Q), and of each hour's
    engagement that falls on the weekend (R)."""

    hours: tuple[float, ...]
    weekend: tuple[float, ...]
    unblurred: tuple[float, ...]
    """Q before ``BLUR``: what a Thompson draw starts from (the draw is blurred after)."""


@dataclass(frozen=True, slots=True)
class Choice:
    """A send time: when, how it was found, and the best moments with their scores."""

    at: float
    hour: int
    sampled: bool
    """A Thompson draw (exploration) rather than the posterior mean."""
    top: tuple[tuple[int, float], ...]
    """(hour of the week, score), best first."""
    history: float
    """The person's decayed engagements at the time of the choice (N)."""


def hour_of_week(t: float, zone: ZoneInfo) -> int:
    """The hour of the week (0: Monday 00:00) of ``t`` in ``zone``."""
    # Local time is t + the zone's offset, and the offset rarely changes within a UTC day:
    # it is read once per zone and day (cached), and the hour is arithmetic. Reading the zone
    # costs more than the rest of an update, and a cache by quarter hour missed half the
    # time when a history was replayed (bench.send_time --cost).
    offset = _day_offset(zone, int(t // 86400))
    if offset is None:  # the offset changes this day: read the zone at t itself
        local = datetime.fromtimestamp(t, zone)
        return local.weekday() * 24 + local.hour
    return (int((t + offset) // 3600) + EPOCH_HOUR_OF_WEEK) % HOURS_OF_WEEK


@functools.lru_cache(maxsize=4096)
def _day_offset(zone: ZoneInfo, day: int) -> float | None:
    """The offset of ``zone`` throughout UTC day ``day`` (seconds), None if it changes then.

    Read at the day's first and last second: a zone changes its offset at most once a day,
    so equal offsets at both ends hold in between.
    """
    first = datetime.fromtimestamp(day * 86400, zone).utcoffset()
    last = datetime.fromtimestamp(day * 86400 + 86399, zone).utcoffset()
    if first is None or first != last:
        return None
    return first.total_seconds()


def hour_label(hour: int) -> str:
    """``"Sat 08:00"`` for hour 128."""
    return f"{DAYS[hour // 24]} {hour % 24:02d}:00"


def engagement_weight(event: Event, name: str, last_seen: float, now: float) -> float:
    """What ``event`` counts as engagement (0: nothing): an open, a click, a new visit."""
    if name.startswith("Email "):
        if event.properties.get("machine"):
            return 0.0  # a link scanner's click or a mail proxy's open
        if name == "Email Opened":
            return OPEN_WEIGHT
        return CLICK_WEIGHT if name == "Email Clicked" else 0.0
    if event.source == "browser" and event.type in ("page", "screen", "track"):
        return SESSION_WEIGHT if now - last_seen >= SESSION_GAP_S else 0.0
    return 0.0


def engaged(
    engagement: Engagement,
    additions: Iterable[tuple[int, float, float]],
    half_life_s: float,
) -> Engagement:
    """``engagement`` with each ``(hour of the week, weight, time)`` added: one bin each,
    except when the weights are rescaled (every ``REBASE_HALF_LIVES`` half-lives)."""
    bins = dict(engagement.bins)
    base = engagement.at
    for hour, weight, at in additions:
        if not bins:
            base = at
        exponent = (at - base) / half_life_s
        if exponent > REBASE_HALF_LIVES:
            scale = 2.0**-exponent
            bins = {h: w * scale for h, w in bins.items() if w * scale >= FORGET_BELOW}
            base, exponent = at, 0.0
        bins[hour] = bins.get(hour, 0.0) + weight * 2.0**exponent
    return Engagement(base, bins)


def engaged_one(
    engagement: Engagement, hour: int, weight: float, at: float, half_life_s: float
) -> Engagement:
    """:func:`engaged` with one addition: what the engine does for each engagement event,
    without the loop's tuples (a copy of the bins, one bin changed)."""
    bins = engagement.bins
    if not bins:
        return Engagement(at, {hour: weight})
    exponent = (at - engagement.at) / half_life_s
    if exponent > REBASE_HALF_LIVES:
        return engaged(engagement, ((hour, weight, at),), half_life_s)
    return Engagement(engagement.at, {**bins, hour: bins.get(hour, 0.0) + weight * 2.0**exponent})


def weights(engagement: Engagement, now: float, half_life_s: float) -> dict[int, float]:
    """The decayed weights at ``now``, by hour of the week."""
    scale = 2.0 ** ((engagement.at - now) / half_life_s)
    return {h: w * scale for h, w in engagement.bins.items()}


def _blurred(by_hour: list[float]) -> list[float]:
    a, b, c, _, _ = BLUR  # symmetric, five hours wide
    x = by_hour[-2:] + by_hour + by_hour[:2]
    return [a * (x[i] + x[i + 4]) + b * (x[i + 1] + x[i + 3]) + c * x[i + 2] for i in range(24)]


def _by_hour(engagement: Engagement) -> tuple[list[float], list[float]]:
    """The weights by hour of the day: of every day, and of the weekend days alone."""
    by_hour = [0.0] * 24
    by_weekend_hour = [0.0] * 24
    for how, w in engagement.bins.items():
        by_hour[how % 24] += w
        if how >= WEEKEND:
            by_weekend_hour[how % 24] += w
    return by_hour, by_weekend_hour


def prior_of(shop: Engagement) -> Prior:
    """The shop's shares, blurred as a person's are, and smoothed (``PRIOR_FLOOR``) so that
    no hour is impossible."""
    by_hour, by_weekend_hour = _by_hour(shop)
    total = sum(by_hour) or 1.0  # the scale is the same for every bin: shares need no decay
    floor = PRIOR_FLOOR if shop.bins else 1.0
    hours = tuple((1 - floor) * w / total + floor / 24 for w in _blurred(by_hour))
    unblurred = tuple((1 - floor) * w / total + floor / 24 for w in by_hour)
    weekend = tuple(
        (1 - PRIOR_FLOOR) * (we / w if w else 2 / 7) + PRIOR_FLOOR * 2 / 7
        for w, we in zip(by_hour, by_weekend_hour, strict=True)
    )
    return Prior(hours, weekend, unblurred)


UNIFORM = prior_of(Engagement())


def send_moments(now: float, within_s: float, zone: ZoneInfo) -> list[tuple[float, int]]:
    """The moments a send may go within ``[now, now + within_s]``: now, then each local hour's
    start, with their hours of the week (read from the zone across a change of its offset)."""
    local = datetime.fromtimestamp(now, zone)
    first = local.weekday() * 24 + local.hour
    moments = [(now, first)]
    end = now + within_s
    # A whole-hour change of offset keeps hours 3600 s apart (the skipped or repeated hour
    # is read from the zone); zones changing by half an hour are read hour by hour.
    steady = datetime.fromtimestamp(end, zone).utcoffset() == local.utcoffset()
    t = now - (local.minute * 60 + local.second + local.microsecond / 1e6) + 3600.0
    k = 1
    while t <= end:
        moments.append((t, (first + k) % HOURS_OF_WEEK if steady else hour_of_week(t, zone)))
        t += 3600.0
        k += 1
    return moments


@functools.lru_cache(maxsize=1024)
def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def choose(
    moments: Sequence[tuple[float, int]],
    person: Engagement,
    prior: Prior,
    now: float,
    timing: SendTiming,
    seed: tuple[str, ...],
) -> Choice:
    """The moment whose hour scores best for ``person`` (the first of equals).

    Deterministic in ``seed`` (the run and the step): the same facts choose the same moment.
    """
    assert moments, "no moment to choose from"
    half_life = timing.half_life_s
    scale = 2.0 ** ((person.at - now) / half_life) if person.bins else 0.0
    by_hour, by_weekend_hour = _by_hour(person)
    total = sum(by_hour)
    blurred = _blurred(by_hour)
    weekend = _blurred(by_weekend_hour) if any(by_weekend_hour) else by_weekend_hour
    s, c = timing.prior_strength, DAY_TYPE_PRIOR
    norm = scale * total + s
    draw = _seed(*seed)
    sampled = (draw % 10_000) < timing.exploration * s / norm * 10_000
    if sampled:
        rng = random.Random(draw)
        gammas = [
            rng.gammavariate(scale * w + s * q, 1.0)
            for w, q in zip(by_hour, prior.unblurred, strict=True)
        ]
        drawn = sum(gammas)
        p_hour = _blurred([g / drawn for g in gammas])
    else:
        p_hour = [(scale * w + s * q) / norm for w, q in zip(blurred, prior.hours, strict=True)]
    scored: list[tuple[float, float, int]] = []
    for at, how in moments:
        h = how % 24
        hour = p_hour[h]
        if how >= WEEKEND:
            mine, shop, days = weekend[h], prior.weekend[h], 2
        else:
            mine, shop, days = blurred[h] - weekend[h], 1.0 - prior.weekend[h], 5
        day = (scale * mine + c * shop) / (scale * blurred[h] + c) / days
        scored.append((hour * day, at, how))
    best = max(scored, key=lambda item: item[0])  # max keeps the first of equal scores
    top = sorted(scored, key=lambda item: -item[0])[:TOP]
    return Choice(
        best[1], best[2], sampled, tuple((how, score) for score, _, how in top), scale * total
    )


def allowed_moments(
    moments: Sequence[tuple[float, int]], end: float, resume: Callable[[float], float | None]
) -> list[tuple[float, int]]:
    """The moments outside quiet hours; one inside moves to its quiet end when that comes
    before the next moment and by ``end`` (``resume(t)``: when the quiet hours around ``t``
    end, None outside them)."""
    allowed = []
    for i, (t, how) in enumerate(moments):
        quiet_end = resume(t)
        if quiet_end is None:
            allowed.append((t, how))
            continue
        following = moments[i + 1][0] if i + 1 < len(moments) else end
        if quiet_end < following and quiet_end <= end:
            allowed.append((quiet_end, how))
    return allowed


def describe(choice: Choice, mapping: Mapping[str, object] | None = None) -> dict[str, object]:
    """The reason of ``choice`` as the step's detail records it."""
    return {
        **(mapping or {}),
        "at": choice.at,
        "hour": hour_label(choice.hour),
        "how": "sampled" if choice.sampled else "mean",
        "history": round(choice.history, 2),
        "top": [[hour_label(how), round(score, 5)] for how, score in choice.top],
    }
