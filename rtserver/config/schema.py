"""Configuration: ``config.toml`` read once into frozen, typed sections.

Every setting is declared once, with its default and its help, as a dataclass field (as datasette's
``SETTINGS`` table does); ``iter_settings()`` walks them for the README reference and its test.
Precedence is environment > file > default, and the environment is consulted only for
``RTSERVER_CONFIG`` (the path) and for secrets, one ``RTSERVER_*`` variable each.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rtserver.config.durations import Duration
from rtserver.config.settings import (
    Secret,
    Setting,
    build,
    ec_public_key,
    host_name,
    http_url,
    iter_settings as _iter_settings,
    long_password,
    merge,
    network,
    origin,
    port_number,
    positive,
    public_key,
    setting,
    standard_webhooks_secret,
    strong_secret,
    url_prefix,
)
from rtserver.errors import ConfigError

__all__ = [
    "CatalogConfig",
    "Config",
    "DashboardConfig",
    "EngineConfig",
    "FeedConfig",
    "HooksConfig",
    "IngestConfig",
    "KeysConfig",
    "MailConfig",
    "PostmarkConfig",
    "ServerConfig",
    "SendTimeConfig",
    "SesConfig",
    "SmtpConfig",
    "StoreConfig",
    "EXAMPLE_CONFIG",
    "iter_settings",
    "load_config",
    "resolve_config_path",
]


def durations(*texts: str) -> tuple[Duration, ...]:
    """Default waits, as the config would give them."""
    return tuple(Duration(text) for text in texts)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where rtserver listens and who may talk to it."""

    host: str = setting("127.0.0.1", "Interface to bind; keep 127.0.0.1 behind a proxy.")
    port: int = setting(8000, "TCP port to listen on (0 picks a free one).", check=port_number)
    public_url: str = setting(
        "http://localhost:8000", "Base URL of links in mail (pixel, clicks).", check=http_url
    )
    allowed_origins: tuple[str, ...] = setting(
        ("http://localhost:8000", "http://127.0.0.1:8000"),
        "Browser origins allowed to use the public key (WebSocket, beacon, CORS).",
        check=origin,
    )
    trusted_proxies: tuple[str, ...] = setting(
        (), "Proxy addresses whose X-Forwarded-For is believed (for per-IP limits)."
    )
    shutdown_timeout_s: float = setting(
        10.0, "Upper bound on a graceful shutdown (final flush and acks).", check=positive
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "Log level: debug, info, warning or error."
    )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The SQLite store."""

    path: str = setting("rtserver.db", "SQLite database file (WAL mode; back up this file).")
    retention_days: int = setting(90, "Days raw events are kept; profiles stay.", check=positive)
    min_free_mb: int = setting(
        512,
        "Below this much free disk space browser ingest is refused (1013 / 503) and an alert "
        "raised, so the disk never fills.",
        check=positive,
    )
    max_group_events: int = setting(
        5000, "Most events written in one group commit.", check=positive
    )


@dataclass(frozen=True, slots=True)
class KeysConfig:
    """Keys and secrets. Absent secrets are generated on first start and kept in the store."""

    public: str = setting(
        "pk_dev", "Public key of the browser snippet (not secret).", check=public_key
    )
    write: Secret | None = setting(
        None,
        "Server-side Segment write key (secret).",
        check=strong_secret,
        env="RTSERVER_WRITE_KEY",
    )
    identity_secret: Secret | None = setting(
        None,
        "HMAC key of userHash / emailHash (secret).",
        check=strong_secret,
        env="RTSERVER_IDENTITY_SECRET",
    )
    webhook_secret: Secret | None = setting(
        None,
        "Standard Webhooks secret of POST /v1/webhooks/<source> ('whsec_...').",
        check=standard_webhooks_secret,
        env="RTSERVER_WEBHOOK_SECRET",
    )
    webhook_secret_previous: Secret | None = setting(
        None,
        "The webhook secret being rotated out, still accepted.",
        check=standard_webhooks_secret,
        env="RTSERVER_WEBHOOK_SECRET_PREVIOUS",
    )
    mailgun_signing_key: Secret | None = setting(
        None,
        "Mailgun's webhook signing key (POST /v1/webhooks/mailgun; unset: that source is off).",
        env="RTSERVER_MAILGUN_SIGNING_KEY",
    )
    sendgrid_public_key: str = setting(
        "",
        "SendGrid's event webhook verification key, base64 DER (unset: /v1/webhooks/sendgrid off).",
        check=lambda value: ec_public_key(value) if value else None,
    )
    shopify_secret: Secret | None = setting(
        None,
        "Shopify's webhook signing secret (POST /v1/webhooks/shopify; unset: that source is off).",
        env="RTSERVER_SHOPIFY_SECRET",
    )
    woocommerce_secret: Secret | None = setting(
        None,
        "WooCommerce's webhook secret (POST /v1/webhooks/woocommerce; unset: that source is off).",
        env="RTSERVER_WOOCOMMERCE_SECRET",
    )
    postmark_password: Secret | None = setting(
        None,
        "Password of Postmark's webhook basic auth (POST /v1/webhooks/postmark; unset: off).",
        env="RTSERVER_POSTMARK_PASSWORD",
    )
    hooks_secret: Secret | None = setting(
        None,
        "Standard Webhooks secret that signs the webhooks workflows send ('whsec_...').",
        check=standard_webhooks_secret,
        env="RTSERVER_HOOKS_SECRET",
    )


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Limits of the WebSocket and HTTP ingest, per connection and per client address."""

    max_frame_bytes: int = setting(
        65536, "Largest WebSocket frame (bigger: close 1009).", check=positive
    )
    max_batch_events: int = setting(100, "Most events in one batch.", check=positive)
    max_event_bytes: int = setting(32768, "Largest single event (Segment: 32 KB).", check=positive)
    max_request_bytes: int = setting(
        512000, "Largest HTTP request body, after gunzip (Segment: 500 KB).", check=positive
    )
    max_json_depth: int = setting(
        32, "Deepest nesting of objects and arrays in an event.", check=positive
    )
    max_keys: int = setting(256, "Most keys in one JSON object.", check=positive)
    max_string_bytes: int = setting(8192, "Longest string value.", check=positive)
    events_per_s: float = setting(
        50.0, "Sustained events per second per WebSocket (more: close 1008).", check=positive
    )
    burst_events: int = setting(
        500, "Events a WebSocket may send at once above the rate.", check=positive
    )
    max_connections_per_ip: int = setting(
        1000,
        "Concurrent WebSockets per client address (high: thousands of mobile shoppers share one "
        "carrier-grade NAT address; the address budgets below limit what an address does).",
        check=positive,
    )
    address_events_per_s: float = setting(
        1000.0,
        "Browser events per second per client address, WebSocket and HTTP together (more: nack "
        "or 429 with a retry hint).",
        check=positive,
    )
    address_events_burst: int = setting(
        5000, "Browser events one client address may send at once above its rate.", check=positive
    )
    address_opens_per_s: float = setting(
        50.0,
        "New WebSockets per second per client address (more: accepted, then closed 1013).",
        check=positive,
    )
    address_opens_burst: int = setting(
        500, "New WebSockets one client address may open at once above its rate.", check=positive
    )
    budget_exempt: tuple[str, ...] = setting(
        (),
        "Client networks the address budgets do not apply to (benchmarks, tests: "
        "['127.0.0.0/8']); never loopback by default: behind a local proxy every client is it.",
        check=network,
    )
    max_queue: int = setting(
        1024, "Batches waiting for the writer before ingest pushes back.", check=positive
    )
    queue_timeout_s: float = setting(
        5.0, "How long a batch may wait for room in the queue (then close 1013).", check=positive
    )
    max_in_flight: int = setting(64, "Unacknowledged batches per WebSocket.", check=positive)
    ping_interval_s: float = setting(20.0, "WebSocket keepalive ping interval.", check=positive)
    ping_timeout_s: float = setting(
        20.0, "Close a WebSocket whose pong is this late.", check=positive
    )
    idle_timeout_s: float = setting(
        300.0, "Close a WebSocket that sends nothing for this long.", check=positive
    )
    permessage_deflate: bool = setting(False, "Offer permessage-deflate (costs ~29 KiB a socket).")
    retry_after_ms: int = setting(1000, "Suggested client wait after a nack.", check=positive)
    max_webhook_bytes: int = setting(
        1048576, "Largest signed webhook body (bigger: 413).", check=positive
    )
    webhook_tolerance_s: int = setting(
        300,
        "How far a signed webhook's timestamp may be from now (further: 401, a replay guard).",
        check=positive,
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """The SMTP relay used when ``mail.transport = "smtp"``."""

    host: str = setting("127.0.0.1", "SMTP relay host.")
    port: int = setting(25, "SMTP relay port.", check=port_number)
    username: str | None = setting(None, "SMTP login user (optional).")
    password: Secret | None = setting(None, "SMTP password (secret).", env="RTSERVER_SMTP_PASSWORD")
    starttls: bool = setting(False, "Upgrade the connection with STARTTLS.")
    timeout_s: float = setting(30.0, "Per-command SMTP timeout.", check=positive)


@dataclass(frozen=True, slots=True)
class BrandConfig:
    """What every mail shows of the shop (the base layout of the shipped templates)."""

    name: str = setting("Demo Shop", "Shop name in mail headers, footers and subjects.")
    url: str = setting("http://localhost:8000", "The shop's home page (logo link).", check=http_url)
    logo_url: str = setting("", "Logo image URL ('': the shop name as text).")
    color: str = setting("#4f46e5", "Accent colour of buttons and links (CSS colour).")
    address: str = setting(
        "Demo Shop, 1 Example Street, 12345 Example City",
        "Postal address in every marketing mail's footer (CAN-SPAM).",
    )
    currency: str = setting("EUR", "Currency of prices that carry none (ISO 4217).")


@dataclass(frozen=True, slots=True)
class DkimConfig:
    """DKIM signing of outgoing mail (off while ``key_path`` is empty)."""

    domain: str = setting("", "Signing domain (d=).")
    selector: str = setting("rtserver", "DNS selector (s=).")
    key_path: str = setting("", "PEM private key file ('': no signing).")


@dataclass(frozen=True, slots=True)
class MailConfig:
    """Outgoing mail."""

    from_: str = setting("Demo Shop <shop@example.com>", "From address of every mail.")
    transport: Literal["sink", "smtp"] = setting(
        "sink", "'sink' keeps mail in the store (demo), 'smtp' sends through mail.smtp."
    )
    test_recipients: tuple[str, ...] = setting((), "When set, every mail goes to these instead.")
    frequency_cap: str = setting(
        "16h", "Least time between two marketing mails to one person ('off': no cap)."
    )
    quiet_hours: str = setting(
        "", "Local hours when marketing mail waits, like '21:00-08:00' ('': none)."
    )
    time_zone: str = setting(
        "UTC", "The shop's time zone, for quiet hours of people whose zone is unknown."
    )
    templates: str = setting(
        "", "Folder whose email/<name>.html|.txt override or add to the shipped templates."
    )
    rate_per_s: float = setting(10.0, "Most mails handed to SMTP per second.", check=positive)
    daily_limit: int = setting(
        10000, "Most mails sent per UTC day (then they wait).", check=positive
    )
    retry: tuple[Duration, ...] = setting(
        durations("1m", "5m", "15m", "1h", "4h"),
        "Waits before each retry after a 4xx or a lost connection (the last repeats).",
    )
    max_age: Duration = setting(
        Duration("24h"), "A marketing mail not delivered this long after its decision fails."
    )
    confirm_wait: Duration = setting(
        Duration("7d"),
        "How long a send to an address awaiting its double opt-in waits for the confirmation.",
    )
    ambiguous: Literal["resend", "drop"] = setting(
        "resend",
        "A mail whose delivery is in doubt (connection lost after DATA): 'resend' (at least "
        "once) or 'drop' (at most once).",
    )
    lease_s: float = setting(
        300.0, "A mail left 'sending' this long (crash) counts as ambiguous.", check=positive
    )
    scanner_window_s: float = setting(
        10.0, "Clicks this soon after delivery are flagged as link scanners.", check=positive
    )
    confirmations_per_ip: int = setting(
        5, "Double opt-in mails one client address may cause per day.", check=positive
    )
    link_hosts: tuple[str, ...] = setting(
        (),
        "Hosts that links from data (catalog, events) may point at; () means the host of "
        "mail.brand.url. server.public_url's host is always allowed; template links are too.",
        check=host_name,
    )
    image_hosts: tuple[str, ...] = setting(
        (),
        "https hosts product images may come from; () means the image hosts of the "
        "configured feeds and the link hosts. server.public_url's host is always allowed.",
        check=host_name,
    )
    brand: BrandConfig = field(default_factory=BrandConfig, metadata={"help": "Branding."})
    dkim: DkimConfig = field(default_factory=DkimConfig, metadata={"help": "DKIM signing."})
    smtp: SmtpConfig = field(default_factory=SmtpConfig, metadata={"help": "SMTP relay."})


@dataclass(frozen=True, slots=True)
class SesConfig:
    """Amazon SES bounce and complaint notifications, through SNS (POST /v1/webhooks/ses)."""

    topic_arns: tuple[str, ...] = setting(
        (),
        "SNS topics whose messages are taken (required: a valid signature only proves that "
        "SNS sent it); their subscriptions are confirmed automatically.",
    )


@dataclass(frozen=True, slots=True)
class PostmarkConfig:
    """Postmark bounce and spam-complaint webhooks (POST /v1/webhooks/postmark)."""

    username: str = setting("", "User of the webhook's basic auth (password: keys).")
    allow_ips: tuple[str, ...] = setting(
        (), "Networks Postmark's webhooks may come from (empty: any).", check=network
    )


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """One product feed the catalog re-reads on a schedule (a ``[[catalog.feed]]`` table)."""

    url: str = setting("", "The feed's URL (http or https).", check=http_url)
    format: Literal["", "google", "google-tsv", "csv", "jsonl", "shopify"] = setting(
        "", "google, google-tsv, csv, jsonl or shopify ('': from the URL's file name)."
    )
    every: Duration = setting(Duration("1h"), "How often the feed is read again.")
    allow_private: bool = setting(
        False, "Allow a feed on a private, loopback or link-local address."
    )


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    """The product catalog: what mail shows of a product comes only from here."""

    feed: tuple[FeedConfig, ...] = setting(
        (),
        "Product feeds ([[catalog.feed]] tables with url, format, every and allow_private), "
        "re-read on their schedule with ETag and If-Modified-Since.",
    )
    back_in_stock_window: Duration = setting(
        Duration("30d"),
        "Back in Stock: people who asked, or viewed or carted the product this recently.",
    )
    back_in_stock_viewers: bool = setting(
        True, "Back in Stock also tells people who only viewed or carted it (not only askers)."
    )
    price_drop_window: Duration = setting(
        Duration("30d"), "Price Dropped: people who viewed or carted the product this recently."
    )
    price_drop_min_percent: float = setting(
        5.0, "Price Dropped: the least drop, in percent, that counts.", check=positive
    )


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Outbound webhooks (a workflow's ``webhook`` step): where they may go, and retries."""

    allow: tuple[str, ...] = setting(
        (), "URL prefixes webhook steps may call (an admin allow-list).", check=url_prefix
    )
    allow_private: bool = setting(
        False, "Allow destinations on private, loopback or link-local addresses."
    )
    timeout_s: float = setting(15.0, "Timeout of one delivery attempt.", check=positive)
    retry: tuple[Duration, ...] = setting(
        durations("5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"),
        "Waits before each retry (±20 % jitter); after the last, the delivery fails.",
    )
    lease_s: float = setting(
        60.0, "A delivery left in flight this long (a crash) is tried again.", check=positive
    )


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """The live dashboard (``/dashboard``), its login, its alerts and revenue attribution."""

    password: Secret | None = setting(
        None,
        "Dashboard login password (secret; unset: generated once, shown once in the log).",
        check=long_password,
        env="RTSERVER_DASHBOARD_PASSWORD",
    )
    session: Duration = setting(Duration("12h"), "How long a dashboard login lasts.")
    login_attempts: int = setting(
        5, "Failed logins one client address may make per 15 minutes.", check=positive
    )
    updates_per_s: float = setting(
        4.0, "Batched live updates sent to each viewer per second (at most).", check=positive
    )
    max_viewers: int = setting(200, "Most dashboard streams open at once.", check=positive)
    viewer_queue: int = setting(
        64, "Updates a slow viewer may fall behind before its stream is dropped.", check=positive
    )
    replay: int = setting(
        240, "Recent updates kept for viewers resuming with Last-Event-ID.", check=positive
    )
    click_window: Duration = setting(
        Duration("5d"), "Revenue: an order this soon after a click counts for the mail."
    )
    open_window: Duration = setting(
        Duration("1d"), "Revenue: an order this soon after an open counts for the mail."
    )
    alert_webhook: str = setting(
        "",
        "URL that alerts are POSTed to as JSON when raised and resolved ('': none).",
        check=lambda value: http_url(value) if value else None,
    )
    alert_window: Duration = setting(
        Duration("15m"), "The recent span the alert rates are measured over."
    )
    alert_trigger_failures: int = setting(
        1, "Alert: failed group commits (events not decided) within the window.", check=positive
    )
    alert_smtp_failure_rate: float = setting(
        0.2,
        "Alert: share of SMTP attempts that failed or were deferred.",
        check=lambda value: None if 0 < value <= 1 else "expected a share between 0 and 1",
    )
    alert_smtp_min_attempts: int = setting(
        10, "SMTP attempts within the window before the failure rate counts.", check=positive
    )
    alert_latency_ms: float = setting(
        1000.0, "Alert: p99 of event -> decision committed over this.", check=positive
    )
    alert_queue_depth: int = setting(
        512, "Alert: batches waiting for the writer (ingest queue) over this.", check=positive
    )
    alert_outbox_backlog: int = setting(
        1000, "Alert: mails queued or waiting to retry over this.", check=positive
    )


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The workflow engine."""

    memory_mb: int = setting(
        128,
        "Memory for the facts of recently decided shoppers (profile, open runs, recent events), "
        "estimated; beyond it the least recent are read from the store again.",
        check=positive,
    )


def _share(value: float) -> str | None:
    return None if 0 <= value <= 1 else "expected a share between 0 and 1"


@dataclass(frozen=True, slots=True)
class SendTimeConfig:
    """Sends with ``send_time = "optimal"``: each waits for the person's best hour."""

    half_life: Duration = setting(
        Duration("60d"), "Engagement (opens, clicks, visits) counts half as much after this."
    )
    prior_strength: float = setting(
        5.0,
        "Engagements the shop's hours weigh as in a person's estimate (a person with none "
        "gets the shop's best hours).",
        check=positive,
    )
    exploration: float = setting(
        0.1,
        "Share of optimal sends timed by a random draw from the estimate (Thompson sampling) "
        "rather than its best hour, so underrated hours get tried; it shrinks as the person's "
        "history outweighs the prior (times prior_strength / (prior_strength + history)).",
        check=_share,
    )
    control: float = setting(
        0.1,
        "Share of optimal sends that go at once instead, to measure the lift against.",
        check=_share,
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    send_time: SendTimeConfig = field(default_factory=SendTimeConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    ses: SesConfig = field(default_factory=SesConfig)
    postmark: PostmarkConfig = field(default_factory=PostmarkConfig)
    poll: tuple[Mapping[str, Any], ...] = field(
        default=(), metadata={"help": "Polling sources ([[poll]] tables)."}
    )
    workflow: tuple[Mapping[str, Any], ...] = field(
        default=(), metadata={"help": "Workflows ([[workflow]] tables)."}
    )
    source: Path | None = field(default=None, metadata={"internal": True})


def iter_settings() -> Iterator[Setting]:
    """Every leaf setting of :class:`Config` with its dotted key, default and help."""
    return _iter_settings(Config)


def _secrets_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The secrets set in the environment, as tables to merge over the file."""
    tables: dict[str, Any] = {}
    for item in iter_settings():
        if item.env and env.get(item.env):
            *path, leaf = item.key.split(".")
            table = tables
            for part in path:
                table = table.setdefault(part, {})
            table[leaf] = Secret(env[item.env])
    return tables


def _named_tables(key: str, noun: str, value: Any) -> tuple[Mapping[str, Any], ...]:
    """``[[key]]`` tables, each with its own non-empty ``name``. Only their shape is checked
    here: workflows are compiled by the engine, polling sources by their package."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected [[{key}]] tables, got {value!r}")
    names: set[str] = set()
    for i, table in enumerate(value):
        if not isinstance(table, Mapping):
            raise ConfigError(f"{key}[{i}]: expected a table, got {table!r}")
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}[{i}].name: expected a non-empty str, got {name!r}")
        if name in names:
            raise ConfigError(f"{key}[{i}].name: duplicate {noun} name {name!r}")
        names.add(name)
    return tuple(value)


EXAMPLE_CONFIG = Path(__file__).with_name("example.toml")
"""The shipped example config (the repository's ``config.toml``, with every shipped workflow),
packaged so that ``rtserver demo`` has workflows wherever it runs."""


def resolve_config_path(
    path: str | Path | None, env: Mapping[str, str] = os.environ
) -> Path | None:
    """The config file: the argument, else ``RTSERVER_CONFIG``, else ./config.toml if present."""
    if path is not None:
        return Path(path)
    if env.get("RTSERVER_CONFIG"):
        return Path(env["RTSERVER_CONFIG"])
    default = Path("config.toml")
    return default if default.exists() else None


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read and validate the configuration; with no path, the embedded defaults.

    Raises:
        ConfigError: naming the dotted key and the bad value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {str(path)!r}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8: {exc.reason}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    data = merge(data, overrides or {})
    workflows = _named_tables("workflow", "workflow", data.pop("workflow", []))
    polls = _named_tables("poll", "source", data.pop("poll", []))
    config: Config = build(Config, merge(data, _secrets_from_env(env)))
    ingest = config.ingest
    if ingest.burst_events < ingest.max_batch_events:
        raise ConfigError(
            f"ingest.burst_events: must be at least ingest.max_batch_events "
            f"({ingest.max_batch_events}) or a full batch is always refused, "
            f"got {ingest.burst_events!r}"
        )
    for i, feed in enumerate(config.catalog.feed):
        if not feed.url:
            raise ConfigError(f"catalog.feed[{i}].url: missing (every feed needs its URL)")
    return dataclasses.replace(
        config, workflow=workflows, poll=polls, source=Path(path) if path is not None else None
    )
