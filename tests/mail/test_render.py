"""Mail rendering (headers, links, pixel, unsubscribe, DKIM, the shipped templates, the
sandbox) and the SMTP relay against a real, scripted aiosmtpd server."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import os
import re
import tomllib
from collections.abc import Iterator
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings, strategies as st
from jinja2.sandbox import SecurityError

from rtserver.config.schema import BrandConfig, DkimConfig, MailConfig
from rtserver.errors import MailError
from rtserver.mail.recommend import Product
from rtserver.mail.render import SAMPLE, SPARSE, SPARSE_NOTE, MailContext, Mailer, check_address
from rtserver.mail.smtp import Relay, wire_bytes
from rtserver.mail.tokens import Tokens
from tests.support.server import TIMEOUT_UNIT, FakeClock
from tests.support.smtp_server import SMTPServer

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "https://rt.example"
SHOP = "https://shop.example"
SECRET = "link-secret-0123456789"
BRAND = BrandConfig(name="Acme & Co", url=SHOP, address="Acme, 1 Road, 10115 Berlin")
CONFIG = MailConfig(from_="Acme <shop@acme.example>", brand=BRAND)
SUBJECT = "{% block subject %}Hello {{ first_name }}{% endblock %}"


def make_mailer(config: MailConfig = CONFIG, template_dir: Path | None = None) -> Mailer:
    return Mailer(config, PUBLIC + "/", Tokens(SECRET, FakeClock()), template_dir=template_dir)


def context(**changes: Any) -> MailContext:
    return dataclasses.replace(SAMPLE, **changes)


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def write(folder: Path, name: str, html: str, text: str = "text") -> Path:
    (folder / "email").mkdir(exist_ok=True)
    (folder / "email" / f"{name}.html").write_text(html)
    (folder / "email" / f"{name}.txt").write_text(text)
    return folder


def shipped_sends() -> set[str]:
    """Every template the shipped config.toml sends."""
    config = tomllib.loads((ROOT / "config.toml").read_text())
    sends: set[str] = set()
    for workflow in config.get("workflow", []):
        for step in workflow.get("step", []):
            sends.update(x["send"] for x in [step, *step.get("variant", [])] if "send" in x)
    return sends


# Headers and structure


def test_render_sets_the_headers() -> None:
    """From, To, Subject, Date from the context's time, a Message-ID from the mail id."""
    message = make_mailer().render_mail("cart_reminder", SAMPLE)
    assert message["From"] == "Acme <shop@acme.example>"
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Subject"] == "Ada, you left something in your cart"
    assert message["Date"].datetime.timestamp() == SAMPLE.now
    assert message["Message-ID"] == "<sample-1@acme.example>"
    assert message["X-RT-Mail-ID"] == "sample-1"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_message_id_is_stable_across_attempts() -> None:
    """Rendering the same outbox row again, later, gives the same Message-ID."""
    mailer = make_mailer()
    first = mailer.render_mail("welcome", SAMPLE)
    again = mailer.render_mail("welcome", context(now=SAMPLE.now + 3600))
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Date"] != again["Date"]


def test_subject_block_becomes_one_plain_line(tmp_path: Path) -> None:
    """Tags are stripped, entities decoded and whitespace folded; context stays literal."""
    write(
        tmp_path, "s", "{% block subject %}\n  <b>Hi</b> &amp; {{ first_name }}\n\n{% endblock %}"
    )
    person = {"traits": {"first_name": "<i>Bob</i> & Co\r\nBcc: evil@example.com"}}
    message = make_mailer(template_dir=tmp_path).render_mail("s", context(person=person))
    assert message["Subject"] == "Hi & <i>Bob</i> & Co Bcc: evil@example.com"
    assert message["Bcc"] is None


def test_empty_subject_falls_back_to_the_brand(tmp_path: Path) -> None:
    """A subject block that renders empty gives the shop's name."""
    write(tmp_path, "s", "{% block subject %}{{ first_name }}{% endblock %}")
    message = make_mailer(template_dir=tmp_path).render_mail("s", context(person={}))
    assert message["Subject"] == "Acme & Co"


def test_missing_subject_block_is_an_error(tmp_path: Path) -> None:
    """A template without a subject block can't be sent, and check() says so."""
    mailer = make_mailer(template_dir=write(tmp_path, "nosubject", "<p>hi</p>"))
    with pytest.raises(MailError, match=r"email/nosubject.html: no subject block"):
        mailer.render_mail("nosubject", SAMPLE)
    assert mailer.check(["nosubject"]) == ["email/nosubject.html: no subject block"]


def test_text_is_not_escaped_and_html_is(tmp_path: Path) -> None:
    """Autoescape applies to .html only."""
    write(tmp_path, "e", SUBJECT + "<p>{{ first_name }}</p>", "{{ first_name }}")
    person = {"traits": {"first_name": "Tom & <Jerry>"}}
    message = make_mailer(template_dir=tmp_path).render_mail("e", context(person=person))
    assert "<p>Tom &amp; &lt;Jerry&gt;</p>" in html_of(message)
    assert text_of(message).startswith("Tom & <Jerry>")


def test_context_is_data_not_template_source() -> None:
    """Template syntax in event data renders literally."""
    person = {"traits": {"first_name": "{{ 7*7 }}{% if true %}x{% endif %}"}}
    message = make_mailer().render_mail("welcome", context(person=person))
    assert "{{ 7*7 }}" in text_of(message)
    assert "49" not in message["Subject"]


# Links, pixel, unsubscribe


def click_targets(mailer: Mailer, body: str) -> list[str]:
    tokens = re.findall(re.escape(PUBLIC) + r"/c/([A-Za-z0-9_.\-]+)", body)
    targets = []
    for token in tokens:
        read = mailer.tokens.read_click(token)
        assert read is not None and read[0] == "sample-1"
        targets.append(read[1])
    return targets


def test_every_web_link_is_tracked_and_tagged() -> None:
    """Each http(s) link in both parts goes through /c/ and its target carries utm and run."""
    mailer = make_mailer()
    message = mailer.render_mail("cart_reminder", SAMPLE)
    html, text = html_of(message), text_of(message)
    hrefs = re.findall(r'href="([^"]*)"', html)
    unsubscribe = [h for h in hrefs if h.startswith(PUBLIC + "/u/")]
    assert len(unsubscribe) == 1
    assert all(h.startswith(PUBLIC + "/c/") for h in hrefs if h not in unsubscribe)
    assert "https://shop.example/p/1" not in html and "https://shop.example/p/1" not in text
    targets = click_targets(mailer, html) + click_targets(mailer, text)
    assert {urlsplit(t).path for t in targets} >= {"/p/1", "/p/2", "/cart", ""}
    for target in targets:
        query = parse_qs(urlsplit(target).query)
        assert query["utm_source"] == ["rtserver"]
        assert query["utm_medium"] == ["email"]
        assert query["utm_campaign"] == ["sample"]
        assert query["utm_content"] == ["cart_reminder"]
        assert query["rt_run"] == ["run-1"]


def test_link_rewriting_keeps_query_fragment_and_own_tags(tmp_path: Path) -> None:
    """Existing parameters and fragments survive; a link's own utm tags win; other links stay."""
    html = (
        SUBJECT + '<a href="https://x.example/a?q=1&amp;utm_source=news#top">a</a>'
        "<a href='mailto:help@x.example'>m</a><a href=\"/relative\">r</a>"
        '<a href="http://">broken</a><a class="b" href="https://x.example/a b">sp</a>'
    )
    text = "See https://x.example/t, (https://x.example/u). And ftp://x.example/f"
    mailer = make_mailer(template_dir=write(tmp_path, "l", html, text))
    run = {"id": "r 1&2"}
    message = mailer.render_mail("l", context(run=run))
    body = html_of(message)
    assert "mailto:help@x.example" in body and 'href="/relative"' in body
    assert 'href="http://"' in body
    first, spaced = click_targets(mailer, body)
    assert first.startswith("https://x.example/a?q=1&utm_source=news&utm_medium=email&")
    assert first.endswith("&utm_campaign=l&utm_content=l&rt_run=r%201%262#top")
    assert spaced.startswith("https://x.example/a%20b?utm_source=rtserver&")
    plain = text_of(message)
    assert plain.startswith("See " + PUBLIC + "/c/") and ", (" + PUBLIC + "/c/" in plain
    assert "). And ftp://x.example/f" in plain
    assert [urlsplit(t).path for t in click_targets(mailer, plain)] == ["/t", "/u"]


def test_one_token_per_target() -> None:
    """The same target linked twice gets the same click url."""
    mailer = make_mailer()
    html = html_of(mailer.render_mail("cart_reminder", SAMPLE))
    product_links = re.findall(r'href="(' + re.escape(PUBLIC) + r'/c/[^"]+)"', html)
    assert len(product_links) > len(set(product_links))


def test_own_links_and_confirm_url_stay_untracked() -> None:
    """The unsubscribe link and the double opt-in link must work without a redirect."""
    mailer = make_mailer()
    confirm = PUBLIC + "/confirm/abc"
    message = mailer.render_mail(
        "confirm", context(marketing=False, extra={"confirm_url": confirm})
    )
    assert f'href="{confirm}"' in html_of(message)
    assert confirm in text_of(message)


def test_open_pixel_ends_the_html(tmp_path: Path) -> None:
    """The pixel is the last thing in the body, and its token reads back the mail id."""
    mailer = make_mailer()
    html = html_of(mailer.render_mail("welcome", SAMPLE))
    found = re.search(
        r'<img src="' + re.escape(PUBLIC) + r'/o/([^"]+)" width="1" height="1" alt=""[^>]*>'
        r"</body>",
        html,
    )
    assert found and mailer.tokens.read_open(found.group(1)) == "sample-1"
    bare = make_mailer(template_dir=write(tmp_path, "bare", SUBJECT + "<p>hi</p>"))
    assert re.search(r'/o/[^"]+"[^>]*>$', html_of(bare.render_mail("bare", SAMPLE)).strip())


def test_marketing_mail_has_one_click_unsubscribe() -> None:
    """List-Unsubscribe(-Post) headers, a footer link and the postal address."""
    mailer = make_mailer()
    message = mailer.render_mail("win_back", SAMPLE)
    header = message["List-Unsubscribe"]
    found = re.fullmatch("<" + re.escape(PUBLIC) + r"/u/([^>]+)>", header)
    assert found is not None
    assert mailer.tokens.read_unsubscribe(found.group(1)) == "sample-1"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html, text = html_of(message), text_of(message)
    assert f'href="{PUBLIC}/u/{found.group(1)}"' in html
    assert f"{PUBLIC}/u/{found.group(1)}" in text
    assert "Acme, 1 Road, 10115 Berlin" in html and "Acme, 1 Road, 10115 Berlin" in text
    # The long url is written as one line, never as RFC 2047 encoded words.
    assert f"List-Unsubscribe: <{PUBLIC}/u/".encode() in wire_bytes(message)


def test_transactional_mail_has_no_unsubscribe() -> None:
    """Non-marketing mail (double opt-in, tests) carries no list headers or footer link."""
    message = make_mailer().render_mail("confirm", context(marketing=False))
    assert message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None
    assert "/u/" not in html_of(message)
    assert "Acme, 1 Road" not in html_of(message)


# Header injection and addresses


@pytest.mark.parametrize(
    "to",
    [
        "Eve\r\nBcc: all@evil.example <eve@example.com>",
        "eve@example.com\nBcc: all@evil.example",
        "not an address",
        "",
        "eve@localhost",
    ],
)
def test_bad_recipient_is_a_mail_error(to: str) -> None:
    """CR/LF in a header, or no valid address, never makes a message."""
    with pytest.raises(MailError):
        make_mailer().render_mail("welcome", context(to=to))


def test_bad_from_or_mail_id_is_a_mail_error() -> None:
    """The configured From and the mail id are checked too."""
    bad_from = dataclasses.replace(CONFIG, from_="Acme <shop@acme.example>\r\nBcc: x@evil.example")
    with pytest.raises(MailError, match="bad header"):
        make_mailer(bad_from).render_mail("welcome", SAMPLE)
    with pytest.raises(MailError, match="no domain"):
        make_mailer(dataclasses.replace(CONFIG, from_="nobody"))
    for mail_id in ("a\r\nb", "x@y", "", "../x"):
        with pytest.raises(MailError, match="mail id"):
            make_mailer().render_mail("welcome", context(mail_id=mail_id))


def test_template_names_cannot_leave_the_folder() -> None:
    """Names are plain words: no paths."""
    mailer = make_mailer()
    for name in ("../secrets", "email/welcome", "_base", "welcome.html", ""):
        with pytest.raises(MailError, match="not a template name"):
            mailer.render_mail(name, SAMPLE)
    assert mailer.check(["../x"]) == ["'../x': not a template name"]


def test_check_address() -> None:
    """Addresses are normalised; bad ones and line breaks are MailError with a reason."""
    assert check_address("Ada@Example.COM") == "Ada@example.com"
    assert check_address("ü@bücher.example") == "ü@bücher.example"
    with pytest.raises(MailError, match="line break"):
        check_address("a@example.com\r\nBcc: b@example.com")
    with pytest.raises(MailError, match=r"invalid address 'nope': an email address must have"):
        check_address("nope")


# Content: greeting, products, prices


def test_greeting_has_a_safe_default() -> None:
    """'Hi Ada' with a first name (or firstName, or name), 'Hi there' without."""
    mailer = make_mailer()

    def greeting(person: dict[str, Any]) -> str:
        text = text_of(mailer.render_mail("welcome", context(person=person)))
        found = re.search(r"^Hi (.*),$", text, re.M)
        assert found is not None
        return found.group(1)

    assert greeting({"traits": {"first_name": " Ada "}}) == "Ada"
    assert greeting({"traits": {"firstName": "Grace"}}) == "Grace"
    assert greeting({"traits": {"name": "Alan Turing"}}) == "Alan"
    assert greeting({"traits": {"first_name": 7, "name": " "}}) == "there"
    assert greeting({"traits": "junk"}) == "there"
    assert greeting({}) == "there"


def test_products_show_image_name_price_and_link() -> None:
    """A product block has its image, name, price with currency and a View link."""
    cart = (
        Product("a", "Shirt", 1234.5, "EUR", "https://cdn.example/a.jpg", SHOP + "/a", None, 2),
        Product("b", "Cap", 1200, "JPY", None, SHOP + "/b", None),
        Product("c", "Sock", 3, "CHF", None, None, None),
        Product("d", "Belt", 9.99, None, None, None, None),
    )
    message = make_mailer().render_mail("cart_reminder", context(cart=cart, recommendations=()))
    html, text = html_of(message), text_of(message)
    assert '<img src="https://cdn.example/a.jpg" width="96" height="96" alt="Shirt"' in html
    assert html.count("<img") == 2  # the product's image and the open pixel: no broken ones
    for price in ("€1,234.50", "¥1,200", "3.00 CHF", "€9.99"):
        assert price in html and price in text
    assert "Quantity: 2" in html and "Shirt (x2)" in text
    assert "Back to your cart" in html


def test_missing_price_and_image_render_cleanly() -> None:
    """No price: no price line (no 'None', no empty currency); no image: a letter tile."""
    cart = (Product("z", "Zebra mug", None, None, None, None, None),)
    message = make_mailer().render_mail("cart_reminder", context(cart=cart, recommendations=()))
    html, text = html_of(message), text_of(message)
    assert "None" not in html and "None" not in text and "€" not in html
    assert ">Z</div>" in html
    assert "* Zebra mug\n" in text


def test_shop_currency_applies_to_prices_without_one() -> None:
    """``mail.brand.currency`` formats prices that carry no currency."""
    config = dataclasses.replace(CONFIG, brand=dataclasses.replace(BRAND, currency="GBP"))
    cart = (Product("d", "Belt", 9.5, None, None, None, None),)
    message = make_mailer(config).render_mail("cart_reminder", context(cart=cart))
    assert "£9.50" in text_of(message)


def test_money_filter_ignores_non_prices(tmp_path: Path) -> None:
    """The money filter prints nothing for values that are not numbers."""
    src = SUBJECT + "[{{ extra.a|money }}|{{ extra.b|money('usd') }}|{{ extra.c|money }}]"
    mailer = make_mailer(template_dir=write(tmp_path, "m", src))
    html = html_of(mailer.render_mail("m", context(extra={"a": "12", "b": 5})))
    assert "[|$5.00|]" in html


def test_money_formats() -> None:
    """Symbols for common currencies, the code for others, no decimals for yen."""
    from rtserver.mail.render import _money

    assert _money(5, "usd") == "$5.00"
    assert _money(1e6, "KRW") == "₩1,000,000"
    assert _money(2.5, None, "SEK") == "2.50 SEK"
    assert _money(float("inf")) == _money("3") == _money(True) == _money(None) == ""


# The shipped templates


def test_every_shipped_template_exists_and_passes_check() -> None:
    """config.toml's sends, confirm and test all exist, and check() finds nothing."""
    mailer = make_mailer()
    names = mailer.names()
    assert shipped_sends() | {"confirm", "test"} <= set(names)
    assert not [n for n in names if n.startswith("_")]
    assert mailer.check(names) == []


@pytest.mark.parametrize("name", sorted(shipped_sends() | {"confirm", "test"}))
def test_shipped_template_renders_sample_and_sparse(name: str) -> None:
    """Each shipped mail renders with every optional part there, and with none of them."""
    mailer = make_mailer()
    full = mailer.render_mail(name, SAMPLE)
    sparse = mailer.render_mail(name, SPARSE)
    for message in (full, sparse):
        html = html_of(message)
        assert message["Subject"]
        assert 'name="viewport"' in html and "max-width:600px" in html
        assert "Acme &amp; Co" in html
        assert "Undefined" not in html and "None" not in html
    assert "Hi there," in text_of(sparse)
    assert "Hi Ada," in text_of(full)


def test_logo_replaces_the_shop_name() -> None:
    """With a logo url the header shows the image, with the name as its alt text."""
    brand = dataclasses.replace(BRAND, logo_url="https://cdn.example/logo.png")
    mailer = make_mailer(dataclasses.replace(CONFIG, brand=brand))
    html = html_of(mailer.render_mail("welcome", SAMPLE))
    assert '<img src="https://cdn.example/logo.png" alt="Acme &amp; Co"' in html


def test_operator_templates_override_and_add(tmp_path: Path) -> None:
    """A template folder overrides a shipped template and adds new ones (mail.templates)."""
    write(tmp_path, "welcome", "{% block subject %}Custom welcome{% endblock %}")
    write(tmp_path, "extra_one", "{% block subject %}New{% endblock %}")
    config = dataclasses.replace(CONFIG, templates=str(tmp_path))
    mailer = make_mailer(config)
    assert mailer.render_mail("welcome", SAMPLE)["Subject"] == "Custom welcome"
    assert "extra_one" in mailer.names() and "cart_reminder" in mailer.names()


# check(): problems named by template


def test_check_reports_typos_syntax_and_missing_parts(tmp_path: Path) -> None:
    """Each problem names its template (and line where there is one)."""
    write(tmp_path, "typo", SUBJECT + "\n<p>{{ persn.first_name }}</p>")
    write(tmp_path, "syntax", SUBJECT + "\n{% if %}")
    write(tmp_path, "halftext", SUBJECT)
    (tmp_path / "email" / "halftext.txt").unlink()
    write(tmp_path, "sparse", SUBJECT + "{{ extra.order.total + 1 }}")
    write(tmp_path, "badbase", '{% extends "email/_nope.html" %}' + SUBJECT)
    mailer = make_mailer(template_dir=tmp_path)
    problems = mailer.check(["typo", "syntax", "halftext", "sparse", "badbase", "absent"])
    assert problems[0].startswith("email/typo.html line 2: UndefinedError: 'persn' is undefined")
    assert problems[1].startswith("email/syntax.html line 2: ")
    assert problems[2] == "email/halftext.txt: missing"
    assert problems[3].startswith("email/sparse.html line 1: UndefinedError")
    assert problems[3].endswith(SPARSE_NOTE)
    assert problems[4] == "email/_nope.html: missing"
    assert problems[5:] == ["email/absent.html: missing", "email/absent.txt: missing"]


def test_runtime_errors_become_mail_errors(tmp_path: Path) -> None:
    """An operator's template raising anything gives MailError naming the template and line."""
    write(tmp_path, "zero", SUBJECT + "\n\n{{ 1 / 0 }}")
    mailer = make_mailer(template_dir=tmp_path)
    with pytest.raises(MailError, match=r"email/zero.html line 3: ZeroDivisionError") as info:
        mailer.render_mail("zero", SAMPLE)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


SSTI = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ '{0.__class__}'|attr('format')(1) }}",
    "{{ ''|attr('__class__') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ brand.__class__.__init__.__globals__ }}",
    "{{ person.__class__ }}",
    "{{ recommendations.__class__.__base__ }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_ssti_corpus_is_contained(tmp_path: Path, payload: str) -> None:
    """As template source, each payload is reported by check() as a SecurityError, and
    rendering either fails with MailError or leaks nothing."""
    write(tmp_path, "evil", SUBJECT + f"BEGIN{payload}END", "ok")
    mailer = make_mailer(template_dir=tmp_path)
    problems = mailer.check(["evil"])
    assert len(problems) == 1 and problems[0].startswith("email/evil.html")
    assert "SecurityError" in problems[0]
    try:
        message = mailer.render_mail("evil", SAMPLE)
    except MailError as exc:
        assert isinstance(exc.__cause__, SecurityError)
    else:
        assert "BEGINEND" in html_of(message)


# Hypothesis: context never injects markup


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, [name for name, _ in attrs]))


def tags_of(html: str) -> list[tuple[str, list[str]]]:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser.tags


def attacker_context(s: str) -> MailContext:
    product = Product(s or "id", s, 1.0, None, None, SHOP + "/p", s)
    return context(
        person={"id": s, "email": s, "traits": {"first_name": s, "name": s}},
        run={"id": s, "workflow": s, "step": s},
        cart=(product,),
        recommendations=(product, dataclasses.replace(product, id=s + "2")),
        extra={"coupon": s, "order": {"id": s, "products": (product,)}, "cart_url": SHOP},
    )


_MAILER = make_mailer()
_NAMES = sorted(shipped_sends() | {"confirm", "test"})
_BASELINE = {
    name: tags_of(html_of(_MAILER.render_mail(name, attacker_context("x")))) for name in _NAMES
}
NASTY = st.sampled_from(
    [
        "<script>alert(1)</script>",
        '" onmouseover="alert(1)',
        "' onload='x",
        "<a href=//evil.example>x</a>",
        "</title><script>",
        "<img src=x onerror=alert(1)>",
        "{{ 7*7 }}",
        "\r\nBcc: x@evil.example",
        "javascript:alert(1)",
    ]
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(st.text() | NASTY | st.lists(NASTY | st.text(max_size=5)).map("".join))
def test_context_strings_never_become_markup(s: str) -> None:
    """No <script>, no on*= attribute and no extra <a> comes from context into the HTML."""
    for name in _NAMES:
        message = _MAILER.render_mail(name, attacker_context(s))
        html = html_of(message)
        tags = tags_of(html)
        assert "<script" not in html.lower()
        assert not [t for t in tags if t[0] == "script"]
        assert not [a for _, attrs in tags for a in attrs if a.startswith("on")]
        assert [t for t in tags if t[0] == "a"] == [t for t in _BASELINE[name] if t[0] == "a"]
        assert "\n" not in str(message["Subject"]) and message["Bcc"] is None


# DKIM


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bytes]]:
    """A fresh RSA key: its PEM file and the TXT record that publishes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    yield path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dkim_mailer(key: Path) -> Mailer:
    config = dataclasses.replace(
        CONFIG, dkim=DkimConfig(domain="acme.example", selector="rt", key_path=str(key))
    )
    return make_mailer(config)


def dns_for(record: bytes) -> Any:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"rt._domainkey.acme.example."
        return record

    return dnsfunc


def test_dkim_signature_verifies_and_covers_the_list_headers(
    dkim_key: tuple[Path, bytes],
) -> None:
    """The signature verifies against the published key and signs List-Unsubscribe (RFC 8058)."""
    path, record = dkim_key
    mailer = dkim_mailer(path)
    for marketing in (True, False):
        message = mailer.render_mail("cart_reminder", context(marketing=marketing))
        raw = wire_bytes(message)
        assert dkim.verify(raw, dnsfunc=dns_for(record))
        tags = dict(
            part.strip().split("=", 1)
            for part in re.sub(r"\s+", "", message["DKIM-Signature"]).split(";")
            if part
        )
        signed = tags["h"].split(":")
        assert signed == ["from", "to", "subject", "date", "message-id", "list-unsubscribe",
                          "list-unsubscribe-post"]  # fmt: skip
        assert tags["d"] == "acme.example" and tags["s"] == "rt"


def test_dkim_detects_tampering(dkim_key: tuple[Path, bytes]) -> None:
    """Changing a signed header breaks the signature."""
    path, record = dkim_key
    raw = wire_bytes(dkim_mailer(path).render_mail("welcome", SAMPLE))
    assert not dkim.verify(raw.replace(b"Subject: Welcome", b"Subject: Welcom3"),
                           dnsfunc=dns_for(record))  # fmt: skip


def test_unusable_dkim_key_is_refused(tmp_path: Path) -> None:
    """A missing or garbage key file is a MailError when the mailer is built."""
    with pytest.raises(MailError, match="mail.dkim.key_path"):
        dkim_mailer(tmp_path / "absent.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(MailError, match="mail.dkim.key_path"):
        dkim_mailer(garbage)


@pytest.mark.parametrize(("domain", "selector"), [("bad domain;", "rt"), ("acme.example", "r t")])
def test_dkim_names_must_be_dns_names(
    dkim_key: tuple[Path, bytes], domain: str, selector: str
) -> None:
    """A domain or selector that could not be in DNS (or that breaks the tag list) is refused."""
    path, _ = dkim_key
    config = dataclasses.replace(
        CONFIG, dkim=DkimConfig(domain=domain, selector=selector, key_path=str(path))
    )
    with pytest.raises(MailError, match="not a DNS name"):
        make_mailer(config)


async def test_relay_delivers_a_rendered_signed_mail(dkim_key: tuple[Path, bytes]) -> None:
    """What arrives is what was rendered, and its DKIM signature verifies on arrival."""
    path, record = dkim_key
    message = dkim_mailer(path).render_mail("cart_reminder", SAMPLE)
    async with SMTPServer() as server:
        relay = Relay(server.host, server.port, timeout_s=TIMEOUT_UNIT)
        assert (await relay.send(message)).state == "sent"
        [received] = await server.wait_for(1)
        await relay.close()
    assert received.rcpt_tos == ["ada@example.com"]
    assert received.message["Message-ID"] == "<sample-1@acme.example>"
    assert dkim.verify(received.content, dnsfunc=dns_for(record))


def test_non_ascii_survives_the_wire() -> None:
    """Unicode in the subject and bodies comes back intact from the bytes sent."""
    person = {"id": "u:z", "traits": {"first_name": "Zoë 😀"}}
    message = make_mailer().render_mail("win_back", context(person=person))
    raw = wire_bytes(message)
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "We miss you, Zoë 😀"
    assert isinstance(parsed, EmailMessage)
    assert "Hi Zoë 😀," in text_of(parsed)


def test_sample_run_has_what_claims_carry(tmp_path: Path) -> None:
    """The sample run has the key and start time a claimed mail's run has, so a template
    using them passes the strict check."""
    src = SUBJECT + "{{ run.key }} {{ run.started }} {{ run.variant }}"
    mailer = make_mailer(template_dir=write(tmp_path, "keyed", src, "{{ run.key }}"))
    assert mailer.check(["keyed"]) == []
    assert "cart-1 1799996400.0 a" in html_of(mailer.render_mail("keyed", SAMPLE))


def test_sandbox_remembers_a_bounded_number_of_verdicts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Attribute verdicts are kept per (type, name), up to MAX_VERDICTS (names may come from
    data through |attr); past that they are worked out each time, the same way."""
    import rtserver.mail.render

    src = SUBJECT + "{{ person|attr(extra.name) }}|{{ brand.name }}|{{ ''|attr(extra.name) }}"
    mailer = make_mailer(template_dir=write(tmp_path, "attrs", src))
    monkeypatch.setattr(rtserver.mail.render, "MAX_VERDICTS", 1)
    for name in ("__class__", "items", "__class__"):
        html = html_of(mailer.render_mail("attrs", context(extra={"name": name})))
        assert "class" not in html and "Acme &amp; Co" in html
    assert len(mailer._env._verdicts) == 1  # type: ignore[attr-defined]


def test_edited_templates_are_used_within_the_reload_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A template edited on disk is used once RELOAD_CHECK_S has passed since it was last
    checked, not before (the file is not looked at for every mail)."""
    import rtserver.mail.render

    write(tmp_path, "edit", SUBJECT + "<p>first</p>")
    mailer = make_mailer(template_dir=tmp_path)
    assert "first" in html_of(mailer.render_mail("edit", SAMPLE))
    (tmp_path / "email" / "edit.html").write_text(SUBJECT + "<p>second</p>")
    os.utime(tmp_path / "email" / "edit.html", (1, 1))  # a different mtime, surely
    assert "first" in html_of(mailer.render_mail("edit", SAMPLE))  # checked < 1 s ago
    monkeypatch.setattr(rtserver.mail.render, "RELOAD_CHECK_S", 0.0)
    assert "second" in html_of(mailer.render_mail("edit", SAMPLE))


def test_loaders_without_a_freshness_check_are_passed_through() -> None:
    """A loader that cannot tell whether a template changed (a function, a zip) is passed
    through."""
    from jinja2 import Environment, FunctionLoader

    from rtserver.mail.render import _Loader

    source = _Loader(FunctionLoader(lambda name: "hi")).get_source(Environment(), "email/x.txt")
    assert source == ("hi", None, None)


def test_the_demo_shops_cart_link_restores_the_cart_and_others_go_to_the_shop() -> None:
    """On the demo shop rtserver serves (brand url ``<public_url>/demo``), the cart link is a
    signed list of the cart's catalog products (a product without a shop link is left out);
    the person's ids are not in it. Another shop's cart link is its url, as before."""
    cart = (
        Product("lamp", "Lamp", 49.5, None, None, PUBLIC + "/demo/product/lamp", None, 2),
        Product("x", "An item from our shop", None, None, None, None, None),
    )
    tokens = Tokens(SECRET, FakeClock())
    demo = dataclasses.replace(CONFIG, brand=dataclasses.replace(BRAND, url=PUBLIC + "/demo/"))
    mailer = Mailer(demo, PUBLIC, tokens)
    text = text_of(mailer.render_mail("cart_reminder", context(cart=cart, extra={})))
    found = re.search(r"Back to your cart: (\S+)", text)
    assert found is not None
    click = tokens.read_click(found.group(1).rsplit("/", 1)[1])
    assert click is not None
    page, _, query = click[1].partition("?")
    assert page.startswith(PUBLIC + "/demo/cart/") and "rt_run=run-1" in query
    assert tokens.read_cart(page.rsplit("/", 1)[1]) == [("lamp", 2)]
    assert "u:ada" not in page
    empty = text_of(mailer.render_mail("cart_reminder", context(cart=cart[1:], extra={})))
    assert "/demo/cart/" not in empty  # nothing to restore: the shop
    other = text_of(make_mailer().render_mail("cart_reminder", context(cart=cart, extra={})))
    found = re.search(r"Back to your cart: (\S+)", other)
    assert found is not None
    click = Tokens(SECRET, FakeClock()).read_click(found.group(1).rsplit("/", 1)[1])
    assert click is not None and click[1].startswith(SHOP + "?")
