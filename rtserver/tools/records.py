"""``rtserver check-dns``: the DNS records a shop's mail and tracking host need, checked.

- the tracking host (``server.public_url``) has an address;
- SPF: a ``v=spf1`` TXT record at the sender's domain (``mail.from``);
- DKIM: with ``mail.dkim.key_path`` set, a ``v=DKIM1`` TXT record at
  ``<selector>._domainkey.<domain>`` whose ``p=`` is the public half of that key;
- DMARC: a ``v=DMARC1`` TXT record at ``_dmarc.<domain>``.

The queries go through dnspython's resolver (the system's, or ``--nameserver``). Where no
resolver answers (an offline host), the command says so and checks nothing rather than
reporting records missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from rtserver.config import Config

__all__ = ["Finding", "add_command", "check_records"]

TIMEOUT_S = 5.0


class Unreachable(Exception):
    """No resolver answered."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One record checked: ``ok`` is True, False, or None (not configured, not checked)."""

    what: str
    name: str
    ok: bool | None
    detail: str


async def _txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT strings at ``name`` (each record's parts joined); [] when there are none.

    Raises:
        Unreachable: no resolver answered.
    """
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        raise Unreachable(str(exc)) from exc
    return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


async def _has_address(resolver: dns.asyncresolver.Resolver, name: str) -> bool:
    for kind in ("A", "AAAA"):
        try:
            await resolver.resolve(name, kind)
            return True
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise Unreachable(str(exc)) from exc
    return False


def dkim_public_key(key_path: str) -> str:
    """The base64 ``p=`` value of the DKIM record for the private key at ``key_path``."""
    private = load_pem_private_key(Path(key_path).read_bytes(), password=None)
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def _tag(record: str, tag: str) -> str | None:
    for part in record.split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip() == tag:
            return "".join(value.split())
    return None


async def check_records(config: Config, resolver: dns.asyncresolver.Resolver) -> list[Finding]:
    """Every record's finding.

    Raises:
        Unreachable: no resolver answered.
    """
    findings: list[Finding] = []
    host = urllib.parse.urlsplit(config.server.public_url).hostname or ""
    found = await _has_address(resolver, host)
    findings.append(
        Finding("tracking host", host, found, "has an address" if found else "no A or AAAA record")
    )
    domain = parseaddr(config.mail.from_)[1].rpartition("@")[2].lower()
    spf = [r for r in await _txt(resolver, domain) if r.lower().startswith("v=spf1")]
    findings.append(
        Finding("SPF", domain, len(spf) == 1,
                spf[0] if len(spf) == 1 else f"{len(spf)} v=spf1 records (one is needed)")
    )  # fmt: skip
    dkim = config.mail.dkim
    if dkim.key_path:
        signing = dkim.domain or domain
        name = f"{dkim.selector}._domainkey.{signing}"
        records = [r for r in await _txt(resolver, name) if "v=DKIM1" in r.replace(" ", "")]
        expected = dkim_public_key(dkim.key_path)
        matches = [r for r in records if _tag(r, "p") == expected]
        detail = (
            "the public half of mail.dkim.key_path"
            if matches
            else ("a different key than mail.dkim.key_path" if records else "no v=DKIM1 record")
        )
        findings.append(Finding("DKIM", name, bool(matches), detail))
    else:
        findings.append(
            Finding("DKIM", f"<selector>._domainkey.{domain}", None,
                    "not signing: set [mail.dkim] key_path, domain and selector")
        )  # fmt: skip
    dmarc = [r for r in await _txt(resolver, f"_dmarc.{domain}") if r.startswith("v=DMARC1")]
    findings.append(
        Finding("DMARC", f"_dmarc.{domain}", bool(dmarc),
                dmarc[0] if dmarc else "no v=DMARC1 record (start with p=none)")
    )  # fmt: skip
    return findings


def make_resolver(nameserver: str | None) -> dns.asyncresolver.Resolver:
    """The system's resolver, or one asking ``HOST[:PORT]``."""
    if nameserver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise Unreachable(f"no resolver configured: {exc}") from exc
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = nameserver.rpartition(":") if ":" in nameserver else (nameserver, "", "")
        resolver.nameservers = [host or nameserver]
        resolver.port = int(port) if port else 53
    resolver.lifetime = TIMEOUT_S
    return resolver


def _run(args: argparse.Namespace, load: Callable[[str | None], Config]) -> int:
    config = load(args.config)
    try:
        findings = asyncio.run(check_records(config, make_resolver(args.nameserver)))
    except Unreachable as exc:
        print(f"cannot reach a DNS resolver from here ({exc}): nothing checked", file=sys.stderr)
        return 2
    for finding in findings:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[finding.ok]
        print(f"{mark}  {finding.what:<13} {finding.name}: {finding.detail}")
    return 1 if any(f.ok is False for f in findings) else 0


def add_command(sub: Any, load: Callable[[str | None], Config]) -> None:
    """Add ``check-dns`` to the ``rtserver`` parser (argparse's subparsers type is private)."""
    command = sub.add_parser(
        "check-dns",
        help="check the tracking host's address and the SPF, DKIM and DMARC records",
        description="Look up what mail and tracking need in DNS and say what is missing.",
    )
    command.add_argument("--config", metavar="PATH")
    command.add_argument("--nameserver", metavar="HOST[:PORT]", help="ask this server")
    command.set_defaults(func=lambda args: _run(args, load))
