"""Self-tuning variants (``selection = "bandit"``): which variant a run gets. Pure.

Each variant of a bandit step is an arm with a Beta posterior of its success rate: successes
(the step's ``goal`` reached: its mail clicked, or an order attributed to it) and failures
(the other sends) over a uniform Beta(1, 1) prior. A run's arm is chosen by Thompson sampling:
one draw from each posterior, the highest wins, so an arm gets the share of traffic that it is
likely to be the best. A ``floor`` share of each arm's traffic is kept whatever the posteriors
say (a share ``floor * arms`` is spread evenly first), so a slow start never buries an arm for
good and the comparison keeps going::

    P(arm) = floor + (1 - floor * arms) * P(arm's draw is the highest)

The draws are seeded by the person, the workflow and the step, so the same person with the same
counts always gets the same arm (a replay decides the same); the counts come from the store
(:class:`Tallies`), kept by the engine.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Mapping, Sequence

__all__ = ["NO_TALLIES", "Tallies", "Tally", "tallies_of", "thompson"]

Tally = tuple[int, int]
"""(sends, successes) of one arm."""
Tallies = Mapping[tuple[str, int, str], Tally]
"""(workflow, step index, variant name) → its tally; an arm with no sends is absent."""
NO_TALLIES: Tallies = {}


@functools.lru_cache(maxsize=4096)
def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def thompson(tallies: Sequence[Tally], floor: float, seed: tuple[str, ...]) -> tuple[int, str]:
    """The arm (its index in ``tallies``) one Thompson draw picks, and how: ``"floor"`` (the
    evenly spread share) or ``"sampled"``. Deterministic in ``seed``."""
    rng = random.Random(_seed(*seed))
    spread = floor * len(tallies)
    u = rng.random()
    if u < spread:
        return min(int(u / floor), len(tallies) - 1), "floor"
    best, arm = -1.0, 0
    for i, (sends, successes) in enumerate(tallies):
        draw = rng.betavariate(1 + successes, 1 + max(0, sends - successes))
        if draw > best:
            best, arm = draw, i
    return arm, "sampled"


def tallies_of(tallies: Tallies, workflow: str, step: int, names: Sequence[str]) -> list[Tally]:
    """The tallies of one step's arms, in the order of ``names``."""
    return [tallies.get((workflow, step, name), (0, 0)) for name in names]
