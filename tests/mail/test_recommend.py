"""Products from e-commerce events, the cart they add up to, and the ranking of
recommendations. Pure: plain synchronous tests."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, strategies as st

from rtserver.mail.recommend import VIEWED, Product, cart_of, product_of, recommend, viewed_of


def p(pid: str, category: str | None = None, **kw: Any) -> Product:
    return Product(pid, kw.pop("name", pid.upper()), None, None, None, None, category, **kw)


def ids(products: list[Product]) -> list[str]:
    return [x.id for x in products]


# product_of


def test_product_of_reads_the_segment_fields() -> None:
    """Segment's e-commerce properties map onto a Product."""
    product = product_of(
        {
            "product_id": "p1",
            "sku": "SKU-1",
            "name": "  Linen   shirt ",
            "price": 49.9,
            "currency": "eur",
            "image_url": "https://cdn.example/1.jpg",
            "url": "https://shop.example/p/1",
            "category": "Shirts",
            "quantity": 2,
        }
    )
    assert product == Product(
        "p1",
        "Linen shirt",
        49.9,
        "EUR",
        "https://cdn.example/1.jpg",
        "https://shop.example/p/1",
        "Shirts",
        2,
    )


def test_product_of_falls_back_to_sku_and_needs_an_id() -> None:
    """``sku`` stands in for ``product_id``; without either there is no product."""
    assert product_of({"sku": 1234}) == Product("1234", "1234", None, None, None, None, None)
    assert product_of({"name": "No id"}) is None
    assert product_of({"product_id": "", "sku": "  "}) is None
    assert product_of({"product_id": True}) is None
    assert product_of("not a mapping") is None  # type: ignore[arg-type]


def test_product_of_drops_bad_values() -> None:
    """Attacker data of the wrong type or shape is dropped, never raised about."""
    product = product_of(
        {
            "product_id": "p1",
            "name": ["x"],
            "price": "abc",
            "currency": "EURO",
            "image_url": "javascript:alert(1)",
            "url": "//evil.example/",
            "category": {"a": 1},
            "quantity": "many",
        }
    )
    assert product == Product("p1", "p1", None, None, None, None, None, 1)


def test_product_of_price_and_quantity_edge_cases() -> None:
    """Prices parse from strings, must be finite and not negative; quantities are capped."""

    def price(value: Any) -> float | None:
        found = product_of({"product_id": "p", "price": value})
        assert found is not None
        return found.price

    def quantity(value: Any) -> int:
        found = product_of({"product_id": "p", "quantity": value})
        assert found is not None
        return found.quantity

    assert price(" 12.50 ") == 12.5
    assert price(3) == 3.0
    assert price(math.inf) is None
    assert price("nan") is None
    assert price(-1) is None
    assert price(True) is None
    assert price(None) is None
    assert quantity(3.7) == 3
    assert quantity("4") == 4
    assert quantity(0) == 1
    assert quantity(True) == 1
    assert quantity(math.nan) == 1
    assert quantity(10**9) == 9999
    assert quantity([2]) == 1


def test_product_of_urls_must_be_web_urls() -> None:
    """Only absolute http(s) urls without whitespace survive, and not overlong ones."""

    def url(value: Any) -> str | None:
        found = product_of({"product_id": "p", "url": value})
        assert found is not None
        return found.url

    assert url(" https://shop.example/p ") == "https://shop.example/p"
    assert url("http://shop.example") == "http://shop.example"
    assert url("https://shop.example/a b") is None
    assert url("https://") is None
    assert url("http://[::1") is None
    assert url("https://shop.example/" + "a" * 3000) is None
    assert url(42) is None


def test_long_text_is_capped() -> None:
    """Names are folded to one line and capped."""
    product = product_of({"product_id": "p", "name": "a\n\tb " + "x" * 1000})
    assert product is not None
    assert product.name.startswith("a b x")
    assert len(product.name) == 300


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=5,
)
KEYS = st.sampled_from(["product_id", "sku", "name", "price", "currency", "image_url", "url",
                        "category", "quantity"]) | st.text(max_size=12)  # fmt: skip


@given(st.dictionaries(KEYS, JSON))
def test_product_of_never_raises(properties: dict[str, Any]) -> None:
    """Any JSON-like properties give a Product or None."""
    product = product_of(properties)
    assert product is None or product.quantity >= 1


# cart_of


def test_cart_adds_and_removes_net_out() -> None:
    """Adds sum quantities, removes subtract, a product at zero leaves the cart."""
    cart = cart_of(
        [
            ("Product Added", {"product_id": "a", "quantity": 2, "price": 10}),
            ("Product Added", {"product_id": "b"}),
            ("Product Added", {"product_id": "a", "name": "Apple"}),
            ("Product Removed", {"product_id": "a"}),
            ("Product Removed", {"product_id": "b", "quantity": 5}),
            ("Product Removed", {"product_id": "zz"}),
            ("Page Viewed", {"product_id": "c"}),
        ]
    )
    assert cart == [Product("a", "Apple", 10.0, None, None, None, None, 2)]


def test_cart_keeps_known_details_when_a_later_event_lacks_them() -> None:
    """A second add without a name or price keeps what the first one said."""
    cart = cart_of(
        [
            ("Product Added", {"product_id": "a", "name": "Apple", "price": 2, "currency": "USD"}),
            ("Product Added", {"product_id": "a", "image_url": "https://cdn.example/a.png"}),
        ]
    )
    assert cart == [Product("a", "Apple", 2.0, "USD", "https://cdn.example/a.png", None, None, 2)]


def test_cart_viewed_replaces_and_order_empties() -> None:
    """A ``products`` list replaces the cart; an order empties it; later adds start anew."""
    cart = cart_of(
        [
            ("Product Added", {"product_id": "old"}),
            (
                "Cart Viewed",
                {
                    "products": [
                        {"product_id": "a", "quantity": 2},
                        {"product_id": "a"},
                        {"sku": "b"},
                        {"name": "no id"},
                        "junk",
                    ]
                },
            ),
        ]
    )
    assert [(x.id, x.quantity) for x in cart] == [("a", 3), ("b", 1)]
    after_order = cart_of(
        [
            ("Product Added", {"product_id": "a"}),
            ("Checkout Started", {"products": [{"product_id": "a"}, {"product_id": "b"}]}),
            ("Order Completed", {"products": [{"product_id": "a"}]}),
            ("Product Added", {"product_id": "c"}),
        ]
    )
    assert ids(after_order) == ["c"]


def test_cart_ignores_bad_events() -> None:
    """Properties that are no mapping, or a ``products`` that is no list, change nothing."""
    cart = cart_of(
        [
            ("Product Added", {"product_id": "a"}),
            ("Cart Viewed", {"products": "a,b"}),
            ("Product Added", "junk"),  # type: ignore[list-item]
            ("Product Added", {"name": "no id"}),
        ]
    )
    assert ids(cart) == ["a"]


def test_cart_size_is_bounded() -> None:
    """A flood of adds keeps at most 100 products."""
    cart = cart_of(("Product Added", {"product_id": str(i)}) for i in range(500))
    assert len(cart) == 100


# recommend


def test_recommend_ranks_top_categories_then_co_viewed_then_popular() -> None:
    """The person's most browsed categories lead, then co-views, then popular products."""
    viewed = [p("v1", "shoes"), p("v2", "hats"), p("v3", "shoes"), p("v4", "bags")]
    co_viewed = [p("c1", "bags"), p("c2", "hats"), p("c3", "shoes")]
    popular = [p("pop1", "hats"), p("pop2", None), p("pop3", "shoes")]
    ranked = recommend(viewed, co_viewed, popular, exclude=(), limit=10)
    # shoes (2 views) before hats (1 view, newer than bags); bags is not a top category.
    assert ids(ranked) == ["v1", "v3", "c3", "pop3", "v2", "c2", "pop1", "c1", "pop2"]


def test_recommend_excludes_bought_and_cart_and_deduplicates() -> None:
    """Nothing in ``exclude``, nothing twice, at most ``limit``."""
    viewed = [p("a", "x"), p("a", "x"), p("b", "x")]
    ranked = recommend(viewed, [p("b", "x"), p("c", "y")], [p("c", "y"), p("d")], {"a"}, limit=3)
    assert ids(ranked) == ["b", "c", "d"]
    assert recommend(viewed, [], [], set(), limit=0) == []
    assert ids(recommend([], [], [p("a"), p("b")], set(), limit=1)) == ["a"]


def test_recommend_without_history_falls_back_to_popular() -> None:
    """A person who browsed nothing gets co-viewed (none) and popular products."""
    assert ids(recommend([], [], [p("a", "x"), p("b")], [])) == ["a", "b"]


def test_recommend_ties_go_to_the_most_recent_category() -> None:
    """Categories viewed equally often rank by how recently they were viewed."""
    viewed = [p("new", "hats"), p("nocat"), p("old", "shoes"), p("older", "bags")]
    ranked = recommend(viewed, [], [p("s", "shoes"), p("b", "bags")], (), limit=5)
    assert ids(ranked) == ["new", "old", "s", "b"]


def test_viewed_products_are_newest_first_each_once_and_bounded() -> None:
    """Views rank recommendations newest first; a product viewed again counts once, a view
    without a product id is skipped, and only the ``VIEWED`` most recent products count."""
    views = [("Product Viewed", {"product_id": f"p{n}"}) for n in range(VIEWED + 5)]
    views += [
        ("Product Added", {"product_id": "added"}),
        ("Product Viewed", {"sku": 7}),
        ("Product Viewed", {"name": "no id"}),
        ("Product Viewed", {"product_id": ["not", "an", "id"]}),
        ("Product Viewed", {"product_id": "p3"}),
        ("Product Viewed", {"product_id": "p3"}),
    ]
    ids = [p.id for p in viewed_of(views)]
    assert ids[:2] == ["p3", "7"]
    assert len(ids) == VIEWED and len(set(ids)) == VIEWED
    assert ids[2:] == [f"p{n}" for n in range(VIEWED + 4, 6, -1)]  # the oldest dropped
