"""The mail half of the store (``store.mail``): claims with suppression, consent and expiry,
outcomes, crash recovery into ``ambiguous``, erasure, the sink, product reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtserver.model.people import email_hash
from rtserver.store.database import Store
from rtserver.store.outbox import NEVER, in_transaction
from tests.support.events import event
from tests.support.store import parse, store_group

NOW = 1_800_000_000.0
DAY = 86400.0


def row(
    mail: str, person: str = "u:ann", *, marketing: bool = True, due: float = NOW,
    recipient: str | None = None, created: float = NOW, run: str | None = None,
) -> tuple[Any, ...]:  # fmt: skip
    return (mail, run, 1 if run else None, person, "cart_abandonment", "cart_reminder", "",
            marketing, recipient, due, created, created, "{}")  # fmt: skip


async def person(store: Store, user: str, email: str, consent: str = "confirmed_opt_in") -> None:
    traits = {"email": email, "first_name": user.title()}
    await store_group(store, [parse(event("identify", userId=user, traits=traits))])
    # Consent is a fact the engine derives (tests/engine/test_decide.py); set here directly.
    await store._db.execute("UPDATE profiles SET consent = ? WHERE user_id = ?", (consent, user))


async def test_claim_leases_due_mail_with_what_rendering_needs(store: Store) -> None:
    """A due row goes ``sending`` with one more attempt and its person; a later one waits."""
    await person(store, "ann", "ann@example.com")
    await store.mail.queue([row("m1"), row("m2", due=NOW + 60)])
    claims, dropped = await store.mail.claim(NOW, 10, 300.0, DAY)
    assert dropped == [] and [c.id for c in claims] == ["m1"]
    (claim,) = claims
    assert claim.recipient == "ann@example.com" and claim.attempts == 1
    assert claim.person["traits"]["first_name"] == "Ann" and claim.run == {}
    assert (await store.mail.get("m1") or {})["state"] == "sending"
    assert await store.mail.next_due() == NOW + 60
    assert await store.mail.counts() == {"queued": 1, "sending": 1}


async def test_claim_ends_what_must_not_go_out(store: Store) -> None:
    """No verified email, a suppression, no marketing consent, or too old: never sent."""
    await person(store, "ann", "ann@example.com")
    await person(store, "bob", "bob@example.com", consent="none")
    await person(store, "cy", "cy@example.com")
    await store.mail.suppress("CY@example.com", "unsubscribe", NOW)
    await store.mail.queue([
        row("ghost", "u:nobody"),
        row("bob", "u:bob"),
        row("bob-order", "u:bob", marketing=False),
        row("cy", "u:cy"),
        row("cy-order", "u:cy", marketing=False),
        row("old", created=NOW - 2 * DAY),
    ])  # fmt: skip
    claims, dropped = await store.mail.claim(NOW, 10, 300.0, DAY)
    assert sorted(c.id for c in claims) == ["bob-order", "cy-order"]
    assert {d.id: (d.state, d.reason) for d in dropped} == {
        "ghost": ("failed", "no verified email"),
        "bob": ("suppressed", "no marketing consent"),
        "cy": ("suppressed", "unsubscribe"),
        "old": ("failed", "expired"),
    }


async def test_a_hard_bounce_stops_every_mail(store: Store) -> None:
    """finish(suppress=...) records the outcome and suppresses the recipient for all mail."""
    await person(store, "ann", "ann@example.com")
    await store.mail.queue([row("m1"), row("m2", marketing=False, due=NOW + 1)])
    await store.mail.claim(NOW, 10, 300.0, DAY)
    await store.mail.finish(
        "m1", "failed", NOW, code=550, reason="5.1.1 unknown", suppress="hard_bounce"
    )
    failed = await store.mail.get("m1") or {}
    assert (failed["state"], failed["last_code"]) == ("failed", 550)
    assert await store.mail.suppressed("ann@example.com") == "hard_bounce"
    _, dropped = await store.mail.claim(NOW + 1, 10, 300.0, DAY)
    assert [(d.id, d.reason) for d in dropped] == [("m2", "hard_bounce")]


async def test_outcomes_and_retries(store: Store) -> None:
    """sent stamps sent_at; retry_wait moves next_attempt_at; the row is claimed again then."""
    await person(store, "ann", "ann@example.com")
    await store.mail.queue([row("m1"), row("m2")])
    await store.mail.claim(NOW, 10, 300.0, DAY)
    await store.mail.finish("m1", "sent", NOW + 1, code=250)
    await store.mail.finish("m2", "retry_wait", NOW + 1, code=451, reason="try later",
                            next_attempt_at=NOW + 61)  # fmt: skip
    assert await store.mail.sent_since(NOW) == 1
    assert (await store.mail.claim(NOW + 60, 10, 300.0, DAY))[0] == []
    (again,), _ = await store.mail.claim(NOW + 61, 10, 300.0, DAY)
    assert (again.id, again.attempts) == ("m2", 2)


async def test_expired_leases_turn_ambiguous(store: Store) -> None:
    """A crash mid-send leaves 'sending'; once the lease runs out the row is 'ambiguous',
    claimable again under 'resend' and never under 'drop'."""
    await person(store, "ann", "ann@example.com")
    await store.mail.queue([row("m1"), row("m2")])
    await store.mail.claim(NOW, 10, 300.0, DAY)
    assert await store.mail.recover(NOW + 299, resend=True) == 0
    await store.mail.finish("m2", "sent", NOW)
    assert await store.mail.recover(NOW + 300, resend=True) == 1
    m1 = await store.mail.get("m1") or {}
    assert (m1["state"], m1["ambiguous"]) == ("ambiguous", 1)
    (claim,), _ = await store.mail.claim(NOW + 300, 10, 300.0, DAY)
    assert claim.id == "m1" and claim.attempts == 2
    assert await store.mail.recover(NOW + 600, resend=False) == 1
    assert (await store.mail.get("m1") or {})["next_attempt_at"] == NEVER
    assert await store.mail.next_due() is None
    assert (await store.mail.claim(NOW + 10 * DAY, 10, 300.0, 100 * DAY))[0] == []


async def test_outbox_listing_filters(store: Store) -> None:
    await store.mail.queue([row("m1"), row("m2", "u:bob"), row("m3", created=NOW + 1)])
    assert [r["id"] for r in await store.mail.outbox()] == ["m3", "m1", "m2"]
    assert [r["id"] for r in await store.mail.outbox(person_id="u:bob")] == ["m2"]
    assert [r["id"] for r in await store.mail.outbox("queued", "u:ann", limit=1)] == ["m3"]
    assert await store.mail.get("nope") is None


async def test_suppression_keeps_erasure(store: Store) -> None:
    """An erased address stays 'erased' whatever is suppressed later."""
    await store.mail.suppress("ann@example.com", "erased", NOW)
    await store.mail.suppress("ann@example.com", "complaint", NOW)
    assert await store.mail.suppressed("ann@example.com") == "erased"
    await store.mail.suppress("bob@example.com", "unsubscribe", NOW)
    await store.mail.suppress("bob@example.com", "complaint", NOW)
    assert await store.mail.suppressed("bob@example.com") == "complaint"


async def test_forget_leaves_no_trace_on_disk(store: Store, db_path: Path) -> None:
    """The address is in none of the database files after erasure; only its hash stays."""
    address = "alice.erased@example.com"
    await person(store, "alice", address)
    other = parse(event("track", anonymousId="anon-x", properties={"note": address.upper()}))
    await store_group(store, [other, parse(event("track", userId="alice"))])
    await store.mail.queue([row("m1", "u:alice")])
    await store.mail.save_sunk(
        "<m1@x>", "shop@example.com", [address], "Hi", b"To: " + address.encode(), NOW
    )
    assert await store.mail.forget(address.upper(), NOW) == 1
    assert await store.profile("u:alice") is None and await store.events_of("u:alice") == []
    assert await store.mail.suppressed(address) == "erased"
    assert await store.mail.outbox() == [] and await store.mail.sunk() == []
    for path in db_path.parent.glob(db_path.name + "*"):
        assert address.encode() not in path.read_bytes().lower(), path
    rows = await store._read("SELECT email_hash FROM suppressions", ())
    ((salt,),) = await store._read("SELECT value FROM secrets WHERE name = 'email_salt'", ())
    assert rows == [(email_hash(address, bytes.fromhex(salt)),)]  # salted
    assert rows != [(email_hash(address),)]


async def test_suppressions_from_before_the_salt_still_hold(store: Store) -> None:
    """A plain-SHA-256 entry (stores before migration 0007) still suppresses its address,
    and erasure replaces it with a salted one."""
    await store._db.execute(
        "INSERT INTO suppressions (email_hash, reason, created_at, detail) VALUES (?, ?, ?, '')",
        (email_hash("old@example.com"), "unsubscribe", NOW),
    )
    assert await store.mail.suppressed("Old@Example.com") == "unsubscribe"
    await store.mail.queue([row("m1", "u:old", recipient="old@example.com")])
    claims, dropped = await store.mail.claim(NOW, 10, 60.0, 86400.0)
    assert claims == [] and [d.reason for d in dropped] == ["unsubscribe"]
    await store.mail.forget("old@example.com", NOW)
    rows = await store._read(
        "SELECT reason, email_hash = ? FROM suppressions", (email_hash("old@example.com"),)
    )
    assert rows == [("erased", 0)]


async def test_sink_keeps_mail(store: Store) -> None:
    first = await store.mail.save_sunk(
        "<a@x>", "shop@example.com", ["a@example.com"], "One", b"1", NOW
    )
    second = await store.mail.save_sunk(
        None, "shop@example.com", ["b@example.com"], "Two", b"2", NOW
    )
    assert second > first
    newest, oldest = await store.mail.sunk()
    assert (newest["subject"], newest["recipients"], newest["message_id"]) == (
        "Two",
        ["b@example.com"],
        None,
    )
    assert oldest["body"] == b"1"


def viewed(user: str, product: str, **extra: Any) -> Any:
    properties = {"product_id": product, "name": product.title(), **extra}
    return parse(event("track", event="Product Viewed", userId=user, properties=properties))


async def test_product_reads(store: Store) -> None:
    """A person's product events oldest first; popular and co-viewed products, best first."""
    await store_group(store, [viewed("ann", "lamp"), viewed("ann", "desk")], at=NOW - 10)
    added = parse(
        event("track", event="Product Added", userId="ann", properties={"product_id": "lamp"})
    )
    await store_group(
        store, [added, parse(event("track", event="Page Viewed", userId="ann"))], at=NOW
    )
    others = [viewed("bob", "lamp"), viewed("bob", "chair"), viewed("bob", "chair")]
    await store_group(store, [*others, viewed("cy", "rug", price=3), viewed("cy", "chair")], at=NOW)
    events = await store.mail.product_events("u:ann", NOW - 60)
    assert [(n, p["product_id"]) for n, p in events] == [
        ("Product Viewed", "lamp"), ("Product Viewed", "desk"), ("Product Added", "lamp"),
    ]  # fmt: skip
    assert await store.mail.product_events("u:ann", NOW + 1) == []
    popular = await store.mail.popular(NOW - 60, 2)
    assert popular == ["chair", "lamp"]
    assert await store.mail.co_viewed(["lamp"], NOW - 60, 5) == ["chair", "desk"]
    assert await store.mail.co_viewed([], NOW, 5) == []


async def test_confirmation_counts(store: Store) -> None:
    await store._db.executemany(
        "INSERT INTO confirmations VALUES (email_hash(?), ?, ?)",
        [
            ("a@example.com", "1.2.3.4", NOW),
            ("b@example.com", "1.2.3.4", NOW - 2 * DAY),
        ],
    )
    assert await store.mail.confirmations("A@example.com", "1.2.3.4", NOW - DAY) == (1, 1)
    assert await store.mail.confirmations("b@example.com", "1.2.3.4", NOW - 3 * DAY) == (1, 2)


def test_rows_are_json() -> None:
    assert orjson.loads(row("m")[-1]) == {}


async def test_product_reads_use_the_view_index(store: Store, monkeypatch: Any) -> None:
    """popular and co_viewed count views from the product-view index (migration 0005), never
    by scanning events or computing each body's product."""
    plans: list[str] = []
    read = store.mail._read

    async def explained(sql: str, parameters: Any) -> list[Any]:
        plan = await read("EXPLAIN QUERY PLAN " + sql, parameters)
        plans.append(" | ".join(str(row[-1]) for row in plan))
        return await read(sql, parameters)

    monkeypatch.setattr(store.mail, "_read", explained)
    views = [viewed("ann", "lamp"), viewed("bob", "lamp"), viewed("bob", "rug")]
    await store_group(store, views, at=NOW)
    assert await store.mail.popular(NOW - 60, 5) == ["lamp", "rug"]
    assert await store.mail.co_viewed(["lamp"], NOW - 60, 5) == ["rug"]
    popular, co_viewed = plans
    # popular: grouped in product order straight off the index (no GROUP BY b-tree).
    assert "SEARCH events USING INDEX events_product_viewers (product_id>?)" in popular
    assert "GROUP BY" not in popular and "SCAN events" not in popular
    # co_viewed: the viewers from the index, then each viewer's views by person.
    assert "SEARCH events USING INDEX events_product_viewers (product_id=? AND received_at>?)" in (
        co_viewed
    )
    assert "SCAN events" not in co_viewed
    assert "USING INDEX events_person (person_id=? AND received_at>?)" in co_viewed


async def test_numeric_product_ids_read_as_text(store: Store) -> None:
    """A product id sent as a number (or as a sku) counts as its text, as recommend.py reads
    it: co-viewed of "7" finds the viewers of 7."""
    sku = parse(
        event("track", event="Product Viewed", userId="bob", properties={"sku": 7, "name": "S"})
    )
    views = [viewed("ann", "lamp"), sku, viewed("bob", "lamp"), viewed("cy", "7")]
    await store_group(store, views, at=NOW)
    assert await store.mail.popular(NOW - 60, 5) == ["7", "lamp"]
    assert await store.mail.co_viewed(["7"], NOW - 60, 5) == ["lamp"]


def test_transactions_roll_back_what_came_before_and_what_failed() -> None:
    """A write starts from a clean slate (a transaction left open is rolled back) and undoes
    itself when its work raises."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")  # left open by someone: not committed
    assert in_transaction(conn, lambda: conn.execute("INSERT INTO t VALUES (2)").rowcount) == 1
    with pytest.raises(sqlite3.OperationalError):
        in_transaction(conn, lambda: conn.execute("INSERT INTO nope VALUES (3)"))
    assert conn.execute("SELECT x FROM t").fetchall() == [(2,)] and not conn.in_transaction


async def test_suppressing_an_unknown_mail_does_nothing(store: Store) -> None:
    """An outcome for a row that is not there suppresses no one."""
    await store.mail.finish("nope", "failed", NOW, code=550, suppress="hard_bounce")
    assert await store._read("SELECT count(*) FROM suppressions", ()) == [(0,)]
