"""The ``rtserver`` command: called in-process through ``main(argv)``, and ``serve`` also as a
real child process (the ready banner, /healthz, SIGTERM → exit 0)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from rtserver import __version__
from rtserver.cli import QuietWebSockets, RedactAddresses, _announce, _configure_logging, main
from rtserver.config.schema import EXAMPLE_CONFIG, iter_settings
from rtserver.tools.demo import demo_config
from tests.support.events import event
from tests.support.server import ORIGIN, TIMEOUT_UNIT, make_config, send_batch
from tests.support.server_process import READY, ServerProcess, write_config

SECRET_ENV = ("RTSERVER_CONFIG", "RTSERVER_WRITE_KEY", "RTSERVER_IDENTITY_SECRET")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read the environment: start each test without rtserver variables."""
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``serve`` configures logging for the process; undo it after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    filters = {handler: list(handler.filters) for handler in handlers}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler, kept in filters.items():
        handler.filters[:] = kept
    root.setLevel(level)


def config_file(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    base: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0, "allowed_origins": [ORIGIN]},
        "store": {"path": str(tmp_path / "rtserver.db")},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_config(tmp_path / "config.toml", base)


def not_a_database(tmp_path: Path) -> Path:
    """A store path SQLite opens but cannot use.

    (Not a path in a missing directory: aiosqlite's failed connect leaves its worker thread
    calling back into the loop after ``asyncio.run`` closed it, a race reported to store.py.)
    """
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for\n" * 200)
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rtserver {__version__}"


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["serve", "--port", "abc"], ["serve", "--log-level", "loud"]],
)
def test_usage_errors_exit_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse errors exit 2 and print the usage."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rtserver") and "error:" in err


def test_check_config_accepts_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid file: exit 0 and a one-line summary."""
    path = config_file(tmp_path)
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok (0 workflows)"


def test_check_config_compiles_workflows_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Workflows are compiled; undocumented condition names are warnings, bad ones errors."""
    path = tmp_path / "wf.toml"
    flow = '[[workflow]]\nname = "w"\ntrigger = "X"\nwhere = "person.orderz > 1"\n'
    path.write_text(flow + '[[workflow.step]]\nsend = "test"\n')
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{path}: ok (1 workflows)"
    assert "warning: workflow 'w' where: 'person.orderz'" in captured.err
    path.write_text(flow + '[[workflow.step]]\nwait = "-5m"\n')
    assert main(["check-config", str(path)]) == 2
    assert "workflow 'w' step 1:" in capsys.readouterr().err


def test_shipped_config_checks_clean(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped config.toml compiles its workflows with no warning."""
    shipped = Path(__file__).resolve().parent.parent / "config.toml"
    assert main(["check-config", str(shipped)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("ok (9 workflows)") and captured.err == ""


def test_check_config_without_a_file_checks_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No path, no $RTSERVER_CONFIG, no ./config.toml: the embedded defaults."""
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.strip() == "embedded defaults: ok (0 workflows)"


def test_check_config_names_the_key_and_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value: exit 2, and stderr names the dotted key and the value."""
    path = config_file(tmp_path, server={"port": "abc"})
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "rtserver: config error: server.port: expected int, got 'abc'"


def test_check_config_reports_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config path that does not exist is a config error too."""
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def _keys(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, str]:
    assert main(["keys", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line[:17].strip(): line[17:] for line in lines}


def test_keys_are_generated_once_and_kept_in_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys` prints the public key and generated secrets, the same ones on every run."""
    path = config_file(tmp_path, keys={"public": "pk_shop"})
    first = _keys(capsys, path)
    assert set(first) == {
        "public key",
        "write key",
        "identity secret",
        "webhook secret",
        "hooks secret",
    }
    assert first["public key"] == "pk_shop"
    assert first["write key"].startswith("wk_") and len(first["write key"]) > 40
    assert len(first["identity secret"]) >= 32
    assert first["webhook secret"].startswith("whsec_")
    assert first["hooks secret"].startswith("whsec_")
    assert first["hooks secret"] != first["webhook secret"]
    assert _keys(capsys, path) == first


def test_keys_prefer_the_configured_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret from the environment wins over the one kept in the store."""
    path = config_file(tmp_path)
    generated = _keys(capsys, path)
    monkeypatch.setenv("RTSERVER_WRITE_KEY", "wk_from_env_0123456789abcdefghij")
    keys = _keys(capsys, path)
    assert keys["write key"] == "wk_from_env_0123456789abcdefghij"
    assert keys["identity secret"] == generated["identity secret"]


def test_keys_reports_a_store_it_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unusable store file: exit 1 naming the path, no traceback."""
    path = config_file(tmp_path, store={"path": str(not_a_database(tmp_path))})
    assert main(["keys", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rtserver: cannot open the store") and "notes.txt" in err


def test_settings_prints_every_setting_as_a_markdown_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`settings`: a header, a rule, then one row per setting."""
    assert main(["settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["| key | default | env | meaning |", "|---|---|---|---|"]
    settings = list(iter_settings())
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| `{s.key}`" for s in settings]
    assert all(line.count("|") - line.count("\\|") == 5 for line in lines)  # four cells
    rows = {line.split(" | ")[0]: line for line in lines[2:]}
    assert "| `keys.write` | `(generated)` | RTSERVER_WRITE_KEY |" in rows["| `keys.write`"]
    assert "`(unset)`" in rows["| `mail.smtp.username`"]


def test_announce_brackets_ipv6_hosts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The banner's URLs are valid for an IPv6 listener too."""
    caplog.set_level(logging.INFO, logger="rtserver")
    _announce(make_config(tmp_path), "::1", 8123)
    text = caplog.text
    assert "ready on http://[::1]:8123" in text
    assert "ws://[::1]:8123/v1/ws?key=pk_dev" in text
    assert "embedded defaults (no config.toml)" in text


def test_serve_rejects_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve` with an invalid config exits 2 before starting anything."""
    path = config_file(tmp_path, ingest={"max_queue": 0})
    assert main(["serve", "--config", str(path)]) == 2
    assert "ingest.max_queue: expected a positive number, got 0" in capsys.readouterr().err


def test_serve_exits_3_when_the_server_cannot_start(
    tmp_path: Path, restore_logging: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot be opened fails the lifespan: uvicorn's startup failure status 3."""
    path = config_file(tmp_path, store={"path": str(not_a_database(tmp_path))})
    assert main(["serve", "--config", str(path)]) == 3
    assert "Application startup failed" in caplog.text


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, 0), (signal.SIGINT, 130)],
    ids=["sigterm-exits-0", "ctrl-c-exits-130"],
)
def test_serve_in_process_until_a_signal(
    signum: signal.Signals, status: int, tmp_path: Path, restore_logging: None
) -> None:
    """`serve` in this process: banner, /healthz, then a signal stops it cleanly. SIGTERM is
    the service manager's stop (exit 0); Ctrl+C keeps Python's meaning (exit 130)."""
    path = config_file(tmp_path, server={"host": "0.0.0.0", "port": 8000})
    go = threading.Event()  # the banner was logged, or main() returned
    finished = threading.Event()
    found: dict[str, Any] = {}

    class Banner(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = READY.search(record.getMessage())
            if match:
                found["url"] = match.group(1)
                go.set()

    def visit() -> None:
        go.wait(4 * TIMEOUT_UNIT)
        if finished.is_set():
            return  # main() already returned: nothing to stop
        try:
            if "url" in found:
                with httpx.Client(base_url=found["url"], timeout=TIMEOUT_UNIT) as client:
                    found["healthz"] = client.get("/healthz")
        finally:
            # Once the banner is out, uvicorn's handlers are in place (in the main thread).
            # Without it, SIGTERM, which this test catches, so a failure cannot stop pytest.
            os.kill(os.getpid(), signum if "url" in found else signal.SIGTERM)

    reraised: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: reraised.append(signum))
    # Ctrl+C as in a fresh process: Python's own handler, whatever an earlier test's event
    # loop runner left installed (asyncio.Runner turns it into KeyboardInterrupt only then).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    banner = Banner()
    logging.getLogger("rtserver").addHandler(banner)
    visitor = threading.Thread(target=visit, name="visitor")
    visitor.start()
    try:
        argv = ["serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0"]
        code = main([*argv, "--log-level", "info"])
    finally:
        finished.set()
        go.set()
        visitor.join()
        logging.getLogger("rtserver").removeHandler(banner)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert code == status
    assert found["url"].startswith("http://127.0.0.1:") and not found["url"].endswith(":8000")
    assert found["healthz"].status_code == 200
    assert found["healthz"].json()["status"] == "ok"
    assert reraised == []  # a handled SIGTERM is not raised again after the stop


async def test_demo_subprocess_serves_a_fast_demo_on_its_own_store(tmp_path: Path) -> None:
    """`rtserver demo --speed 120`: the banner says how fast waits run and the tour; the demo
    store is its own file; the demo shop answers."""
    path = config_file(tmp_path, server={"port": 8000})
    server = ServerProcess(path, "--port", "0", "--speed", "120", "--store", "tour.db")
    server.argv[server.argv.index("serve")] = "demo"
    try:
        url = await server.start()
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_UNIT) as client:
            response = await client.get("/demo")
        code = await server.terminate(4 * TIMEOUT_UNIT)
    finally:
        await server.kill()
    assert response.status_code == 200 and code == 0, server.tail()
    log = "\n".join(server.log)
    assert "demo: workflows run 120x faster (a 30 min wait takes 15 s); store tour.db" in log
    assert "3. back in the shop, add a product to the cart" in log
    assert (tmp_path / "tour.db").exists() and not (tmp_path / "rtserver.db").exists()


async def test_demo_without_a_config_file_serves_the_shipped_example(tmp_path: Path) -> None:
    """`rtserver demo` where no config.toml is found serves the packaged example config, with
    every shipped workflow (not the bare defaults, which have none)."""
    server = ServerProcess(tmp_path / "absent.toml", "--port", "0", "--store", "tour.db")
    at = server.argv.index("--config")
    del server.argv[at : at + 2]
    server.argv[server.argv.index("serve")] = "demo"
    try:
        await server.start()
        code = await server.terminate(4 * TIMEOUT_UNIT)
    finally:
        await server.kill()
    assert code == 0, server.tail()
    log = "\n".join(server.log)
    assert "demo: config the shipped example (no config.toml here)" in log
    assert "invalid" not in log and (tmp_path / "tour.db").exists()


def test_the_packaged_example_config_is_the_shipped_config_toml() -> None:
    """The example config in the package is the repository's config.toml, byte for byte, and
    demo_config reads its workflows."""
    shipped = Path(__file__).resolve().parent.parent / "config.toml"
    assert EXAMPLE_CONFIG.read_bytes() == shipped.read_bytes()
    names = [w["name"] for w in demo_config(EXAMPLE_CONFIG, 60.0, "d.db").workflow]
    assert "cart_abandonment" in names and len(names) >= 7


def test_demo_refuses_a_speed_that_is_not_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--speed 0 is a usage error (2) with the reason."""
    assert main(["demo", "--config", str(config_file(tmp_path)), "--speed", "0"]) == 2
    assert "--speed must be positive" in capsys.readouterr().err


async def test_serve_subprocess_banner_healthz_and_sigterm(tmp_path: Path) -> None:
    """`python -m rtserver serve --port 0`: ready banner with URLs, /healthz, SIGTERM → 0."""
    path = config_file(tmp_path, server={"port": 8000})
    server = ServerProcess(path, "--port", "0")
    try:
        url = await server.start()
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_UNIT) as client:
            response = await client.get("/healthz")
        code = await server.terminate(4 * TIMEOUT_UNIT)
    finally:
        await server.kill()
    assert response.status_code == 200 and response.json()["version"] == __version__
    assert code == 0, server.tail()
    assert not url.endswith(":8000")  # --port overrides server.port
    log = "\n".join(server.log)
    port = url.rsplit(":", 1)[1]
    assert f"config        {path.resolve()}" in log
    assert f"store         {(tmp_path / 'rtserver.db').resolve()}" in log
    assert f"browser ws    ws://127.0.0.1:{port}/v1/ws?key=pk_dev" in log
    assert f"health        {url}/healthz" in log


async def test_websocket_urls_and_keys_never_reach_the_log(tmp_path: Path) -> None:
    """WebSocket handshakes write no line per connection at INFO, and a key a careless client
    put in the query string never reaches the log, accepted or refused."""
    server = ServerProcess(config_file(tmp_path), "--port", "0")
    try:
        url = await server.start()
        base = url.replace("http://", "ws://") + "/v1/ws"
        async with connect(
            f"{base}?key=pk_dev&writeKey=wk_LEAKED_accepted", additional_headers={"Origin": ORIGIN}
        ) as ws:
            assert "ack" in await send_batch(ws, [event()])
        for query in ("?key=wk_LEAKED_refused", "?key=pk_dev&token=LEAKED_no_origin"):
            with pytest.raises(InvalidStatus):
                async with connect(base + query, open_timeout=TIMEOUT_UNIT):
                    pass  # pragma: no cover
        code = await server.terminate(4 * TIMEOUT_UNIT)
    finally:
        await server.kill()
    assert code == 0, server.tail()
    assert not [line for line in server.log if "LEAKED" in line]
    assert not [line for line in server.log if "WebSocket /v1/ws" in line]


def test_log_lines_carry_no_email_address(restore_logging: None) -> None:
    """Every handler rtserver logs through redacts addresses (a person id may be an email),
    once however often logging is configured; other lines are left alone."""
    _configure_logging("info")
    _configure_logging("info")
    handlers = logging.getLogger().handlers
    assert handlers and all(
        sum(isinstance(f, RedactAddresses) for f in h.filters) == 1 for h in handlers
    )
    record = logging.LogRecord(
        "rtserver.mail.links", logging.INFO, __file__, 1, "unsubscribed %s (mail %s)",
        ("u:ann@example.com", "r1-2"), None,
    )  # fmt: skip
    assert RedactAddresses().filter(record) and record.getMessage() == (
        "unsubscribed u:<address> (mail r1-2)"
    )
    plain = logging.LogRecord("rtserver", logging.INFO, __file__, 1, "ready %d", (1,), None)
    assert RedactAddresses().filter(plain) and (plain.msg, plain.args) == ("ready %d", (1,))


def test_websocket_handshake_records_lose_the_query_and_go_to_debug(
    restore_logging: None,
) -> None:
    """uvicorn's handshake record is dropped at INFO and kept, query stripped, at DEBUG."""
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" %d',
        ("127.0.0.1:1", "/v1/ws?key=wk_secret", 403), None,
    )  # fmt: skip
    _configure_logging("info")
    assert QuietWebSockets().filter(record) is False and record.levelno == logging.DEBUG
    _configure_logging("debug")
    assert QuietWebSockets().filter(record) is True
    assert record.getMessage() == '127.0.0.1:1 - "WebSocket /v1/ws" 403'
    other = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started", (), None)
    assert QuietWebSockets().filter(other) is True
