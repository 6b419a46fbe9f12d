"""The webhook half of the store (``store.deliveries``): rows decided in the group commit,
leases and crash recovery (at least once), outcomes, endpoints disabled by a 410, reads, and
erasure. A real store on a temporary SQLite file, driven with explicit times."""

from __future__ import annotations

import sqlite3
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, strategies as st

from rtserver.model.actions import CallWebhook
from rtserver.model.facts import Person
from rtserver.store.changes import Changes
from rtserver.store.database import Store
from rtserver.store.deliveries import DUE, EVENT_TYPE, Delivery, claim, delivery_row, finish_many
from rtserver.store.schema import INSERT_DELIVERY, MIGRATIONS
from tests.support.events import event
from tests.support.store import parse, store_group

NOW = 1_800_000_000.0
"""2027-01-15T08:00:00Z."""
LEASE = 60.0
URL = "https://crm.example/hooks/cart"
OTHER = "https://erp.example/in"
ANN = Person(id="u:ann", email="ann@example.com", traits={"first_name": "Ann", "plan": "pro"})


def call(run: str, step: int = 2, person: str = "u:ann", url: str = URL) -> CallWebhook:
    """A decided webhook step with the payload the engine gives it."""
    payload = {"workflow": "cart", "run": run, "step": step + 1, "level": 1}
    return CallWebhook(run, step, person, url, payload)


def row(
    run: str, step: int = 2, *, url: str = URL, at: float = NOW, person: Person = ANN
) -> tuple[Any, ...]:
    """The ``deliveries`` row of run ``run``'s webhook step, decided at ``at`` (due then)."""
    return delivery_row(call(run, step, person.id, url), "cart", person, at)


async def queue(store: Store, *rows: tuple[Any, ...]) -> None:
    """Commit ``rows`` in a group commit, as the engine does (``Changes.deliveries``)."""
    prepared = await store.prepare([], [])
    await store.commit_batch(prepared, Changes(deliveries=list(rows)))


async def columns(store: Store, delivery: str) -> dict[str, Any]:
    """The stored columns of one delivery."""
    names = (
        "state", "attempts", "next_attempt_at", "lease_until", "last_status", "last_error",
        "updated_at", "delivered_at",
    )  # fmt: skip
    rows = await store._read(f"SELECT {', '.join(names)} FROM deliveries WHERE id = ?", (delivery,))
    assert len(rows) == 1, rows
    return dict(zip(names, rows[0], strict=True))


async def person(store: Store, user: str, email: str) -> None:
    """A known person with a verified email (an identify with traits.email)."""
    traits = {"email": email, "first_name": user.title()}
    await store_group(store, [parse(event("identify", userId=user, traits=traits))])


# delivery_row()


def test_delivery_row_is_the_insert_of_a_decided_step() -> None:
    """Id ``<run>-<step>``, the step's run, person, workflow and URL, due and stamped at the
    decision, and a Standard Webhooks envelope with the step payload and the person."""
    action = CallWebhook("run-7", 3, "u:ann", URL, {"workflow": "cart", "run": "run-7", "step": 4})
    result = delivery_row(action, "cart", ANN, NOW)
    assert result[:6] == ("run-7-3", "run-7", 3, "u:ann", "cart", URL)
    assert result[7:] == (NOW, NOW, NOW)
    assert isinstance(result[6], bytes)
    assert orjson.loads(result[6]) == {
        "type": "workflow.webhook",
        "timestamp": "2027-01-15T08:00:00Z",
        "data": {
            "workflow": "cart",
            "run": "run-7",
            "step": 4,
            "person": {
                "id": "u:ann",
                "email": "ann@example.com",
                "traits": {"first_name": "Ann", "plan": "pro"},
            },
        },
    }
    assert len(result) == INSERT_DELIVERY.count("?")


def test_the_envelope_fields_win_over_step_properties() -> None:
    """A step property named like an envelope field cannot forge the workflow, run or person."""
    payload = {"workflow": "forged", "run": "forged", "person": "forged", "level": 2}
    action = CallWebhook("r1", 0, "u:ann", URL, payload)
    data = orjson.loads(delivery_row(action, "cart", ANN, NOW)[6])["data"]
    assert (data["workflow"], data["run"], data["level"]) == ("cart", "r1", 2)
    assert data["person"]["id"] == "u:ann"


def test_a_person_without_email_or_traits() -> None:
    """An anonymous person gives a null email and empty traits; read-only traits are copied."""
    anonymous = Person(id="a:anon-1", traits=types.MappingProxyType({"utm": "mail"}))
    data = orjson.loads(delivery_row(call("r1"), "cart", anonymous, NOW)[6])["data"]
    assert data["person"] == {"id": "a:anon-1", "email": None, "traits": {"utm": "mail"}}
    bare = orjson.loads(delivery_row(call("r1"), "cart", Person(id="a:x"), NOW)[6])["data"]
    assert bare["person"] == {"id": "a:x", "email": None, "traits": {}}


@given(at=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_timestamp_is_utc_iso_with_z(at: float) -> None:
    """The envelope's timestamp is the decision time in UTC, ISO 8601 with a 'Z'."""
    stamp = orjson.loads(delivery_row(call("r1"), "cart", ANN, at)[6])["timestamp"]
    assert stamp.endswith("Z") and "+00:00" not in stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo == UTC
    assert parsed == datetime.fromtimestamp(at, UTC)


@given(
    properties=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in ("workflow", "run", "person")),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8)),
        max_size=5,
    ),
    run=st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12),
    step=st.integers(0, 50),
)
def test_the_step_payload_is_carried_whole(properties: dict[str, Any], run: str, step: int) -> None:
    """Every step property reaches ``data`` unchanged; the id is ``<run>-<step>``."""
    action = CallWebhook(run, step, "u:ann", URL, properties)
    result = delivery_row(action, "wf", ANN, NOW)
    data = orjson.loads(result[6])["data"]
    assert {k: data[k] for k in properties} == properties
    assert result[0] == f"{run}-{step}" and data["run"] == run


# Queueing


async def test_a_committed_delivery_is_queued_and_due(store: Store) -> None:
    """A row written by the group commit is queued, not yet tried, due at the decision."""
    await queue(store, row("r1"))
    assert await columns(store, "r1-2") == {
        "state": "queued",
        "attempts": 0,
        "next_attempt_at": NOW,
        "lease_until": None,
        "last_status": None,
        "last_error": None,
        "updated_at": NOW,
        "delivered_at": None,
    }
    assert await store.deliveries.counts() == {"queued": 1}
    assert await store.deliveries.next_due() == NOW
    got = await store.deliveries.get("r1-2")
    assert got is not None and got["payload"] == orjson.loads(row("r1")[6])


async def test_a_repeated_insert_of_the_same_id_is_ignored(store: Store) -> None:
    """Exactly-once decisions: the same ``<run>-<step>`` inserted again (raw or by a group
    commit replayed after a crash) neither doubles nor changes nor re-queues the delivery."""
    first = row("r1")
    await store._db.executemany(INSERT_DELIVERY, [first, row("r1", url=OTHER, at=NOW + 5)])
    await store._db.executemany(INSERT_DELIVERY, [first])
    assert await store._read("SELECT id, url, created_at FROM deliveries", ()) == [
        ("r1-2", URL, NOW)
    ]
    (leased,) = await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish(leased.id, "delivered", NOW + 1, status=200)
    await queue(store, first)
    assert await store.deliveries.counts() == {"delivered": 1}
    assert (await columns(store, "r1-2"))["attempts"] == 1
    assert await store.deliveries.claim(NOW + 10 * LEASE, 10, LEASE) == []


# claim()


async def test_claim_leases_due_rows_in_due_order_up_to_the_limit(store: Store) -> None:
    """Only rows due by ``now``, earliest first, at most ``limit``; each goes 'sending' with
    one attempt more and a lease of ``lease_s``."""
    await queue(
        store,
        row("r1", at=NOW - 10),
        row("r2", at=NOW - 20),
        row("r3", at=NOW),
        row("r4", at=NOW + 1),
    )
    first = await store.deliveries.claim(NOW, 2, LEASE)
    assert [d.id for d in first] == ["r2-2", "r1-2"]
    assert first[0] == Delivery("r2-2", URL, row("r2", at=NOW - 20)[6], 1)
    assert isinstance(first[0].payload, bytes)
    state = await columns(store, "r2-2")
    assert (state["state"], state["attempts"], state["lease_until"], state["updated_at"]) == (
        "sending", 1, NOW + LEASE, NOW,
    )  # fmt: skip
    assert [d.id for d in await store.deliveries.claim(NOW, 10, LEASE)] == ["r3-2"]
    assert await store.deliveries.claim(NOW, 10, LEASE) == []
    assert (await columns(store, "r4-2"))["state"] == "queued"
    assert [d.id for d in await store.deliveries.claim(NOW + 1, 10, LEASE)] == ["r4-2"]


async def test_a_lease_keeps_others_off_until_it_ends(store: Store) -> None:
    """A claimed row is not claimed again during its lease; once the lease ends (the process
    died mid-request) it is claimed again with a second attempt: at least once."""
    await queue(store, row("r1"))
    (leased,) = await store.deliveries.claim(NOW, 10, LEASE)
    assert leased.attempts == 1
    assert await store.deliveries.claim(NOW + LEASE - 0.001, 10, LEASE) == []
    (again,) = await store.deliveries.claim(NOW + LEASE, 10, LEASE)
    assert (again.id, again.url, again.payload, again.attempts) == (
        "r1-2", URL, leased.payload, 2,
    )  # fmt: skip
    assert (await columns(store, "r1-2"))["lease_until"] == NOW + 2 * LEASE


async def test_a_delivery_survives_a_crash_mid_request(db_path: Path) -> None:
    """A store closed (a crash) while a delivery is leased: reopened, the same delivery is
    claimed again once the lease runs out, same id and payload, attempt 2."""
    store = await Store.open(db_path)
    try:
        await queue(store, row("r1"))
        (leased,) = await store.deliveries.claim(NOW, 10, LEASE)
    finally:
        await store.close()
    store = await Store.open(db_path)
    try:
        assert await store.deliveries.next_due() == NOW + LEASE
        assert await store.deliveries.claim(NOW + 1, 10, LEASE) == []
        (again,) = await store.deliveries.claim(NOW + LEASE, 10, LEASE)
        assert (again.id, again.payload, again.attempts) == (leased.id, leased.payload, 2)
    finally:
        await store.close()


async def test_rows_of_a_disabled_endpoint_fail_when_claimed(store: Store) -> None:
    """A due delivery to a disabled URL is failed at claim (no attempt counted, no lease) with
    the reason, and not returned; other URLs go on."""
    await store._db.execute(
        "INSERT INTO disabled_endpoints (url, reason, disabled_at) VALUES (?, ?, ?)",
        (URL, "410 Gone", NOW - 1),
    )
    await queue(store, row("r1", at=NOW - 2), row("r2", url=OTHER, at=NOW - 1))
    leased = await store.deliveries.claim(NOW, 10, LEASE)
    assert [d.id for d in leased] == ["r2-2"]
    assert await columns(store, "r1-2") == {
        "state": "failed",
        "attempts": 0,
        "next_attempt_at": NOW - 2,
        "lease_until": None,
        "last_status": None,
        "last_error": "endpoint disabled: 410 Gone",
        "updated_at": NOW,
        "delivered_at": None,
    }
    later = await store.deliveries.claim(NOW + LEASE, 10, LEASE)  # r2's lease ran out
    assert [d.id for d in later] == ["r2-2"]
    assert (await columns(store, "r1-2"))["state"] == "failed"


async def test_a_lease_left_on_a_since_disabled_endpoint_fails(store: Store) -> None:
    """A row left 'sending' by a crash whose endpoint was disabled meanwhile is failed, not
    tried again."""
    await queue(store, row("r1"), row("r2", at=NOW + 1))
    await store.deliveries.claim(NOW + 1, 10, LEASE)
    await store.deliveries.finish("r2-2", "failed", NOW + 2, status=410, disable="410 Gone")
    assert await store.deliveries.claim(NOW + 1 + LEASE, 10, LEASE) == []
    r1 = await columns(store, "r1-2")
    assert (r1["state"], r1["attempts"], r1["lease_until"]) == ("failed", 1, None)
    assert r1["last_error"] == "endpoint disabled: 410 Gone"


# finish()


async def test_delivered_stamps_and_clears_the_lease(store: Store) -> None:
    """'delivered' records status and time, clears the lease; it is never claimed again."""
    await queue(store, row("r1"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish("r1-2", "delivered", NOW + 2, status=204)
    assert await columns(store, "r1-2") == {
        "state": "delivered",
        "attempts": 1,
        "next_attempt_at": NOW,
        "lease_until": None,
        "last_status": 204,
        "last_error": "",
        "updated_at": NOW + 2,
        "delivered_at": NOW + 2,
    }
    assert await store.deliveries.next_due() is None
    assert await store.deliveries.claim(NOW + 100 * LEASE, 10, LEASE) == []


async def test_retry_wait_makes_it_due_again_only_then(store: Store) -> None:
    """'retry_wait' with ``next_attempt_at``: not claimable before, claimed then (attempt 2);
    no delivered_at."""
    await queue(store, row("r1"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish(
        "r1-2", "retry_wait", NOW + 1, status=503, error="503 Service Unavailable",
        next_attempt_at=NOW + 300,
    )  # fmt: skip
    state = await columns(store, "r1-2")
    assert (state["state"], state["next_attempt_at"], state["lease_until"]) == (
        "retry_wait", NOW + 300, None,
    )  # fmt: skip
    assert (state["last_status"], state["last_error"], state["delivered_at"]) == (
        503, "503 Service Unavailable", None,
    )  # fmt: skip
    assert await store.deliveries.next_due() == NOW + 300
    assert await store.deliveries.claim(NOW + 299, 10, LEASE) == []
    (again,) = await store.deliveries.claim(NOW + 300, 10, LEASE)
    assert again.attempts == 2


async def test_retry_wait_without_a_time_keeps_the_old_due(store: Store) -> None:
    """No ``next_attempt_at``: the due time stays, so the row is due again at once."""
    await queue(store, row("r1"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish("r1-2", "retry_wait", NOW + 1, error="timeout")
    assert (await columns(store, "r1-2"))["next_attempt_at"] == NOW
    assert [d.attempts for d in await store.deliveries.claim(NOW + 1, 10, LEASE)] == [2]


async def test_failed_is_final(store: Store) -> None:
    """'failed' records the answer and is never due or claimed again."""
    await queue(store, row("r1"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish("r1-2", "failed", NOW + 1, status=400, error="400 Bad Request")
    state = await columns(store, "r1-2")
    assert (state["state"], state["last_status"], state["last_error"], state["lease_until"]) == (
        "failed", 400, "400 Bad Request", None,
    )  # fmt: skip
    assert state["delivered_at"] is None
    assert await store.deliveries.next_due() is None
    assert await store.deliveries.claim(NOW + 100 * LEASE, 10, LEASE) == []
    assert await store.deliveries.disabled() == {}


async def test_a_410_disables_exactly_that_url(store: Store) -> None:
    """``disable=`` turns the row's exact URL off: later deliveries to it fail at claim;
    another URL, even one that extends it, is unaffected; the first reason stays."""
    await queue(store, row("r1"), row("r2", at=NOW + 1))
    await store.deliveries.claim(NOW + 1, 10, LEASE)
    await store.deliveries.finish("r1-2", "failed", NOW + 2, status=410, disable="410 Gone")
    await store.deliveries.finish("r2-2", "failed", NOW + 2, status=410, disable="second")
    assert await store.deliveries.disabled() == {URL: "410 Gone"}
    await queue(
        store,
        row("r3", at=NOW + 3),
        row("r4", url=OTHER, at=NOW + 3),
        row("r5", url=URL + "/more", at=NOW + 3),
        row("r6", url=URL + "?v=2", at=NOW + 3),
    )
    leased = await store.deliveries.claim(NOW + 3, 10, LEASE)
    assert sorted(d.id for d in leased) == ["r4-2", "r5-2", "r6-2"]
    r3 = await columns(store, "r3-2")
    assert (r3["state"], r3["last_error"]) == ("failed", "endpoint disabled: 410 Gone")


async def test_enable_turns_an_endpoint_back_on_once(store: Store) -> None:
    """enable(url) says True once, then False; deliveries to it are claimable again."""
    await queue(store, row("r1"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish("r1-2", "failed", NOW + 1, status=410, disable="410 Gone")
    assert await store.deliveries.enable(URL) is True
    assert await store.deliveries.enable(URL) is False
    assert await store.deliveries.disabled() == {}
    await queue(store, row("r2", at=NOW + 2))
    assert [d.id for d in await store.deliveries.claim(NOW + 2, 10, LEASE)] == ["r2-2"]
    assert (await columns(store, "r1-2"))["state"] == "failed"  # what failed stays failed


async def test_enable_of_an_unknown_url_is_false(store: Store) -> None:
    """Nothing to enable: False, and nothing changes."""
    assert await store.deliveries.enable(URL) is False


async def test_finishing_an_unknown_delivery_changes_nothing(store: Store) -> None:
    """An outcome for a delivery that is not there neither writes a row nor disables a URL."""
    await store.deliveries.finish("nope", "failed", NOW, status=410, disable="410 Gone")
    assert await store.deliveries.counts() == {}
    assert await store.deliveries.disabled() == {}


# Reads


async def test_next_due_is_the_earliest_due_or_lease_end(store: Store) -> None:
    """None when empty; else the least of queued and retry_wait due times and of leases'
    ends (not a leased row's old due time); delivered and failed rows do not count."""
    assert await store.deliveries.next_due() is None
    await queue(
        store,
        row("sent", at=NOW - 300),
        row("dead", at=NOW - 300),
        row("lease", at=NOW - 30),
        row("later", at=NOW + 100),
        row("retry", at=NOW - 30),
    )
    await store.deliveries.claim(NOW - 30, 10, LEASE)  # leases end at NOW + 30
    await store.deliveries.finish("sent-2", "delivered", NOW - 29, status=200)
    await store.deliveries.finish("dead-2", "failed", NOW - 29, status=404)
    await store.deliveries.finish("retry-2", "retry_wait", NOW - 29, next_attempt_at=NOW + 50)
    assert await store.deliveries.next_due() == NOW + 30
    await store.deliveries.finish("lease-2", "delivered", NOW, status=200)
    assert await store.deliveries.next_due() == NOW + 50
    await store.deliveries.finish("retry-2", "failed", NOW, status=500)
    assert await store.deliveries.next_due() == NOW + 100
    await store.deliveries.finish("later-2", "failed", NOW, status=500)
    assert await store.deliveries.next_due() is None


async def test_counts_by_state(store: Store) -> None:
    """One count per state present."""
    assert await store.deliveries.counts() == {}
    await queue(store, row("a"), row("b"), row("c"), row("d", at=NOW + 1))
    await store.deliveries.claim(NOW, 3, LEASE)
    await store.deliveries.finish("a-2", "delivered", NOW, status=200)
    await store.deliveries.finish("b-2", "retry_wait", NOW, next_attempt_at=NOW + 5)
    assert await store.deliveries.counts() == {
        "delivered": 1,
        "retry_wait": 1,
        "sending": 1,
        "queued": 1,
    }


async def test_recent_lists_newest_first_without_payloads(store: Store) -> None:
    """Newest created first (ties by id), at most ``limit``, every column but the payload."""
    await queue(
        store, row("b", at=NOW), row("a", at=NOW), row("c", at=NOW + 1), row("z", at=NOW - 1)
    )
    await store.deliveries.claim(NOW, 1, LEASE)
    recent = await store.deliveries.recent()
    assert [r["id"] for r in recent] == ["c-2", "a-2", "b-2", "z-2"]
    assert all("payload" not in r for r in recent)
    assert recent[-1] == {
        "id": "z-2",
        "run_id": "z",
        "step": 2,
        "person_id": "u:ann",
        "workflow": "cart",
        "url": URL,
        "state": "sending",
        "attempts": 1,
        "next_attempt_at": NOW - 1,
        "last_status": None,
        "last_error": None,
        "created_at": NOW - 1,
        "delivered_at": None,
    }
    assert [r["id"] for r in await store.deliveries.recent(limit=2)] == ["c-2", "a-2"]


async def test_get_decodes_the_payload(store: Store) -> None:
    """One delivery with its decoded payload and attempt state; None for an unknown id."""
    await queue(store, row("r1"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish(
        "r1-2", "retry_wait", NOW, status=500, error="500", next_attempt_at=NOW + 5
    )
    got = await store.deliveries.get("r1-2")
    assert got == {
        "id": "r1-2",
        "url": URL,
        "state": "retry_wait",
        "attempts": 1,
        "last_status": 500,
        "last_error": "500",
        "payload": {
            "type": EVENT_TYPE,
            "timestamp": "2027-01-15T08:00:00Z",
            "data": {
                "workflow": "cart",
                "run": "r1",
                "step": 3,
                "level": 1,
                "person": {"id": "u:ann", "email": "ann@example.com", "traits": dict(ANN.traits)},
            },
        },
    }
    assert await store.deliveries.get("nope") is None


async def test_disabled_lists_endpoints_by_url(store: Store) -> None:
    """Every disabled endpoint with its reason, ordered by URL."""
    assert await store.deliveries.disabled() == {}
    await queue(store, row("r1", url=URL), row("r2", url=OTHER))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish("r2-2", "failed", NOW, status=410, disable="410 Gone (erp)")
    await store.deliveries.finish("r1-2", "failed", NOW, status=410, disable="410 Gone (crm)")
    disabled = await store.deliveries.disabled()
    assert disabled == {URL: "410 Gone (crm)", OTHER: "410 Gone (erp)"}
    assert list(disabled) == sorted([URL, OTHER])


# Erasure


async def test_forget_erases_a_persons_deliveries(store: Store, db_path: Path) -> None:
    """Erasing an address deletes its person's deliveries (payloads carry the email and
    traits) and leaves the address nowhere on disk; other persons' deliveries stay."""
    address = "ann.erased@example.com"
    await person(store, "ann", address)
    await person(store, "bob", "bob@example.com")
    ann = Person(id="u:ann", email=address, traits={"email": address})
    bob = Person(id="u:bob", email="bob@example.com")
    await queue(
        store, row("r1", person=ann), row("r2", person=ann, url=OTHER), row("r3", person=bob)
    )
    await store.deliveries.claim(NOW, 1, LEASE)
    assert await store.mail.forget(address.upper(), NOW) == 1
    assert [r["id"] for r in await store.deliveries.recent()] == ["r3-2"]
    assert await store.deliveries.get("r1-2") is None
    for path in db_path.parent.glob(db_path.name + "*"):
        assert address.encode() not in path.read_bytes().lower(), path


async def test_forget_erases_deliveries_decided_before_a_merge(store: Store) -> None:
    """A delivery decided while the person was anonymous is erased with the merged person."""
    address = "zed@example.com"
    identify = event("identify", anonymousId="anon-7", traits={"email": address})
    await store_group(store, [parse(identify)])
    anonymous = Person(id="a:anon-7", email=address, traits={"email": address})
    await queue(store, row("r1", person=anonymous))
    merge = event("identify", anonymousId="anon-7", userId="zed", traits={"email": address})
    await store_group(store, [parse(merge)], at=2000.0)
    assert await store.mail.forget(address, NOW) == 1
    assert await store._read("SELECT id, person_id FROM deliveries", ()) == []


# The writer-thread functions on a bare connection (properties over many schedules)


def deliveries_db() -> sqlite3.Connection:
    """An in-memory database with the deliveries tables of migration 0008 only."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    (script,) = [script for name, script in MIGRATIONS if name == "0008_deliveries"]
    for statement in filter(str.strip, script.split(";")):
        conn.execute(statement)
    return conn


@given(
    dues=st.lists(st.integers(-100, 100), max_size=12),
    now=st.integers(-50, 50),
    limit=st.integers(1, 5),
)
def test_claims_take_each_due_row_once_earliest_first(
    dues: list[int], now: int, limit: int
) -> None:
    """Claims at one instant take every row due by then exactly once, earliest due first,
    at most ``limit`` at a time, and nothing not yet due."""
    conn = deliveries_db()
    rows = [row(f"r{i}", at=NOW + due) for i, due in enumerate(dues)]
    conn.executemany(INSERT_DELIVERY, rows)
    due_of = {f"r{i}-2": NOW + due for i, due in enumerate(dues)}
    taken: list[str] = []
    while batch := claim(conn, NOW + now, limit, LEASE):
        assert len(batch) <= limit
        assert [due_of[d.id] for d in batch] == sorted(due_of[d.id] for d in batch)
        assert all(d.attempts == 1 for d in batch)
        taken += [d.id for d in batch]
    assert len(taken) == len(set(taken))
    assert sorted(taken) == sorted(i for i, due in due_of.items() if due <= NOW + now)
    assert [due_of[i] for i in taken] == sorted(due_of[i] for i in taken)
    assert not conn.in_transaction


def test_a_failing_outcome_is_rolled_back_whole() -> None:
    """A batch's outcomes are one transaction: when a disable part fails, all are undone."""
    conn = deliveries_db()
    conn.executemany(INSERT_DELIVERY, [row("r1")])
    claim(conn, NOW, 10, LEASE)
    conn.execute("DROP TABLE disabled_endpoints")
    with pytest.raises(sqlite3.OperationalError):
        finish_many(conn, [("r1-2", "failed", NOW + 1, 410, "gone", None, "410 Gone")])
    state = conn.execute("SELECT state, lease_until FROM deliveries").fetchall()
    assert state == [("sending", NOW + LEASE)] and not conn.in_transaction


async def test_ended_deliveries_are_purged_after_the_retention(store: Store) -> None:
    """purge(before) deletes delivered and failed rows last updated before ``before``; rows
    still queued, leased or waiting to retry stay, and so do newer ended ones."""
    await queue(store, row("old-ok"), row("old-no"), row("new-ok"), row("wait"), row("leased"))
    await store.deliveries.claim(NOW, 10, LEASE)
    await store.deliveries.finish("old-ok-2", "delivered", NOW + 1, status=200)
    await store.deliveries.finish("old-no-2", "failed", NOW + 1, status=400)
    await store.deliveries.finish("new-ok-2", "delivered", NOW + 10, status=200)
    await store.deliveries.finish("wait-2", "retry_wait", NOW + 1, next_attempt_at=NOW + 99)
    assert await store.deliveries.purge(NOW + 5) == 2
    left = {d["id"]: d["state"] for d in await store.deliveries.recent()}
    assert left == {"new-ok-2": "delivered", "wait-2": "retry_wait", "leased-2": "sending"}


def test_the_claim_searches_the_due_index() -> None:
    """The claim's query uses the partial index deliveries_due (no table scan, whatever the
    number of ended rows)."""
    conn = deliveries_db()
    plan = conn.execute(
        f"EXPLAIN QUERY PLAN SELECT d.id FROM deliveries AS d "
        f"LEFT JOIN disabled_endpoints AS e ON e.url = d.url WHERE {DUE} "
        f"ORDER BY d.next_attempt_at LIMIT 16",
        (NOW, NOW),
    ).fetchall()
    details = " ".join(str(step[3]) for step in plan)
    assert "USING INDEX deliveries_due" in details and "SCAN d" not in details
