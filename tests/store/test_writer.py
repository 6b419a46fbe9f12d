"""The writer's half of the store, on a plain connection to a real file: the generation that
tells the engine whether its memory of facts still holds, and the cheaper writes of runs and
profiles with their fallbacks."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtserver.config.schema import IngestConfig
from rtserver.model.events import Event, parse_event
from rtserver.model.facts import Run
from rtserver.store import writer
from rtserver.store.changes import Changes, Prepared
from rtserver.store.database import Store
from rtserver.store.schema import MIGRATIONS
from tests.support.events import event


@pytest.fixture
async def conn(db_path: Path) -> AsyncIterator[sqlite3.Connection]:
    """The writer's connection as ``Store.open`` leaves it: autocommit, schema in place."""
    store = await Store.open(db_path)
    await store.close()
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as connection:
        yield connection


def parsed(**fields: object) -> Event:
    return parse_event(event(**fields), IngestConfig())


def run(run_id: str, person: str = "u:u1", *, workflow: str = "w", due: float = 50.0) -> Run:
    return Run(run_id, workflow, person, "", 1.0, 0, "wait", due=due)


def test_generation_counts_writes_made_outside_the_group_commit(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    """Group commits leave the generation alone; a delete of facts, a commit outside a group
    or another connection's commit each move it."""
    first = writer.generation(conn)
    assert first is not None and first[1] == 0
    prepared, changes = writer.group(conn, [parsed(userId="u1")], [1.0], None)
    assert prepared.fresh and changes.generation == first == writer.generation(conn)
    conn.execute("DELETE FROM steps WHERE person_id = 'nobody'")  # even deleting no row
    conn.execute("DELETE FROM profiles WHERE person_id = 'u:u1'")
    assert writer.generation(conn) == (first[0], 1)
    writer.commit(conn, writer.prepare(conn, [parsed()], [2.0]), Changes())
    assert writer.generation(conn) == (first[0], 2)
    with contextlib.closing(sqlite3.connect(db_path)) as other, other:
        other.execute("UPDATE profiles SET opens = 1")
    moved = writer.generation(conn)
    assert moved is not None and moved[0] != first[0] and moved[1] == 2


def test_generation_is_none_when_it_cannot_be_read(db_path: Path, conn: sqlite3.Connection) -> None:
    """A connection that cannot answer gives no generation (the engine then trusts nothing)."""
    closed = sqlite3.connect(db_path)
    closed.close()
    assert writer.generation(closed) is None
    writer.commit(conn, writer.prepare(conn, [parsed()], [1.0]), Changes())  # never watched


def test_a_commit_by_another_connection_during_the_group_is_not_trusted(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    """If another connection commits while a group is decided, nothing of it is trusted."""

    def plan(prepared: Prepared, source: writer.Source) -> Changes:
        assert source.generation is not None
        with contextlib.closing(sqlite3.connect(db_path)) as other, other:
            other.execute("INSERT INTO secrets VALUES ('x', 'y', 0)")
        return Changes()

    _, changes = writer.group(conn, [parsed()], [1.0], plan)
    assert changes.generation is None
    _, changes = writer.group(conn, [parsed()], [2.0], lambda prepared, source: Changes())
    assert changes.generation is not None


def test_moving_a_run_that_is_not_open_upserts_them_all(conn: sqlite3.Connection) -> None:
    """A move of an open run is a plain update; if one is not open in the store, every run of
    the group is upserted as before (so the first-written order stays the fold's)."""
    prepared = writer.prepare(conn, [], [])
    opened = Changes(runs={"r1": (run("r1"), None, 1.0)}, started={"r1"})
    writer.commit(conn, prepared, opened, grouped=True)
    moved = Changes(runs={"r1": (run("r1", due=60.0), None, 2.0)})
    writer.commit(conn, prepared, moved, grouped=True)
    assert conn.execute("SELECT due, updated_at FROM runs").fetchall() == [(60.0, 2.0)]
    lost = Changes(
        runs={
            "r0": (run("r0", workflow="v"), None, 3.0),  # not in the store: upserted in order
            "r1": (run("r1", due=70.0), None, 3.0),
            "r2": (run("r2", workflow="x"), None, 3.0),
        },
        started={"r2"},
    )
    writer.commit(conn, prepared, lost, grouped=True)
    rows = conn.execute("SELECT id, due, state FROM runs ORDER BY rowid").fetchall()
    assert rows == [("r1", 70.0, "active"), ("r0", 50.0, "active"), ("r2", 50.0, "active")]
    facts = writer.facts(conn, ["u:u1"], None)["u:u1"]
    assert [r.id for r in facts.runs] == ["r1", "r0", "r2"]  # first written first


def test_seen_profiles_are_updated_and_missing_ones_inserted(conn: sqlite3.Connection) -> None:
    """A profile known to exist, seen by a bare event, only moves its seen times; if it is not
    there after all, the group's profiles are upserted."""
    prepared = writer.prepare(conn, [parsed(userId="u1", traits={"plan": "pro"})], [5.0])
    writer.commit(conn, prepared, Changes(), grouped=True)
    seen = writer.prepare(conn, [parsed(userId="u1"), parsed(userId="u2")], [7.0, 3.0])
    writer.commit(conn, seen, Changes(profiled={"u:u1"}), grouped=True)
    rows = conn.execute("SELECT person_id, traits, first_seen, last_seen FROM profiles").fetchall()
    assert sorted(rows) == [("u:u1", '{"plan":"pro"}', 5.0, 7.0), ("u:u2", "{}", 3.0, 3.0)]
    missing = writer.prepare(conn, [parsed(userId="u3"), parsed(userId="u1")], [9.0, 1.0])
    writer.commit(conn, missing, Changes(profiled={"u:u1", "u:u3"}), grouped=True)
    rows = conn.execute("SELECT person_id, first_seen, last_seen FROM profiles").fetchall()
    assert sorted(rows) == [("u:u1", 1.0, 7.0), ("u:u2", 3.0, 3.0), ("u:u3", 9.0, 9.0)]


PRODUCT_VALUES: list[dict[str, Any]] = [
    {"product_id": "sku-1"},
    {"product_id": 12},
    {"product_id": 12.5},
    {"product_id": True},
    {"product_id": False},
    {"product_id": None, "sku": "s-2"},
    {"sku": 7},
    {"product_id": {"a": 1}},
    {"product_id": [1, "x"]},
    {"product_id": ""},
    {"name": "no product"},
    {},
]


def test_the_product_column_is_what_the_generated_one_was() -> None:
    """``product_of`` gives what the generated column (migrations 0005 to 0014) read from the
    body with json_extract; migration 0015 keeps those values for the events before it."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    before = [(name, script) for name, script in MIGRATIONS if name < "0015"]
    for _, script in before:
        conn.executescript(script)
    for i, properties in enumerate(PRODUCT_VALUES):
        body = orjson.dumps({"type": "track", "properties": properties})
        conn.execute(
            "INSERT INTO events (message_id, type, name, person_id, source, received_at, body) "
            "VALUES (?, 'track', 'Product Viewed', 'a:x', 'browser', ?, ?)",
            (f"m{i}", float(i), body),
        )
    generated = [r[0] for r in conn.execute("SELECT product_id FROM events ORDER BY seq")]
    assert generated == [writer.product_of(p) for p in PRODUCT_VALUES]
    (script,) = [script for name, script in MIGRATIONS if name == "0015_product_column"]
    conn.executescript(script)
    stored = [r[0] for r in conn.execute("SELECT product_id FROM events ORDER BY seq")]
    assert stored == generated
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT person_id FROM events "
        "WHERE name = 'Product Viewed' AND product_id = 'sku-1'"
    ).fetchall()
    assert "events_product_viewers" in str(plan)
