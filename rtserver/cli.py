"""The ``rtserver`` command: ``serve``, ``check-config``, ``simulate``, ``poll``, ``keys``,
``settings``; the mail commands (``render``, ``send-test-mail``, ``forget``) are in ``mailcli.py``.

Logging is configured here, once; library modules only get their loggers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.resources
import logging
import math
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from rtserver import __version__
from rtserver.config import EXAMPLE_CONFIG, Config, iter_settings, load_config, resolve_config_path
from rtserver.errors import ConfigError, StoreError
from rtserver.mail import redact
from rtserver.model import Product

__all__ = ["main"]

logger = logging.getLogger("rtserver")

GC_THRESHOLDS = (50_000, 50, 10)
"""Allocations before a young collection, and young collections per older one."""
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactAddresses(logging.Filter):
    """No email address reaches a log line (so after ``forget``, the logs hold none either):
    a person id may be ``u:<an email>`` when a shop uses addresses as user ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class QuietWebSockets(logging.Filter):
    """uvicorn logs every WebSocket handshake at INFO, with the URL's query string (where a
    careless client may have put a key). Those records lose the query and go down to DEBUG;
    rtserver logs one summary a minute instead (opened, closed, refused with reasons)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith('%s - "WebSocket %s"')):
            return True
        args = list(record.args) if isinstance(record.args, tuple) else []
        if len(args) > 1 and isinstance(args[1], str):
            args[1] = args[1].split("?", 1)[0]
            record.args = tuple(args)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("rtserver").isEnabledFor(logging.DEBUG)


def _configure_logging(level: str) -> None:
    # No force=True: when the process already logs somewhere (an embedding program, pytest),
    # keep its handlers and only set the level.
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level.upper())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactAddresses) for f in handler.filters):
            handler.addFilter(RedactAddresses())
    # aiosmtpd (the dev sink) logs every SMTP line, addresses included, at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # httpx logs every request's URL, query string included (an SNS confirmation's token).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietWebSockets) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(QuietWebSockets())


def _load(path: str | None) -> Config:
    return load_config(resolve_config_path(path))


def _announce(config: Config, host: str, port: int) -> None:
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    base = f"http://{netloc}"
    source = config.source.resolve() if config.source else "embedded defaults (no config.toml)"
    lines = [
        f"rtserver {__version__} ready on {base}",
        f"  config        {source}",
        f"  store         {Path(config.store.path).resolve()}",
        f"  browser ws    ws://{netloc}/v1/ws?key={config.keys.public}",
        f"  segment api   {base}/v1/batch  (write key: `rtserver keys`)",
        f"  dashboard     {base}/dashboard",
        f"  demo shop     {base}/demo  (events, runs and mails show up on the dashboard)",
        f"  snippet       {base}/rt.js",
        f"  health        {base}/healthz  (ready: /readyz, metrics: /metrics)",
        f"  mail          {config.mail.transport}"
        + (
            "  (kept in the store: the dashboard's inbox)"
            if config.mail.transport == "sink"
            else ""
        ),
    ]
    for line in lines:
        logger.info("%s", line)


def _ready(config: Config, host: str, port: int, tour: Sequence[str] = ()) -> None:
    # What start-up built (the timer wheel, templates, caches) lives as long as the server:
    # moved out of the collector's sight, it is never scanned again.
    gc.collect()
    gc.freeze()
    _announce(config, host, port)
    for line in tour:
        logger.info("%s", line)


def _version() -> str:
    """``rtserver 0.2.0``, and the git revision a built binary was made from."""
    revision = importlib.resources.files("rtserver").joinpath("REVISION")
    if revision.is_file():
        return f"rtserver {__version__} (revision {revision.read_text().strip()})"
    return f"rtserver {__version__}"


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    return _serve(config, args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rtserver.tools import demo, demo_config

    if not args.speed > 0:
        print("rtserver: --speed must be positive", file=sys.stderr)
        return 2
    path = resolve_config_path(args.config)
    config = demo_config(
        path or EXAMPLE_CONFIG, args.speed, args.store, host=args.host, port=args.port
    )
    tour = [
        f"demo: config {path or 'the shipped example (no config.toml here)'}",
        f"demo: workflows run {args.speed:g}x faster (a 30 min wait takes "
        f"{max(1, math.ceil(1800 / args.speed))} s); store {config.store.path}",
        "  1. open the demo shop (above) and sign up with any address",
        "  2. open the dashboard, find the confirmation mail in the inbox, open its link, confirm",
        "  3. back in the shop, add a product to the cart and leave it: the reminder arrives",
    ]
    return _serve(config, args, tour, stock=demo.catalog(config))


def _serve(
    config: Config,
    args: argparse.Namespace,
    tour: Sequence[str] = (),
    stock: Sequence[Product] = (),
) -> int:
    from rtserver.app import build_server, create_app

    _configure_logging(args.log_level or config.server.log_level)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    app = create_app(config, stock=stock)
    server = build_server(app, config, lambda h, p: _ready(config, h, p, tour), **overrides)
    # Fewer, cheaper collections: a server holding many timers and remembered persons spent
    # about 10% of its time in the collector, in pauses of up to 88 ms (bench/RESULTS.md).
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        server.run()  # uvicorn's event loop choice (uvloop when installed)
    except SystemExit as exc:
        # uvicorn exits with 3 when the lifespan startup or the bind fails (and logged why).
        return exc.code if isinstance(exc.code, int) else 1
    if server.failure is not None:
        print(f"rtserver stopped: {server.failure}", file=sys.stderr)
        return 1
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from rtserver.runtime import load_rules

    path = resolve_config_path(args.path)
    config = load_config(path)
    rules, warnings = load_rules(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    polls = len(config.poll)
    sources = f", {polls} polling sources" if polls else ""
    print(f"{path or 'embedded defaults'}: ok ({len(rules.items)} workflows{sources})")
    if polls:
        print(
            "polling sources: items and a cursor read `response` (the page's JSON); id, event, "
            "user_id, anonymous_id, timestamp, properties (and the cursor with since) read "
            "`item` and `response`"
        )
    return 0


def _cmd_poll(args: argparse.Namespace) -> int:
    from rtserver.runtime import poll_once

    if not args.once:
        print("rtserver: poll runs one cycle: say --once (the server polls on its own)",
              file=sys.stderr)  # fmt: skip
        return 2
    config = _load(args.config)
    cycle = asyncio.run(poll_once(config, args.name, time.time))
    for mapped in cycle.mapped:
        line = {
            "messageId": mapped.message_id,
            "event": mapped.event,
            "userId": mapped.user_id,
            "anonymousId": mapped.anonymous_id,
            "properties": mapped.properties,
            "stored": "new" if mapped.stored else "duplicate",
        }
        print(orjson.dumps(line).decode())
    for reason in cycle.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    new = sum(m.stored for m in cycle.mapped)
    end = "read to the end" if cycle.caught_up else "more to read (next cycle)"
    print(
        f"{args.name}: {cycle.requests} requests, {cycle.pages} pages, {len(cycle.mapped)} "
        f"events ({new} new, {len(cycle.mapped) - new} already stored), "
        f"{len(cycle.skipped)} items skipped; {end}",
        file=sys.stderr,
    )
    if cycle.error is not None:
        print(f"rtserver: {args.name}: {cycle.error}", file=sys.stderr)
        return 1
    return 0


def _print_report(source: str, report: Any) -> None:
    for bad in report.bad:
        print(f"{source}: {bad}", file=sys.stderr)
    print(report.summary())
    if report.changes:
        print(
            f"{report.changes} back in stock or cheaper: the running server tells the "
            "people they concern within a minute"
        )


async def _import_url(store: Any, config: Config, args: argparse.Namespace, form: str) -> int:
    """A feed URL, read as a configured feed is (through the outbound guard)."""
    from rtserver.catalog import Feeds
    from rtserver.config import FeedConfig

    feed = FeedConfig(url=args.file, format=form, allow_private=args.allow_private)  # type: ignore[arg-type]
    feeds = Feeds(store, [feed], currency=config.mail.brand.currency, clock=time.time)
    report = await feeds.read(feed)
    if report is None:
        state = await store.catalog.feed_state(feed.url)
        print(f"rtserver: {args.file}: {state.outcome if state else 'not read'}", file=sys.stderr)
        return 2 if state is None or state.outcome.startswith("failed") else 0
    _print_report(args.file, report)
    return 0


def _cmd_catalog_import(args: argparse.Namespace) -> int:
    from rtserver.catalog import detect_format, import_products, parse
    from rtserver.store import Store

    config = _load(args.config)
    is_url = args.file.startswith(("http://", "https://"))
    form = args.format or detect_format(urllib.parse.urlsplit(args.file).path)
    if form is None and is_url:
        form = "google"  # what a feed URL without a telling name most often serves
    if form is None:
        print(f"rtserver: cannot tell the format of {args.file!r}: use --format", file=sys.stderr)
        return 2

    async def run() -> int:
        store = await Store.open(config.store.path)
        try:
            if is_url:
                return await _import_url(store, config, args, form)
            with open(args.file, "rb") as stream:
                rows = parse(
                    stream,
                    form,
                    currency=config.mail.brand.currency,
                    base_url=config.mail.brand.url,
                )
                report = await import_products(store, rows, "import", time.time)
        finally:
            await store.close()
        _print_report(args.file, report)
        return 0

    try:
        return asyncio.run(run())
    except OSError as exc:
        print(f"rtserver: cannot read {args.file!r}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rtserver.errors import InvalidEvent
    from rtserver.tools import read_events, simulate

    config = _load(args.config)
    try:
        with open(args.events, encoding="utf-8") as lines:
            events = read_events(lines, config)
    except OSError as exc:
        print(f"rtserver: cannot read {args.events!r}: {exc.strerror}", file=sys.stderr)
        return 2
    except InvalidEvent as exc:
        print(f"rtserver: {args.events}: {exc}", file=sys.stderr)
        return 2
    decisions = asyncio.run(simulate.simulate(config, events, tail_s=args.days * 86400.0))
    for decision in decisions:
        if args.json:
            print(orjson.dumps(decision.as_json()).decode())
        else:
            print(decision.line())
    return 0


async def _keys(config: Config) -> None:
    from rtserver.runtime import resolve_keys
    from rtserver.store import Store

    try:
        store = await Store.open(config.store.path)
    except StoreError as exc:
        raise StoreError(f"cannot open the store {config.store.path!r}: {exc}") from exc
    try:
        keys = await resolve_keys(config, store, time.time())
    finally:
        await store.close()
    print(f"public key       {keys.public}")
    print(f"write key        {keys.write}")
    print(f"identity secret  {keys.identity_secret}")
    print(f"webhook secret   {keys.webhook_secrets[0]}")
    print(f"hooks secret     {keys.hooks_secret}")


def _cmd_keys(args: argparse.Namespace) -> int:
    asyncio.run(_keys(_load(args.config)))
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    from rtserver.store import backup

    config = _load(args.config)
    try:
        size = backup(config.store.path, args.path)
    except StoreError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    print(f"backed up {config.store.path} to {args.path} ({size:,} bytes, integrity ok, mode 0600)")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from rtserver.store import pending_migrations

    config = _load(args.config)
    try:
        pending = pending_migrations(config.store.path)
    except StoreError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 2
    if not pending:
        print(f"{config.store.path}: up to date, no migration to apply")
        return 0
    print(f"{config.store.path}: {len(pending)} migration(s) to apply at the next start:")
    for name in pending:
        print(f"  {name}")
    if Path(config.store.path).exists():
        print(f"the store is backed up first, to {config.store.path}.before-{pending[0]}")
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    print("| key | default | env | meaning |")
    print("|---|---|---|---|")
    for s in iter_settings():
        default = repr(s.default)
        if s.default is None:
            default = "(generated)" if s.key.startswith("keys.") else "(unset)"
        cells = [f"`{s.key}`", f"`{default}`", s.env or "", s.help]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render ``--help`` in the docs)."""
    parser = argparse.ArgumentParser(
        prog="rtserver",
        description="Self-hosted real-time behavioural email trigger server.",
        epilog="Config: --config, else $RTSERVER_CONFIG, else ./config.toml, else the defaults.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="PATH", help="config file (default: see below)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_cmd_serve)

    catalog = sub.add_parser("catalog", help="the product catalog mail shows")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    imports = catalog_sub.add_parser(
        "import",
        help="import products from a feed file (Google Merchant XML or TSV, CSV, JSON Lines, "
        "a Shopify products.json page)",
        description="Import products into the catalog. Good rows are kept, and every bad row "
        "is reported with its line, field and value; it never stops the import.",
    )
    imports.add_argument("file", help="the feed: a file or an http(s) URL (gzipped or not)")
    imports.add_argument("--allow-private", action="store_true",
                         help="allow a feed URL on a private or loopback address")  # fmt: skip
    imports.add_argument("--format", choices=["google", "google-tsv", "csv", "jsonl", "shopify"],
                         help="the feed's format (default: from the file name)")  # fmt: skip
    imports.add_argument("--config", metavar="PATH", help="config file")
    imports.set_defaults(func=_cmd_catalog_import)

    demo = sub.add_parser(
        "demo",
        help="run a demo: the shop page, the dashboard, mail in its inbox, short waits",
        description="Serve the config (as `serve` finds it) for a two-minute tour: its own "
        "store, mail kept by the embedded sink and shown in the dashboard, no frequency cap or "
        "quiet hours, and every workflow wait --speed times shorter.",
    )
    demo.add_argument("--config", metavar="PATH", help="config file (default: see below)")
    demo.add_argument("--host", help="override server.host")
    demo.add_argument("--port", type=int, help="override server.port")
    demo.add_argument(
        "--speed", type=float, default=60.0, help="how much faster waits run (default: 60)"
    )
    demo.add_argument(
        "--store", default="rtserver-demo.db", help="the demo's store (default: rtserver-demo.db)"
    )
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=_cmd_demo)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path", nargs="?", help="config file (default: see below)")
    check.set_defaults(func=_cmd_check_config)

    simulate = sub.add_parser(
        "simulate",
        help="run a file of events (JSON lines) through the workflows on a virtual clock",
        description="Print every decision the workflows make for the events, in virtual time.",
    )
    simulate.add_argument("events", help="JSON lines: Segment messages with ISO timestamps")
    simulate.add_argument("--config", metavar="PATH")
    simulate.add_argument("--json", action="store_true", help="one JSON object per decision")
    simulate.add_argument(
        "--days", type=float, default=30.0, help="keep firing timers this long after the last event"
    )
    simulate.set_defaults(func=_cmd_simulate)

    poll = sub.add_parser(
        "poll",
        help="run one cycle of a polling source ([[poll]]) and print the events it mapped",
        description="Read the source NAME now, from its saved cursor, as the server would: "
        "each event is stored (through the workflows) and printed as a JSON line with "
        "whether it was new; the cursor moves on after each stored page.",
    )
    poll.add_argument("name", help="the [[poll]] table's name")
    poll.add_argument("--once", action="store_true", help="one cycle, then exit (required)")
    poll.add_argument("--config", metavar="PATH")
    poll.set_defaults(func=_cmd_poll)

    keys = sub.add_parser("keys", help="print the public key, write key and the secrets")
    keys.add_argument("--config", metavar="PATH")
    keys.set_defaults(func=_cmd_keys)

    backup_ = sub.add_parser(
        "backup",
        help="copy the store, consistently, while the server runs (0600, integrity checked)",
        description="Write an online, consistent copy of the store to PATH (a new file). "
        "Restore by stopping the server and putting the copy in place of store.path.",
    )
    backup_.add_argument("path", help="the new file (never overwritten)")
    backup_.add_argument("--config", metavar="PATH")
    backup_.set_defaults(func=_cmd_backup)

    migrate = sub.add_parser("migrate", help="show the store migrations this version applies")
    migrate.add_argument(
        "--check",
        action="store_true",
        required=True,
        help="list what the next start would apply (and change nothing)",
    )
    migrate.add_argument("--config", metavar="PATH")
    migrate.set_defaults(func=_cmd_migrate)

    settings = sub.add_parser("settings", help="print the config reference as a Markdown table")
    settings.set_defaults(func=_cmd_settings)

    from rtserver.tools import add_commands, init, loadgen, records

    add_commands(sub, _load)
    init.add_command(sub)
    loadgen.add_command(sub)
    records.add_command(sub, _load)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtserver`` console script; returns the exit status.

    0 on success, 1 when the store cannot be used, 2 for usage and config errors, 3 when the
    server cannot start (uvicorn's status), 130 on Ctrl+C.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"rtserver: config error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"rtserver: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
