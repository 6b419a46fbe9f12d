"""What a person did with products, read from e-commerce events: ids and quantities only,
never a browser's names, prices or links. Pure: plain synchronous tests."""

from __future__ import annotations

from typing import Any

from hypothesis import given, strategies as st

from rtserver.mail.recommend import (
    MAX_CART_PRODUCTS,
    VIEWED,
    bought_of,
    cart_of,
    events_of_cart,
    id_of,
    viewed_of,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def test_id_of_reads_product_id_then_sku() -> None:
    assert id_of({"product_id": " p1 ", "sku": "S"}) == "p1"
    assert id_of({"sku": 1234}) == "1234"
    assert id_of({"product_id": True, "sku": "S"}) == "S"
    assert id_of({"product_id": "", "sku": "  "}) is None
    assert id_of({"product_id": "x" * 201}) is None
    assert id_of("not a mapping") is None  # type: ignore[arg-type]


@given(st.dictionaries(st.sampled_from(["product_id", "sku", "name"]), JSON))
def test_id_of_never_raises(properties: dict[str, Any]) -> None:
    found = id_of(properties)
    assert found is None or (isinstance(found, str) and 0 < len(found) <= 200)


def test_viewed_newest_first_each_once_and_capped() -> None:
    events = [("Product Viewed", {"product_id": f"p{i % 30}"}) for i in range(60)]
    events += [("Product Added", {"product_id": "cart"}), ("Product Viewed", {"name": "no id"})]
    viewed = viewed_of(events)
    assert len(viewed) == VIEWED and viewed[0] == "p29" and len(set(viewed)) == VIEWED


def test_cart_adds_and_removes_net_out() -> None:
    cart = cart_of(
        [
            ("Product Added", {"product_id": "a", "quantity": 2}),
            ("Product Added", {"product_id": "b", "quantity": "3"}),
            ("Product Added", {"product_id": "a"}),
            ("Product Removed", {"product_id": "b", "quantity": 1}),
            ("Product Removed", {"product_id": "a", "quantity": 5}),
            ("Product Added", {"product_id": "c", "quantity": "many"}),
            ("Product Added", {"product_id": "d", "quantity": float("inf")}),
            ("Product Added", {"product_id": "e", "quantity": True}),
            ("Product Added", {"name": "no id"}),
            ("Product Added", "not a mapping"),
        ]
    )
    assert cart == [("b", 2), ("c", 1), ("d", 1), ("e", 1)]


def test_cart_viewed_replaces_and_order_empties() -> None:
    listed = {"products": [{"product_id": "x", "quantity": 2}, {"sku": "y"}, "junk"]}
    assert cart_of([("Product Added", {"product_id": "a"}), ("Cart Viewed", listed)]) == [
        ("x", 2), ("y", 1),
    ]  # fmt: skip
    assert cart_of([("Product Added", {"product_id": "a"}), ("Order Completed", {})]) == []


def test_cart_is_capped() -> None:
    events = [("Product Added", {"product_id": str(i)}) for i in range(MAX_CART_PRODUCTS + 5)]
    assert len(cart_of(events)) == MAX_CART_PRODUCTS
    events = [("Product Added", {"product_id": "a", "quantity": 9999})] * 2
    assert cart_of(events) == [("a", 9999)]


def test_bought_of_reads_orders_and_their_products() -> None:
    events = [
        ("Order Completed", {"product_id": "o1", "products": [{"product_id": "p1"}, {"sku": 2}]}),
        ("Order Completed", {"products": "junk"}),
        ("Product Viewed", {"product_id": "v"}),
    ]
    assert bought_of(events) == {"o1", "p1", "2"}


def test_events_of_cart_keeps_the_run_s_cart() -> None:
    events = [
        ("Product Added", {"product_id": "a", "cart_id": "c1"}),
        ("Product Added", {"product_id": "b", "cart_id": 2}),
        ("Product Viewed", {"product_id": "v"}),
    ]
    assert events_of_cart(events, "2") == [events[1]]
    assert events_of_cart(events, "c9") == events
    assert events_of_cart(events, "") == events


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Product Added", "Product Removed", "Cart Viewed", "Order Completed"]),
            JSON,
        )
    )
)
def test_the_cart_never_raises_and_quantities_stay_positive(events: list[Any]) -> None:
    for pid, quantity in cart_of(events):
        assert isinstance(pid, str) and 1 <= quantity <= 9999
