"""Thompson sampling of a bandit step's arms: seeded, drawn to the better arm, floored."""

from __future__ import annotations

from collections import Counter

from rtserver.engine.bandit import Tally, tallies_of, thompson

DRAWS = 4000


def shares(tallies: list[Tally], floor: float, draws: int = DRAWS) -> list[float]:
    """How often each arm is picked over ``draws`` seeds."""
    picks = Counter(thompson(tallies, floor, ("person", str(i), "0"))[0] for i in range(draws))
    return [picks[i] / draws for i in range(len(tallies))]


def test_the_same_seed_picks_the_same_arm() -> None:
    """The draw depends on the seed only: the same person and counts, the same arm."""
    tallies = [(100, 4), (100, 6)]
    picks = [thompson(tallies, 0.1, ("p1", "w", "0")) for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]
    assert {thompson(tallies, 0.1, (f"p{i}", "w", "0"))[0] for i in range(50)} == {0, 1}


def test_without_data_the_arms_share_evenly() -> None:
    """No sends yet: each arm gets about half."""
    first, second = shares([(0, 0), (0, 0)], 0.1)
    assert 0.46 < first < 0.54 and abs(first + second - 1) < 1e-9


def test_the_better_arm_gets_most_of_the_traffic() -> None:
    """4% against 6% over 2,000 sends each: nearly all traffic goes to the better arm."""
    worse, better = shares([(2000, 80), (2000, 120)], 0.0)
    assert better > 0.98 and worse < 0.02


def test_the_floor_keeps_each_arm_its_share() -> None:
    """An arm that never succeeds still gets its floor (10%), and no more than a little over."""
    worse, better = shares([(5000, 0), (5000, 2500)], 0.1)
    assert 0.085 < worse < 0.115 and better > 0.88
    assert {thompson([(5000, 0), (5000, 2500)], 0.1, (str(i),))[1] for i in range(200)} == {
        "floor",
        "sampled",
    }
    three = shares([(5000, 0), (5000, 0), (5000, 2500)], 0.2)
    assert all(0.17 < share < 0.23 for share in three[:2])


def test_a_floor_of_zero_only_samples() -> None:
    """floor = 0: every pick is a Thompson draw."""
    assert {thompson([(10, 1), (10, 2)], 0.0, (str(i),))[1] for i in range(100)} == {"sampled"}


def test_tallies_of_a_step_in_variant_order() -> None:
    """The counts of one step's arms, absent arms at zero."""
    tallies = {("w", 1, "B"): (10, 2), ("w", 0, "A"): (5, 5)}
    assert tallies_of(tallies, "w", 1, ["A", "B"]) == [(0, 0), (10, 2)]
