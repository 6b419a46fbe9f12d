"""The engagement model: histograms by hour of the week, their decay, the prior, the choice.
Pure: plain functions, explicit times, seeded generators."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rtserver.config.schema import IngestConfig
from rtserver.engine.engagement import (
    CLICK_WEIGHT,
    OPEN_WEIGHT,
    REBASE_HALF_LIVES,
    SESSION_GAP_S,
    SESSION_WEIGHT,
    UNIFORM,
    SendTiming,
    allowed_moments,
    choose,
    describe,
    engaged,
    engaged_one,
    engagement_weight,
    hour_label,
    hour_of_week,
    prior_of,
    send_moments,
    weights,
)
from rtserver.model import Engagement
from rtserver.model.events import Event, parse_event

H, D = 3600.0, 86400.0
HALF_LIFE = 60 * D
MONDAY = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()  # Monday 00:00 UTC
UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
TIMING = SendTiming(exploration=0.0, control=0.0)


def ev(name: str, type: str = "track", source: str = "server", **fields: Any) -> Event:
    raw: dict[str, Any] = {"type": type, "messageId": "m1", "userId": "u1", **fields}
    raw["event" if type == "track" else "name"] = name
    return parse_event(raw, IngestConfig(), source=source)  # type: ignore[arg-type]


def history(hours: list[int], weeks: int, rng: random.Random, noise: float = 0.2) -> Engagement:
    """Engagements at ``hours`` of the day (UTC) over the ``weeks`` before MONDAY, with a share
    of ``noise`` at random hours."""
    additions = []
    for _ in range(weeks * 7):
        day = rng.randrange(weeks * 7)
        hour = rng.randrange(24) if rng.random() < noise else rng.choice(hours)
        at = MONDAY - (day + 1) * D + hour * H + rng.random() * H
        additions.append((hour_of_week(at, UTC_ZONE), 1.0, at))
    additions.sort(key=lambda a: a[2])
    return engaged(Engagement(), additions, HALF_LIFE)


def test_engagement_weights_opens_clicks_and_visits() -> None:
    """Human opens count 1, clicks a little more, a visit after 30 minutes away 0.5; machines
    nothing."""
    assert engagement_weight(ev("Email Opened"), "Email Opened", 0, MONDAY) == OPEN_WEIGHT
    assert engagement_weight(ev("Email Clicked"), "Email Clicked", 0, MONDAY) == CLICK_WEIGHT
    assert CLICK_WEIGHT > OPEN_WEIGHT
    machine = ev("Email Clicked", properties={"machine": True})
    assert engagement_weight(machine, "Email Clicked", 0, MONDAY) == 0
    assert engagement_weight(ev("Email Bounced"), "Email Bounced", 0, MONDAY) == 0
    page = ev("Home", type="page", source="browser", anonymousId="a1")
    assert engagement_weight(page, "Page Viewed", MONDAY - SESSION_GAP_S, MONDAY) == SESSION_WEIGHT
    assert engagement_weight(page, "Page Viewed", MONDAY - 60, MONDAY) == 0  # same visit
    order = ev("Order Completed")  # the shop's backend: not the person online
    assert engagement_weight(order, "Order Completed", 0, MONDAY) == 0


def test_hour_of_week_in_the_person_zone() -> None:
    """Monday 00:00 UTC is Monday 01:00 in Berlin (winter) and Sunday 19:00 in New York."""
    assert hour_of_week(MONDAY, UTC_ZONE) == 0
    assert hour_of_week(MONDAY, BERLIN) == 1
    assert hour_of_week(MONDAY, ZONE_NY) == 6 * 24 + 19
    assert hour_label(6 * 24 + 19) == "Sun 19:00" and hour_label(0) == "Mon 00:00"


ZONE_NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]
)
def test_hour_of_week_agrees_with_the_zone_across_offset_changes(zone: str) -> None:
    """Every 7.5 minutes through a year (two offset changes where the zone has them, one of
    half an hour on Lord Howe Island), the hour is the zone's local hour of the week."""
    tz = ZoneInfo(zone)
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for k in range(365 * 24 * 8):
        t = start + k * 450.0 + 0.5
        local = datetime.fromtimestamp(t, tz)
        assert hour_of_week(t, tz) == local.weekday() * 24 + local.hour, (zone, t)


def test_engaged_one_is_engaged_with_one_addition() -> None:
    """The engine's one-event path: from nothing, into an existing bin, into a new one, and
    past the rescaling point, the same histogram as :func:`engaged`."""
    cases = [(Engagement(), (5, 1.0, MONDAY))]
    one = engaged(Engagement(), [(5, 1.0, MONDAY)], HALF_LIFE)
    cases += [(one, (5, 2.0, MONDAY + D)), (one, (9, 0.5, MONDAY + HALF_LIFE))]
    cases.append((one, (7, 1.0, MONDAY + (REBASE_HALF_LIVES + 1) * HALF_LIFE)))
    for before, (hour, weight, at) in cases:
        expected = engaged(before, [(hour, weight, at)], HALF_LIFE)
        assert engaged_one(before, hour, weight, at, HALF_LIFE) == expected
    assert engaged_one(one, 5, 1.0, MONDAY, HALF_LIFE).bins == {5: 2.0}
    assert one.bins == {5: 1.0}  # the histogram it started from is unchanged


def test_decay_halves_the_weights_every_half_life() -> None:
    """A weight counts half after one half-life; adding later keeps older weights decayed."""
    one = engaged(Engagement(), [(5, 1.0, MONDAY)], HALF_LIFE)
    assert weights(one, MONDAY, HALF_LIFE) == {5: 1.0}
    assert weights(one, MONDAY + HALF_LIFE, HALF_LIFE) == {5: pytest.approx(0.5)}
    two = engaged(one, [(6, 2.0, MONDAY + HALF_LIFE)], HALF_LIFE)
    assert two.at == MONDAY and len(two.bins) == 2  # one bin added, nothing rescaled
    now = MONDAY + 2 * HALF_LIFE
    assert weights(two, now, HALF_LIFE) == {5: pytest.approx(0.25), 6: pytest.approx(1.0)}


def test_decay_rescales_after_many_half_lives_and_forgets_what_faded() -> None:
    """Far past ``at`` the weights are rescaled to the new time; faded bins are dropped."""
    old = engaged(Engagement(), [(5, 1.0, MONDAY)], HALF_LIFE)
    later = MONDAY + (REBASE_HALF_LIVES + 1) * HALF_LIFE
    new = engaged(old, [(7, 1.0, later)], HALF_LIFE)
    assert new.at == later and new.bins == {7: 1.0}
    recent = engaged(old, [(7, 1.0, MONDAY + 3 * HALF_LIFE)], HALF_LIFE)
    rebased = engaged(recent, [(8, 1.0, MONDAY + (REBASE_HALF_LIVES + 2) * HALF_LIFE)], HALF_LIFE)
    assert sorted(rebased.bins) == [8]  # 7 faded below the floor too, after 40 half-lives
    early = engaged(old, [(5, 1.0, MONDAY - HALF_LIFE)], HALF_LIFE)  # the clock went back
    assert weights(early, MONDAY, HALF_LIFE) == {5: pytest.approx(1.5)}


def test_prior_of_an_empty_shop_is_uniform() -> None:
    """No shop history: every hour equally likely, 2 days in 7 the weekend."""
    assert prior_of(Engagement()) == UNIFORM
    assert {round(x, 9) for x in UNIFORM.hours} == {round(1 / 24, 9)}
    assert {round(x, 9) for x in UNIFORM.weekend} == {round(2 / 7, 9)}


def test_prior_of_a_shop_follows_its_shares() -> None:
    """The shop's hours, smoothed: its best hour leads; every share stays above zero."""
    shop = engaged(Engagement(), [(9, 3.0, MONDAY), (24 + 9, 1.0, MONDAY), (20, 1.0, MONDAY)], D)
    prior = prior_of(shop)
    assert max(range(24), key=lambda h: prior.hours[h]) == 9
    assert prior.hours[9] == pytest.approx(0.98 * (3 / 9 * 4) / 5 + 0.02 / 24)  # blurred
    assert min(prior.hours) > 0 and sum(prior.hours) == pytest.approx(1)
    assert prior.weekend[9] == pytest.approx(0.02 * 2 / 7)  # Monday and Tuesday only
    weekend = engaged(Engagement(), [(5 * 24 + 9, 1.0, MONDAY), (9, 1.0, MONDAY)], D)
    assert prior_of(weekend).weekend[9] == pytest.approx(0.98 * 0.5 + 0.02 * 2 / 7)


def test_send_moments_are_now_then_each_local_hour() -> None:
    """Within 24 h from 10:20: now, then 11:00 ... 10:00 the next day (25 moments)."""
    now = MONDAY + 10 * H + 20 * 60
    moments = send_moments(now, D, UTC_ZONE)
    assert len(moments) == 25 and moments[0] == (now, 10)
    assert moments[1] == (MONDAY + 11 * H, 11) and moments[-1] == (MONDAY + 34 * H, 34)


def test_send_moments_across_a_dst_change() -> None:
    """Berlin springs forward on 2026-03-29: 02:00 local does not exist, so the hours after
    01:00 go on at 03:00; in autumn 02:00 comes twice."""
    spring = datetime(2026, 3, 28, 23, 30, tzinfo=UTC).timestamp()  # Sun 00:30 CET
    hours = [h % 24 for _, h in send_moments(spring, 4 * H, BERLIN)]
    assert hours == [0, 1, 3, 4, 5]
    autumn = datetime(2026, 10, 24, 22, 30, tzinfo=UTC).timestamp()  # Sun 00:30 CEST
    hours = [h % 24 for _, h in send_moments(autumn, 4 * H, BERLIN)]
    assert hours == [0, 1, 2, 2, 3]


def test_send_moments_in_a_half_hour_zone() -> None:
    """In Kolkata (UTC+5:30) the local hours start at half past UTC hours."""
    now = MONDAY + 10 * 60  # 05:40 local
    moments = send_moments(now, 2 * H, ZoneInfo("Asia/Kolkata"))
    assert [t - MONDAY for t, _ in moments] == [600, 1800, 1800 + H]
    assert [h for _, h in moments] == [5, 6, 7]


def test_cold_start_gets_the_shop_best_hour() -> None:
    """A person with no history is sent at the shop's best hour within the window."""
    rng = random.Random(1)
    shop = history([19], 8, rng)  # the shop reads mail at 19:00 UTC
    moments = send_moments(MONDAY + 8 * H, D, UTC_ZONE)
    choice = choose(moments, Engagement(), prior_of(shop), MONDAY + 8 * H, TIMING, ("r", "1"))
    assert choice.hour % 24 == 19 and choice.history == 0 and not choice.sampled
    assert choice.at == MONDAY + 19 * H
    assert [h for h, _ in choice.top][0] == choice.hour and len(choice.top) == 3


def test_history_outweighs_the_shop_as_it_grows() -> None:
    """One engagement leaves the shop's hour; twenty at the person's own hour win."""
    rng = random.Random(2)
    prior = prior_of(history([19], 8, rng))
    now = MONDAY + 6 * H
    moments = send_moments(now, D, UTC_ZONE)
    one = engaged(Engagement(), [(7, 1.0, MONDAY - D + 7 * H)], HALF_LIFE)
    assert choose(moments, one, prior, now, TIMING, ("r", "1")).hour % 24 == 19
    person = history([7], 3, rng)  # 21 engagements, mostly at 07:00
    choice = choose(moments, person, prior, now, TIMING, ("r", "1"))
    assert choice.hour % 24 == 7 and choice.history > 15


def test_decayed_history_counts_less() -> None:
    """The same history a year old is mostly forgotten: the shop's hour wins again."""
    rng = random.Random(3)
    prior = prior_of(history([19], 8, rng))
    person = engaged(Engagement(), [(7, 1.0, MONDAY - D + 7 * H)] * 10, HALF_LIFE)
    now = MONDAY + 6 * H
    assert choose(send_moments(now, D, UTC_ZONE), person, prior, now, TIMING, ("r",)).hour == 7
    year = now + 365 * D
    moments = send_moments(year, D, UTC_ZONE)
    assert choose(moments, person, prior, year, TIMING, ("r",)).hour % 24 == 19


def test_weekend_preference_shows_within_the_hour() -> None:
    """Engagement at 09:00 on Saturdays only: a window over Friday and Saturday picks Saturday."""
    rng = random.Random(4)
    additions = []
    for week in range(1, 8):
        at = MONDAY - week * 7 * D + 5 * D + 9 * H + rng.random() * H
        additions.append((hour_of_week(at, UTC_ZONE), 1.0, at))
    person = engaged(Engagement(), sorted(additions, key=lambda a: a[2]), HALF_LIFE)
    now = MONDAY + 4 * D + 8 * H  # Friday 08:00
    choice = choose(send_moments(now, 2 * D, UTC_ZONE), person, UNIFORM, now, TIMING, ("r",))
    assert hour_label(choice.hour) == "Sat 09:00"


def test_choice_is_deterministic_in_its_seed_and_explores_by_share() -> None:
    """The same seed chooses the same; with exploration 1 and a history as heavy as the prior,
    about half the choices are draws, which vary by seed and most often find the best hour."""
    additions = [(21, 2.0, MONDAY - D + 21 * H)] * 3 + [(9, 1.0, MONDAY - D + 9 * H)]
    person = engaged(Engagement(), additions, HALF_LIFE)  # so little that the draws vary
    now = MONDAY + 12 * H
    moments = send_moments(now, D, UTC_ZONE)
    explore = SendTiming(exploration=1.0)
    picks = [choose(moments, person, UNIFORM, now, explore, ("run", str(i))) for i in range(200)]
    assert 0.3 < sum(p.sampled for p in picks) / len(picks) < 0.6  # 5 / (5 + 7)
    again = [choose(moments, person, UNIFORM, now, explore, ("run", str(i))) for i in range(200)]
    assert picks == again
    hours = [p.hour % 24 for p in picks if p.sampled]
    assert len(set(hours)) > 1 and sum(19 <= h <= 23 for h in hours) > len(hours) / 2
    never = SendTiming(exploration=0.0)
    assert not choose(moments, person, UNIFORM, now, never, ("run", "0")).sampled


def test_exploration_share_shrinks_with_history() -> None:
    """The sampled share is ``exploration * s / (s + N)``: all of it with no history, a fifth
    of it once the history weighs four times the prior."""
    now = MONDAY + 12 * H
    moments = send_moments(now, D, UTC_ZONE)
    timing = SendTiming(exploration=0.5, prior_strength=5.0)
    rich = engaged(Engagement(), [(21, 1.0, now)] * 20, HALF_LIFE)

    def share(person: Engagement) -> float:
        picks = [
            choose(moments, person, UNIFORM, now, timing, ("run", str(i))) for i in range(2000)
        ]
        return sum(p.sampled for p in picks) / len(picks)

    assert share(Engagement()) == pytest.approx(0.5, abs=0.04)
    assert share(rich) == pytest.approx(0.1, abs=0.025)


def test_draws_are_blurred_as_the_mean_is() -> None:
    """A draw scores neighbouring hours alike (it is blurred after it is drawn), and with a
    long history it lands near the person's hour."""
    now = MONDAY + 12 * H
    moments = send_moments(now, D, UTC_ZONE)
    person = engaged(Engagement(), [(21, 1.0, now)] * 40, HALF_LIFE)
    timing = SendTiming(exploration=1.0, prior_strength=5.0)
    picks = [choose(moments, person, UNIFORM, now, timing, ("run", str(i))) for i in range(400)]
    drawn = [p for p in picks if p.sampled]
    assert drawn and all(19 <= p.hour % 24 <= 23 for p in drawn)
    scores = dict(drawn[0].top)
    assert len(scores) == 3 and min(scores.values()) > 0


def test_allowed_moments_skip_quiet_hours() -> None:
    """A moment in quiet hours moves to their end when that is before the next moment."""
    moments = [(0.0, 0), (3600.0, 1), (7200.0, 2)]

    def resume(t: float) -> float | None:
        return {0.0: 1800.0, 3600.0: 9000.0}.get(t)

    assert allowed_moments(moments, 7200.0, resume) == [(1800.0, 0), (7200.0, 2)]
    assert allowed_moments(moments, 1000.0, resume) == [(7200.0, 2)]
    assert allowed_moments(moments, 7200.0, lambda t: 1e9) == []


def test_describe_names_the_hours_and_scores() -> None:
    """The step's detail: when, the hour, how, the history and the top hours."""
    moments = send_moments(MONDAY, 3 * H, UTC_ZONE)
    choice = choose(moments, Engagement(), UNIFORM, MONDAY, TIMING, ("r",))
    detail = describe(choice, {"arm": "optimal"})
    assert detail["arm"] == "optimal" and detail["at"] == MONDAY and detail["how"] == "mean"
    assert detail["hour"] == "Mon 00:00" and detail["history"] == 0
    assert [h for h, _ in detail["top"]] == ["Mon 00:00", "Mon 01:00", "Mon 02:00"]  # type: ignore[union-attr]
