"""People: which person each event belongs to, and which identities it links. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtserver.config.schema import IngestConfig
from rtserver.model.events import Event, parse_event, sign_identity, verify_identity
from rtserver.model.people import (
    Link,
    Resolution,
    anonymous_person,
    ids_to_look_up,
    resolve_people,
    user_person,
)
from tests.support.events import event, shopper
from tests.support.server import make_config, run_server, send_batch
from tests.support.workflows import cart_workflow

LIMITS = IngestConfig()
SECRET = "idsecret_0123456789abcdefghijklmnopqrstuvwxyz"
_counter = iter(range(1_000_000))


def server(kind: str = "track", **fields: Any) -> Event:
    """A write-key event (trusted); ``fields`` are Segment fields, None removes one."""
    return parse_event(_raw(kind, fields), LIMITS, source="server")


def browser(kind: str = "track", *, prove: bool = False, **fields: Any) -> Event:
    """A browser event through verify_identity; ``prove`` adds a valid userHash."""
    raw = _raw(kind, fields)
    if prove:
        raw["context"] = {"userHash": sign_identity(SECRET, raw["userId"])}
    return verify_identity(parse_event(raw, LIMITS, source="browser"), SECRET)


def _raw(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {"type": kind, "messageId": f"m-{next(_counter)}", "anonymousId": "A"}
    if kind == "track":
        raw["event"] = "Product Viewed"
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def test_person_ids() -> None:
    """Known users are ``u:<userId>``, unknown browsers ``a:<anonymousId>``."""
    assert user_person("42") == "u:42"
    assert anonymous_person("A") == "a:A"


def test_anonymous_event_maps_to_its_anonymous_person() -> None:
    """An event with only an anonymousId belongs to ``a:<anonymousId>`` and links nothing."""
    assert resolve_people([browser()], {}) == Resolution(["a:A"], [])
    assert resolve_people([server()], {}) == Resolution(["a:A"], [])


def test_known_user_maps_to_user_person() -> None:
    """A trusted userId without an anonymousId is ``u:<userId>``, with nothing to link."""
    assert resolve_people([server(anonymousId=None, userId="U")], {}) == Resolution(["u:U"], [])


def test_trusted_user_links_and_merges_the_anonymous_id() -> None:
    """A server event naming both ids links the browser and merges its anonymous history."""
    result = resolve_people([server("identify", userId="U")], {})
    assert result == Resolution(["u:U"], [Link("A", "u:U", "a:A")])


def test_verified_identify_links_and_merges_the_anonymous_id() -> None:
    """A browser identify proven by userHash stitches the anonymous history to the user."""
    result = resolve_people([browser("identify", userId="U", prove=True)], {})
    assert result == Resolution(["u:U"], [Link("A", "u:U", "a:A")])


def test_linked_anonymous_id_resolves_to_the_user() -> None:
    """A later anonymous-only event of a linked browser belongs to the user, linking nothing."""
    assert resolve_people([browser()], {"A": "u:U"}) == Resolution(["u:U"], [])


def test_link_applies_to_later_events_of_the_same_group() -> None:
    """Within one group, events after the identify resolve to the user; earlier ones don't."""
    events = [browser(), browser("identify", userId="U", prove=True), browser()]
    result = resolve_people(events, {})
    assert result.people == ["a:A", "u:U", "u:U"]
    assert result.links == [Link("A", "u:U", "a:A")]  # the merge moves the first event over


def test_repeated_identify_links_once() -> None:
    """Identifying an already linked browser again changes nothing."""
    events = [server("identify", userId="U"), server("identify", userId="U")]
    assert resolve_people(events, {}).links == [Link("A", "u:U", "a:A")]
    assert resolve_people([server("identify", userId="U")], {"A": "u:U"}).links == []


def test_other_user_on_same_device_relinks_without_merging() -> None:
    """A second user logging in on a browser takes it over; the first keeps their history."""
    result = resolve_people([browser("identify", userId="B", prove=True)], {"A": "u:U"})
    assert result == Resolution(["u:B"], [Link("A", "u:B", None)])
    later = resolve_people([browser()], {"A": "u:B"})
    assert later.people == ["u:B"]


def test_unverified_browser_user_never_acts_for_the_user() -> None:
    """A browser userId without a valid userHash stays with the browser's own person."""
    claim = browser("identify", userId="victim", traits={"email": "victim@s.example"})
    assert claim.known_user is None
    assert resolve_people([claim], {}) == Resolution(["a:A"], [])
    forged = browser(userId="victim", context={"userHash": sign_identity(SECRET, "mallory")})
    assert resolve_people([forged], {"A": "u:mallory"}) == Resolution(["u:mallory"], [])


def test_unverified_event_of_a_linked_browser_stays_with_its_user() -> None:
    """A claim of another userId from a linked browser goes to the browser's own user."""
    claim = browser("identify", userId="victim")
    assert resolve_people([claim], {"A": "u:U"}) == Resolution(["u:U"], [])


def test_alias_links_previous_id_and_merges_its_user() -> None:
    """A trusted alias links previousId and merges both ``a:`` and ``u:`` of it."""
    alias = server("alias", anonymousId=None, userId="U", previousId="old")
    result = resolve_people([alias], {})
    assert result == Resolution(["u:U"], [Link("old", "u:U", "a:old"), Link(None, "u:U", "u:old")])


def test_alias_with_anonymous_id_links_both() -> None:
    """An alias carrying its own anonymousId links it as well as previousId."""
    alias = server("alias", userId="U", previousId="old")
    assert resolve_people([alias], {}).links == [
        Link("A", "u:U", "a:A"),
        Link("old", "u:U", "a:old"),
        Link(None, "u:U", "u:old"),
    ]


def test_alias_of_previous_id_linked_elsewhere_does_not_merge_that_user() -> None:
    """An alias whose previousId belongs to another user re-links it, merging only ``u:old``."""
    alias = server("alias", anonymousId=None, userId="U", previousId="old")
    assert resolve_people([alias], {"old": "u:X"}).links == [
        Link("old", "u:U", None),
        Link(None, "u:U", "u:old"),
    ]


def test_alias_to_itself_links_nothing_more() -> None:
    """An alias whose previousId is the userId itself only links the anonymousId."""
    alias = server("alias", userId="U", previousId="U")
    assert resolve_people([alias], {}).links == [Link("A", "u:U", "a:A")]


def test_browser_alias_merges_only_its_own_anonymous_history() -> None:
    """A proven browser alias merges ``a:<anon>``, never ``u:<anon>`` (anyone picks the anon)."""
    alias = browser("alias", anonymousId="alice", userId="mallory", previousId="alice", prove=True)
    result = resolve_people([alias], {})
    assert result == Resolution(["u:mallory"], [Link("alice", "u:mallory", "a:alice")])
    assert all(link.merge_from != "u:alice" for link in result.links)


def test_ids_to_look_up() -> None:
    """The store looks up every anonymousId, and the previousId of aliases only."""
    events = [
        server(),
        server(anonymousId=None, userId="U"),
        server("identify", anonymousId="B", userId="U", previousId="ignored"),
        server("alias", anonymousId=None, userId="U", previousId="old"),
    ]
    assert ids_to_look_up(events) == {"A", "B", "old"}
    assert ids_to_look_up([]) == set()


async def test_a_hijacked_anonymous_id_cannot_change_a_verified_user(tmp_path: Path) -> None:
    """A browser that sends a verified user's anonymousId without a userHash acts for that
    user's behaviour (its cart starts the user's run), but changes none of the user's traits,
    consent or email, verified or claimed."""
    cart = cart_workflow(step=[{"wait_inactive": "30m"}, {"send": "cart_reminder"}])
    async with run_server(make_config(tmp_path, workflow=[cart])) as live:
        async with live.ws() as ws:
            await send_batch(ws, [shopper("u1", "u1@example.com")])  # anonymousId anon-1
        async with live.ws() as ws:
            hijack = event(
                "identify",
                anonymousId="anon-1",
                traits={"email": "eve@evil.example", "first_name": "LOCKED", "consent": "none"},
            )
            added = event("track", anonymousId="anon-1", event="Product Added")
            added["properties"] = {"cart_id": "c1", "product_id": "p1"}
            reply = await send_batch(ws, [hijack, added])
            assert len(reply["ack"]) == 2
        store = live.runtime.store
        profile = await store.profile("u:u1")
        assert profile is not None
        assert profile["traits"]["first_name"] == "Ann" and "LOCKED" not in str(profile)
        assert profile["email"] == "u1@example.com" and profile["claimed_email"] is None
        consent = await store._read("SELECT consent FROM profiles WHERE person_id = 'u:u1'", ())
        assert consent == [("confirmed_opt_in",)]
        (run,) = await store.runs("active")
        assert run["person_id"] == "u:u1"
        assert await store.profile("a:anon-1") is None
