"""People: which person each event belongs to, and which identities it stitches. Pure.

A person id is ``u:<userId>`` once the user is known (a trusted or verified ``userId``), else
``a:<anonymousId>``. An event that proves a user links its ``anonymousId`` to that user, and the
anonymous history moves over (a *merge*); ``alias`` does the same for ``previousId``. A browser
event with an unverified ``userId`` only ever acts for its own ``anonymousId``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rtserver.model.events import Event

__all__ = [
    "Link",
    "Resolution",
    "anonymous_person",
    "email_hash",
    "ids_to_look_up",
    "may_describe",
    "resolve_people",
    "user_person",
]


def email_hash(email: str, salt: bytes | None = None) -> str:
    """The hex HMAC-SHA256 of the lowercased, stripped address keyed with ``salt`` (as the
    store keys its suppressions and confirmations); without one the plain SHA-256 that stores kept
    before migration ``0007_email_salt`` (still matched, never written)."""
    normal = email.strip().lower().encode("utf-8")
    if salt is None:
        return hashlib.sha256(normal).hexdigest()
    return hmac.new(salt, normal, hashlib.sha256).hexdigest()


def may_describe(event: Event, person_id: str) -> bool:
    """Whether ``event`` may change what ``person_id``'s profile says (traits, email, consent).

    A trusted source may (the write key, rtserver itself), and so may a browser whose user id
    the shop's backend signed for this very person, or a browser describing its own anonymous
    profile. A browser that only knows a known user's anonymous id acts for that user's
    behaviour (its events count, its cart starts the user's run) but never describes them: an
    anonymous id is no password.
    """
    if event.source == "server" or not person_id.startswith("u:"):
        return True
    return event.known_user is not None and person_id == user_person(event.known_user)


def user_person(user_id: str) -> str:
    """The person id of a known user."""
    return "u:" + user_id


def anonymous_person(anonymous_id: str) -> str:
    """The person id of a browser nobody has identified yet."""
    return "a:" + anonymous_id


@dataclass(frozen=True, slots=True)
class Link:
    """``anonymous_id`` now belongs to ``person_id``; ``merge_from``'s history moves over."""

    anonymous_id: str | None
    person_id: str
    merge_from: str | None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The persons of a group of new events, in order, and the links they make."""

    people: list[str]
    links: list[Link]


def ids_to_look_up(events: Iterable[Event]) -> set[str]:
    """The anonymous ids whose current person the store must tell :func:`resolve_people`."""
    ids = {e.anonymous_id for e in events if e.anonymous_id}
    ids.update(e.previous_id for e in events if e.type == "alias" and e.previous_id)
    return ids


def resolve_people(events: Sequence[Event], known: Mapping[str, str]) -> Resolution:
    """Assign each event its person, given ``known`` (anonymous id → person) from the store."""
    mapping = dict(known)
    people: list[str] = []
    links: list[Link] = []

    def link(anonymous_id: str, person: str) -> None:
        current = mapping.get(anonymous_id, anonymous_person(anonymous_id))
        if current == person:
            return
        # Only anonymous history is merged: a device that changes hands (another user logs in
        # on it) is re-linked, but the first user's history stays theirs.
        merge = current if current.startswith("a:") else None
        links.append(Link(anonymous_id, person, merge))
        mapping[anonymous_id] = person

    for event in events:
        user = event.known_user
        if user is None:
            assert event.anonymous_id is not None  # parse_event requires one of the two ids
            people.append(mapping.get(event.anonymous_id, anonymous_person(event.anonymous_id)))
            continue
        person = user_person(user)
        if event.anonymous_id:
            link(event.anonymous_id, person)
        if event.type == "alias" and event.previous_id and event.previous_id != user:
            link(event.previous_id, person)
            if event.source == "server":
                # A trusted alias may name an earlier userId, whose profile merges too. A browser
                # alias only proves its own anonymousId (verify_identity), and anyone may pick
                # an anonymousId equal to somebody's userId: that profile must not move.
                links.append(Link(None, person, user_person(event.previous_id)))
        people.append(person)
    return Resolution(people, links)
