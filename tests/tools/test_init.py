"""`rtserver init`: a config for a new shop from the shipped example, with the answers filled
in, the snippet tag with its new key, and never an overwritten file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rtserver.cli import main
from rtserver.config import EXAMPLE_CONFIG, load_config
from rtserver.tools import init

FLAGS = ["--shop-url", "https://shop.example/", "--public-url", "https://rt.shop.example",
         "--sender", "Shop <hello@shop.example>"]  # fmt: skip


def test_init_with_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "site"
    assert main(["init", str(folder), *FLAGS, "--relay", "smtp.example:587"]) == 0
    out = capsys.readouterr().out
    config = load_config(folder / "config.toml", env={})
    assert config.server.public_url == "https://rt.shop.example"
    assert config.server.allowed_origins == ("https://shop.example",)
    assert config.mail.brand.url == "https://shop.example"
    assert config.mail.from_ == "Shop <hello@shop.example>"
    assert (config.mail.transport, config.mail.smtp.host, config.mail.smtp.port) == (
        "smtp", "smtp.example", 587,
    )  # fmt: skip
    assert config.keys.public.startswith("pk_") and config.keys.public != "pk_dev"
    assert f'src="https://rt.shop.example/rt.js" data-key="{config.keys.public}"' in out
    assert len(config.workflow) == len(load_config(EXAMPLE_CONFIG, env={}).workflow)
    assert main(["init", str(folder), *FLAGS]) == 2
    assert "never overwrites" in capsys.readouterr().err


def test_init_asks_on_a_terminal_and_names_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["https://shop.example", "https://rt.shop.example", "hi@shop.example", ""])
    args = argparse.Namespace(
        dir=str(tmp_path), shop_url=None, public_url=None, sender=None, relay=None,
        origin=["https://www.shop.example", "https://shop.example"],
    )  # fmt: skip
    assert init.run(args, lambda prompt: next(answers)) == 0
    config = load_config(tmp_path / "config.toml", env={})
    assert config.mail.transport == "sink"
    assert config.server.allowed_origins == ("https://www.shop.example", "https://shop.example")
    assert "dashboard's inbox" in capsys.readouterr().out
    assert main(["init", str(tmp_path / "other")]) == 2  # no terminal here, no flags
    assert "--shop-url is needed" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "other"), *FLAGS, "--relay", "nonsense"]) == 2
    assert "--relay must be host:port" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "bad"), *FLAGS[:4], "--sender", "not an address"]) == 2
    assert not (tmp_path / "bad" / "config.toml").exists()


def test_a_key_without_its_line_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\[server\] has no line for nope"):
        init._set("[server]\nport = 1\n", "[server]", "nope", 2)
    with pytest.raises(ValueError, match=r"no \[mail\] section"):
        init._set("[server]\nport = 1\n", "[mail]", "from", "x")
