"""The machinery of typed settings: declared once as dataclass fields, loaded from TOML tables.

A setting is a field made by :func:`setting` (its default, one line of help, an optional
check and environment variable), as datasette's ``SETTINGS`` table declares each one once.
:func:`build` turns nested mappings (TOML tables) into the frozen dataclasses, checking each
value against its annotation and its check, and naming the dotted key and the value in every
error; :func:`iter_settings` walks the fields for the README reference. What the settings
*are* lives in :mod:`rtserver.config.schema`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from rtserver.config.durations import Duration
from rtserver.errors import ConfigError

__all__ = [
    "Check",
    "Secret",
    "Setting",
    "build",
    "ec_public_key",
    "host_name",
    "http_url",
    "iter_settings",
    "merge",
    "network",
    "origin",
    "long_password",
    "port_number",
    "positive",
    "public_key",
    "setting",
    "strong_secret",
    "url_prefix",
    "standard_webhooks_secret",
]


class Secret:
    """A secret string that never shows itself in a repr, a str or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value; call it only where the value is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


Check = Callable[[Any], str | None]


def setting(default: Any, help: str, *, check: Check | None = None, env: str | None = None) -> Any:
    """Declare one setting: its default, one line of help, an optional check and env variable."""
    meta = {"help": help, "check": check, "env": env}
    if isinstance(default, tuple | list):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Setting:
    """One documented setting, for the README reference."""

    key: str
    default: Any
    help: str
    env: str | None


def _toml_name(name: str) -> str:
    return name.rstrip("_")  # `from_` is `from` in TOML


def iter_settings(cls: type[Any], prefix: str = "") -> Iterator[Setting]:
    """Every leaf setting with its dotted key, default and help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal") or f.name in ("workflow", "poll"):
            continue
        key = prefix + _toml_name(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from iter_settings(hints[f.name], key + ".")
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        yield Setting(key, default, f.metadata["help"], f.metadata["env"])


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, Secret) else "a secret"


def _convert(key: str, hint: Any, value: Any, check: Check | None = None) -> Any:
    """Check ``value`` against the annotation ``hint``; return it in its typed form.

    ``check`` applies to the leaf values: each item of a list, not the list.
    """
    origin = typing.get_origin(hint)
    if origin is types.UnionType:  # `X | None`; TOML has no null, but overrides may pass None
        if value is None:
            return None
        (inner,) = (h for h in typing.get_args(hint) if h is not type(None))
        return _convert(key, inner, value, check)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(f"{key}[{i}]", item, v, check) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return build(hint, value, key + ".")  # type: ignore[arg-type]
    result = _leaf(key, hint, value)
    problem = check(result) if check is not None else None
    if problem:
        raise ConfigError(f"{key}: {problem}, got {_describe(result)}")
    return result


def _leaf(key: str, hint: Any, value: Any) -> Any:
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            names = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{key}: expected one of {names}, got {value!r}")
        return value
    if hint is Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            # Not the value: a mistyped secret is still a secret.
            raise ConfigError(f"{key}: expected str, got {type(value).__name__}")
        return Secret(value)
    if hint is Duration:
        if isinstance(value, Duration):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a duration like '30m', got {value!r}")
        try:
            return Duration(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def build(cls: type[Any], data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {
        _toml_name(f.name): f for f in dataclasses.fields(cls) if not f.metadata.get("internal")
    }
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (expected one of {', '.join(fields)})"
        )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            values[f.name] = _convert(
                prefix + name, hints[f.name], data[name], f.metadata.get("check")
            )
    return cls(**values)


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, table by table; neither is modified."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            value = merge(old, value)
        elif isinstance(value, Mapping) and key in merged:
            continue  # keep the file's non-table value: _build reports it with its key
        merged[key] = value
    return merged


# Checks: each returns the problem with a value, or None.

MIN_SECRET_CHARS = 24
MIN_SECRET_DISTINCT_CHARS = 10


def port_number(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "expected a port between 0 and 65535"


def positive(value: float) -> str | None:
    return None if 0 < value < math.inf else "expected a positive number"


_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def host_name(value: Any) -> str | None:
    """A lower-case DNS host name (such as ``shop.example.com``), no scheme, port or path."""
    if not isinstance(value, str) or not _HOST_NAME.match(value):
        return "expected a lower-case host name such as 'shop.example.com'"
    return None


def http_url(value: str) -> str | None:
    ok = re.fullmatch(r"https?://[^\s/]+(/\S*)?", value)
    return None if ok else "expected an http(s) URL"


def origin(value: str) -> str | None:
    ok = value == "*" or re.fullmatch(r"https?://[^\s/]+", value)
    return None if ok else "expected an origin like 'https://shop.example' (no path)"


def public_key(value: str) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9_\-]{4,64}", value)
    return None if ok else "expected 4 to 64 letters, digits, '_' or '-'"


def strong_secret(value: Secret) -> str | None:
    raw = value.reveal()
    if len(raw) < MIN_SECRET_CHARS or len(set(raw)) < MIN_SECRET_DISTINCT_CHARS:
        return (
            f"secret too weak: use at least {MIN_SECRET_CHARS} random characters "
            "(or leave it unset and rtserver generates one)"
        )
    return None


def standard_webhooks_secret(value: Secret) -> str | None:
    raw = value.reveal()
    encoded = raw.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        key = b""
    if not raw.startswith("whsec_") or len(key) < 24:
        return "a webhook secret is 'whsec_' and at least 24 base64-encoded random bytes"
    return None


MIN_PASSWORD_CHARS = 12
MIN_PASSWORD_DISTINCT_CHARS = 6


def long_password(value: Secret) -> str | None:
    raw = value.reveal()
    if len(raw) < MIN_PASSWORD_CHARS:
        return f"password too short: use at least {MIN_PASSWORD_CHARS} characters"
    if len(set(raw)) < MIN_PASSWORD_DISTINCT_CHARS:
        distinct = MIN_PASSWORD_DISTINCT_CHARS
        return f"password too plain: use at least {distinct} different characters"
    return None


def ec_public_key(value: str) -> str | None:
    try:
        key = load_der_public_key(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return "expected a base64 DER public key"
    return None if isinstance(key, ec.EllipticCurvePublicKey) else "expected an EC public key"


def network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "expected an address or network like '127.0.0.0/8' or '2001:db8::/64'"
    return None


def url_prefix(value: str) -> str | None:
    ok = re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", value)
    return None if ok else "expected an http(s) URL prefix like 'https://crm.example/hooks/'"
