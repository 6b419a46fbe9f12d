"""The catalog's product record: the field names trusted sources use, and rows refused with
the field, the value and the reason."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from rtserver.model.products import Product, RowError, product_from, web_url


def test_google_merchant_names_and_a_price_with_its_currency() -> None:
    product = product_from(
        {
            "g:id": "A1",
            "g:title": "  Blue   mug ",
            "g:link": "https://shop.example/mug",
            "g:image_link": "https://cdn.example/mug.jpg",
            "g:price": "15.00 USD",
            "g:sale_price": "12,50 USD",
            "g:availability": "in stock",
            "g:product_type": "Home > Kitchen",
            "g:item_group_id": "MUG",
            "g:brand": "Acme",
        }
    )
    assert product == Product(
        id="A1",
        name="Blue mug",
        url="https://shop.example/mug",
        image="https://cdn.example/mug.jpg",
        price=15.0,
        sale_price=12.5,
        currency="USD",
        categories=("Home", "Kitchen"),
        brand="Acme",
        availability="in_stock",
        item_group="MUG",
    )
    assert product.category == "Kitchen" and product.current_price == 12.5 and product.buyable


def test_segment_names_a_default_currency_and_a_list_of_categories() -> None:
    product = product_from(
        {
            "product_id": 7,
            "name": "Tee",
            "price": 20,
            "image_url": "http://x.example/t.png",
            "category": ["Clothes", "Tops"],
            "availability": False,
        },
        currency="EUR",
    )
    assert product.id == "7" and product.currency == "EUR" and product.price == 20.0
    assert product.categories == ("Clothes", "Tops") and not product.buyable


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"name": "no id"}, "id"),
        ({"id": "1"}, "name"),
        ({"id": "1", "name": "x", "price": "free"}, "price"),
        ({"id": "1", "name": "x", "price": float("nan")}, "price"),
        ({"id": "1", "name": "x", "price": -1}, "price"),
        ({"id": "1", "name": "x", "url": "javascript:alert(1)"}, "url"),
        ({"id": "1", "name": "x", "image_link": "https://a b.example/x"}, "image"),
        ({"id": "1", "name": "x", "currency": "dollars"}, "currency"),
        ({"id": "1", "name": "x", "availability": "maybe"}, "availability"),
        ({"id": "1", "name": "x", "categories": {"a": 1}}, "categories"),
        ({"id": ["1"], "name": "x"}, "id"),
        ({"id": "1", "name": "x" * 301}, "name"),
    ],
)
def test_a_bad_row_names_its_field(row: dict[str, object], field: str) -> None:
    with pytest.raises(RowError) as refused:
        product_from(row)
    assert refused.value.field == field and field in str(refused.value)


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(RowError, match=r"\.\.\.: longer than"):
        product_from({"id": "1", "name": "y" * 400})


def test_web_urls() -> None:
    assert web_url(" https://shop.example/a?b=1 ") == "https://shop.example/a?b=1"
    assert web_url("https://shop.example/\nx") is None
    assert web_url("ftp://shop.example/") is None
    assert web_url("https://[::1") is None
    assert web_url("https://" + "a" * 3000) is None


@given(
    st.dictionaries(
        st.sampled_from(
            ["id", "name", "price", "url", "categories", "availability", "sale_price", "currency"]
        ),
        st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.booleans()),
    )
)
def test_any_row_is_a_product_or_a_row_error(row: dict[str, object]) -> None:
    try:
        product = product_from(row)
    except RowError:
        return
    assert product.id and product.name
    assert product.price is None or product.price >= 0
