"""Mail: templates in, the mail's wire bytes out (pure); sending is :mod:`rtserver.mail.smtp`.

:meth:`Mailer.render_bytes` gives a :class:`~rtserver.mail.mime.RawMail` (the bytes built directly,
:mod:`rtserver.mail.mime`); :meth:`Mailer.render_mail` the same mail as an ``EmailMessage``.

Templates
    ``email/<name>.html`` and ``email/<name>.txt``, from ``mail.templates`` (when set) and then
    the shipped ones, rendered in one :class:`~jinja2.sandbox.SandboxedEnvironment` (operators
    edit them, event data is attacker data): HTML autoescaped, text not. A missing name renders
    empty at run time; :meth:`Mailer.check` renders every template against sample data with
    ``StrictUndefined`` to catch typos. Names starting with ``_`` are layouts and macros. An
    edited template is used from the next mail on, at most ``RELOAD_CHECK_S`` later.

Subject
    The ``subject`` block of the ``.html`` template (``{% block subject %}...{% endblock %}``;
    the shipped layout also shows it as the page ``<title>``). It is rendered with the mail's
    context, then tags are stripped, entities decoded and whitespace folded to one line. A
    template without one is an error; an empty one falls back to the brand name.

Names in templates
    ``brand`` (``mail.brand``), ``person``, ``run``, ``product`` (the run's product, or None),
    ``cart``, ``viewed`` and ``recommendations`` (lists of
    :class:`~rtserver.mail.recommend.Product`, from the catalog), ``extra`` (``confirm_url``,
    ``order``, ``cart_url``, ``coupon``...), ``marketing``, ``unsubscribe_url``, ``first_name``
    ('' when unknown), ``cart_url`` and ``shop_url``, ``template``, ``now``; the filter
    ``money(currency)``. ``cart_url`` is ``extra.cart_url``, else, on the demo shop rtserver
    serves, a signed link that restores the cart's catalog products, else ``shop_url``.

Links
    Every http(s) ``<a href>`` of the HTML and every http(s) url of the text becomes
    ``{public_url}/c/{token}``, whose signed target carries ``utm_source=rtserver``,
    ``utm_medium=email``, ``utm_campaign=<workflow>``, ``utm_content=<template>`` and
    ``rt_run=<run id>`` (parameters the link already has are kept). rtserver's own ``/u/``,
    ``/o/`` and ``/c/`` links and ``extra.confirm_url`` stay as they are
    (:mod:`rtserver.mail.clicks`). The HTML ends with the open pixel ``{public_url}/o/{token}``.
    Marketing mail carries ``List-Unsubscribe`` (one click, RFC 8058), a footer link and the
    postal address, as CAN-SPAM requires.

Delivery is not this module's job: :mod:`rtserver.mail.smtp` hands the bytes to the relay.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
from email_validator import EmailNotValidError, validate_email
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from rtserver.config import MailConfig
from rtserver.errors import MailError
from rtserver.mail.clicks import track_links
from rtserver.mail.hosts import Hosts, hosts_in
from rtserver.mail.mime import RawMail, compose, date_value, header, recipients_of, sign
from rtserver.mail.recommend import Product
from rtserver.mail.tokens import Tokens

__all__ = [
    "MailContext",
    "Mailer",
    "check_address",
]

DKIM_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
MAX_SUBJECT_CHARS = 200
OWN_SHOP_PATH = "/demo"
"""The path of the demo shop rtserver serves on its public URL (:mod:`rtserver.tools.demo`)."""
MAX_VERDICTS = 4096
RELOAD_CHECK_S = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DNS_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9_-]+)*\.?")
_MAIL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEMPLATE_ERRORS = (
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)
"""What an operator's template can raise while rendering; each becomes a MailError."""

_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "INR": "₹", "CNY": "CN¥"}
_SYMBOLS |= {"AUD": "A$", "CAD": "CA$", "NZD": "NZ$", "BRL": "R$", "KRW": "₩"}
_NO_DECIMALS = frozenset({"JPY", "KRW", "CLP", "ISK", "VND"})


@dataclass(frozen=True, slots=True)
class MailContext:
    """What one mail is rendered from."""

    mail_id: str
    """The outbox row id; the Message-ID is derived from it (the same on every attempt)."""
    to: str
    now: float
    """For the Date header."""
    person: Mapping[str, Any]
    """``id``, ``email``, ``traits``, ``orders_count``, ``total_spent``... (any may be missing)."""
    run: Mapping[str, Any]
    """``id``, ``workflow``, ``step``, ``variant`` (``{}`` for a test mail)."""
    cart: Sequence[Product] = ()
    viewed: Sequence[Product] = ()
    product: Product | None = None
    """The catalog product the run is keyed by (``run_key = "properties.product_id"``), if any:
    the product of a Back in Stock or Price Dropped mail."""
    """What the person viewed lately (catalog products they may still buy), newest first."""
    recommendations: Sequence[Product] = ()
    marketing: bool = True
    """Marketing mail gets List-Unsubscribe, the footer link and the postal address."""
    extra: Mapping[str, Any] = field(default_factory=dict)


def check_address(address: str) -> str:
    """The normalised form of a bare address, or MailError with the reason."""
    if "\r" in address or "\n" in address:
        raise MailError(f"line break in address {address!r}")
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        reason = str(exc).rstrip(".")
        raise MailError(f"invalid address {address!r}: {reason[:1].lower()}{reason[1:]}") from exc


def _money(value: Any, currency: Any = None, default: str = "EUR") -> str:
    """``€12.50``, ``¥1,200``, ``12.50 CHF``; '' for anything that is not a price."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    code = currency.upper() if isinstance(currency, str) and currency else default
    amount = f"{value:,.{0 if code in _NO_DECIMALS else 2}f}"
    symbol = _SYMBOLS.get(code)
    return f"{symbol}{amount}" if symbol else f"{amount} {code}"


def _first_name(person: Mapping[str, Any]) -> str:
    traits = person.get("traits")
    if not isinstance(traits, Mapping):
        return ""
    for key in ("first_name", "firstName"):
        if isinstance(traits.get(key), str) and traits[key].strip():
            return " ".join(traits[key].split())[:60]
    name = traits.get("name")
    return name.split()[0][:60] if isinstance(name, str) and name.strip() else ""


def _where(exc: BaseException) -> str:
    """``email/x.html line 3`` from the template frames Jinja puts in tracebacks."""
    if isinstance(exc, TemplateSyntaxError):
        return f"{exc.name or exc.filename} line {exc.lineno}"
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if path.suffix in (".html", ".txt"):
            found = f"{path.parent.name}/{path.name} line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


class _Loader(BaseLoader):
    """The template loaders, asking whether a loaded template's file changed at most once in
    ``RELOAD_CHECK_S`` (Jinja asks for each template at each render: a dozen ``stat`` calls a
    mail, each letting go of the GIL)."""

    def __init__(self, inner: BaseLoader) -> None:
        self._inner = inner

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self._inner.get_source(environment, template)
        if uptodate is None:
            return source, filename, None
        check = uptodate
        last = [time.monotonic(), True]

        def throttled() -> bool:
            now = time.monotonic()
            if now - last[0] >= RELOAD_CHECK_S:
                last[:] = [now, check()]
            return bool(last[1])

        return source, filename, throttled

    def list_templates(self) -> list[str]:
        return self._inner.list_templates()


class _Sandbox(SandboxedEnvironment):
    """The sandbox, remembering its verdict on each attribute per (type, name): the verdict
    depends on nothing else (``jinja2.sandbox.is_internal_attribute`` looks at the type), and
    a shop mail asks it about a hundred times."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verdicts: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = super().is_safe_attribute(obj, attr, value)
            if len(self._verdicts) < MAX_VERDICTS:  # names can come from data (|attr)
                self._verdicts[key] = verdict
        return verdict


class Mailer:
    """Renders mail from the templates, for one configuration."""

    def __init__(
        self,
        config: MailConfig,
        public_url: str,
        tokens: Tokens,
        *,
        template_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.public_url = public_url.rstrip("/")
        self.tokens = tokens
        if template_dir is None and config.templates:
            template_dir = Path(config.templates)
        loaders: list[BaseLoader] = [PackageLoader("rtserver", "templates")]
        if template_dir is not None:
            loaders.insert(0, FileSystemLoader(template_dir))
        self._env = _Sandbox(
            loader=_Loader(ChoiceLoader(loaders)),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["money"] = self._money
        self.hosts = Hosts(config, self.public_url, self.template_hosts)
        """Where links and images from data may point (and ``/c/`` may redirect)."""
        self.cart_page = ""
        """Where a signed cart is restored (``<page>/<token>``): set when the shop is the demo
        shop rtserver serves itself (``mail.brand.url`` is ``<public_url>/demo``), else ''."""
        if config.brand.url.rstrip("/") == f"{self.public_url}{OWN_SHOP_PATH}":
            self.cart_page = f"{self.public_url}{OWN_SHOP_PATH}/cart"
        # check() renders through an overlay: the same loader and filters, StrictUndefined.
        self._strict = self._env.overlay(undefined=StrictUndefined)
        sender = parseaddr(config.from_)[1]
        self._domain = sender.rpartition("@")[2]
        if "@" not in sender or not self._domain:
            raise MailError(f"mail.from has no domain: {config.from_!r}")
        self._from_lines: dict[bool, bytes] = {}
        self._envelope_from: str | None = None
        self._dkim_key: bytes | None = None
        if config.dkim.key_path:
            for key, value in (("domain", config.dkim.domain), ("selector", config.dkim.selector)):
                if value and not _DNS_NAME.fullmatch(value):
                    raise MailError(f"mail.dkim.{key}: not a DNS name: {value!r}")
            try:
                self._dkim_key = Path(config.dkim.key_path).read_bytes()
                dkim.crypto.parse_pem_private_key(self._dkim_key)
            except (OSError, dkim.crypto.UnparsableKeyError) as exc:
                raise MailError(f"mail.dkim.key_path: unusable key: {exc}") from exc

    def _money(self, value: Any, currency: Any = None) -> str:
        return _money(value, currency, self.config.brand.currency)

    def template_hosts(self) -> set[str]:
        """The hosts of the URLs written in the mail templates (the operator's own links)."""
        loader = self._env.loader
        assert loader is not None
        sources = (
            loader.get_source(self._env, path)[0]
            for path in self._env.list_templates(extensions=("html", "txt"))
            if path.startswith("email/")
        )
        return hosts_in(sources)

    def names(self) -> list[str]:
        """The template names there are (``email/<name>.html`` or ``.txt``), layouts left out."""
        found = set()
        for path in self._env.list_templates(extensions=("html", "txt")):
            folder, _, file = path.partition("/")
            stem = file.rpartition(".")[0]
            if folder == "email" and _NAME.fullmatch(stem):
                found.add(stem)
        return sorted(found)

    def check(self, names: Iterable[str]) -> list[str]:
        """Problems of the named templates, each naming its template: a missing part, a syntax
        error, an error rendering the sample data (strictly, then with optional data left out)."""
        problems: list[str] = []
        for name in names:
            if not _NAME.fullmatch(name):
                problems.append(f"{name!r}: not a template name")
                continue
            parsed = True
            for ext in ("html", "txt"):
                try:
                    self._strict.get_template(f"email/{name}.{ext}")
                except TemplateNotFound:
                    problems.append(f"email/{name}.{ext}: missing")
                    parsed = False
                except TemplateSyntaxError as exc:
                    problems.append(f"{_where(exc)}: {exc.message}")
                    parsed = False
            if not parsed:
                continue
            for env, sample, note in ((self._strict, SAMPLE, ""), (self._env, SPARSE, SPARSE_NOTE)):
                try:
                    self._render(env, name, sample)
                except MailError as exc:
                    problems.append(f"{exc}{note}")
                    break
        return problems

    def render_bytes(self, template: str, context: MailContext) -> RawMail:
        """The complete mail as it is sent, signed when DKIM is configured; MailError if it
        can't be made."""
        return self._render(self._env, template, context)

    def render_mail(self, template: str, context: MailContext) -> EmailMessage:
        """:meth:`render_bytes` as an ``EmailMessage`` (parsed back from the same bytes)."""
        return self._render(self._env, template, context).message()

    def _variables(self, template: str, context: MailContext) -> dict[str, Any]:
        brand = self.config.brand
        unsubscribe = ""
        if context.marketing:
            token = self.tokens.unsubscribe(context.mail_id)
            unsubscribe = f"{self.public_url}/u/{token}"
        cart_url = context.extra.get("cart_url")
        if not (isinstance(cart_url, str) and cart_url):
            cart_url = self._cart_link(context.cart) or brand.url
        return {
            "brand": brand,
            "person": context.person,
            "run": context.run,
            "cart": list(context.cart),
            "viewed": list(context.viewed),
            "product": context.product,
            "recommendations": list(context.recommendations),
            "extra": context.extra,
            "marketing": context.marketing,
            "unsubscribe_url": unsubscribe,
            "first_name": _first_name(context.person),
            "shop_url": brand.url,
            "cart_url": cart_url,
            "template": template,
            "now": context.now,
        }

    def _cart_link(self, cart: Sequence[Product]) -> str | None:
        """The link that restores ``cart`` on the demo shop: its products with a shop link
        (so from the catalog), signed; never who the cart was of. None for another shop."""
        items = [(p.id, p.quantity) for p in cart if p.url is not None]
        if not self.cart_page or not items:
            return None
        return f"{self.cart_page}/{self.tokens.cart(items)}"

    def _content(
        self, env: SandboxedEnvironment, name: str, context: MailContext
    ) -> tuple[str, str, str, str]:
        """The subject, text and HTML (links tracked, pixel in) and the unsubscribe url."""
        if not _NAME.fullmatch(name):
            raise MailError(f"not a template name: {name!r}")
        if not _MAIL_ID.fullmatch(context.mail_id):
            raise MailError(f"not a mail id: {context.mail_id!r}")
        variables = self._variables(name, context)
        try:
            html_template = env.get_template(f"email/{name}.html")
            text_template = env.get_template(f"email/{name}.txt")
            block = html_template.blocks.get("subject")
            if block is None:
                raise MailError(f"email/{name}.html: no subject block")
            subject_html = "".join(block(html_template.new_context(variables)))
            html_body = html_template.render(variables)
            text_body = text_template.render(variables)
        except TemplateNotFound as exc:
            raise MailError(f"{exc.name}: missing") from exc
        except _TEMPLATE_ERRORS as exc:
            where = _where(exc) or f"email/{name}"
            raise MailError(f"{where}: {type(exc).__name__}: {exc}") from exc
        subject = _CONTROL.sub("", Markup(subject_html).striptags())[:MAX_SUBJECT_CHARS]
        confirm = context.extra.get("confirm_url")
        html_body, text_body = track_links(
            html_body,
            _BLANK_LINES.sub("\n\n", text_body).strip() + "\n",
            tokens=self.tokens,
            public_url=self.public_url,
            mail_id=context.mail_id,
            run=context.run,
            template=name,
            keep={confirm} if isinstance(confirm, str) else set(),
        )
        pixel = (
            f'<img src="{self.public_url}/o/{self.tokens.open(context.mail_id)}" '
            'width="1" height="1" alt="" style="display:block;border:0;">'
        )
        at = html_body.lower().rfind("</body>")
        html_body = html_body[:at] + pixel + html_body[at:] if at >= 0 else html_body + pixel
        subject = subject or self.config.brand.name
        return subject, text_body, html_body, variables["unsubscribe_url"]

    def _render(self, env: SandboxedEnvironment, name: str, context: MailContext) -> RawMail:
        subject, text_body, html_body, unsubscribe = self._content(env, name, context)
        recipients = recipients_of(context.to)
        if not recipients:
            raise MailError(f"no recipient in {context.to!r}")
        for address in recipients:
            check_address(address)
        utf8 = not all(a.isascii() for a in (self._sender(), *recipients))
        message_id = f"<{context.mail_id}@{self._domain}>"
        head = [
            self._from_line(utf8),
            header("To", context.to, utf8),
            header("Subject", subject, utf8),
            header("Date", date_value(context.now)),
            header("Message-ID", message_id),
            header("X-RT-Mail-ID", context.mail_id),
        ]
        if context.marketing:
            # Written raw: folding the long url would make RFC 2047 encoded words of it.
            head.append(f"List-Unsubscribe: <{unsubscribe}>\r\n".encode("ascii"))
            head.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        data = compose(b"".join(head), text_body, html_body)
        if self._dkim_key is not None:
            dkim_config = self.config.dkim
            domain = dkim_config.domain or self._domain
            data = sign(data, dkim_config.selector, domain, self._dkim_key, DKIM_HEADERS)
        return RawMail(self._sender(), recipients, data, message_id)

    def _from_line(self, utf8: bool) -> bytes:
        """The From header (the same for every mail; MailError while mail.from is bad)."""
        line = self._from_lines.get(utf8)
        if line is None:
            line = self._from_lines[utf8] = header("From", self.config.from_, utf8)
        return line

    def _sender(self) -> str:
        """The envelope sender: the address of mail.from."""
        if self._envelope_from is None:
            self._envelope_from = recipients_of(self.config.from_)[0]
        return self._envelope_from


_SAMPLE_PRODUCTS = (
    Product(
        "sku-1",
        "Linen shirt",
        49.0,
        "EUR",
        "https://shop.example/i/1.jpg",
        "https://shop.example/p/1",
        "Shirts",
        2,
    ),
    Product("sku-2", "Canvas tote", None, None, None, "https://shop.example/p/2", None),
    Product("sku-3", "Wool socks", 12.5, "USD", None, None, "Socks", regular_price=15.0),
)
SAMPLE = MailContext(
    mail_id="sample-1",
    to="Ada Lovelace <ada@example.com>",
    now=1_800_000_000.0,
    person={
        "id": "u:ada",
        "email": "ada@example.com",
        "traits": {"first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace"},
        "consent": "granted",
        "first_seen": 1_790_000_000.0,
        "last_seen": 1_799_990_000.0,
        "orders_count": 3,
        "total_spent": 240.5,
        "last_order_at": 1_799_000_000.0,
        "opens": 4,
        "clicks": 2,
        "time_zone": "Europe/Berlin",
    },
    run={
        "id": "run-1",
        "workflow": "sample",
        "step": 1,
        "variant": "a",
        "key": "cart-1",
        "started": 1_799_996_400.0,
    },
    cart=_SAMPLE_PRODUCTS[:2],
    viewed=_SAMPLE_PRODUCTS[1:],
    product=_SAMPLE_PRODUCTS[2],
    recommendations=_SAMPLE_PRODUCTS,
    extra={
        "confirm_url": "https://rt.example/confirm/sample",
        "cart_url": "https://shop.example/cart",
        "coupon": "WELCOME10",
        "order": {"id": "1001", "total": 98.0, "currency": "EUR", "products": _SAMPLE_PRODUCTS},
    },
)
"""Sample data every template must render with ``StrictUndefined``."""
SPARSE = MailContext(
    mail_id="sample-2", to="someone@example.com", now=1_800_000_000.0, person={}, run={}
)
"""A mail with every optional part missing; templates must still render (default Undefined)."""
SPARSE_NOTE = " (with optional data missing: no traits, cart or order)"
