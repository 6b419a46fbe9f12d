"""What rtserver fetches itself: polling sources (``[[poll]]``) for platforms without webhooks.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.sources.definitions import NAMES, PollSource, compile_sources
from rtserver.sources.poller import Cycle, Mapped, Poller, Pollers

__all__ = ["NAMES", "Cycle", "Mapped", "PollSource", "Poller", "Pollers", "compile_sources"]
