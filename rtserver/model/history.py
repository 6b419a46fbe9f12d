"""A person's recent events, kept compactly: what ``person.events_since`` counts. Pure.

The engine keeps the facts of tens of thousands of persons in memory, up to
:data:`~rtserver.model.facts.HISTORY_LIMIT` recent events each. As a tuple of
``(name, time)`` tuples an event costs about 150 bytes (a tuple, a float, often its own copy of
the name); here it costs 9: the times are one ``array('d')``, and each event's name is one byte,
an index into the person's few distinct names, which are shared strings.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

__all__ = ["History"]

SHARED_NAMES = 4096
"""Distinct event names shared between persons (any more are kept per person)."""
MAX_NAMES = 255
"""Distinct names one history may index (one byte each)."""

_shared: dict[str, str] = {}


def _share(name: str) -> str:
    """One copy of each common event name, however many persons' histories hold it."""
    kept = _shared.get(name)
    if kept is not None:
        return kept
    if len(_shared) < SHARED_NAMES:
        _shared[name] = name
    return name


class History(Sequence[tuple[str, float]]):
    """Recent ``(event name, time)`` pairs, oldest first; immutable.

    It reads as the sequence of pairs it was built from (iteration, ``len``, indexing,
    equality); :meth:`events_since` counts without building them.
    """

    __slots__ = ("_names", "_ids", "_times")

    _names: tuple[str, ...]
    _ids: bytes
    _times: array[float]

    def __init__(self, pairs: Iterable[tuple[str, float]] = ()) -> None:
        names: list[str] = []
        index: dict[str, int] = {}
        ids = bytearray()
        times = array("d")
        for name, at in pairs:
            i = index.get(name)
            if i is None:
                if len(names) == MAX_NAMES:
                    raise ValueError(f"more than {MAX_NAMES} distinct event names")
                i = index[name] = len(names)
                names.append(_share(name))
            ids.append(i)
            times.append(at)
        self._names, self._ids, self._times = tuple(names), bytes(ids), times

    @classmethod
    def _of(cls, names: tuple[str, ...], ids: bytes, times: array[float]) -> History:
        made = cls.__new__(cls)
        made._names, made._ids, made._times = names, ids, times
        return made

    def appended(self, name: str, at: float, limit: int) -> History:
        """This history with ``(name, at)`` at its end, keeping the last ``limit`` events."""
        names, ids, times = self._names, self._ids, self._times
        try:
            i = names.index(name)
        except ValueError:
            if len(names) == MAX_NAMES:  # drop the names no kept event uses
                return History((*self[max(0, len(self) - limit + 1) :], (name, at)))
            i = len(names)
            names = (*names, _share(name))
        drop = max(0, len(ids) + 1 - limit)
        kept = times[drop:]
        kept.append(at)
        return History._of(names, ids[drop:] + bytes((i,)), kept)

    def since(self, t: float) -> History:
        """The events at or after ``t``."""
        ids, times = self._ids, self._times
        keep = [k for k, at in enumerate(times) if at >= t]
        return History._of(
            self._names, bytes(ids[k] for k in keep), array("d", [times[k] for k in keep])
        )

    def events_since(self, name: object, t: Any) -> int:
        """Events named ``name`` at or after ``t``."""
        # The names are distinct strings: at most one equals ``name``.
        k = next((i for i, n in enumerate(self._names) if n == name), None)
        if k is None:
            return 0
        return sum(1 for i, at in zip(self._ids, self._times, strict=True) if i == k and at >= t)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> tuple[str, float]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, float]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, float] | Sequence[tuple[str, float]]:
        names = self._names
        if isinstance(index, slice):
            return tuple(zip([names[i] for i in self._ids[index]], self._times[index], strict=True))
        return names[self._ids[index]], self._times[index]

    def __iter__(self) -> Iterator[tuple[str, float]]:
        names = self._names
        return zip([names[i] for i in self._ids], self._times, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        return self._times == other._times and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"History({list(self)!r})"
