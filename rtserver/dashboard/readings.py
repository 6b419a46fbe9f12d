"""What the dashboard reads of the running server: its counters, handed in as plain callables.

The dashboard only reads. It never holds the pipeline, the engine or the senders; the wiring
(:mod:`rtserver.runtime`) hands it these callables instead, each giving the value of the moment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Readings"]


def _nothing() -> Mapping[str, int]:
    return {}


def _off() -> str:
    return "off"


def _never() -> bool:
    return False


def _no_rows() -> Sequence[Mapping[str, Any]]:
    return ()


@dataclass(frozen=True, slots=True)
class Readings:
    """The running server's counters, read when the dashboard or a scrape asks."""

    commits: Callable[[], Mapping[str, int]]
    """The pipeline's counters: ``stored``, ``duplicates``, ``commits``, ``failed_commits``."""
    queue_depth: Callable[[], int]
    """Batches waiting to be committed."""
    websockets: Callable[[], int]
    """Open browser WebSockets."""
    timers_armed: Callable[[], int]
    """Timers in the wheel (run timers and scheduled sweeps)."""
    viewers: Callable[[], int]
    """Live dashboard viewers."""
    dropped_viewers: Callable[[], int]
    """Viewers dropped for falling behind."""
    mails: Callable[[], Mapping[str, int]] = _nothing
    """The mail sender's outcomes (empty while no sender runs)."""
    mail_sender: Callable[[], str] = _off
    """What the mail sender is doing: ``sending``, what it waits for, or ``off``."""
    webhooks: Callable[[], Mapping[str, int]] = _nothing
    """The webhook sender's outcomes."""
    disk_low: Callable[[], bool] = _never
    """Whether free disk space is under ``store.min_free_mb`` (browser ingest refused)."""
    polls: Callable[[], Sequence[Mapping[str, Any]]] = _no_rows
    """Each polling source's status: ``name``, ``last_run``, ``last_error``, ``next_run``,
    ``lag_s`` (since it last read to the end), ``failures`` (in a row), and this process's
    ``requests``, ``errors`` and new ``events``."""
