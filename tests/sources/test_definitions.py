"""[[poll]] tables compiled: defaults, auth from the environment, and every mistake named by
its table and field."""

from __future__ import annotations

from typing import Any

import pytest

from rtserver.errors import ConfigError
from rtserver.sources import compile_sources

BASE = {"name": "orders", "url": "https://shop.example/api/orders", "id": "item.id",
        "event": "'Order Completed'", "user_id": "item.customer_id"}  # fmt: skip


def test_defaults_and_a_full_table() -> None:
    (plain,), warnings = compile_sources([BASE], {})
    assert warnings == []
    assert plain.every_s == 300.0 and plain.rate_per_minute == 60.0 and plain.pagination == ""
    assert plain.items({"response": [1, 2]}) == [1, 2] and plain.headers == {}
    assert plain.where == "poll[0]" and not plain.allow_private
    table = {**BASE, "every": "1m", "rate_per_minute": 30, "pagination": "since",
             "cursor_param": "updated_after", "cursor": "item.updated_at",
             "items": "response.orders", "anonymous_id": "item.token", "timestamp": "item.at",
             "properties": {"total": "item.total"}, "auth": "header", "auth_header": "X-Key",
             "secret_env": "KEY", "allow_private": True}  # fmt: skip
    (full,), _ = compile_sources([BASE, {**table, "name": "b"}][1:], {"KEY": "k1"})
    assert full.every_s == 60.0 and full.headers == {"x-key": "k1"} and full.allow_private
    assert [name for name, _ in full.properties] == ["total"]


def test_undefined_names_are_warnings() -> None:
    _, warnings = compile_sources([{**BASE, "items": "item.orders", "id": "itme.id"}], {})
    assert warnings == [
        "poll[0].items: 'item' is undefined here (it sees response)",
        "poll[0].id: 'itme' is undefined here (it sees item, response)",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "poll[0].colour: unknown key"),
        ({"name": "a b"}, "poll[0].name: letters, digits"),
        ({"url": "ftp://x"}, "poll[0].url: expected an http(s) URL"),
        ({"url": 5}, "poll[0].url: expected a str, got 5"),
        ({"every": "soon"}, "poll[0].every: expected a duration"),
        ({"rate_per_minute": 0}, "poll[0].rate_per_minute: expected a number"),
        ({"rate_per_minute": True}, "poll[0].rate_per_minute: expected a number"),
        ({"allow_private": "yes"}, "poll[0].allow_private: expected true or false"),
        ({"pagination": "pages"}, "poll[0].pagination: expected one of"),
        ({"pagination": "cursor", "cursor": "response.next"}, "poll[0].cursor_param: pagination"),
        ({"pagination": "cursor", "cursor_param": "c"}, "poll[0].cursor: expected an expression"),
        ({"cursor": "response.next"}, "poll[0].cursor: only used with pagination"),
        ({"cursor_param": "c"}, "poll[0].cursor_param: only used with pagination"),
        ({"id": "item.id +"}, "poll[0].id: expression 'item.id +' does not compile"),
        ({"id": ""}, "poll[0].id: expected an expression"),
        ({"event": None}, "poll[0].event: expected an expression"),
        ({"user_id": ""}, "poll[0].user_id: user_id or anonymous_id is required"),
        ({"timestamp": "]"}, "poll[0].timestamp: expression"),
        ({"properties": "x"}, "poll[0].properties: expected a table"),
        ({"properties": {"total": "item.total)"}}, "poll[0].properties.total: expression"),
        ({"auth": "oauth"}, "poll[0].auth: expected one of"),
        ({"auth": "header"}, "poll[0].secret_env: auth = 'header' needs the name"),
        ({"secret_env": "KEY"}, "poll[0].secret_env: set, but auth is ''"),
        ({"auth": "header", "secret_env": "MISSING"}, "poll[0].secret_env: the environment "
                                                      "variable MISSING is not set"),
        ({"auth": "basic", "secret_env": "KEY"}, "poll[0].secret_env: KEY must hold"),
        ({"auth": "header", "secret_env": "KEY", "auth_header": "X Key"},
         "poll[0].auth_header: not a header name"),
    ],
)  # fmt: skip
def test_mistakes_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_sources([{**BASE, **change}], {"KEY": "hunter2"})
    assert str(caught.value).startswith(message), str(caught.value)
    assert "hunter2" not in str(caught.value)
