"""Which catalog products a mail recommends to one person, and why. Pure.

:func:`rank` takes what is known of the person (:class:`Signals`: the ids they viewed, the ids
viewed with theirs by other people, the shop's popular ids, past mail clicks and impressions)
and returns catalog :class:`~rtserver.model.Product` records only.

**Hard rules**, never broken: a product is recommended only if its id is in the catalog, it is
buyable, it is not in ``exclude`` (bought, or in the cart), it is not a variant of an excluded
product, and no product nor a second variant of the same item group (``item_group``, or the id
when there is none) is picked twice.

**Candidates** (only these ids are looked up; the catalog is never iterated): the person's own
viewed ids, the co-viewed ids, the popular ids, the ids they clicked, the ids similar people
clicked, and ``category_pool[c]`` (the caller's best ids of category ``c``) for the person's
``TOP_CATEGORIES`` categories. Each list is read up to ``MAX_PER_SOURCE`` ids (the clicked
mappings: their ``MAX_PER_SOURCE`` most clicked ids).

**Score** of a candidate: the sum of these named terms (see :func:`explain`); the weights are the
constants below, chosen on the offline evaluation of ``bench/recommend.py``.

- ``category``: ``W_CATEGORY`` x the person's affinity to the candidate's (narrowest) category,
  the share of their recency-weighted views in it (the newest view weighs 1, each older one
  ``RECENCY`` times the one before), in [0, 1].
- ``viewed``: ``W_VIEWED`` x the recency weight of the candidate's newest view by the person, if
  they viewed it ("still thinking about it?"). Positive: the evaluation shows that a product
  viewed before is more often the next one bought than an unseen product of the same category.
- ``co_view``: ``W_CO_VIEW`` x the rank weight of its place in ``co_viewed``.
- ``popular``: ``W_POPULAR`` x the rank weight of its place in ``popular``.
- ``category_pool``: ``W_CATEGORY_POOL`` x the person's affinity to the pool's category x the
  rank weight of its place in that pool (the best of the person's top categories' pools).
- ``clicked``: ``W_CLICKED`` x min(clicks, ``CLICKS_FULL``) / ``CLICKS_FULL``: the person's own
  clicks in past mails.
- ``similar_clicked``: ``W_SIMILAR_CLICKED`` x its clicks by similar people over the most
  clicked product's (a smaller boost, in [0, ``W_SIMILAR_CLICKED``]).
- ``ignored``: minus ``W_IGNORED`` x (ignored - 1), where ignored = shown - clicked, for a product
  shown ``IGNORED_AFTER`` or more times and never clicked by the person: it grows with repeats.

The rank weight of place ``i`` (0 first) is ``RANK_HALF / (RANK_HALF + i)``: 1 for the first,
1/2 at place ``RANK_HALF``.

**Selection** is greedy: each pick is the candidate with the best score less ``W_DIVERSITY`` per
product of its category already picked (like maximal marginal relevance), so the person's top
category leads and the next categories follow. The picks span at least ``MIN_CATEGORIES``
categories when the candidates allow: once the slots left are just enough for the categories
still missing, each pick is of a category not picked yet, if any candidate is. Equal
values go to the higher score, then to the smaller id, so the result is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from rtserver.model import Product

__all__ = ["Signals", "explain", "rank"]

W_CATEGORY = 1.0
W_VIEWED = 1.0
W_CO_VIEW = 0.15
W_POPULAR = 0.25
W_CATEGORY_POOL = 1.0
W_CLICKED = 0.6
W_SIMILAR_CLICKED = 0.2
W_IGNORED = 0.5
W_DIVERSITY = 0.15
RECENCY = 0.9
"""Each older view weighs this much of the one after it."""
RANK_HALF = 5.0
"""The place in a ranked list whose weight is half the first's."""
CLICKS_FULL = 2
"""Own clicks that give the whole ``clicked`` boost."""
IGNORED_AFTER = 2
"""Shown this many times and never clicked: penalised."""
MIN_CATEGORIES = 2
"""The picks span at least this many categories when the candidates allow."""
TOP_CATEGORIES = 3
"""The person's categories whose ``category_pool`` lists join the candidates."""
MAX_VIEWED = 50
"""Most recent views read for the affinity and the ``viewed`` term."""
MAX_PER_SOURCE = 30
"""Ids read from each ranked list (co-viewed, popular, each category pool)."""
TERMS = (
    "category",
    "viewed",
    "co_view",
    "popular",
    "category_pool",
    "clicked",
    "similar_clicked",
    "ignored",
)

_EMPTY: Mapping[str, int] = MappingProxyType({})


def _empty() -> Mapping[str, int]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class Signals:
    """What is known of one person when picking products for them (all ids are catalog product
    ids)."""

    viewed: Sequence[str] = ()
    """The person's viewed product ids, newest first (a few dozen at most)."""
    co_viewed: Sequence[str] = ()
    """Ids most viewed by people who viewed the person's products, best first."""
    popular: Sequence[str] = ()
    """The shop's most viewed ids in a recent window, best first."""
    clicked: Mapping[str, int] = field(default_factory=_empty)
    """Product id -> this person's clicks on it in past mails."""
    similar_clicked: Mapping[str, int] = field(default_factory=_empty)
    """Product id -> clicks in past mails by people who viewed what this person viewed."""
    shown: Mapping[str, int] = field(default_factory=_empty)
    """Product id -> times shown to this person in past mails (clicked or not)."""


def _group(product: Product) -> str:
    return product.item_group or product.id


def _rank_weight(place: int) -> float:
    return RANK_HALF / (RANK_HALF + place)


def _places(ids: Sequence[str]) -> dict[str, int]:
    """Each id's first place in ``ids`` (the first ``MAX_PER_SOURCE`` of them)."""
    places: dict[str, int] = {}
    for place, pid in enumerate(ids[:MAX_PER_SOURCE]):
        places.setdefault(pid, place)
    return places


def _affinity(
    viewed: Sequence[str], catalog: Mapping[str, Product]
) -> tuple[dict[str, float], dict[str, float]]:
    """The person's category affinities (shares of recency-weighted views, summing to 1) and
    the recency weight of each viewed id's newest view."""
    by_category: dict[str, float] = {}
    recency: dict[str, float] = {}
    weight, total = 1.0, 0.0
    for pid in viewed[:MAX_VIEWED]:
        recency.setdefault(pid, weight)
        product = catalog.get(pid)
        category = product.category if product is not None else None
        if category is not None:
            by_category[category] = by_category.get(category, 0.0) + weight
            total += weight
        weight *= RECENCY
    return {c: w / total for c, w in by_category.items()}, recency


def _most(counts: Mapping[str, int]) -> dict[str, int]:
    """The ``MAX_PER_SOURCE`` ids of most counts (ties: the smaller id), none below 1."""
    best = heapq.nsmallest(MAX_PER_SOURCE, counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {pid: count for pid, count in best if count > 0}


def _ranked(ids: Sequence[str], weight: float) -> dict[str, float]:
    """``weight`` x the rank weight of each id's first place in ``ids``."""
    return {pid: weight * _rank_weight(place) for pid, place in _places(ids).items()}


@dataclass(slots=True)
class _Person:
    """One person's affinities, and the terms that do not depend on a candidate's record:
    term name -> id -> value (the candidate sources, in order)."""

    affinity: dict[str, float]
    by_source: dict[str, dict[str, float]]
    clicked: Mapping[str, int]
    shown: Mapping[str, int]

    @classmethod
    def of(
        cls,
        signals: Signals,
        catalog: Mapping[str, Product],
        category_pool: Mapping[str, Sequence[str]] | None,
    ) -> _Person:
        affinity, recency = _affinity(signals.viewed, catalog)
        pools: dict[str, float] = {}
        if category_pool:
            top = sorted(affinity, key=lambda c: (-affinity[c], c))[:TOP_CATEGORIES]
            for category in top:
                weight = W_CATEGORY_POOL * affinity[category]
                for pid, value in _ranked(category_pool.get(category, ()), weight).items():
                    if value > pools.get(pid, 0.0):
                        pools[pid] = value
        clicked = _most(signals.clicked)
        similar = _most(signals.similar_clicked)
        most_similar = max(similar.values(), default=1)
        by_source = {
            "viewed": {pid: W_VIEWED * weight for pid, weight in recency.items()},
            "co_view": _ranked(signals.co_viewed, W_CO_VIEW),
            "popular": _ranked(signals.popular, W_POPULAR),
            "category_pool": pools,
            "clicked": {
                pid: W_CLICKED * min(n, CLICKS_FULL) / CLICKS_FULL for pid, n in clicked.items()
            },
            "similar_clicked": {
                pid: W_SIMILAR_CLICKED * n / most_similar for pid, n in similar.items()
            },
        }
        return cls(affinity, by_source, clicked, signals.shown)

    def terms(self, pid: str, product: Product) -> dict[str, float]:
        """One candidate's terms, named and ordered as in :data:`TERMS`."""
        found = {name: values.get(pid, 0.0) for name, values in self.by_source.items()}
        found["category"] = self._category(product)
        found["ignored"] = self._ignored(pid)
        return {name: found[name] for name in TERMS}

    def score(self, pid: str, product: Product) -> float:
        """The sum of :meth:`terms`, without naming them."""
        total = self._category(product)
        for values in self.by_source.values():
            total += values.get(pid, 0.0)
        return total + self._ignored(pid) if pid in self.shown else total

    def _category(self, product: Product) -> float:
        category = product.category
        return W_CATEGORY * self.affinity.get(category, 0.0) if category is not None else 0.0

    def _ignored(self, pid: str) -> float:
        clicks = self.clicked.get(pid, 0)
        ignored = self.shown.get(pid, 0) - clicks
        if clicks > 0 or ignored < IGNORED_AFTER:
            return 0.0
        return -W_IGNORED * (ignored - 1)


@dataclass(slots=True)
class _Candidate:
    product: Product
    group: str
    score: float


def _candidates(
    signals: Signals,
    catalog: Mapping[str, Product],
    exclude: Collection[str],
    category_pool: Mapping[str, Sequence[str]] | None,
) -> tuple[_Person, list[_Candidate]]:
    """The person, and every eligible candidate, best score first (then the smaller id)."""
    person = _Person.of(signals, catalog, category_pool)
    excluded_groups = set(exclude)
    for pid in exclude:
        product = catalog.get(pid)
        if product is not None:
            excluded_groups.add(_group(product))
    found: list[_Candidate] = []
    looked: set[str] = set()
    for source in person.by_source.values():
        for pid in source:
            if pid in looked:
                continue
            looked.add(pid)
            product = catalog.get(pid)
            if product is None or not product.buyable or pid in excluded_groups:
                continue
            group = _group(product)
            if group not in excluded_groups:
                found.append(_Candidate(product, group, person.score(pid, product)))
    found.sort(key=lambda c: (-c.score, c.product.id))
    return person, found


def _best(
    left: Sequence[_Candidate], per_category: Mapping[str, int], skip: Collection[str | None]
) -> _Candidate:
    """The candidate of ``left`` (not empty, best score first) whose score less ``W_DIVERSITY``
    per pick of its category is the best, of a category not in ``skip`` if any is."""
    best: _Candidate | None = None
    best_value = 0.0
    for candidate in left:
        if best is not None and candidate.score <= best_value:
            break  # sorted by score, and penalties only lower it: no later one can do better
        category = candidate.product.category
        if category in skip:
            continue
        value = candidate.score
        if category is not None:
            value -= W_DIVERSITY * per_category.get(category, 0)
        if best is None or value > best_value:
            best, best_value = candidate, value
    if best is not None:
        return best
    return _best(left, per_category, ()) if skip else left[0]


def explain(
    signals: Signals,
    catalog: Mapping[str, Product],
    exclude: Collection[str],
    *,
    category_pool: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Every eligible candidate's terms (named as in :data:`TERMS`), best score first, before
    the diversification of :func:`rank`."""
    person, found = _candidates(signals, catalog, exclude, category_pool)
    return {c.product.id: person.terms(c.product.id, c.product) for c in found}


def rank(
    signals: Signals,
    catalog: Mapping[str, Product],
    exclude: Collection[str],
    limit: int = 4,
    *,
    category_pool: Mapping[str, Sequence[str]] | None = None,
) -> list[Product]:
    """Up to ``limit`` catalog products for the person ``signals`` describes, best first, by
    the rules and the score of this module's description; none in ``exclude`` (bought or in
    the cart)."""
    if limit <= 0:
        return []
    _, left = _candidates(signals, catalog, exclude, category_pool)
    picked: list[Product] = []
    groups: set[str] = set()
    per_category: dict[str, int] = {}
    while left and len(picked) < limit:
        categories = {p.category for p in picked}
        widen = limit - len(picked) <= MIN_CATEGORIES - len(categories)
        best = _best(left, per_category, categories if widen else ())
        left.remove(best)
        product = best.product
        picked.append(product)
        groups.add(best.group)
        if product.category is not None:
            per_category[product.category] = per_category.get(product.category, 0) + 1
        left = [c for c in left if c.group not in groups]
    return picked
