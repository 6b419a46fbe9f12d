"""``rtserver init [DIR]``: the first step on a new host.

It takes the shop's URL, rtserver's own public URL, the shop's origins, the mail relay and the
sender address (as flags, or asked for on a terminal), writes the packaged example config with
those answers filled in (the one source of the defaults and their comments), and prints the
snippet tag with the new public key and the next steps. It never overwrites a file.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from rtserver.config import EXAMPLE_CONFIG, load_config
from rtserver.errors import ConfigError, MailError
from rtserver.mail import check_address

__all__ = ["Answers", "add_command", "filled", "snippet_tag"]

Ask = Callable[[str], str]
COMMENT_COLUMN = 40
"""Where the example config's comments start."""


@dataclass(frozen=True, slots=True)
class Answers:
    """What ``init`` fills in."""

    shop_url: str
    public_url: str
    origins: tuple[str, ...]
    sender: str
    relay: str = ""
    """``host:port`` of the SMTP relay; '' keeps the dev sink (mail kept in the store)."""
    public_key: str = ""


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _set(text: str, section: str, key: str, value: Any) -> str:
    """``text`` with ``key`` of ``[section]`` set to ``value`` (its comment kept)."""
    header = re.search(rf"^{re.escape(section)}", text, re.M)
    if header is None:
        raise ValueError(f"no {section.strip()} section")
    start = header.start()
    end = text.find("\n[", start + 1)
    end = len(text) if end == -1 else end
    line = re.compile(rf"^([ \t]*{re.escape(key)} = )(\S.*?)(?:[ \t]+(#.*))?$", re.M)

    def replace(found: re.Match[str]) -> str:
        setting = f"{found.group(1)}{json.dumps(value)}"
        if found.group(3) is None:
            return setting
        return f"{setting.ljust(COMMENT_COLUMN - 1)} {found.group(3)}"

    body, count = line.subn(replace, text[start:end], count=1)
    if not count:
        raise ValueError(f"{section} has no line for {key}")
    return text[:start] + body + text[end:]


def filled(example: str, answers: Answers) -> str:
    """The example config with ``answers`` in it."""
    text = _set(example, "[server]", "public_url", answers.public_url.rstrip("/"))
    text = _set(text, "[server]", "allowed_origins", list(answers.origins))
    text = _set(text, "[keys]", "public", answers.public_key)
    text = _set(text, "[mail]", "from", answers.sender)
    text = _set(text, "  [mail.brand]", "url", answers.shop_url.rstrip("/"))
    if answers.relay:
        host, _, port = answers.relay.rpartition(":")
        text = _set(text, "[mail]", "transport", "smtp")
        text = _set(text, "  [mail.smtp]", "host", host)
        text = _set(text, "  [mail.smtp]", "port", int(port))
    return text


def snippet_tag(answers: Answers) -> str:
    base = answers.public_url.rstrip("/")
    return (
        "<script>\n"
        "  window.rt = window.rt || function(){(rt.q = rt.q || []).push(arguments)};\n"
        "</script>\n"
        f'<script async src="{base}/rt.js" data-key="{answers.public_key}"></script>'
    )


def _answers(args: argparse.Namespace, ask: Ask | None) -> Answers:
    """The flags, with what is missing asked for (``ask``), else a ValueError naming it."""
    values = {
        "shop_url": args.shop_url,
        "public_url": args.public_url,
        "sender": args.sender,
    }
    prompts = {
        "shop_url": "The shop's URL (https://shop.example): ",
        "public_url": "rtserver's public URL, for links in mail (https://rt.shop.example): ",
        "sender": "The sender address (Shop <hello@shop.example>): ",
    }
    for name, value in values.items():
        if not value:
            if ask is None:
                raise ValueError(f"--{name.replace('_', '-')} is needed (or run it on a terminal)")
            values[name] = ask(prompts[name]).strip()
    check_address(parseaddr(values["sender"])[1])
    relay = args.relay
    if relay is None:
        relay = (
            ask("SMTP relay host:port ('' keeps mail in the dashboard's inbox): ") if ask else ""
        )
    relay = relay.strip()
    if relay and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}", relay):
        raise ValueError(f"--relay must be host:port, got {relay!r}")
    origins = tuple(args.origin or ()) or (_origin(values["shop_url"]),)
    return Answers(
        shop_url=values["shop_url"],
        public_url=values["public_url"],
        origins=origins,
        sender=values["sender"],
        relay=relay,
        public_key=f"pk_{secrets.token_urlsafe(18)}",
    )


def run(args: argparse.Namespace, ask: Ask | None) -> int:
    folder = Path(args.dir)
    target = folder / "config.toml"
    if target.exists():
        print(f"rtserver: {target} exists: init never overwrites a file", file=sys.stderr)
        return 2
    try:
        answers = _answers(args, ask)
        text = filled(EXAMPLE_CONFIG.read_text(encoding="utf-8"), answers)
        folder.mkdir(parents=True, exist_ok=True)
        draft = folder / ".config.toml.init"
        draft.write_text(text, encoding="utf-8")
        try:
            load_config(draft, env={})  # the answers make a valid config, or nothing is written
            draft.rename(target)
        finally:
            draft.unlink(missing_ok=True)
    except (ValueError, ConfigError, MailError) as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}\n")
    print("Paste this into every page of the shop, in <head>:\n")
    print(snippet_tag(answers))
    print("\nNext:")
    print(f"  1. rtserver check-config {target}")
    print(f"  2. rtserver serve --config {target}   (behind TLS at {answers.public_url})")
    print("  3. rtserver keys   (the write key and the identity secret for the shop's backend)")
    if not answers.relay:
        print('  mail stays in the dashboard\'s inbox until [mail] transport = "smtp" is set')
    return 0


def add_command(sub: Any) -> None:  # argparse's subparsers type is private
    """Add ``init`` to the ``rtserver`` parser."""
    init = sub.add_parser(
        "init",
        help="write a config.toml for a new shop and print the snippet tag",
        description="Write DIR/config.toml from the shipped example with the shop's answers "
        "filled in (asked for on a terminal when not given as flags); never overwrites.",
    )
    init.add_argument("dir", nargs="?", default=".", help="where config.toml goes (default: .)")
    init.add_argument("--shop-url", help="the shop's home page, e.g. https://shop.example")
    init.add_argument("--public-url", help="rtserver's own URL, e.g. https://rt.shop.example")
    init.add_argument(
        "--origin", action="append", help="a shop origin allowed to send events (repeatable; "
        "default: the shop URL's origin)",
    )  # fmt: skip
    init.add_argument("--sender", help='the From address, e.g. "Shop <hello@shop.example>"')
    init.add_argument("--relay", help="SMTP relay host:port ('': keep mail in the inbox)")
    init.set_defaults(func=lambda args: run(args, input if sys.stdin.isatty() else None))
