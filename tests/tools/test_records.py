"""`rtserver check-dns` against a real (local) DNS server: every record found, a wrong DKIM
key, missing records, and a host where no resolver answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from rtserver.cli import main
from rtserver.tools.records import dkim_public_key
from tests.support.dns_server import dns_server


def key_file(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


def config_file(tmp_path: Path, key: Path | None) -> Path:
    dkim = f'\n[mail.dkim]\ndomain = "shop.example"\nselector = "rt"\nkey_path = "{key}"\n'
    path = tmp_path / "config.toml"
    path.write_text(
        '[server]\npublic_url = "https://rt.shop.example"\n'
        f'[mail]\nfrom = "Shop <hello@shop.example>"\n{dkim if key else ""}'
    )
    return path


def check(capsys: pytest.CaptureFixture[str], config: Path, server: str) -> tuple[int, str]:
    code = main(["check-dns", "--config", str(config), "--nameserver", server])
    return code, capsys.readouterr().out


async def test_every_record_found_then_a_wrong_key_and_missing_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = key_file(tmp_path / "dkim.pem")
    config = config_file(tmp_path, key)
    public = dkim_public_key(str(key))
    records = {
        ("rt.shop.example", "A"): ["192.0.2.10"],
        ("shop.example", "TXT"): ['"v=spf1 include:mail.example -all"', '"other=1"'],
        # A long key is split into strings of 255 characters, as DNS requires.
        ("rt._domainkey.shop.example", "TXT"): [
            " ".join(f'"{part}"' for part in _chunks(f"v=DKIM1; k=rsa; p={public}", 255))
        ],
        ("_dmarc.shop.example", "TXT"): ['"v=DMARC1; p=none"'],
    }
    async with dns_server(records) as server:
        code, out = await asyncio.to_thread(check, capsys, config, server)
    assert code == 0, out
    assert out.count("ok  ") == 4 and "the public half of mail.dkim.key_path" in out
    other = config_file(tmp_path, key_file(tmp_path / "other.pem"))
    async with dns_server({("rt.shop.example", "AAAA"): ["2001:db8::1"], **{
        k: v for k, v in records.items() if k[1] != "A"
    }}) as server:  # fmt: skip
        code, out = await asyncio.to_thread(check, capsys, other, server)
    assert code == 1 and "a different key than mail.dkim.key_path" in out
    unsigned = config_file(tmp_path, None)
    async with dns_server({("shop.example", "A"): ["192.0.2.1"]}) as server:
        code, out = await asyncio.to_thread(check, capsys, unsigned, server)
    assert code == 1
    for line in ("FAIL  tracking host", "FAIL  SPF", "skip  DKIM", "FAIL  DMARC"):
        assert line in out


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_no_resolver_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path, None)
    assert main(["check-dns", "--config", str(config), "--nameserver", "127.0.0.1:9"]) == 2
    assert "cannot reach a DNS resolver from here" in capsys.readouterr().err
