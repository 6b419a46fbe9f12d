"""The mail and webhook commands of ``rtserver``: ``render``, ``send-test-mail``, ``suppress``,
``forget``, ``webhooks``.

Each opens the store of the config, does one thing, and closes it; they may run while the
server runs (SQLite's WAL lets both in; the writer waits its turn).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

from rtserver.config import Config
from rtserver.errors import MailError
from rtserver.mail import (
    Contexts,
    MailContext,
    Mailer,
    Tokens,
    check_address,
    mail_transport,
    wire_bytes,
)
from rtserver.runtime import make_mailer, resolve_keys
from rtserver.store import Claim, Store

__all__ = ["add_commands"]


@asynccontextmanager
async def _opened(config: Config) -> AsyncIterator[tuple[Store, Mailer]]:
    store = await Store.open(config.store.path)
    try:
        keys = await resolve_keys(config, store, time.time())
        yield store, make_mailer(config, Tokens(keys.link_secret))
    finally:
        await store.close()


def _person_id(user: str) -> str:
    """``--user u1`` means the user ``u1``; a full person id (``a:...``) is taken as given."""
    return user if user[:2] in ("u:", "a:") else f"u:{user}"


async def preview(config: Config, template: str, user: str, now: float) -> EmailMessage:
    """The mail ``template`` would be for ``user`` now, from their real profile, cart and
    recommendations (their newest run's cart, if any).

    Raises:
        MailError: unknown person or template, or the mail cannot be rendered.
    """
    person_id = _person_id(user)
    async with _opened(config) as (store, mailer):
        profile = await store.profile(person_id)
        if profile is None:
            raise MailError(f"no profile {person_id!r} in {config.store.path}")
        if template not in mailer.names():
            raise MailError(f"unknown template {template!r} ({', '.join(mailer.names())})")
        runs = [r for r in await store.runs(limit=1000) if r["person_id"] == person_id]
        run: dict[str, Any] = runs[0] if runs else {}
        person = {**profile, "id": person_id}
        claim = Claim(
            f"preview-{uuid.uuid4().hex[:12]}", run.get("id"), run.get("step"), person_id,
            run.get("workflow", "preview"), template, "", True,
            profile["email"] or profile["claimed_email"] or "preview@example.com", 0, now,
            person, run, {},
        )  # fmt: skip
        context = await Contexts(store, mailer, config.mail).build(claim, now)
        return mailer.render_mail(template, context)


async def recommend(config: Config, user: str, count: int, now: float) -> list[Any]:
    """What a mail to ``user`` would recommend now (as ``GET /v1/recommendations`` answers)."""
    async with _opened(config) as (store, mailer):
        contexts = Contexts(store, mailer, config.mail)
        return await contexts.recommendations(_person_id(user), now, count)


async def send_test_mail(config: Config, to: str, now: float) -> str:
    """Send the ``test`` template to ``to`` through the configured transport; the outcome."""
    address = check_address(to)
    async with _opened(config) as (store, mailer):
        context = MailContext(
            mail_id=f"test-{uuid.uuid4().hex}",
            to=address,
            now=now,
            person={"id": "test", "email": address, "traits": {}},
            run={},
            marketing=False,
        )
        message = mailer.render_mail("test", context)
        async with mail_transport(config, store, lambda: now) as relay:
            outcome = await relay.send(message)
    detail = f" ({outcome.code} {outcome.reason})" if outcome.code else f" ({outcome.reason})"
    return outcome.state + detail


async def suppress(config: Config, address: str, reason: str, now: float) -> None:
    """Put ``address`` on the suppression list (hashed): no mail goes to it any more."""
    async with _opened(config) as (store, _):
        await store.mail.suppress(check_address(address), reason, now, "rtserver suppress")


async def forget(config: Config, address: str, now: float) -> int:
    """Erase every person with ``address``; how many (see ``MailStore.forget``)."""
    async with _opened(config) as (store, _):
        return await store.mail.forget(address, now)


async def webhooks(
    config: Config, enable: str | None
) -> tuple[dict[str, int], dict[str, str], bool]:
    """Deliveries by state and the endpoints a 410 disabled; ``enable`` (a URL) first turns
    that endpoint back on (whether it was off)."""
    async with _opened(config) as (store, _):
        enabled = await store.deliveries.enable(enable) if enable else False
        return await store.deliveries.counts(), await store.deliveries.disabled(), enabled


def _cmd_webhooks(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    counts, disabled, enabled = asyncio.run(webhooks(config, args.enable))
    if args.enable:
        state = "enabled again" if enabled else "was not disabled"
        print(f"{args.enable}: {state}")
    states = ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"
    print(f"deliveries: {states}")
    for url, reason in disabled.items():
        print(f"disabled: {url}  ({reason}; `rtserver webhooks --enable URL` turns it back on)")
    return 0 if not args.enable or enabled else 1


def _cmd_render(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    try:
        message = asyncio.run(preview(config, args.template, args.user, time.time()))
    except MailError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    if args.part == "eml":
        sys.stdout.buffer.write(wire_bytes(message))
        return 0
    body = message.get_body(("html",) if args.part == "html" else ("plain",))
    print(f"Subject: {message['Subject']}\nTo: {message['To']}\n")
    print(body.get_content() if body is not None else "")
    return 0


def _cmd_recommend(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    picks = asyncio.run(recommend(config, args.user, args.n, time.time()))
    if not picks:
        print(f"no recommendations for {args.user!r}: no catalog products fit yet")
    for rank, product in enumerate(picks, 1):
        price = "" if product.price is None else f"  {product.price:.2f} {product.currency or ''}"
        print(f"{rank}. {product.id}  {product.name}{price.rstrip()}  [{product.category or '-'}]")
        if product.url:
            print(f"   {product.url}")
    return 0


def _cmd_send_test_mail(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    try:
        outcome = asyncio.run(send_test_mail(config, args.to, time.time()))
    except MailError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    print(f"test mail to {args.to} via {config.mail.transport}: {outcome}")
    return 0 if outcome.startswith("sent") else 1


def _cmd_suppress(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    try:
        asyncio.run(suppress(config, args.email, args.reason, time.time()))
    except MailError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    print(f"suppressed {args.email} ({args.reason}): no mail goes to it any more")
    return 0


def _cmd_forget(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    erased = asyncio.run(forget(config, args.email, time.time()))
    print(f"erased {erased} profile(s) of {args.email}; its hash stays on the suppression list")
    return 0


def add_commands(
    sub: Any, load: Callable[[str | None], Config]
) -> None:  # argparse's subparsers type is private
    """Add ``render``, ``recommend``, ``send-test-mail``, ``suppress``, ``forget`` and
    ``webhooks`` to the ``rtserver`` parser."""
    render = sub.add_parser(
        "render",
        help="preview a mail for a real person (their cart and recommendations)",
        description="Render TEMPLATE for --user from the store, as it would be sent now.",
    )
    render.add_argument("template", help="template name (templates/email/<name>.html|.txt)")
    render.add_argument("--user", required=True, help="userId, or a person id like a:<anonId>")
    render.add_argument("--part", choices=["text", "html", "eml"], default="text")
    render.add_argument("--config", metavar="PATH")
    render.set_defaults(func=lambda args: _cmd_render(args, load))

    recommend_ = sub.add_parser(
        "recommend",
        help="the products a mail to a person would recommend now (from the catalog)",
        description="Print what a mail to --user would recommend now, best first; the same "
        "picks GET /v1/recommendations answers.",
    )
    recommend_.add_argument("--user", required=True, help="userId, or a person id like a:<id>")
    recommend_.add_argument("-n", type=int, default=4, choices=range(1, 21), metavar="N",
                            help="how many (1 to 20, default 4)")  # fmt: skip
    recommend_.add_argument("--config", metavar="PATH")
    recommend_.set_defaults(func=lambda args: _cmd_recommend(args, load))

    test = sub.add_parser(
        "send-test-mail", help="send the test template to an address (checks the mail setup)"
    )
    test.add_argument("to", help="recipient address")
    test.add_argument("--config", metavar="PATH")
    test.set_defaults(func=lambda args: _cmd_send_test_mail(args, load))

    suppress_ = sub.add_parser(
        "suppress", help="stop every mail to an address (a manual suppression, kept hashed)"
    )
    suppress_.add_argument("email")
    suppress_.add_argument(
        "--reason", choices=["manual", "complaint", "hard_bounce"], default="manual"
    )
    suppress_.add_argument("--config", metavar="PATH")
    suppress_.set_defaults(func=lambda args: _cmd_suppress(args, load))

    forget_ = sub.add_parser(
        "forget",
        help="erase everything about an email address (GDPR), keeping a hashed suppression",
    )
    forget_.add_argument("email")
    forget_.add_argument("--config", metavar="PATH")
    forget_.set_defaults(func=lambda args: _cmd_forget(args, load))

    hooks = sub.add_parser(
        "webhooks",
        help="webhook deliveries by state and the endpoints a 410 disabled",
        description="Show the outbound webhook deliveries by state and the disabled endpoints; "
        "--enable URL turns an endpoint back on (its later deliveries go out again).",
    )
    hooks.add_argument("--enable", metavar="URL", help="turn this disabled endpoint back on")
    hooks.add_argument("--config", metavar="PATH")
    hooks.set_defaults(func=lambda args: _cmd_webhooks(args, load))
