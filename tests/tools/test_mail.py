"""``rtserver render``, ``send-test-mail`` and ``forget`` on real stores and a real SMTP server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rtserver.cli import main
from rtserver.config.schema import Config
from rtserver.model.products import Product
from rtserver.store.database import Store
from rtserver.tools.mail import forget, preview, send_test_mail
from tests.support.events import event
from tests.support.server import make_config
from tests.support.smtp_server import Script, SMTPServer
from tests.support.store import parse, store_group

NOW = 1_800_000_000.0


def write_config(tmp_path: Path, config: Config, mail: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\npath = "{config.store.path}"\n{mail}')
    return path


async def shopper(config: Config) -> None:
    store = await Store.open(config.store.path)
    try:
        traits = {"email": "ann@example.com", "first_name": "Ann"}
        lamp = {"product_id": "lamp", "name": "Brass Lamp", "price": 49.5, "cart_id": "c1"}
        await store_group(
            store,
            [
                parse(event("identify", userId="ann", traits=traits)),
                parse(event("track", event="Product Added", userId="ann", properties=lamp)),
            ],
            at=NOW,
        )
        await store.catalog.upsert([Product("lamp", "Brass Lamp", price=49.5)], "import", NOW)
    finally:
        await store.close()


async def test_preview_renders_a_real_persons_cart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await shopper(config)
    message = await preview(config, "cart_reminder", "ann", NOW + 60)
    assert message["To"] == "ann@example.com"
    assert "Brass Lamp" in message.get_body(("plain",)).get_content()


def test_render_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Text, HTML or the whole message; unknown people and templates are clear errors."""
    import asyncio

    config = make_config(tmp_path)
    asyncio.run(shopper(config))
    path = str(write_config(tmp_path, config))
    assert main(["render", "welcome", "--user", "ann", "--config", path]) == 0
    assert "Subject:" in capsys.readouterr().out
    assert main(["render", "welcome", "--user", "u:ann", "--part", "html", "--config", path]) == 0
    assert "<html" in capsys.readouterr().out.lower()
    assert main(["render", "welcome", "--user", "nobody", "--config", path]) == 2
    assert "no profile 'u:nobody'" in capsys.readouterr().err
    assert main(["render", "nope", "--user", "ann", "--config", path]) == 2
    assert "unknown template 'nope'" in capsys.readouterr().err


def test_render_eml(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    import asyncio

    config = make_config(tmp_path)
    asyncio.run(shopper(config))
    path = str(write_config(tmp_path, config))
    assert main(["render", "welcome", "--user", "ann", "--part", "eml", "--config", path]) == 0
    assert b"Message-ID:" in capsysbinary.readouterr().out


async def test_send_test_mail_through_smtp_and_into_the_sink(tmp_path: Path) -> None:
    """The test mail takes the configured transport: a real SMTP server, or the dev sink."""
    async with SMTPServer([Script(rcpt="550 5.1.1 no such user")]) as smtpd:
        smtp = {"transport": "smtp", "smtp": {"host": smtpd.host, "port": smtpd.port}}
        config = make_config(tmp_path, mail=smtp)
        assert (await send_test_mail(config, "ops@example.com", NOW)).startswith("suppress")
        assert (await send_test_mail(config, "ops@example.com", NOW)).startswith("sent (250")
        (received,) = await smtpd.wait_for(1)
        assert received.rcpt_tos == ["ops@example.com"]
    sink = make_config(tmp_path)
    assert (await send_test_mail(sink, "ops@example.com", NOW)).startswith("sent")
    store = await Store.open(sink.store.path)
    try:
        (kept,) = await store.mail.sunk()
    finally:
        await store.close()
    assert kept["recipients"] == ["ops@example.com"]


def test_send_test_mail_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    path = str(write_config(tmp_path, config))
    assert main(["send-test-mail", "ops@example.com", "--config", path]) == 0
    assert "test mail to ops@example.com via sink: sent" in capsys.readouterr().out
    assert main(["send-test-mail", "not an address", "--config", path]) == 2
    assert "invalid address" in capsys.readouterr().err
    refusing = write_config(tmp_path, config, '[mail]\ntransport = "smtp"\n[mail.smtp]\nport = 9\n')
    assert main(["send-test-mail", "ops@example.com", "--config", str(refusing)]) == 1


async def test_forget(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await shopper(config)
    assert await forget(config, "ANN@example.com", NOW) == 1
    assert await forget(config, "ann@example.com", NOW) == 0


def test_forget_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    path = str(write_config(tmp_path, config))
    assert main(["forget", "ann@example.com", "--config", path]) == 0
    assert "erased 0 profile(s) of ann@example.com" in capsys.readouterr().out


def test_suppress_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manual suppression stops every mail to the address; a bad address is refused."""
    import asyncio

    config = make_config(tmp_path)
    path = str(write_config(tmp_path, config))
    assert main(["suppress", "Ann@Example.com", "--config", path]) == 0
    assert "suppressed Ann@Example.com (manual)" in capsys.readouterr().out
    assert main(["suppress", "nope", "--config", path]) == 2

    async def reason() -> str | None:
        store = await Store.open(config.store.path)
        try:
            return await store.mail.suppressed("ann@example.com")
        finally:
            await store.close()

    assert asyncio.run(reason()) == "manual"


def test_webhooks_command_lists_and_enables_endpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rtserver webhooks` shows deliveries by state and the endpoints a 410 disabled;
    --enable turns one back on (exit 1 when it was not disabled)."""
    import asyncio

    from rtserver.model.actions import CallWebhook
    from rtserver.model.facts import Person
    from rtserver.store.deliveries import delivery_row
    from rtserver.store.schema import INSERT_DELIVERY

    config = make_config(tmp_path)
    url = "https://crm.example/hooks"

    async def gone() -> None:
        store = await Store.open(config.store.path)
        try:
            action = CallWebhook("r1", 1, "u:ann", url, {})
            row = delivery_row(action, "crm", Person("u:ann"), NOW)
            await store._db.executemany(INSERT_DELIVERY, [row])
            await store.deliveries.claim(NOW, 10, 60.0)
            await store.deliveries.finish("r1-1", "failed", NOW, status=410, disable="410 Gone")
        finally:
            await store.close()

    asyncio.run(gone())
    path = str(write_config(tmp_path, config))
    assert main(["webhooks", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "deliveries: failed 1" in out and f"disabled: {url}  (410 Gone;" in out
    assert main(["webhooks", "--enable", url, "--config", path]) == 0
    out = capsys.readouterr().out
    assert f"{url}: enabled again" in out and "disabled:" not in out
    assert main(["webhooks", "--enable", url, "--config", path]) == 1
    assert "was not disabled" in capsys.readouterr().out


def test_recommend_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rtserver recommend` prints what a mail would recommend, from the catalog."""
    config = make_config(tmp_path)

    async def stock() -> None:
        await shopper(config)
        store = await Store.open(config.store.path)
        try:
            products = [Product(f"p{i}", f"Pick {i}", price=9.0, url="http://localhost:8000/p",
                                categories=("Lamps",)) for i in range(3)]  # fmt: skip
            await store.catalog.upsert(products, "import", NOW)
            view = {"product_id": "p0"}
            await store_group(
                store,
                [parse(event("track", event="Product Viewed", userId="ann", properties=view))],
                at=NOW,
            )
        finally:
            await store.close()

    asyncio.run(stock())
    path = str(write_config(tmp_path, config))
    assert main(["recommend", "--user", "ann", "-n", "2", "--config", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1. p") and "[Lamps]" in out and "http://localhost:8000/p" in out
    (tmp_path / "empty").mkdir()
    empty = str(write_config(tmp_path / "empty", make_config(tmp_path / "empty")))
    assert main(["recommend", "--user", "nobody", "--config", empty]) == 0
    assert "no recommendations for 'nobody'" in capsys.readouterr().out
