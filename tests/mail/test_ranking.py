"""The ranking of recommended catalog products: its hard rules, each term of the score, the
diversification, and a property test of the rules. Pure: plain synchronous tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from rtserver.mail import ranking
from rtserver.mail.ranking import TERMS, Signals, explain, rank
from rtserver.model import AVAILABILITY, Product


def p(pid: str, category: str | None = "A", **kw: object) -> Product:
    categories = ("Shop", category) if category is not None else ()
    return Product(pid, pid.upper(), categories=categories, **kw)  # type: ignore[arg-type]


def catalog_of(*products: Product) -> dict[str, Product]:
    return {x.id: x for x in products}


def ids(products: list[Product]) -> list[str]:
    return [x.id for x in products]


# hard rules


def test_nothing_when_the_limit_is_zero_or_nothing_is_known() -> None:
    catalog = catalog_of(p("a"))
    assert rank(Signals(popular=["a"]), catalog, (), limit=0) == []
    assert rank(Signals(), catalog, ()) == []


def test_returns_catalog_records_only() -> None:
    """Unknown ids are skipped; the records returned are the catalog's own."""
    a = p("a", price=10.0)
    result = rank(Signals(popular=["ghost", "a"]), catalog_of(a), ())
    assert result == [a] and result[0] is a


def test_never_excluded_nor_unbuyable_nor_twice() -> None:
    catalog = catalog_of(
        p("a"), p("b"), p("gone", availability="out_of_stock"), p("late", availability="preorder")
    )
    signals = Signals(viewed=["a", "a", "b"], popular=["a", "gone", "late", "b"], co_viewed=["a"])
    assert sorted(ids(rank(signals, catalog, {"b"}))) == ["a", "late"]


def test_one_variant_per_group_and_none_of_an_excluded_group() -> None:
    catalog = catalog_of(
        p("shirt"),
        p("shirt-red", item_group="shirt"),
        p("shirt-blue", item_group="shirt"),
        p("cap-red", item_group="cap"),
        p("cap-blue", item_group="cap"),
        p("sock-1", item_group="sock"),
    )
    signals = Signals(popular=["shirt-red", "shirt-blue", "shirt", "cap-red", "cap-blue", "sock-1"])
    assert ids(rank(signals, catalog, {"shirt"}, limit=6)) == ["cap-red", "sock-1"]
    assert ids(rank(signals, catalog, {"cap-blue"}, limit=6)) == ["shirt-red", "sock-1"]
    # an excluded id the catalog does not know still excludes its variants
    assert ids(rank(signals, catalog, {"sock"}, limit=6)) == ["shirt-red", "cap-red"]


def test_limit_is_respected() -> None:
    catalog = catalog_of(*(p(f"x{i}") for i in range(10)))
    assert len(rank(Signals(popular=list(catalog)), catalog, (), limit=3)) == 3


def test_the_catalog_is_never_iterated() -> None:
    """Only candidate ids are looked up: a catalog that refuses iteration works."""

    class LookupsOnly(dict[str, Product]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("iterated")

        def keys(self):  # type: ignore[no-untyped-def]
            raise AssertionError("iterated")

        def values(self):  # type: ignore[no-untyped-def]
            raise AssertionError("iterated")

        def items(self):  # type: ignore[no-untyped-def]
            raise AssertionError("iterated")

    catalog = LookupsOnly({"a": p("a"), "b": p("b", "B")})
    assert ids(rank(Signals(viewed=["a"], popular=["b"]), catalog, {"a"})) == ["b"]


# terms


def test_explain_names_every_term_and_sums_to_the_ranking() -> None:
    catalog = catalog_of(p("a"), p("b", "B"), p("c", "C"))
    signals = Signals(viewed=["a"], co_viewed=["b"], popular=["c", "b"])
    terms = explain(signals, catalog, ())
    assert all(list(t) == list(TERMS) for t in terms.values())
    totals = [sum(t.values()) for t in terms.values()]
    assert totals == sorted(totals, reverse=True)
    assert list(terms) == ["a", "b", "c"]


def test_category_affinity_is_the_recency_weighted_share_of_views() -> None:
    catalog = catalog_of(p("a1"), p("a2"), p("b1", "B"), p("x", None), p("a3"), p("b2", "B"))
    signals = Signals(viewed=["b1", "a1", "ghost", "a2", "x"], popular=["a3", "b2"])
    terms = explain(signals, catalog, {"a1", "a2", "b1"})
    r = ranking.RECENCY
    weights_a, weight_b = r + r**3, 1.0  # ghost and x have no category
    assert terms["a3"]["category"] == pytest.approx(weights_a / (weights_a + weight_b))
    assert terms["b2"]["category"] == pytest.approx(weight_b / (weights_a + weight_b))
    assert terms["x"]["category"] == 0.0


def test_viewed_products_get_a_recency_weighted_boost() -> None:
    catalog = catalog_of(p("a"), p("b"), p("c"))
    terms = explain(Signals(viewed=["a", "b"], popular=["c"]), catalog, ())
    assert terms["a"]["viewed"] == pytest.approx(ranking.W_VIEWED)
    assert terms["b"]["viewed"] == pytest.approx(ranking.W_VIEWED * ranking.RECENCY)
    assert terms["c"]["viewed"] == 0.0
    assert ids(rank(Signals(viewed=["a"], popular=["c"]), catalog, ())) == ["a", "c"]


def test_ranked_lists_weigh_by_place() -> None:
    catalog = catalog_of(*(p(x) for x in "abcdef"))
    signals = Signals(co_viewed=["a", "b", "a"], popular=["c", "d"])
    terms = explain(signals, catalog, ())
    half = ranking.RANK_HALF / (ranking.RANK_HALF + 1)
    assert terms["a"]["co_view"] == pytest.approx(ranking.W_CO_VIEW)
    assert terms["b"]["co_view"] == pytest.approx(ranking.W_CO_VIEW * half)
    assert terms["c"]["popular"] == pytest.approx(ranking.W_POPULAR)
    assert terms["d"]["popular"] == pytest.approx(ranking.W_POPULAR * half)
    assert ids(rank(signals, catalog, ())) == list(terms)  # one category: by score


def test_category_pools_of_the_top_categories_join_weighted_by_affinity() -> None:
    catalog = catalog_of(p("a1"), p("b1", "B"), p("a9"), p("b9", "B"), p("z9", "Z"))
    pool = {"A": ["a9", "b9"], "B": ["b9", "a9"], "Z": ["z9"]}
    signals = Signals(viewed=["a1", "b1"])
    terms = explain(signals, catalog, {"a1", "b1"}, category_pool=pool)
    affinity_a = 1 / (1 + ranking.RECENCY)
    assert terms["a9"]["category_pool"] == pytest.approx(ranking.W_CATEGORY_POOL * affinity_a)
    # b9 is second in A's pool and first in B's: the better of the two
    half = ranking.RANK_HALF / (ranking.RANK_HALF + 1)
    in_b = ranking.W_CATEGORY_POOL * (1 - affinity_a)
    assert terms["b9"]["category_pool"] == pytest.approx(
        max(in_b, ranking.W_CATEGORY_POOL * affinity_a * half)
    )
    assert "z9" not in terms  # Z is not one of the person's categories
    assert explain(signals, catalog, {"a1", "b1"}) == {}


def test_own_clicks_boost_up_to_a_cap() -> None:
    catalog = catalog_of(p("a"), p("b"), p("c"), p("d"))
    signals = Signals(clicked={"a": 1, "b": 5, "d": 0}, popular=["c", "d"])
    terms = explain(signals, catalog, ())
    assert terms["a"]["clicked"] == pytest.approx(ranking.W_CLICKED / ranking.CLICKS_FULL)
    assert terms["b"]["clicked"] == pytest.approx(ranking.W_CLICKED)
    assert terms["c"]["clicked"] == 0.0 and terms["d"]["clicked"] == 0.0
    assert ids(rank(signals, catalog, ()))[:2] == ["b", "a"]


def test_similar_peoples_clicks_give_a_smaller_boost() -> None:
    catalog = catalog_of(p("a"), p("b"), p("c"))
    signals = Signals(similar_clicked={"a": 40, "b": 10}, clicked={"c": 2})
    terms = explain(signals, catalog, ())
    assert terms["a"]["similar_clicked"] == pytest.approx(ranking.W_SIMILAR_CLICKED)
    assert terms["b"]["similar_clicked"] == pytest.approx(ranking.W_SIMILAR_CLICKED / 4)
    assert ranking.W_SIMILAR_CLICKED < ranking.W_CLICKED
    assert ids(rank(signals, catalog, ())) == ["c", "a", "b"]


def test_the_clicked_mappings_are_read_up_to_a_bound() -> None:
    many = {f"x{i:03d}": i + 1 for i in range(ranking.MAX_PER_SOURCE + 10)}
    catalog = catalog_of(*(p(x) for x in many))
    terms = explain(Signals(similar_clicked=many), catalog, ())
    assert len(terms) == ranking.MAX_PER_SOURCE
    assert "x000" not in terms and f"x{len(many) - 1:03d}" in terms


def test_products_shown_and_never_clicked_are_penalised_more_with_repeats() -> None:
    catalog = catalog_of(p("a"), p("b"), p("c"), p("d"), p("e"))
    signals = Signals(
        popular=["a", "b", "c", "d", "e"],
        shown={"a": 1, "b": 2, "c": 4, "d": 5},
        clicked={"d": 1},
    )
    terms = explain(signals, catalog, ())
    assert terms["a"]["ignored"] == 0.0  # shown once
    assert terms["b"]["ignored"] == pytest.approx(-ranking.W_IGNORED)
    assert terms["c"]["ignored"] == pytest.approx(-3 * ranking.W_IGNORED)
    assert terms["d"]["ignored"] == 0.0  # clicked once: not ignored
    assert ids(rank(signals, catalog, (), limit=5)) == ["d", "a", "e", "b", "c"]


# selection


def test_diversifies_across_categories_with_the_top_category_leading() -> None:
    catalog = catalog_of(*(p(f"a{i}") for i in range(6)), p("b1", "B"), p("c1", "C"))
    signals = Signals(
        viewed=["a0", "a1", "a2", "a3", "b1"], popular=["a4", "a5", "b1", "c1"], co_viewed=["c1"]
    )
    result = rank(signals, catalog, ())
    assert result[0].category == "A"
    assert len({x.category for x in result}) >= 2


def test_four_picks_span_two_categories_whenever_candidates_allow() -> None:
    """Even when one category outscores everything else by far."""
    catalog = catalog_of(*(p(f"a{i}") for i in range(6)), p("z", "Z"), p("n", None))
    signals = Signals(viewed=[f"a{i}" for i in range(6)], popular=["z"])
    result = rank(signals, catalog, ())
    assert [x.category for x in result] == ["A", "A", "A", "Z"]
    only_a = Signals(viewed=[f"a{i}" for i in range(6)])
    assert [x.category for x in rank(only_a, catalog, ())] == ["A"] * 4
    # a product without category counts as another category
    with_none = Signals(viewed=[f"a{i}" for i in range(6)], popular=["n"])
    assert ids(rank(with_none, catalog, ()))[-1] == "n"


def test_without_diversification_the_best_scores_win(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = catalog_of(*(p(f"a{i}") for i in range(6)), p("z", "Z"))
    signals = Signals(viewed=[f"a{i}" for i in range(6)], popular=["z"])
    monkeypatch.setattr(ranking, "W_DIVERSITY", 0.0)
    monkeypatch.setattr(ranking, "MIN_CATEGORIES", 0)
    assert [x.category for x in rank(signals, catalog, ())] == ["A"] * 4


def test_ties_go_to_the_smaller_id() -> None:
    catalog = catalog_of(p("b"), p("a"), p("c"))
    signals = Signals(similar_clicked={"c": 1, "b": 1, "a": 1})
    assert ids(rank(signals, catalog, ())) == ["a", "b", "c"]


def test_signals_default_to_empty_read_only_mappings() -> None:
    signals = Signals()
    assert dict(signals.clicked) == {} and dict(signals.shown) == {}
    with pytest.raises(TypeError):
        signals.clicked["a"] = 1  # type: ignore[index]


# properties

IDS = st.sampled_from([f"p{i}" for i in range(12)] + ["ghost"])


@st.composite
def shops(draw: st.DrawFn) -> tuple[dict[str, Product], Signals, set[str], int]:
    products = [
        Product(
            pid,
            pid,
            categories=draw(st.sampled_from([(), ("A",), ("B",), ("S", "C")])),
            availability=draw(st.sampled_from(AVAILABILITY)),
            item_group=draw(st.sampled_from([None, None, "g1", "g2", "p0"])),
        )
        for pid in draw(st.lists(IDS.filter(lambda x: x != "ghost"), unique=True))
    ]
    counts = st.dictionaries(IDS, st.integers(-1, 5), max_size=8)
    signals = Signals(
        viewed=draw(st.lists(IDS, max_size=8)),
        co_viewed=draw(st.lists(IDS, max_size=8)),
        popular=draw(st.lists(IDS, max_size=8)),
        clicked=draw(counts),
        similar_clicked=draw(counts),
        shown=draw(counts),
    )
    return (
        {x.id: x for x in products},
        signals,
        draw(st.sets(IDS, max_size=4)),
        draw(st.integers(-1, 6)),
    )


@settings(max_examples=300, deadline=None)
@given(shops(), st.booleans())
def test_rules_hold_for_any_signals(
    shop: tuple[dict[str, Product], Signals, set[str], int], pooled: bool
) -> None:
    catalog, signals, exclude, limit = shop
    pool = {"A": list(catalog), "C": ["p1", "p2", "ghost"]} if pooled else None
    result = rank(signals, catalog, exclude, limit, category_pool=pool)
    assert len(result) <= max(limit, 0)
    excluded_groups = set(exclude) | {catalog[e].item_group or e for e in exclude if e in catalog}
    groups = [x.item_group or x.id for x in result]
    assert len(set(groups)) == len(groups)
    for product in result:
        assert catalog.get(product.id) is product and product.buyable
        assert product.id not in exclude
        assert (product.item_group or product.id) not in excluded_groups
    assert rank(signals, catalog, exclude, limit, category_pool=pool) == result
