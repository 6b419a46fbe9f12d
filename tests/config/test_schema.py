"""Configuration: defaults, TOML files, validation errors, secrets and the settings table."""

from __future__ import annotations

import base64
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import pytest

from rtserver.config.schema import (
    Config,
    IngestConfig,
    KeysConfig,
    MailConfig,
    ServerConfig,
    SmtpConfig,
    StoreConfig,
    iter_settings,
    load_config,
    resolve_config_path,
)
from rtserver.config.settings import Secret
from rtserver.errors import ConfigError, RtServerError

STRONG = "wk_Q7v9Lx2Rb8Tn4Mc6Pz1Hs5Dy3"
OTHER_STRONG = "id_M4c8Rt2Vx6Lp9Qz3Hn7Bs1Kw5"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def fails(message: str, **sections: Any) -> None:
    """``load_config`` with ``sections`` as overrides raises exactly ``message``."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, overrides=sections)
    assert str(caught.value) == message


def test_defaults_load_without_a_file() -> None:
    """With no path, the embedded defaults load and equal the dataclass defaults."""
    config = load_config(None, env={})
    assert config == Config()
    assert config.source is None
    assert config.server.port == 8000
    assert config.server.allowed_origins == ("http://localhost:8000", "http://127.0.0.1:8000")
    assert config.keys.public == "pk_dev"
    assert config.keys.write is None and config.keys.identity_secret is None
    assert config.mail.transport == "sink"
    assert config.mail.smtp.port == 25
    assert config.workflow == ()


def test_toml_file_is_read(tmp_path: Path) -> None:
    """Every section of a real TOML file lands in its typed field."""
    path = write(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 9000
public_url = "https://shop.example/rt"
allowed_origins = ["https://shop.example", "*"]
log_level = "debug"

[store]
path = "data/rt.db"
retention_days = 30

[keys]
public = "pk_live_1"

[ingest]
max_batch_events = 10
events_per_s = 5

[mail]
from = "Shop <hi@shop.example>"
transport = "smtp"
test_recipients = ["qa@shop.example"]

  [mail.smtp]
  host = "smtp.example"
  port = 587
  username = "rt"
  starttls = true

[[workflow]]
name = "welcome"
trigger = "Signed Up"

[[workflow]]
name = "cart_abandonment"
trigger = "Product Added"
""",
    )
    config = load_config(path, env={})
    assert config.source == path
    assert config.server == ServerConfig(
        host="0.0.0.0",
        port=9000,
        public_url="https://shop.example/rt",
        allowed_origins=("https://shop.example", "*"),
        log_level="debug",
    )
    assert config.store == StoreConfig(path="data/rt.db", retention_days=30)
    assert config.keys == KeysConfig(public="pk_live_1")
    assert config.ingest == IngestConfig(max_batch_events=10, events_per_s=5.0)
    assert config.mail == MailConfig(
        from_="Shop <hi@shop.example>",
        transport="smtp",
        test_recipients=("qa@shop.example",),
        smtp=SmtpConfig(host="smtp.example", port=587, username="rt", starttls=True),
    )
    assert [w["name"] for w in config.workflow] == ["welcome", "cart_abandonment"]
    assert config.workflow[1]["trigger"] == "Product Added"


def test_string_path_is_accepted(tmp_path: Path) -> None:
    """A path given as a string works, and ``source`` is a Path."""
    path = write(tmp_path, "[server]\nport = 1234\n")
    config = load_config(str(path), env={})
    assert config.server.port == 1234
    assert config.source == path


def test_unknown_top_level_key_fails() -> None:
    """An unknown section is named, with the valid ones listed."""
    fails(
        "bogus: unknown key (expected one of server, store, keys, ingest, mail, dashboard, "
        "engine, send_time, hooks, catalog, ses, postmark, poll, workflow)",
        bogus={},
    )


def test_engine_memory_is_a_positive_number_of_mib() -> None:
    """engine.memory_mb defaults to what a 1 GB host can spare; 0 or less is refused."""
    assert load_config(None, env={}).engine.memory_mb == 128
    assert load_config(None, env={}, overrides={"engine": {"memory_mb": 64}}).engine.memory_mb == 64
    with pytest.raises(ConfigError, match="engine.memory_mb"):
        load_config(None, env={}, overrides={"engine": {"memory_mb": 0}})


def test_unknown_server_key_fails_with_dotted_key() -> None:
    """An unknown key in [server] is reported as ``server.bogus``."""
    with pytest.raises(ConfigError, match=r"^server\.bogus: unknown key \(expected one of host, "):
        load_config(None, env={}, overrides={"server": {"bogus": 1}})


def test_unknown_nested_key_fails_with_dotted_key(tmp_path: Path) -> None:
    """An unknown key in [mail.smtp] of a file is reported as ``mail.smtp.bogus``."""
    path = write(tmp_path, "[mail.smtp]\nhost = 'x'\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"^mail\.smtp\.bogus: unknown key"):
        load_config(path, env={})


def test_python_field_name_is_not_a_toml_key() -> None:
    """``from`` is the TOML key; the Python name ``from_`` is unknown."""
    with pytest.raises(ConfigError, match=r"^mail\.from_: unknown key"):
        load_config(None, env={}, overrides={"mail": {"from_": "x"}})
    config = load_config(None, env={}, overrides={"mail": {"from": "A <a@b.example>"}})
    assert config.mail.from_ == "A <a@b.example>"


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    """A string where an int belongs gives ``server.port: expected int, got 'abc'``."""
    path = write(tmp_path, "[server]\nport = 'abc'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == "server.port: expected int, got 'abc'"


def test_wrong_nested_type_names_dotted_key() -> None:
    """The same error for a nested table: ``mail.smtp.port: expected int, got 'abc'``."""
    fails("mail.smtp.port: expected int, got 'abc'", mail={"smtp": {"port": "abc"}})


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"server": {"host": 1}}, "server.host: expected str, got 1"),
        ({"server": {"port": 80.0}}, "server.port: expected int, got 80.0"),
        (
            {"server": {"allowed_origins": "https://a.example"}},
            "server.allowed_origins: expected a list, got 'https://a.example'",
        ),
        (
            {"server": {"allowed_origins": ["https://a.example", 3]}},
            "server.allowed_origins[1]: expected str, got 3",
        ),
        ({"server": 1}, "server: expected a table, got 1"),
        ({"mail": {"smtp": "localhost"}}, "mail.smtp: expected a table, got 'localhost'"),
        ({"mail": {"smtp": {"starttls": "yes"}}}, "mail.smtp.starttls: expected bool, got 'yes'"),
        ({"ingest": {"events_per_s": "fast"}}, "ingest.events_per_s: expected float, got 'fast'"),
    ],
)
def test_wrong_types_fail(sections: dict[str, Any], message: str) -> None:
    """Each mistyped value is named by its dotted key (list items by index) and shown."""
    fails(message, **sections)


def test_bools_are_not_ints() -> None:
    """``true`` is refused where an int or a float belongs, though bool subclasses int."""
    fails("server.port: expected int, got True", server={"port": True})
    fails("ingest.events_per_s: expected float, got True", ingest={"events_per_s": True})


def test_float_fields_accept_ints(tmp_path: Path) -> None:
    """``shutdown_timeout_s = 5`` becomes the float 5.0."""
    path = write(tmp_path, "[server]\nshutdown_timeout_s = 5\n")
    value = load_config(path, env={}).server.shutdown_timeout_s
    assert value == 5.0 and isinstance(value, float)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"server": {"port": 70000}},
            "server.port: expected a port between 0 and 65535, got 70000",
        ),
        ({"server": {"port": -1}}, "server.port: expected a port between 0 and 65535, got -1"),
        (
            {"mail": {"smtp": {"port": 65536}}},
            "mail.smtp.port: expected a port between 0 and 65535, got 65536",
        ),
        (
            {"server": {"allowed_origins": ["https://a.example", "https://shop.example/cart"]}},
            "server.allowed_origins[1]: expected an origin like 'https://shop.example' (no path), "
            "got 'https://shop.example/cart'",
        ),
        (
            {"server": {"allowed_origins": ["shop.example"]}},
            "server.allowed_origins[0]: expected an origin like 'https://shop.example' (no path), "
            "got 'shop.example'",
        ),
        (
            {"server": {"public_url": "ftp://shop.example"}},
            "server.public_url: expected an http(s) URL, got 'ftp://shop.example'",
        ),
        (
            {"keys": {"public": "pk dev!"}},
            "keys.public: expected 4 to 64 letters, digits, '_' or '-', got 'pk dev!'",
        ),
        (
            {"keys": {"public": "pk"}},
            "keys.public: expected 4 to 64 letters, digits, '_' or '-', got 'pk'",
        ),
        (
            {"store": {"retention_days": 0}},
            "store.retention_days: expected a positive number, got 0",
        ),
        (
            {"server": {"shutdown_timeout_s": -1.5}},
            "server.shutdown_timeout_s: expected a positive number, got -1.5",
        ),
        (
            {"server": {"shutdown_timeout_s": math.inf}},
            "server.shutdown_timeout_s: expected a positive number, got inf",
        ),
        (
            {"ingest": {"events_per_s": math.nan}},
            "ingest.events_per_s: expected a positive number, got nan",
        ),
        (
            {"ingest": {"burst_events": 50}},
            "ingest.burst_events: must be at least ingest.max_batch_events (100) "
            "or a full batch is always refused, got 50",
        ),
    ],
)
def test_bad_values_fail(sections: dict[str, Any], message: str) -> None:
    """Values of the right type but out of range are refused with the reason and the value."""
    fails(message, **sections)


def test_good_edge_values_pass() -> None:
    """Port 0 and 65535, the wildcard origin and a URL with a path are fine."""
    config = load_config(
        None,
        env={},
        overrides={
            "server": {"port": 0, "allowed_origins": ["*"], "public_url": "https://s.example/a"},
            "mail": {"smtp": {"port": 65535}},
        },
    )
    assert config.server.port == 0 and config.mail.smtp.port == 65535


def test_infinite_float_from_toml_is_refused(tmp_path: Path) -> None:
    """TOML's ``inf`` is not a usable timeout."""
    path = write(tmp_path, "[ingest]\nidle_timeout_s = inf\n")
    with pytest.raises(ConfigError, match=r"^ingest\.idle_timeout_s: expected a positive number"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"mail": {"transport": "ses"}},
            "mail.transport: expected one of 'sink', 'smtp', got 'ses'",
        ),
        (
            {"server": {"log_level": "INFO"}},
            "server.log_level: expected one of 'debug', 'info', 'warning', 'error', got 'INFO'",
        ),
        (
            {"server": {"log_level": 10}},
            "server.log_level: expected one of 'debug', 'info', 'warning', 'error', got 10",
        ),
    ],
)
def test_literal_choices_are_enforced(sections: dict[str, Any], message: str) -> None:
    """Settings with a fixed set of choices list them when given anything else."""
    fails(message, **sections)


def test_invalid_toml_fails(tmp_path: Path) -> None:
    """A TOML syntax error names the file and where it is."""
    path = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"config\.toml: invalid TOML: .*line 1") as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(str(path))


def test_missing_file_fails(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError, not a FileNotFoundError."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == f"config file not found: {str(path)!r}"
    assert caught.value.__cause__ is None


def test_unreadable_path_fails(tmp_path: Path) -> None:
    """A directory given as the config file is a ConfigError naming the OS reason."""
    with pytest.raises(ConfigError, match=r"^cannot read config file .*: Is a directory$"):
        load_config(tmp_path, env={})


def test_non_utf8_file_fails(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError."""
    path = tmp_path / "config.toml"
    path.write_bytes(b"[server]\nhost = '\xff'\n")
    with pytest.raises(ConfigError, match=r"config\.toml: not UTF-8: invalid start byte$"):
        load_config(path, env={})


def test_config_error_is_a_value_error() -> None:
    """ConfigError sits under RtServerError and ValueError."""
    assert issubclass(ConfigError, RtServerError) and issubclass(ConfigError, ValueError)


def test_secrets_come_from_the_environment() -> None:
    """Each secret has its RTSERVER_* variable."""
    env = {
        "RTSERVER_WRITE_KEY": STRONG,
        "RTSERVER_IDENTITY_SECRET": OTHER_STRONG,
        "RTSERVER_SMTP_PASSWORD": "hunter2",
    }
    config = load_config(None, env=env)
    assert config.keys.write is not None and config.keys.write.reveal() == STRONG
    assert config.keys.identity_secret == Secret(OTHER_STRONG)
    assert config.mail.smtp.password is not None
    assert config.mail.smtp.password.reveal() == "hunter2"


def test_environment_overrides_file(tmp_path: Path) -> None:
    """A secret in the environment wins over the file; the file's other keys stay."""
    path = write(
        tmp_path,
        f"[keys]\npublic = 'pk_file'\nwrite = '{OTHER_STRONG}'\n"
        "[mail.smtp]\nhost = 'smtp.example'\npassword = 'from-file'\n",
    )
    env = {"RTSERVER_WRITE_KEY": STRONG, "RTSERVER_SMTP_PASSWORD": "from-env"}
    config = load_config(path, env=env)
    assert config.keys.write == Secret(STRONG)
    assert config.keys.public == "pk_file"
    assert config.mail.smtp.password == Secret("from-env")
    assert config.mail.smtp.host == "smtp.example"


def test_file_secret_used_without_environment(tmp_path: Path) -> None:
    """Without the variable (or with it empty) the file's secret is used."""
    path = write(tmp_path, f"[keys]\nidentity_secret = '{STRONG}'\n")
    config = load_config(path, env={"RTSERVER_IDENTITY_SECRET": ""})
    assert config.keys.identity_secret == Secret(STRONG)


def test_other_environment_variables_are_ignored() -> None:
    """Only secrets are read from the environment, not RTSERVER_SERVER_PORT or the like."""
    config = load_config(None, env={"RTSERVER_SERVER_PORT": "1", "RTSERVER_PUBLIC": "x"})
    assert config == Config()


@pytest.mark.parametrize(
    "weak",
    [
        "short-secret",  # fewer than 24 characters
        "ab" * 20,  # long, but only 2 distinct characters
        "abcdefghi" * 3,  # 27 characters, 9 distinct
        "",
    ],
)
def test_weak_explicit_secrets_are_refused(tmp_path: Path, weak: str) -> None:
    """A weak secret from the file or the environment fails, and the error hides it."""
    path = write(tmp_path, f"[keys]\nwrite = '{weak}'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith("keys.write: secret too weak: use at least 24 random characters")
    assert message.endswith("got a secret")
    assert weak == "" or weak not in message
    if weak:
        with pytest.raises(ConfigError) as caught:
            load_config(None, env={"RTSERVER_IDENTITY_SECRET": weak})
        assert str(caught.value).startswith("keys.identity_secret: secret too weak")
        assert weak not in str(caught.value)


def test_mistyped_secret_is_not_shown() -> None:
    """A secret given as a number is refused by type, without echoing the number."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={}, overrides={"keys": {"write": 918273645546372819283746}})
    assert str(caught.value) == "keys.write: expected str, got int"
    assert "918273645546372819283746" not in str(caught.value)


def test_secret_never_shows_its_value() -> None:
    """repr and str of a Secret, and of the whole Config, never contain the value."""
    secret = Secret(STRONG)
    assert repr(secret) == str(secret) == "Secret('**********')"
    assert f"{secret}" == "Secret('**********')"
    assert secret.reveal() == STRONG
    config = load_config(
        None,
        env={"RTSERVER_SMTP_PASSWORD": "smtp-" + OTHER_STRONG},
        overrides={"keys": {"write": STRONG, "identity_secret": OTHER_STRONG}},
    )
    for text in (repr(config), str(config), repr(config.keys), repr(config.mail)):
        assert STRONG not in text and OTHER_STRONG not in text
    assert "Secret('**********')" in repr(config.keys)


def test_secrets_compare_by_value() -> None:
    """Two Secrets are equal when their values are, and hash alike."""
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))


def test_optional_setting_may_be_unset_by_override() -> None:
    """An override of None for an optional setting leaves it unset."""
    config = load_config(None, env={}, overrides={"keys": {"write": None}})
    assert config.keys.write is None


def test_overrides_merge_table_by_table(tmp_path: Path) -> None:
    """An override of one nested key keeps the file's other keys in that table."""
    path = write(tmp_path, "[mail.smtp]\nhost = 'smtp.example'\nport = 587\n")
    config = load_config(path, env={}, overrides={"mail": {"smtp": {"port": 2525}}})
    assert config.mail.smtp == SmtpConfig(host="smtp.example", port=2525)


def test_overrides_are_not_modified() -> None:
    """Merging the environment's secrets never writes into the caller's overrides."""
    overrides: dict[str, Any] = {"mail": {"smtp": {"host": "smtp.example"}}, "keys": {}}
    load_config(
        None,
        env={"RTSERVER_SMTP_PASSWORD": "pw", "RTSERVER_WRITE_KEY": STRONG},
        overrides=overrides,
    )
    assert overrides == {"mail": {"smtp": {"host": "smtp.example"}}, "keys": {}}


def test_non_table_section_is_reported_despite_secrets(tmp_path: Path) -> None:
    """A section that is not a table stays an error when the environment adds a secret to it."""
    path = write(tmp_path, "mail = 'smtp'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"RTSERVER_SMTP_PASSWORD": "pw"})
    assert str(caught.value) == "mail: expected a table, got 'smtp'"
    with pytest.raises(ConfigError, match=r"^mail: expected a table, got 'smtp'$"):
        load_config(path, env={}, overrides={"mail": {"from": "A <a@b.example>"}})


def test_workflow_tables_are_kept() -> None:
    """Workflows are passed through as given, in order, after their shape is checked."""
    workflows = [{"name": "a", "trigger": "X"}, {"name": "b", "trigger": "Y"}]
    config = load_config(None, env={}, overrides={"workflow": workflows})
    assert config.workflow == tuple(workflows)


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ({"name": "a"}, "workflow: expected [[workflow]] tables, got {'name': 'a'}"),
        ("a", "workflow: expected [[workflow]] tables, got 'a'"),
        ([{"name": "a"}, 3], "workflow[1]: expected a table, got 3"),
        ([{"name": "a"}, {"trigger": "X"}], "workflow[1].name: expected a non-empty str, got None"),
        ([{"name": ""}], "workflow[0].name: expected a non-empty str, got ''"),
        ([{"name": 7}], "workflow[0].name: expected a non-empty str, got 7"),
        (
            [{"name": "a"}, {"name": "b"}, {"name": "a"}],
            "workflow[2].name: duplicate workflow name 'a'",
        ),
    ],
)
def test_bad_workflow_tables_fail(workflow: Any, message: str) -> None:
    """A workflow that is not a table, has no name or repeats a name is named by its index."""
    fails(message, workflow=workflow)


def test_workflow_as_single_table_in_toml_fails(tmp_path: Path) -> None:
    """``[workflow]`` instead of ``[[workflow]]`` is explained."""
    path = write(tmp_path, "[workflow]\nname = 'a'\n")
    with pytest.raises(ConfigError, match=r"^workflow: expected \[\[workflow\]\] tables"):
        load_config(path, env={})


def _leaf_keys(cls: type[Any], prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if f.name in ("workflow", "poll", "source"):
            continue
        key = prefix + f.name.rstrip("_")
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= _leaf_keys(hints[f.name], key + ".")
        else:
            keys.add(key)
    return keys


def test_iter_settings_yields_every_leaf_with_help() -> None:
    """Each leaf setting appears once, with non-empty help and its real default."""
    settings = list(iter_settings())
    keys = [s.key for s in settings]
    assert len(keys) == len(set(keys))
    assert set(keys) == _leaf_keys(Config)
    assert {"server.port", "mail.from", "mail.smtp.password", "keys.write"} <= set(keys)
    defaults = Config()
    for item in settings:
        assert item.help.strip(), item.key
        value: Any = defaults
        for part in item.key.split("."):
            value = getattr(value, part if part != "from" else "from_")
        assert item.default == value, item.key


def test_iter_settings_names_secret_variables() -> None:
    """Exactly the secrets carry their environment variable."""
    env = {s.key: s.env for s in iter_settings() if s.env}
    assert env == {
        "keys.write": "RTSERVER_WRITE_KEY",
        "keys.identity_secret": "RTSERVER_IDENTITY_SECRET",
        "keys.webhook_secret": "RTSERVER_WEBHOOK_SECRET",
        "keys.webhook_secret_previous": "RTSERVER_WEBHOOK_SECRET_PREVIOUS",
        "keys.mailgun_signing_key": "RTSERVER_MAILGUN_SIGNING_KEY",
        "keys.shopify_secret": "RTSERVER_SHOPIFY_SECRET",
        "keys.woocommerce_secret": "RTSERVER_WOOCOMMERCE_SECRET",
        "keys.postmark_password": "RTSERVER_POSTMARK_PASSWORD",
        "keys.hooks_secret": "RTSERVER_HOOKS_SECRET",
        "mail.smtp.password": "RTSERVER_SMTP_PASSWORD",
        "dashboard.password": "RTSERVER_DASHBOARD_PASSWORD",
    }


def test_every_default_round_trips_through_load_config() -> None:
    """Setting each key explicitly to its default is accepted (defaults pass their checks)."""
    for item in iter_settings():
        if item.default is None:
            continue
        *path, leaf = item.key.split(".")
        overrides: dict[str, Any] = {
            leaf: list(item.default) if isinstance(item.default, tuple) else item.default
        }
        for part in reversed(path):
            overrides = {part: overrides}
        assert load_config(None, env={}, overrides=overrides) == Config(), item.key


def test_resolve_config_path_prefers_the_argument(tmp_path: Path) -> None:
    """An explicit path wins over RTSERVER_CONFIG and ./config.toml."""
    env = {"RTSERVER_CONFIG": str(tmp_path / "env.toml")}
    assert resolve_config_path("given.toml", env) == Path("given.toml")
    assert resolve_config_path(tmp_path / "x.toml", env) == tmp_path / "x.toml"


def test_resolve_config_path_uses_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument RTSERVER_CONFIG wins over ./config.toml, even if that is absent."""
    write(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RTSERVER_CONFIG", "/etc/rtserver/config.toml")
    assert resolve_config_path(None) == Path("/etc/rtserver/config.toml")


def test_resolve_config_path_falls_back_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Then ./config.toml if it exists, else None (the embedded defaults)."""
    monkeypatch.delenv("RTSERVER_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None) is None
    assert resolve_config_path(None, {"RTSERVER_CONFIG": ""}) is None
    write(tmp_path, "[server]\nport = 1\n")
    assert resolve_config_path(None) == Path("config.toml")
    assert load_config(resolve_config_path(None), env={}).server.port == 1


def test_config_is_frozen() -> None:
    """Sections cannot be changed after loading."""
    config = load_config(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "value",
    ["0123456789abcdefghijklmnopqrstuvwxyz", "whsec_c2hvcnQ=", "whsec_not base64!!"],
    ids=["no-prefix", "too-short", "not-base64"],
)
def test_a_webhook_secret_must_be_a_whsec_key(tmp_path: Path, value: str) -> None:
    """A Standard Webhooks secret is 'whsec_' + base64 of at least 24 random bytes."""
    path = write(tmp_path, f'[keys]\nwebhook_secret = "{value}"\n')
    with pytest.raises(ConfigError, match=r"^keys\.webhook_secret: .*'whsec_'"):
        load_config(path, env={})


def test_a_sendgrid_key_must_be_an_ec_public_key(tmp_path: Path) -> None:
    """keys.sendgrid_public_key is checked at load: base64 DER of an EC public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_der = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    rsa_b64 = base64.b64encode(rsa_der).decode()
    cases = [("not base64!", "base64 DER"), ("AAAA", "base64 DER"), (rsa_b64, "EC public key")]
    for value, message in cases:
        path = write(tmp_path, f'[keys]\nsendgrid_public_key = "{value}"\n')
        with pytest.raises(
            ConfigError, match=rf"^keys\.sendgrid_public_key: expected an? {message}"
        ):
            load_config(path, env={})
