"""Product feeds: the files a shop publishes its catalog in, read row by row. Pure.

:func:`parse` turns a feed (a binary stream, gzipped or not) into products and refused rows, in
the order of the source: Google Merchant Center's XML (RSS 2.0 or Atom) and tab-separated
forms, plain CSV, JSON lines, and one page of a Shopify storefront's ``/products.json``. Every
row goes through :func:`~rtserver.model.product_from`, so a feed is held to the same rules as
any other trusted source, and a row it refuses becomes a :class:`BadRow` naming the line, the
field, the value and the reason while the rest of the feed is still read.

Feeds can be large (hundreds of megabytes) and come from outside, so reading streams: memory
stays bounded by the longest row (capped at :data:`MAX_ROW_BYTES`), never by the feed. XML is
read with the external-entity and entity-expansion defences on and DTDs refused; a feed that
breaks off keeps the rows read before the break.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO, TypeAlias
from urllib.parse import quote, urlsplit
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

import defusedxml.ElementTree as defused_tree  # type: ignore[import-untyped]
import orjson
from defusedxml import DefusedXmlException

from rtserver.model import Product, RowError, product_from, web_url

__all__ = [
    "FORMATS",
    "MAX_ROW_BYTES",
    "MAX_SHOPIFY_PAGE_BYTES",
    "BadRow",
    "detect_format",
    "parse",
    "shopify_page",
]

FORMATS = ("google", "google-tsv", "csv", "jsonl", "shopify")
"""The feed formats :func:`parse` reads."""
MAX_ROW_BYTES = 1 << 20
"""The longest row (a JSON line, a CSV record; characters for the text formats) read at all."""
MAX_SHOPIFY_PAGE_BYTES = 16 << 20
"""The largest ``/products.json`` page read (a page holds at most 250 products)."""
MAX_ITEM_ELEMENTS = 1000
"""The most elements one XML item may hold: past it the item is refused and not kept."""

GZIP_MAGIC = b"\x1f\x8b"
GOOGLE_NS = "{http://base.google.com/ns/1.0}"
ATOM_NS = "{http://www.w3.org/2005/Atom}"
_ITEM_TAGS = frozenset({"item", ATOM_NS + "entry"})
"""The element that holds one product: RSS's ``<item>``, Atom's ``<entry>``."""
_PLAIN_TAGS = {
    "title": "title",
    "link": "link",
    "description": "description",
    ATOM_NS + "title": "title",
    ATOM_NS + "link": "link",
    ATOM_NS + "summary": "description",
}
"""An item's elements outside Google's namespace that name a product field. Atom's own
``<id>`` is left out: it names the entry, not the product (``g:id`` does)."""
_SURROGATE = re.compile("[\udc80-\udcff]")
"""What a byte that is not UTF-8 decodes to (``surrogateescape``)."""
_SHOWN_CHARS = 80

_Source: TypeAlias = "io.BufferedReader[_Prefixed] | gzip.GzipFile"
"""A feed as :func:`parse` reads it: buffered, and decompressed when it was gzipped."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row of a feed that was not read, and why; the rows around it were.

    ``line`` is the 1-based line of a text feed where the row starts (the header is line 1), the
    1-based number of the item in an XML feed or of the product in a Shopify page, and for an XML
    document that breaks off, the line where the parser stopped. ``value`` is the offending value,
    shown as a shortened ``repr``.
    """

    line: int
    field: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field} = {self.value}: {self.reason}"


def _shown(value: Any) -> str:
    """``repr(value)``, cut to a length a log line or a report can hold."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _refused(line: int, error: RowError) -> BadRow:
    return BadRow(line, error.field, _shown(error.value), error.reason)


def _product(line: int, row: Mapping[str, Any], currency: str | None) -> Product | BadRow:
    """The product ``row`` describes, or the row refused."""
    try:
        return product_from(row, currency)
    except RowError as error:
        return _refused(line, error)


def detect_format(name: str) -> str | None:
    """The format a feed's file name or URL suggests (``.gz`` ignored), or None when it suggests
    none: ``.xml``, ``.rss``, ``.atom`` are Google's XML, ``.tsv`` and ``.txt`` Google's
    tab-separated form, ``.csv`` CSV, ``.jsonl`` and ``.ndjson`` JSON lines, and a
    ``products.json`` a Shopify page."""
    path = urlsplit(name).path if "://" in name else name
    path = path.lower().removesuffix(".gz")
    if path.endswith("products.json"):
        return "shopify"
    for suffixes, found in (
        ((".xml", ".rss", ".atom"), "google"),
        ((".tsv", ".txt"), "google-tsv"),
        ((".csv",), "csv"),
        ((".jsonl", ".ndjson"), "jsonl"),
    ):
        if path.endswith(suffixes):
            return found
    return None


def parse(
    stream: BinaryIO,
    format: str,
    *,
    currency: str | None = None,
    base_url: str | None = None,
) -> Iterator[Product | BadRow]:
    """The products of the feed ``stream`` holds and the rows it refuses, in the feed's order.

    ``format`` is one of :data:`FORMATS`; ``currency`` is the price currency of rows that name
    none; ``base_url`` is the shop's address, which Shopify's product links are made from (that
    format needs it). A stream that starts as gzip is decompressed as it is read. Nothing but
    the stream's read position changes, and the stream is left open.

    A refused row never stops the reading; a document that cannot be read on (XML that breaks
    off or declares a DTD, a gzip stream that is corrupt) ends with one :class:`BadRow` for the
    document after the rows read before it.

    Raises:
        ValueError: at the call, for an unknown format, a currency that is not a three-letter
            code, or a Shopify page without an http(s) ``base_url``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown feed format {format!r}: one of {', '.join(FORMATS)}")
    if currency is not None:
        if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
            raise ValueError(f"currency {currency!r} is not a three-letter code")
        currency = currency.upper()
    shop = _shop_url(base_url) if format == "shopify" else None
    return _read(stream, format, currency, shop)


def _shop_url(base_url: str | None) -> str:
    shop = web_url(base_url) if base_url is not None else None
    if shop is None:
        raise ValueError(f"a Shopify feed needs the shop's http(s) base_url, not {base_url!r}")
    return shop.rstrip("/")


class _Position:
    """Where the reading is, for the row that reports a document that cannot be read on."""

    line = 0


def _read(
    stream: BinaryIO, format: str, currency: str | None, shop: str | None
) -> Iterator[Product | BadRow]:
    position = _Position()
    source = _unzipped(stream)
    try:
        if format == "google":
            yield from _google(source, currency, position)
        elif format == "jsonl":
            yield from _jsonl(source, currency, position)
        elif format == "shopify":
            assert shop is not None
            yield from _shopify(source, currency, shop)
        else:
            text = io.TextIOWrapper(
                source, encoding="utf-8-sig", errors="surrogateescape", newline=""
            )
            try:
                delimiter = "\t" if format == "google-tsv" else ","
                yield from _table(text, delimiter, currency, position)
            finally:
                text.detach()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        reason = "not a readable gzip stream; reading stopped here"
        yield BadRow(position.line + 1, "document", _shown(str(error)), reason)


class _Prefixed(io.RawIOBase):
    """A stream's first bytes, already read, followed by the rest of the stream."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._stream.read(size)
        buffer[: len(data)] = data
        return len(data)


def _unzipped(stream: BinaryIO) -> _Source:
    """``stream`` buffered, and decompressed as it is read when it starts as gzip. Reading never
    closes ``stream``."""
    head = b""
    while len(head) < len(GZIP_MAGIC):
        chunk = stream.read(len(GZIP_MAGIC) - len(head))
        if not chunk:
            break
        head += chunk
    source = io.BufferedReader(_Prefixed(head, stream), buffer_size=64 * 1024)
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=source, mode="rb")
    return source


# Google's XML: RSS 2.0 and Atom.


def _google(
    source: _Source, currency: str | None, position: _Position
) -> Iterator[Product | BadRow]:
    """The items of an RSS or Atom feed. Each item is dropped from the tree once read (and
    everything outside items as it ends), so the tree never holds more than the open item."""
    parser = defused_tree.DefusedXMLParser(target=TreeBuilder(), forbid_dtd=True)
    open_elements: list[Element] = []
    item_depth = -1  # where the open item is in ``open_elements``; -1: none is open
    elements = 0  # the elements the open item holds so far
    number = 0
    try:
        for event, element in defused_tree.iterparse(source, ("start", "end"), parser=parser):
            if event == "start":
                if item_depth < 0 and element.tag in _ITEM_TAGS:
                    item_depth, elements = len(open_elements), 0
                open_elements.append(element)
                continue
            open_elements.pop()
            if len(open_elements) == item_depth:
                item_depth = -1
                number += 1
                position.line = number
                yield _item(element, number, elements, currency)
            elif item_depth >= 0:
                elements += 1
                if elements <= MAX_ITEM_ELEMENTS:
                    continue  # part of the open item: kept until the item ends
            if open_elements:
                element.clear()
                open_elements[-1].remove(element)
    except ParseError as error:
        reason = "not well-formed XML; reading stopped here"
        yield BadRow(error.position[0], "document", _shown(str(error)), reason)
    except DefusedXmlException as error:
        reason = "refused: a feed may not declare a DTD or entities; reading stopped here"
        yield BadRow(parser.parser.CurrentLineNumber, "document", _shown(str(error)), reason)


def _item(item: Element, number: int, elements: int, currency: str | None) -> Product | BadRow:
    """The product an RSS ``<item>`` or Atom ``<entry>`` describes. An element named more than
    once counts the first time (a second ``g:image_link`` or ``g:product_type``)."""
    if elements > MAX_ITEM_ELEMENTS:
        reason = f"more than {MAX_ITEM_ELEMENTS} elements in one item"
        return BadRow(number, "item", _shown(f"{elements} elements"), reason)
    row: dict[str, str] = {}
    for child in item:
        tag = child.tag
        if tag.startswith(GOOGLE_NS):
            name = "g:" + tag.removeprefix(GOOGLE_NS)
        elif tag in _PLAIN_TAGS:
            name = _PLAIN_TAGS[tag]
        else:
            continue
        if tag == ATOM_NS + "link":  # <link rel="alternate" href="..."/>
            value = child.get("href") if child.get("rel", "alternate") == "alternate" else None
        else:
            value = child.text
        if value is not None and value.strip():
            row.setdefault(name, value.strip())
    return _product(number, row, currency)


# Text tables: Google's tab-separated form and CSV.


class _RowTooLong(Exception):
    """A row longer than :data:`MAX_ROW_BYTES`: it is skipped, not read."""


class _Lines:
    """The lines of a text stream for :func:`csv.reader`, counted, and bounded: a row (one line,
    or several when a quoted value spans them) longer than :data:`MAX_ROW_BYTES` characters
    raises :class:`_RowTooLong` instead of being held, and the rest of its line is skipped."""

    def __init__(self, text: TextIO) -> None:
        self._text = text
        self.number = 0
        self.taken = 0  # characters of the current row; the reader resets it for each row

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(MAX_ROW_BYTES + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self.taken += len(line)
        if self.taken > MAX_ROW_BYTES:
            while line and not line.endswith(("\n", "\r")):
                line = self._text.readline(MAX_ROW_BYTES)
            raise _RowTooLong
        return line


def _table(
    text: TextIO, delimiter: str, currency: str | None, position: _Position
) -> Iterator[Product | BadRow]:
    """The rows of a CSV or tab-separated table whose first row names the columns."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    while True:
        start = lines.number + 1
        lines.taken = 0
        try:
            row = next(reader)
        except StopIteration:
            return
        except _RowTooLong:
            reason = f"longer than {MAX_ROW_BYTES} characters; skipped"
            yield BadRow(start, "row", _shown(f"line {lines.number}"), reason)
            continue
        except csv.Error as error:
            yield BadRow(start, "row", _shown(str(error)), "not a CSV row")
            continue
        finally:
            position.line = lines.number
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line
        if header is None:
            header = [name.strip().lower() for name in row]
            if any(_SURROGATE.search(name) for name in header):
                yield BadRow(start, "header", _shown(delimiter.join(row)), "not UTF-8 text")
                return
            continue
        if len(row) != len(header):
            reason = f"{len(row)} columns where the header has {len(header)}"
            yield BadRow(start, "row", _shown(delimiter.join(row)), reason)
            continue
        cells = dict(zip(header, row, strict=True))
        undecoded = next((name for name, cell in cells.items() if _SURROGATE.search(cell)), None)
        if undecoded is not None:
            yield BadRow(start, undecoded, _shown(cells[undecoded]), "not UTF-8 text")
            continue
        yield _product(start, cells, currency)


# JSON lines.


def _jsonl(
    source: _Source, currency: str | None, position: _Position
) -> Iterator[Product | BadRow]:
    """One JSON object a line; blank lines skipped, a line longer than :data:`MAX_ROW_BYTES`
    skipped unread."""
    number = 0
    while line := source.readline(MAX_ROW_BYTES + 1):
        number += 1
        position.line = number
        if len(line) > MAX_ROW_BYTES:
            shown = _shown(line[:_SHOWN_CHARS].decode("utf-8", "replace"))
            while line and not line.endswith(b"\n"):
                line = source.readline(MAX_ROW_BYTES)
            yield BadRow(number, "line", shown, f"longer than {MAX_ROW_BYTES} bytes; skipped")
            continue
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # a byte order mark
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            shown = _shown(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            yield BadRow(number, "line", shown, f"not JSON: {error}")
            continue
        if not isinstance(row, dict):
            yield BadRow(number, "line", _shown(row), "not a JSON object")
            continue
        yield _product(number, row, currency)


# Shopify's /products.json.


def _shopify(source: _Source, currency: str | None, shop: str) -> Iterator[Product | BadRow]:
    data = source.read(MAX_SHOPIFY_PAGE_BYTES + 1)
    if len(data) > MAX_SHOPIFY_PAGE_BYTES:
        reason = f"a page larger than {MAX_SHOPIFY_PAGE_BYTES} bytes; not read"
        yield BadRow(1, "document", _shown(f"{len(data)}+ bytes"), reason)
        return
    yield from _shopify_rows(data, currency, shop)[0]


def shopify_page(
    data: bytes, *, currency: str | None = None, base_url: str
) -> tuple[list[Product | BadRow], int]:
    """The products of one page of a Shopify storefront's ``/products.json`` (``{"products":
    [...]}``), and how many products the page listed, refused ones included: a pager asks for
    the next page while a page comes back full (Shopify's ``limit``, at most 250) and stops at
    the first short one.

    Each Shopify product becomes one product: its link is ``{base_url}/products/{handle}``, its
    image the first of ``images``, its category its ``product_type``, its brand its ``vendor``.
    It is in stock when any variant is available; its price is that of its cheapest available
    variant (else of its first), and when that variant's ``compare_at_price`` is higher, that
    is the price and the variant's price the sale price. The ``sku`` is that variant's.
    ``currency`` is the shop's (the page names none).

    Raises:
        ValueError: ``base_url`` is not an http(s) URL.
    """
    return _shopify_rows(data, currency, _shop_url(base_url))


def _shopify_rows(
    data: bytes, currency: str | None, shop: str
) -> tuple[list[Product | BadRow], int]:
    try:
        page = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        return [BadRow(1, "document", _shown(str(error)), "not JSON")], 0
    products = page.get("products") if isinstance(page, dict) else None
    if not isinstance(products, list):
        shown = _shown(data[:_SHOWN_CHARS].decode("utf-8", "replace"))
        return [BadRow(1, "document", shown, 'not a Shopify page ({"products": [...]})')], 0
    rows: list[Product | BadRow] = []
    for number, product in enumerate(products, start=1):
        if not isinstance(product, dict):
            rows.append(BadRow(number, "product", _shown(product), "not a JSON object"))
            continue
        rows.append(_product(number, _shopify_row(product, shop), currency))
    return rows, len(products)


def _number(value: Any) -> float | None:
    """A Shopify price (``"19.99"``, or a number) as a float, or None when it is none."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _shopify_row(product: Mapping[str, Any], shop: str) -> dict[str, Any]:
    """A Shopify product in the plain field names :func:`product_from` reads."""
    variants = [v for v in _list(product.get("variants")) if isinstance(v, dict)]
    available = [v for v in variants if v.get("available") is True]
    priced = [v for v in available if _number(v.get("price")) is not None]
    variant: Mapping[str, Any] = (
        min(priced, key=lambda v: _number(v.get("price")) or 0.0)
        if priced
        else (variants[0] if variants else {})
    )
    price, sale_price = variant.get("price"), None
    compare_at = _number(variant.get("compare_at_price"))
    current = _number(price)
    if compare_at is not None and current is not None and compare_at > current:
        price, sale_price = variant.get("compare_at_price"), price
    images = [i.get("src") for i in _list(product.get("images")) if isinstance(i, dict)]
    handle = product.get("handle")
    return {
        "id": product.get("id"),
        "name": product.get("title"),
        "url": f"{shop}/products/{quote(handle, safe='')}" if isinstance(handle, str) else None,
        "image": next((src for src in images if isinstance(src, str) and src), None),
        "price": price,
        "sale_price": sale_price,
        "categories": product.get("product_type"),
        "brand": product.get("vendor"),
        "availability": "in_stock" if available else "out_of_stock",
        "sku": variant.get("sku") or None,
    }


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
