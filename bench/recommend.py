"""Recommendations offline: hit-rate@4 of the ranking against two baselines on a generated shop,
and the ranking's latency per call on a 50,000-product catalog. In process, no server.

**The shop** (``random.Random(--seed)``): ``--products`` products in 20 categories; each
category has a popularity (Zipf-like over categories), each product one within its category
(Zipf-like over its rank) and one of 5 brands of its category; one product in 5 is a variant of
the one before it (same ``item_group``), one in 25 is out of stock.

**The people** (``--people``): each favours one or two categories (a Dirichlet-like mix: a
small gamma draw per category plus a large share for the favourites) and, in each category,
one brand (three times as likely as the others). A person has a few sessions; a session
browses 1-5 products of a category drawn from their mix (or, one session in 6, the shop's
popular products), sometimes starting by viewing again a product viewed before; it adds one of
its products to the cart in one session in 3, and buys it in 7 of 10 of those (the others are
abandoned carts). Before most sessions the shop had sent a mail showing 4 products (2 popular
ones of the person's most viewed category, 2 of the shop's most popular); the person clicks a
shown product with a probability that grows with their liking of its category and brand (a
click is a view in the next session).

**Evaluation**: each person's LAST purchase is held out. The training history is everything
before the mail slot preceding that purchase's session: the person's sessions, mails and
clicks before it (the other people's training histories, or whole histories when they bought
nothing, make the shared signals). From it, as a store's reads would give them: the person's
viewed ids (newest first), co-viewed ids (summed co-view counts of their viewed ids' top
co-viewed, among all people's training views), the most viewed ids, each category's most viewed
ids (``category_pool``), the person's clicks and impressions, and the clicks of people who
viewed the same products. Excluded: what the person bought before (the cart at the cutoff is
empty: carts are bought or abandoned within their session, so the held-out product is never
excluded). A method scores a hit when the held-out product is among its 4 picks.

Methods: ``ours`` (:func:`rtserver.mail.ranking.rank`), its ablations (each drops one signal, or
the diversification), ``popular`` (the shop's most viewed products not bought) and
``top category popular`` (the most viewed of the person's most viewed category, not bought,
then the shop's most popular).

**Latency**: a second shop (``--latency-products`` products, ``--latency-people`` people): per
call of ``rank``, including the computing of the person's signals from the in-memory indexes,
for every person; mean and p99 in µs (``time.perf_counter``), and the process's CPU time per
call (steadier on a shared machine).

    python -m bench.recommend                       # 5,000 people, 2,000 products, seed 1
    python -m bench.recommend --people 300 --products 400 --latency-people 200 \
        --latency-products 2000 --json             # the smoke run of tests/test_bench.py
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench._common import Column, document, emit, format_table, percentile, ratio
from rtserver.mail import ranking
from rtserver.mail.ranking import Signals, rank
from rtserver.model import Product

CATEGORIES = 20
BRANDS = 5
"""Brands per category."""
BRAND_LIKING = 3.0
"""How much likelier a person's brand of a category is than each of the others."""
CATEGORY_ZIPF = 0.8
PRODUCT_ZIPF = 0.9
VARIANT_SHARE = 0.2
OUT_OF_STOCK_SHARE = 0.04
MEAN_SESSIONS = 6.0
MAX_SESSIONS = 30
POPULAR_SESSION = 1 / 6
"""Share of sessions that browse the shop's popular products rather than a category."""
REVISIT = 0.35
"""Chance that a session starts by viewing again a product viewed before (not bought)."""
CART = 1 / 3
BUY = 0.7
"""Chance that a session's cart is bought (else abandoned)."""
MAIL = 0.6
"""Chance that a mail was sent before a session."""
CLICK = 0.5
"""The click probability of a shown product of a liked brand in a person's only category."""
MAIL_TOP = 8
"""The old mails pick from this many most popular products (of a category, or the shop)."""
VIEWED_KEPT = 30
"""A person's most recent distinct views a store keeps (and the signals read)."""
CO_VIEWED_KEPT = 20
"""Top co-viewed (and co-clicked) products kept per product."""
POPULAR_KEPT = 50
POOL_KEPT = 30
TOP = 4
"""Picks per mail (hit-rate@TOP)."""
GAMMA_SHAPE = 0.1


# --- the shop ------------------------------------------------------------------------------


@dataclass
class Shop:
    """Products by index: id, category, brand, popularity weight; per category, its products
    and, per brand liked, the cumulative weights to draw a view from."""

    catalog: dict[str, Product]
    ids: list[str]
    category: list[int]
    brand: list[int]
    weight: list[float]
    category_weight: list[float]
    in_category: list[list[int]]
    cumulative: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    global_cumulative: list[float] = field(default_factory=list)
    buyable: list[bool] = field(default_factory=list)

    def draw(self, rng: random.Random, category: int, brand: int) -> int:
        """A product of ``category`` by popularity, ``brand`` ``BRAND_LIKING`` times likelier."""
        cumulative = self.cumulative[category, brand]
        members = self.in_category[category]
        return members[bisect.bisect(cumulative, rng.random() * cumulative[-1])]

    def draw_popular(self, rng: random.Random) -> int:
        cumulative = self.global_cumulative
        return bisect.bisect(cumulative, rng.random() * cumulative[-1])


def zipf(n: int, exponent: float, rng: random.Random) -> list[float]:
    """``n`` weights 1/rank^exponent, the ranks shuffled."""
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    return [1.0 / r**exponent for r in ranks]


def make_shop(products: int, rng: random.Random) -> Shop:
    category_weight = zipf(CATEGORIES, CATEGORY_ZIPF, rng)
    per_category = [products // CATEGORIES + (c < products % CATEGORIES) for c in range(CATEGORIES)]
    ids: list[str] = []
    category: list[int] = []
    brand: list[int] = []
    weight: list[float] = []
    in_category: list[list[int]] = [[] for _ in range(CATEGORIES)]
    catalog: dict[str, Product] = {}
    buyable: list[bool] = []
    for c, count in enumerate(per_category):
        within = zipf(count, PRODUCT_ZIPF, rng)
        group: str | None = None
        for n in range(count):
            index = len(ids)
            pid = f"p{index:05d}"
            variant = n > 0 and rng.random() < VARIANT_SHARE
            group = (group or ids[-1]) if variant else None
            b = brand[-1] if variant else rng.randrange(BRANDS)
            available = rng.random() >= OUT_OF_STOCK_SHARE
            ids.append(pid)
            category.append(c)
            brand.append(b)
            weight.append(category_weight[c] * within[n])
            in_category[c].append(index)
            buyable.append(available)
            catalog[pid] = Product(
                id=pid,
                name=f"Product {index}",
                url=f"https://shop.example/p/{pid}",
                price=float(5 + index % 95),
                categories=("Shop", f"c{c:02d}"),
                brand=f"b{c:02d}-{b}",
                availability="in_stock" if available else "out_of_stock",
                item_group=group,
            )
    shop = Shop(catalog, ids, category, brand, weight, category_weight, in_category)
    shop.buyable = buyable
    for c in range(CATEGORIES):
        members = shop.in_category[c]
        for liked in range(BRANDS):
            factors = (BRAND_LIKING if brand[i] == liked else 1.0 for i in members)
            shop.cumulative[c, liked] = list(
                itertools.accumulate(weight[i] * f for i, f in zip(members, factors, strict=True))
            )
    shop.global_cumulative = list(itertools.accumulate(weight))
    return shop


# --- the people ----------------------------------------------------------------------------


@dataclass
class Slot:
    """One mail slot and the session after it: the mail's shown products and clicks (if a
    mail was sent), the session's views, and what it bought."""

    shown: list[int]
    clicked: list[int]
    views: list[int]
    bought: int | None


@dataclass
class Person:
    mix: list[float]
    brand: list[int]
    slots: list[Slot]


def make_mix(rng: random.Random, shop: Shop) -> list[float]:
    """A Dirichlet-like mix over categories favouring one or two."""
    raw = [0.3 * rng.gammavariate(GAMMA_SHAPE, 1.0) for _ in range(CATEGORIES)]
    favourites = rng.choices(range(CATEGORIES), shop.category_weight, k=2)
    raw[favourites[0]] += 1.0
    if rng.random() < 0.5:
        raw[favourites[1]] += 0.5
    total = sum(raw)
    return [r / total for r in raw]


def liking(person: Person, shop: Shop, product: int) -> float:
    """How much the person likes a product's category and brand, in (0, 1]."""
    c = shop.category[product]
    brand = 1.0 if shop.brand[product] == person.brand[c] else 1.0 / BRAND_LIKING
    return min(1.0, 2.0 * person.mix[c]) * brand


def most_viewed_category(views: Sequence[int], shop: Shop) -> int | None:
    counts = Counter(shop.category[v] for v in views)
    return min(counts, key=lambda c: (-counts[c], c)) if counts else None


def make_person(rng: random.Random, shop: Shop, top: dict[int | None, list[int]]) -> Person:
    mix = make_mix(rng, shop)
    person = Person(mix, [rng.randrange(BRANDS) for _ in range(CATEGORIES)], [])
    sessions = min(MAX_SESSIONS, 1 + int(rng.expovariate(1.0 / (MEAN_SESSIONS - 1))))
    viewed: list[int] = []
    bought: set[int] = set()
    landing: list[int] = []
    for s in range(sessions):
        shown: list[int] = []
        clicked: list[int] = []
        if s > 0 and rng.random() < MAIL:
            favourite = most_viewed_category(viewed, shop)
            picks = top[favourite]
            shown = rng.sample(picks, min(2, len(picks))) + rng.sample(top[None], 2)
            shown = list(dict.fromkeys(shown))
            clicked = [p for p in shown if rng.random() < CLICK * liking(person, shop, p)]
        views = list(landing) + clicked
        landing = []
        if viewed and rng.random() < REVISIT:
            recent = [v for v in viewed[-10:] if v not in bought]
            if recent:
                views.append(rng.choices(recent, [liking(person, shop, v) for v in recent])[0])
        if rng.random() < POPULAR_SESSION:
            views += [shop.draw_popular(rng) for _ in range(rng.randint(1, 3))]
        else:
            c = rng.choices(range(CATEGORIES), mix)[0]
            views += [shop.draw(rng, c, person.brand[c]) for _ in range(rng.randint(1, 5))]
        purchase: int | None = None
        if rng.random() < CART:
            options = [v for v in dict.fromkeys(views) if shop.buyable[v] and v not in bought]
            if options:
                counts = Counter(views)
                weights = [liking(person, shop, v) * counts[v] for v in options]
                carted = rng.choices(options, weights)[0]
                if rng.random() < BUY:
                    purchase = carted
                    bought.add(carted)
                else:
                    landing = [carted]  # an abandoned cart: viewed again next time
        viewed += views
        person.slots.append(Slot(shown, clicked, views, purchase))
    return person


def old_mail_picks(shop: Shop) -> dict[int | None, list[int]]:
    """What the old mails chose from: each category's and the shop's most popular products."""
    top: dict[int | None, list[int]] = {}
    for c in range(CATEGORIES):
        members = [i for i in shop.in_category[c] if shop.buyable[i]]
        top[c] = sorted(members, key=lambda i: -shop.weight[i])[:MAIL_TOP]
    every = [i for i in range(len(shop.ids)) if shop.buyable[i]]
    top[None] = sorted(every, key=lambda i: -shop.weight[i])[:MAIL_TOP]
    return top


# --- training histories and the indexes a store would hold ---------------------------------


@dataclass
class History:
    """A person's training history: views (oldest first), bought, clicks and impressions; and
    the held-out purchase, if any."""

    views: list[int]
    bought: set[int]
    clicked: Counter[int]
    shown: Counter[int]
    held_out: int | None


def history_of(person: Person) -> History:
    last = max((n for n, s in enumerate(person.slots) if s.bought is not None), default=None)
    slots = person.slots if last is None else person.slots[:last]
    views = [v for s in slots for v in s.views]
    bought = {s.bought for s in slots if s.bought is not None}
    clicked = Counter(p for s in slots for p in s.clicked)
    shown = Counter(p for s in slots for p in s.shown)
    held_out = None if last is None else person.slots[last].bought
    return History(views, bought, clicked, shown, held_out)


def recent_distinct(views: Sequence[int], kept: int = VIEWED_KEPT) -> list[int]:
    """The most recent distinct views, newest first."""
    found: dict[int, None] = {}
    for v in reversed(views):
        found.setdefault(v, None)
        if len(found) == kept:
            break
    return list(found)


@dataclass
class Indexes:
    """What a store would hold for the signals: per person their recent views, clicks and
    impressions; per product its top co-viewed products and the clicks of its viewers; the
    most viewed products, overall and per category."""

    viewed: list[list[str]]
    clicked: list[dict[str, int]]
    shown: list[dict[str, int]]
    bought: list[set[str]]
    co_viewed: dict[str, list[tuple[str, int]]]
    viewer_clicks: dict[str, list[tuple[str, int]]]
    popular: list[str]
    category_pool: dict[str, list[str]]
    top_category: list[str | None]


def top_of(counter: Mapping[Any, int], kept: int) -> list[tuple[Any, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:kept]


def build_indexes(shop: Shop, histories: Sequence[History]) -> Indexes:
    ids = shop.ids
    pairs: dict[int, Counter[int]] = {}
    viewer_clicks: dict[int, Counter[int]] = {}
    views = Counter[int]()
    recent: list[list[int]] = []
    for history in histories:
        views.update(history.views)
        distinct = recent_distinct(history.views)
        recent.append(distinct)
        for a in distinct:
            row = pairs.setdefault(a, Counter())
            row.update(distinct)
            row[a] -= 1
            if history.clicked:
                viewer_clicks.setdefault(a, Counter()).update(history.clicked)
    popular = [ids[i] for i, _ in top_of(views, POPULAR_KEPT)]
    by_category: dict[int, Counter[int]] = {}
    for product, count in views.items():
        by_category.setdefault(shop.category[product], Counter())[product] = count
    return Indexes(
        viewed=[[ids[v] for v in r] for r in recent],
        clicked=[{ids[p]: n for p, n in h.clicked.items()} for h in histories],
        shown=[{ids[p]: n for p, n in h.shown.items()} for h in histories],
        bought=[{ids[p] for p in h.bought} for h in histories],
        co_viewed={
            ids[a]: [(ids[b], n) for b, n in top_of(row, CO_VIEWED_KEPT) if n > 0]
            for a, row in pairs.items()
        },
        viewer_clicks={
            ids[a]: [(ids[b], n) for b, n in top_of(row, CO_VIEWED_KEPT)]
            for a, row in viewer_clicks.items()
        },
        popular=popular,
        category_pool={
            f"c{c:02d}": [ids[i] for i, _ in top_of(counts, POOL_KEPT)]
            for c, counts in by_category.items()
        },
        top_category=[
            None if (c := most_viewed_category(h.views, shop)) is None else f"c{c:02d}"
            for h in histories
        ],
    )


def signals_of(indexes: Indexes, person: int) -> Signals:
    """The person's signals, summed from the indexes as a store read would give them."""
    viewed = indexes.viewed[person]
    own = set(viewed)
    co: dict[str, int] = {}
    similar: dict[str, int] = {}
    for pid in viewed:
        for other, n in indexes.co_viewed.get(pid, ()):
            if other not in own:
                co[other] = co.get(other, 0) + n
        for other, n in indexes.viewer_clicks.get(pid, ()):
            similar[other] = similar.get(other, 0) + n
    return Signals(
        viewed=viewed,
        co_viewed=sorted(co, key=lambda k: (-co[k], k)),
        popular=indexes.popular,
        clicked=indexes.clicked[person],
        similar_clicked=similar,
        shown=indexes.shown[person],
    )


# --- methods -------------------------------------------------------------------------------


Method = Callable[[Indexes, int, Mapping[str, Product]], list[str]]


def firsts(ids: Sequence[str], catalog: Mapping[str, Product], exclude: set[str]) -> list[str]:
    picked = [p for p in dict.fromkeys(ids) if p not in exclude and catalog[p].buyable]
    return picked[:TOP]


def popular_method(indexes: Indexes, person: int, catalog: Mapping[str, Product]) -> list[str]:
    return firsts(indexes.popular, catalog, indexes.bought[person])


def top_category_method(indexes: Indexes, person: int, catalog: Mapping[str, Product]) -> list[str]:
    category = indexes.top_category[person]
    pool = indexes.category_pool.get(category, []) if category is not None else []
    return firsts([*pool, *indexes.popular], catalog, indexes.bought[person])


def ours(
    *,
    mail: bool = True,
    similar: bool = True,
    co_views: bool = True,
    pool: bool = True,
    viewed: bool = True,
    diversify: bool = True,
) -> Method:
    """``rank`` on the person's signals, one of them left out (or the diversification, or the
    boost of viewed products) for an ablation."""
    constants = {}
    if not viewed:
        constants["W_VIEWED"] = 0.0
    if not diversify:
        constants |= {"W_DIVERSITY": 0.0, "MIN_CATEGORIES": 0}

    def method(indexes: Indexes, person: int, catalog: Mapping[str, Product]) -> list[str]:
        signals = signals_of(indexes, person)
        if not mail:
            signals = replace(signals, clicked={}, similar_clicked={}, shown={})
        if not similar:
            signals = replace(signals, similar_clicked={})
        if not co_views:
            signals = replace(signals, co_viewed=())
        categories = indexes.category_pool if pool else None
        with patched(**constants):
            found = rank(signals, catalog, indexes.bought[person], TOP, category_pool=categories)
        return [p.id for p in found]

    return method


@contextlib.contextmanager
def patched(**constants: float) -> Iterator[None]:
    """The ranking's constants set to ``constants`` for a while (the ablations)."""
    saved = {name: getattr(ranking, name) for name in constants}
    try:
        for name, value in constants.items():
            setattr(ranking, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(ranking, name, value)


METHODS: dict[str, Method] = {
    "ours": ours(),
    "ours without mail clicks and impressions": ours(mail=False),
    "ours without similar people's clicks": ours(similar=False),
    "ours without co-views": ours(co_views=False),
    "ours without category pools": ours(pool=False),
    "ours without the viewed boost": ours(viewed=False),
    "ours without diversification": ours(diversify=False),
    "popular": popular_method,
    "top category popular": top_category_method,
}
BASELINES = ("popular", "top category popular")


# --- the runs ------------------------------------------------------------------------------


def generate(products: int, people: int, seed: int) -> tuple[Shop, list[History]]:
    rng = random.Random(seed)
    shop = make_shop(products, rng)
    top = old_mail_picks(shop)
    return shop, [history_of(make_person(rng, shop, top)) for _ in range(people)]


def evaluate(shop: Shop, histories: Sequence[History]) -> list[dict[str, Any]]:
    indexes = build_indexes(shop, histories)
    held = [(n, shop.ids[h.held_out]) for n, h in enumerate(histories) if h.held_out is not None]
    rows = []
    for name, method in METHODS.items():
        hits = sum(target in method(indexes, n, shop.catalog) for n, target in held)
        rows.append(
            {"server": name, "people": len(held), "hits": hits, "hit_rate": ratio(hits, len(held))}
        )
    return rows


def latency(products: int, people: int, seed: int) -> dict[str, float]:
    """µs per call of ``rank`` with the signals computed from the indexes, every person."""
    shop, histories = generate(products, people, seed + 1)
    indexes = build_indexes(shop, histories)
    catalog, pools = shop.catalog, indexes.category_pool
    for n in range(min(100, people)):  # warm up
        rank(signals_of(indexes, n), catalog, indexes.bought[n], TOP, category_pool=pools)
    times = []
    cpu = time.process_time()
    for n in range(people):
        started = time.perf_counter()
        signals = signals_of(indexes, n)
        rank(signals, catalog, indexes.bought[n], TOP, category_pool=pools)
        times.append(1e6 * (time.perf_counter() - started))
    cpu = time.process_time() - cpu
    times.sort()
    return {
        "latency_cpu_us": 1e6 * cpu / people,
        "latency_products": len(catalog),
        "latency_people": people,
        "latency_mean_us": statistics.fmean(times),
        "latency_p99_us": percentile(times, 99),
    }


COLUMNS = [
    Column("server", "method"),
    Column("people", "people", "{:,}"),
    Column("hits", "hits", "{:,}"),
    Column("hit_rate", "hit-rate@4", "{:.3f}"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--people", type=int, default=5000)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-people", type=int, default=10_000)
    parser.add_argument("--latency-products", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    shop, histories = generate(args.products, args.people, args.seed)
    results = evaluate(shop, histories)
    speed = latency(args.latency_products, args.latency_people, args.seed)
    by_name = {r["server"]: r for r in results}
    best = max(by_name[b]["hit_rate"] for b in BASELINES)
    summary: dict[str, Any] = {
        "ratio": ratio(by_name["ours"]["hit_rate"], best),
        "goal_met": bool(by_name["ours"]["hit_rate"] > best),
        **speed,
    }
    by_name["ours"].update(speed)
    lines = [
        f"Recommendations: {args.people:,} people, {args.products:,} products, seed {args.seed}; "
        f"hit-rate@{TOP} of each person's last purchase (held out)",
        format_table(results, COLUMNS),
        f"ratio ours / best baseline: {summary['ratio']:.2f} (goal > 1: "
        f"{'met' if summary['goal_met'] else 'MISSED'})",
        f"latency of rank, signals included: mean {speed['latency_mean_us']:.0f} µs, "
        f"p99 {speed['latency_p99_us']:.0f} µs, CPU {speed['latency_cpu_us']:.0f} µs a call "
        f"({args.latency_people:,} people, "
        f"{speed['latency_products']:,.0f} products)",
    ]
    emit(document("recommend", args, results, summary), "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
