"""Product feeds: every format read from real bytes and files, gzipped or not; refused rows
named with their line, field and value while the rows around them are kept; hostile XML
refused; and a 200 MB feed read in bounded memory."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from rtserver.catalog import (
    FORMATS,
    MAX_ROW_BYTES,
    MAX_SHOPIFY_PAGE_BYTES,
    BadRow,
    detect_format,
    parse,
    shopify_page,
)
from rtserver.catalog.feeds import MAX_ITEM_ELEMENTS
from rtserver.model.products import Product

ROOT = Path(__file__).resolve().parents[2]
SHOP = "https://shop.example"

RSS = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">
<channel>
  <title>The shop</title>
  <link>https://shop.example/</link>
  <item>
    <g:id>MUG-1</g:id>
    <title>Blue mug</title>
    <link>https://shop.example/mug</link>
    <description>Holds 300 ml.</description>
    <g:image_link>https://cdn.example/mug.jpg</g:image_link>
    <g:image_link>https://cdn.example/mug-back.jpg</g:image_link>
    <g:price>15.00 USD</g:price>
    <g:sale_price>12.50 USD</g:sale_price>
    <g:availability>in stock</g:availability>
    <g:product_type>Home &gt; Kitchen</g:product_type>
    <g:product_type>Gifts</g:product_type>
    <g:item_group_id>MUG</g:item_group_id>
    <g:brand>Acme</g:brand>
    <g:mpn>AC-MUG-1</g:mpn>
    <g:shipping><g:country>US</g:country><g:price>4.99 USD</g:price></g:shipping>
    <g:color> </g:color>
  </item>
  <item>
    <g:id>MUG-2</g:id>
    <g:title>Red mug</g:title>
    <g:price>free</g:price>
  </item>
  <item>
    <g:id>MUG-3</g:id>
    <g:title>Green mug</g:title>
    <g:link>https://shop.example/green</g:link>
    <g:price>14</g:price>
    <g:availability>out of stock</g:availability>
  </item>
</channel>
</rss>
"""

ATOM = b"""<?xml version="1.0"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:g="http://base.google.com/ns/1.0">
  <id>urn:shop:feed</id>
  <title>The shop</title>
  <link rel="self" href="https://shop.example/feed.atom"/>
  <entry>
    <id>urn:shop:entry:1</id>
    <title>Running shoe</title>
    <link rel="self" href="https://shop.example/entries/1"/>
    <link rel="alternate" href="https://shop.example/shoe"/>
    <summary>Light.</summary>
    <g:id>SHOE-1</g:id>
    <g:price>89.90 EUR</g:price>
    <g:image_link>https://cdn.example/shoe.jpg</g:image_link>
  </entry>
  <entry>
    <title>Sock</title>
    <link href="https://shop.example/sock"/>
    <g:id>SOCK-1</g:id>
  </entry>
  <entry>
    <id>urn:shop:entry:3</id>
    <title>No id of its own</title>
  </entry>
</feed>
"""


def products(rows: list[Product | BadRow]) -> list[Product]:
    return [row for row in rows if isinstance(row, Product)]


def bad(rows: list[Product | BadRow]) -> list[BadRow]:
    return [row for row in rows if isinstance(row, BadRow)]


def shown(value: object) -> str:
    """A value as a refused row shows it: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read(data: bytes, format: str, **options: Any) -> list[Product | BadRow]:
    return list(parse(io.BytesIO(data), format, **options))


# Google's XML.


@pytest.mark.parametrize("zipped", [False, True])
def test_rss_items_become_products_and_a_bad_item_is_named(zipped: bool) -> None:
    rows = read(gzip.compress(RSS) if zipped else RSS, "google")
    assert rows[0] == Product(
        id="MUG-1",
        name="Blue mug",
        url="https://shop.example/mug",
        image="https://cdn.example/mug.jpg",  # the first image_link
        price=15.0,  # not the shipping's price
        sale_price=12.5,
        currency="USD",
        categories=("Home", "Kitchen"),  # the first product_type
        brand="Acme",
        availability="in_stock",
        sku="AC-MUG-1",
        item_group="MUG",
    )
    assert rows[1] == BadRow(2, "price", "'free'", 'not a price (such as 15.00 or "15.00 USD")')
    assert str(rows[1]) == "line 2: price = 'free': not a price (such as 15.00 or \"15.00 USD\")"
    assert rows[2] == Product(
        id="MUG-3",
        name="Green mug",
        url="https://shop.example/green",
        price=14.0,
        availability="out_of_stock",
    )
    assert len(rows) == 3


def test_rss_without_a_currency_takes_the_one_given() -> None:
    assert [p.currency for p in products(read(RSS, "google", currency="eur"))] == ["USD", "EUR"]


@pytest.mark.parametrize("zipped", [False, True])
def test_atom_entries_take_the_alternate_link_and_never_atoms_own_id(zipped: bool) -> None:
    rows = read(gzip.compress(ATOM) if zipped else ATOM, "google", currency="USD")
    assert rows == [
        Product(
            id="SHOE-1",
            name="Running shoe",
            url="https://shop.example/shoe",
            image="https://cdn.example/shoe.jpg",
            price=89.9,
            currency="EUR",
        ),
        Product(id="SOCK-1", name="Sock", url="https://shop.example/sock", currency="USD"),
        BadRow(3, "id", "None", "missing"),
    ]


def test_a_feed_that_breaks_off_keeps_the_items_before_the_break() -> None:
    broken = RSS[: RSS.index(b"<g:id>MUG-3")] + b"<g:id>MUG-3</g:title>\n</item>"
    rows = read(broken, "google")
    assert [p.id for p in products(rows)] == ["MUG-1"]
    assert bad(rows)[0].line == 2 and isinstance(rows[2], BadRow)
    assert rows[2].line == broken.count(b"\n", 0, broken.rindex(b"</g:title>")) + 1
    assert rows[2].field == "document" and "mismatched tag" in rows[2].value
    assert rows[2].reason == "not well-formed XML; reading stopped here"
    assert len(rows) == 3


@pytest.mark.parametrize(
    "document",
    [
        b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<rss><channel><item><title>&lol3;</title></item></channel></rss>""",
        b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<rss><channel><item><title>&secret;</title></item></channel></rss>""",
    ],
    ids=["billion-laughs", "external-entity"],
)
def test_entities_and_dtds_are_refused_and_never_expanded(document: bytes) -> None:
    rows = read(document, "google")
    assert len(rows) == 1 and isinstance(rows[0], BadRow)
    assert rows[0].line == 2 and rows[0].field == "document"
    assert "DTDForbidden" in rows[0].value
    assert rows[0].reason.startswith("refused")


def test_an_item_with_too_many_elements_is_refused_unkept_and_the_next_is_read() -> None:
    flood = b"<g:color>red</g:color>" * (MAX_ITEM_ELEMENTS + 5)
    document = (
        b'<rss xmlns:g="http://base.google.com/ns/1.0"><channel>'
        b"<item><g:id>A</g:id><title>Flood</title>" + flood + b"</item>"
        b"<item><g:id>B</g:id><title>Fine</title></item></channel></rss>"
    )
    rows = read(document, "google")
    assert rows == [
        BadRow(
            1,
            "item",
            repr(f"{MAX_ITEM_ELEMENTS + 7} elements"),
            "more than 1000 elements in one item",
        ),
        Product(id="B", name="Fine"),
    ]


def test_a_document_that_is_not_xml() -> None:
    (row,) = read(b"", "google")
    assert row == BadRow(
        1,
        "document",
        "'no element found: line 1, column 0'",
        "not well-formed XML; reading stopped here",
    )


# Text tables.

TSV = (
    "\ufeffid\ttitle\tlink\timage_link\tprice\tsale_price\tavailability\tproduct_type\tbrand"
    "\titem_group_id\tmpn\n"
    "T1\tTea pot\thttps://shop.example/pot\thttps://cdn.example/pot.jpg\t30.00 GBP\t25 GBP"
    "\tin stock\tHome > Kitchen\tAcme\tPOT\tAC-1\n"
    "\n"
    "T2\tTea cup\thttps://shop.example/cup\t\t9\t\tpreorder\t\t\t\t\n"
    "T3\tBroken\tjavascript:alert(1)\t\t9\t\t\t\t\t\t\n"
    'T4\t"Mug, 12"" wide"\t\t\t\t\t\t\t\t\t\n'
).encode()


@pytest.mark.parametrize("zipped", [False, True])
def test_google_tsv_counts_the_header_as_line_one(zipped: bool) -> None:
    rows = read(gzip.compress(TSV) if zipped else TSV, "google-tsv", currency="GBP")
    assert rows == [
        Product(
            id="T1",
            name="Tea pot",
            url="https://shop.example/pot",
            image="https://cdn.example/pot.jpg",
            price=30.0,
            sale_price=25.0,
            currency="GBP",
            categories=("Home", "Kitchen"),
            brand="Acme",
            item_group="POT",
            sku="AC-1",
        ),
        Product(
            id="T2",
            name="Tea cup",
            url="https://shop.example/cup",
            price=9.0,
            currency="GBP",
            availability="preorder",
        ),
        BadRow(5, "url", "'javascript:alert(1)'", "not an http(s) URL"),
        Product(id="T4", name='Mug, 12" wide', currency="GBP"),
    ]


CSV = (
    b"ID,Name,Price,Currency,Categories,URL\r\n"
    b"c1,Chair,49.5,eur,Furniture|Chairs,https://shop.example/chair\r\n"
    b"c2,Table\r\n"
    b'c3,"Sofa,\r\nthree seats",499,EUR,,\r\n'
    b"c4,Lamp \xff,10,EUR,,\r\n"
    b"c5,Rug,-3,EUR,,\r\n"
    b"c6,Stool,12,EUR,,"
)


def test_csv_keeps_good_rows_around_bad_ones_with_their_lines() -> None:
    rows = read(CSV, "csv")
    assert rows == [
        Product(
            id="c1",
            name="Chair",
            url="https://shop.example/chair",
            price=49.5,
            currency="EUR",
            categories=("Furniture", "Chairs"),
        ),
        BadRow(3, "row", "'c2,Table'", "2 columns where the header has 6"),
        Product(id="c3", name="Sofa, three seats", price=499.0, currency="EUR"),
        BadRow(6, "name", repr("Lamp \udcff"), "not UTF-8 text"),
        BadRow(7, "price", "'-3'", 'not a price (such as 15.00 or "15.00 USD")'),
        Product(id="c6", name="Stool", price=12.0, currency="EUR"),
    ]


def test_csv_rows_too_long_to_hold_are_skipped() -> None:
    huge = b"x" * (MAX_ROW_BYTES + 10)
    overlong_line = b"r2,Long," + huge + b"\n"
    field_too_big = b'r3,"' + b"y" * 200_000 + b'",1\n'  # past csv's own field limit
    data = b"id,name,price\nr1,One,1\n" + overlong_line + field_too_big + b"r4,Four,4\n" + huge
    rows = read(data, "csv")
    assert [p.id for p in products(rows)] == ["r1", "r4"]
    too_long = f"longer than {MAX_ROW_BYTES} characters; skipped"
    assert [(r.line, r.field, r.reason) for r in bad(rows)] == [
        (3, "row", too_long),
        (4, "row", "not a CSV row"),
        (6, "row", too_long),
    ]
    assert "field larger than field limit" in bad(rows)[1].value


def test_a_row_of_exactly_the_longest_length_ends_at_its_newline() -> None:
    line = b"r2,Long," + b"x" * (MAX_ROW_BYTES - 8) + b"\n"
    assert len(line) == MAX_ROW_BYTES + 1
    rows = read(b"id,name\n" + line + b"r3,Three\n", "csv")
    assert [r.line for r in bad(rows)] == [2] and [p.id for p in products(rows)] == ["r3"]


def test_a_header_that_is_not_utf8_stops_the_table() -> None:
    assert read(b"id,na\xffme\n1,x\n", "csv") == [
        BadRow(1, "header", repr("id,na\udcffme"), "not UTF-8 text")
    ]


def test_a_table_with_only_a_header_or_nothing_has_no_rows() -> None:
    assert read(b"id,name\n\n", "csv") == [] and read(b"", "google-tsv") == []


# JSON lines.


def test_jsonl_reads_objects_and_names_the_lines_it_cannot() -> None:
    long_line = b'{"id": "x", "name": "' + b"a" * MAX_ROW_BYTES + b'"}\n'
    data = (
        b'\xef\xbb\xbf{"id": 1, "name": "Pen", "price": 2.5, "categories": ["Office", "Pens"]}\n'
        b"\n"
        b"[1, 2]\n"
        b"{not json\r\n" + long_line + b'{"id": "p2", "name": "Ink", "availability": false}\n'
        b'{"id": "p3", "name": {"en": "Pad"}}\n' + b"z" * (MAX_ROW_BYTES + 1)
    )
    rows = read(data, "jsonl", currency="usd")
    assert rows[0] == Product(
        id="1", name="Pen", price=2.5, currency="USD", categories=("Office", "Pens")
    )
    assert rows[1] == BadRow(3, "line", "[1, 2]", "not a JSON object")
    assert isinstance(rows[2], BadRow) and (rows[2].line, rows[2].value) == (4, "'{not json'")
    assert rows[2].reason.startswith("not JSON: ")
    too_long = f"longer than {MAX_ROW_BYTES} bytes; skipped"
    assert rows[3] == BadRow(5, "line", shown('{"id": "x", "name": "' + "a" * 70), too_long)
    assert rows[4] == Product(id="p2", name="Ink", currency="USD", availability="out_of_stock")
    assert rows[5] == BadRow(7, "name", "{'en': 'Pad'}", "not text")
    assert rows[6] == BadRow(8, "line", shown("z" * 80), too_long)
    assert len(rows) == 7


def test_jsonl_gzipped() -> None:
    data = gzip.compress(b'{"id": "a", "name": "A"}\n{"id": "b", "name": "B"}')
    assert [p.id for p in products(read(data, "jsonl"))] == ["a", "b"]


# Gzip and streams.


def test_a_corrupt_gzip_stream_ends_with_one_bad_row_after_the_rows_read() -> None:
    data = gzip.compress(b'{"id": "a", "name": "A"}\n' * 3)
    rows = read(data[:-6], "jsonl")
    assert [p.id for p in products(rows)] == ["a", "a", "a"]
    assert rows[-1] == BadRow(
        4,
        "document",
        "'Compressed file ended before the end-of-stream marker was reached'",
        "not a readable gzip stream; reading stopped here",
    )
    assert read(b"\x1f\x8bnot gzip at all", "csv") == [
        BadRow(
            1,
            "document",
            "'Unknown compression method'",
            "not a readable gzip stream; reading stopped here",
        )
    ]


class Trickle(io.RawIOBase):
    """A stream that hands out one byte a read, as a slow socket may."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data.read(1)
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("format", ["google", "google-tsv"])
def test_a_trickling_stream_is_read_whole_and_left_open(format: str) -> None:
    data = gzip.compress(RSS if format == "google" else TSV)
    stream = Trickle(data)
    rows = list(parse(stream, format))  # type: ignore[arg-type]
    assert len(products(rows)) == (2 if format == "google" else 3)
    assert not stream.closed


def test_a_table_read_partly_leaves_the_file_open(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_bytes(CSV)
    with path.open("rb") as stream:
        rows = parse(stream, "csv")
        assert isinstance(next(rows), Product)
        del rows  # the reading ends; the stream is still the caller's
        assert not stream.closed and stream.read(0) == b""


# Shopify.


def shopify_product(**fields: Any) -> dict[str, Any]:
    product: dict[str, Any] = {
        "id": 632910392,
        "title": "IPod Nano - 8GB",
        "handle": "ipod-nano",
        "vendor": "Apple",
        "product_type": "Cult Products",
        "images": [{"id": 1, "src": "https://cdn.shopify.example/ipod.jpg"}],
        "variants": [
            {"id": 1, "sku": "IPOD-PINK", "price": "199.00", "available": True},
            {
                "id": 2,
                "sku": "IPOD-RED",
                "price": "149.00",
                "compare_at_price": "179.00",
                "available": True,
            },
            {"id": 3, "sku": "IPOD-GOLD", "price": "99.00", "available": False},
        ],
    }
    product.update(fields)
    return product


def test_a_shopify_page_prices_each_product_by_its_cheapest_available_variant() -> None:
    page = {
        "products": [
            shopify_product(),
            shopify_product(
                id=2,
                title="Case",
                handle="case/é",
                product_type="",
                images=[{"src": None}, {"src": "https://cdn.shopify.example/case.png"}],
                variants=[
                    {"price": "5.00", "compare_at_price": "4.00", "available": False, "sku": ""},
                    {"price": "7.00", "compare_at_price": None, "available": False},
                ],
            ),
            shopify_product(id=3, title="Gone", handle=None, images="none", variants=None),
            shopify_product(id=4, variants=[{"price": "abc", "available": True}]),
            "not a product",
        ]
    }
    rows, count = shopify_page(json.dumps(page).encode(), currency="USD", base_url=SHOP + "/")
    assert count == 5
    assert rows == [
        Product(
            id="632910392",
            name="IPod Nano - 8GB",
            url="https://shop.example/products/ipod-nano",
            image="https://cdn.shopify.example/ipod.jpg",
            price=179.0,
            sale_price=149.0,
            currency="USD",
            categories=("Cult Products",),
            brand="Apple",
            availability="in_stock",
            sku="IPOD-RED",
        ),
        Product(
            id="2",
            name="Case",
            url="https://shop.example/products/case%2F%C3%A9",
            image="https://cdn.shopify.example/case.png",
            price=5.0,
            currency="USD",
            brand="Apple",
            availability="out_of_stock",
        ),
        Product(
            id="3",
            name="Gone",
            currency="USD",
            categories=("Cult Products",),
            brand="Apple",
            availability="out_of_stock",
        ),
        BadRow(4, "price", "'abc'", 'not a price (such as 15.00 or "15.00 USD")'),
        BadRow(5, "product", "'not a product'", "not a JSON object"),
    ]


def test_shopify_through_parse_and_its_refusals() -> None:
    page = json.dumps({"products": [shopify_product()]}).encode()
    assert [p.id for p in products(read(gzip.compress(page), "shopify", base_url=SHOP))] == [
        "632910392"
    ]
    assert read(b"{}", "shopify", base_url=SHOP) == [
        BadRow(1, "document", "'{}'", 'not a Shopify page ({"products": [...]})')
    ]
    (not_json,) = read(b"<html>", "shopify", base_url=SHOP)
    assert isinstance(not_json, BadRow) and not_json.reason == "not JSON"
    assert shopify_page(b'{"products": []}', base_url=SHOP) == ([], 0)
    huge = b" " * (MAX_SHOPIFY_PAGE_BYTES + 1)
    assert read(huge, "shopify", base_url=SHOP) == [
        BadRow(
            1,
            "document",
            repr(f"{MAX_SHOPIFY_PAGE_BYTES + 1}+ bytes"),
            f"a page larger than {MAX_SHOPIFY_PAGE_BYTES} bytes; not read",
        )
    ]


# Arguments and formats.


@pytest.mark.parametrize(
    ("format", "options", "message"),
    [
        ("xlsx", {}, "unknown feed format 'xlsx'"),
        ("csv", {"currency": "dollars"}, "currency 'dollars' is not a three-letter code"),
        ("csv", {"currency": "€€€"}, "three-letter code"),
        ("shopify", {}, "needs the shop's http(s) base_url, not None"),
        ("shopify", {"base_url": "ftp://shop.example"}, "base_url, not 'ftp://shop.example'"),
    ],
)
def test_wrong_arguments_are_refused_at_the_call(
    format: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(io.BytesIO(b""), format, **options)
    with pytest.raises(ValueError, match="base_url"):
        shopify_page(b"{}", base_url="shop.example")


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("feed.xml", "google"),
        ("https://shop.example/feeds/google.XML.gz?token=1", "google"),
        ("products.rss", "google"),
        ("catalog.atom.gz", "google"),
        ("feed.tsv", "google-tsv"),
        ("/srv/feeds/merchant.txt", "google-tsv"),
        ("export.csv.gz", "csv"),
        ("export.jsonl", "jsonl"),
        ("export.ndjson", "jsonl"),
        ("https://shop.example/products.json?limit=250&page=2", "shopify"),
        ("products.json.gz", "shopify"),
        ("catalog.json", None),
        ("https://shop.example/feed", None),
        ("feed.xml.zip", None),
    ],
)
def test_detect_format(name: str, format: str | None) -> None:
    assert detect_format(name) == format


@settings(deadline=None, max_examples=150)
@given(
    format=st.sampled_from(FORMATS),
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda b: b"\x1f\x8b" + b),
        st.sampled_from([RSS, ATOM, TSV, CSV]).flatmap(
            lambda doc: st.integers(0, len(doc)).map(lambda cut: doc[:cut])
        ),
        st.binary(max_size=200).map(gzip.compress),
    ),
)
def test_any_bytes_yield_only_products_and_bad_rows(format: str, data: bytes) -> None:
    for row in parse(io.BytesIO(data), format, base_url=SHOP):
        assert isinstance(row, Product | BadRow)
        str(row)


# Memory.

FEED_HEAD = b'<?xml version="1.0"?>\n<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">'
FEED_ITEM = (
    "<item><g:id>P{0}</g:id><g:title>Blue mug {0}</g:title>"
    "<g:link>https://shop.example/p/{0}</g:link>"
    "<g:image_link>https://cdn.example/p/{0}.jpg</g:image_link><g:price>15.00 USD</g:price>"
    "<g:availability>in stock</g:availability><g:product_type>Home &gt; Kitchen</g:product_type>"
    "<g:brand>Acme</g:brand><description>A blue mug for coffee and tea, 300 ml.</description>"
    "</item>\n"
)

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from rtserver.catalog import BadRow, parse

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    count = bad = 0
    with open(sys.argv[1], "rb") as stream:
        for row in parse(stream, "google"):
            count += 1
            bad += isinstance(row, BadRow)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth = after - before
    print(json.dumps({"count": count, "bad": bad, "seconds": seconds, "growth_kib": growth}))
    """
)


def write_feed(path: Path, megabytes: int) -> int:
    """A Google RSS feed of about ``megabytes`` MB, written in repeated chunks; its item count."""
    chunk = "".join(FEED_ITEM.format(i) for i in range(1000)).encode()
    repeats = megabytes * 1_000_000 // len(chunk)
    with path.open("wb") as out:
        out.write(FEED_HEAD + b"<channel><title>Big</title>\n")
        for _ in range(repeats):
            out.write(chunk)
        out.write(b"</channel></rss>\n")
    return repeats * 1000


@pytest.mark.slow
def test_a_200_mb_feed_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """The child process's peak memory after reading the feed is within 64 MiB of its peak
    after importing: what was read is let go as the reading goes."""
    path = tmp_path / "feed.xml"
    items = write_feed(path, 200)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    measured = json.loads(done.stdout)
    print(f"feed {path.stat().st_size / 1e6:.0f} MB: {measured}")
    assert measured["count"] == items and measured["bad"] == 0
    assert measured["growth_kib"] < 64 * 1024


def test_the_small_feed_the_memory_test_writes_reads_whole(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    items = write_feed(path, 1)
    with path.open("rb") as stream:
        assert sum(isinstance(row, Product) for row in parse(stream, "google")) == items
