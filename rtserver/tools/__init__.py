"""Commands beside serving: simulate, the demo, and the mail commands.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.tools import demo, init, loadgen, records, simulate
from rtserver.tools.demo import Shop, demo_config
from rtserver.tools.mail import add_commands
from rtserver.tools.simulate import read_events

__all__ = [
    "Shop",
    "add_commands",
    "demo",
    "demo_config",
    "init",
    "loadgen",
    "read_events",
    "records",
    "simulate",
]
