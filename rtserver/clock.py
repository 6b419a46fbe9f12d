"""Time, injected: every part takes its clocks as arguments, so tests and the simulator drive them.

Nothing in rtserver reads the wall clock itself: :func:`time.time` and :func:`time.monotonic` are
passed in where the server is built (``create_app``), and a test passes a fake one.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Clock", "Monotonic"]

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``): when things happen, stored and compared."""

Monotonic = Callable[[], float]
"""Seconds on a clock that never goes back (``time.monotonic``): how long things take."""
