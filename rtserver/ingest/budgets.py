"""What one client address may do, across reconnects, WebSockets and HTTP together.

A per-connection limit is no limit when a client can reconnect, and counting connections
refuses real shoppers: mobile networks put thousands of them behind one carrier-grade NAT
address. So every client address (an IPv4 address, an IPv6 /64, the forwarded address behind
``server.trusted_proxies``) has two token buckets: events per second (``address_events_*``) and
WebSocket opens per second (``address_opens_*``). The buckets of the least recently seen
addresses are dropped past ``MAX_ADDRESSES``: memory stays bounded whatever the traffic.

``budget_exempt`` lists networks the budgets do not apply to (benchmarks and tests on
loopback). Loopback is never exempt by default: behind a reverse proxy on the same host every
client arrives from 127.0.0.1.

The free disk space is watched here too: below ``store.min_free_mb`` browser ingest is refused,
since no per-address limit stops many addresses from filling the disk.
"""

from __future__ import annotations

import ipaddress
import math
import shutil
from collections import OrderedDict
from pathlib import Path

from rtserver.clock import Monotonic
from rtserver.config import Config

__all__ = ["MAX_ADDRESSES", "Budgets"]

MAX_ADDRESSES = 100_000
"""Addresses whose buckets are kept (each a few hundred bytes)."""
DISK_CHECK_S = 1.0
"""How often the free disk space is looked up again (a statvfs)."""


class Budgets:
    """Per-address token buckets for events and WebSocket opens, and the disk space guard."""

    def __init__(self, config: Config, monotonic: Monotonic) -> None:
        ingest = config.ingest
        self.events = (ingest.address_events_per_s, float(ingest.address_events_burst))
        self.opens = (ingest.address_opens_per_s, float(ingest.address_opens_burst))
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in ingest.budget_exempt]
        self.monotonic = monotonic
        self.buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        """(kind, address) -> (tokens, when last filled)."""
        self.folder = Path(config.store.path).resolve().parent
        self.min_free_bytes = config.store.min_free_mb * 2**20
        self._disk: tuple[float, bool] = (-math.inf, False)
        self._keys: dict[str, str | None] = {}
        """What :meth:`key` said of each address seen lately (parsing one costs more than a
        frame's budget check)."""

    def key(self, address: str) -> str | None:
        """The budget an address spends from (an IPv6 address's /64), None when exempt."""
        try:
            return self._keys[address]
        except KeyError:
            pass
        if len(self._keys) >= MAX_ADDRESSES:
            self._keys.clear()
        key = self._keys[address] = self._key_of(address)
        return key

    def _key_of(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address  # not an address ("unknown"): one budget for all of them
        if any(ip in network for network in self.exempt):
            return None
        if ip.version == 6:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def take(self, kind: str, address: str, n: int = 1) -> float | None:
        """Spend ``n`` tokens of ``address``'s ``kind`` ("events" or "opens") budget: None when
        there were enough, else the seconds until there will be."""
        key = self.key(address)
        if key is None:
            return None
        rate, burst = self.events if kind == "events" else self.opens
        now = self.monotonic()
        tokens, then = self.buckets.pop((kind, key), (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if n <= tokens:
            tokens -= n
            wait = None
        else:
            wait = (min(n, burst) - tokens) / rate
        self.buckets[(kind, key)] = (tokens, now)
        while len(self.buckets) > MAX_ADDRESSES:
            self.buckets.popitem(last=False)
        return wait

    def disk_low(self) -> bool:
        """Whether the store's disk has less than ``store.min_free_mb`` free (looked up at most
        every ``DISK_CHECK_S``)."""
        now = self.monotonic()
        checked, low = self._disk
        if now - checked >= DISK_CHECK_S:
            try:
                low = shutil.disk_usage(self.folder).free < self.min_free_bytes
            except OSError:
                low = False  # the store reports its own failures
            self._disk = (now, low)
        return low
