"""What one client address may do: token buckets across reconnects, WebSockets and HTTP, the
exempt networks, bounded memory, and the disk space guard. The abuse tests run a real server
and send from distinct loopback addresses, one for the attacker and one for a shopper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rtserver.dashboard.alerts import Alerts, Sample
from rtserver.dashboard.latency import Histogram
from rtserver.ingest import budgets as budgets_module
from rtserver.ingest.budgets import Budgets
from tests.support.events import event
from tests.support.server import (
    ORIGIN,
    TIMEOUT_UNIT,
    LiveServer,
    make_config,
    recv_json,
    run_server,
    send_batch,
)

ATTACKER, SHOPPER = "127.0.0.2", "127.0.0.3"


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def budgets_for(tmp_path: Path, **ingest: Any) -> tuple[Budgets, Ticks]:
    ticks = Ticks()
    limits = {"budget_exempt": [], **ingest}
    return Budgets(make_config(tmp_path, ingest=limits), ticks), ticks


def test_an_address_spends_its_burst_then_its_rate(tmp_path: Path) -> None:
    """A burst at once, then the rate; the answer says how long to wait; addresses are apart."""
    budgets, ticks = budgets_for(tmp_path, address_events_per_s=10.0, address_events_burst=50)
    assert budgets.take("events", "10.0.0.1", 50) is None
    assert budgets.take("events", "10.0.0.1", 5) == pytest.approx(0.5)
    assert budgets.take("events", "10.0.0.2", 50) is None  # another address: its own budget
    ticks.now += 0.5
    assert budgets.take("events", "10.0.0.1", 5) is None
    assert budgets.take("events", "10.0.0.1", 500) == pytest.approx(5.0)  # waits for a burst


def test_opens_have_their_own_budget(tmp_path: Path) -> None:
    """Opening sockets spends the opens budget, not the events budget."""
    budgets, _ = budgets_for(tmp_path, address_opens_per_s=1.0, address_opens_burst=2)
    assert budgets.take("opens", "10.0.0.1") is None
    assert budgets.take("opens", "10.0.0.1") is None
    assert budgets.take("opens", "10.0.0.1") == pytest.approx(1.0)
    assert budgets.take("events", "10.0.0.1", 100) is None


def test_ipv6_shares_a_64_and_exempt_networks_spend_nothing(tmp_path: Path) -> None:
    """One budget per IPv6 /64 (a host has many addresses in it); exempt networks are never
    held back; something that is no address shares one budget."""
    budgets, _ = budgets_for(
        tmp_path, address_events_burst=10, budget_exempt=["192.0.2.0/24", "2001:db8:1::/48"]
    )
    assert budgets.key("2001:db8::1") == budgets.key("2001:db8::ffff") == "2001:db8::/64"
    assert budgets.key("192.0.2.9") is None and budgets.key("2001:db8:1::5") is None
    assert budgets.key("unknown") == "unknown"
    assert budgets.take("events", "2001:db8::1", 10) is None
    assert budgets.take("events", "2001:db8::2", 1) is not None
    assert all(budgets.take("events", "192.0.2.9", 10) is None for _ in range(5))


def test_memory_is_bounded_by_the_least_recent_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_ADDRESSES the least recently seen address's bucket is dropped."""
    monkeypatch.setattr(budgets_module, "MAX_ADDRESSES", 3)
    budgets, _ = budgets_for(tmp_path)
    for i in range(5):
        budgets.take("events", f"10.0.0.{i}")
    assert [key for _, key in budgets.buckets] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert len(budgets._keys) <= 3  # the addresses' parsed keys are bounded too
    assert budgets.key("10.0.0.4") == "10.0.0.4"


def test_the_disk_guard_looks_again_only_after_a_second(tmp_path: Path) -> None:
    """Under store.min_free_mb the disk is low; the answer is kept for DISK_CHECK_S."""
    ticks = Ticks()
    low = Budgets(make_config(tmp_path, store={"min_free_mb": 2**40}), ticks)
    assert low.disk_low() is True
    fine = Budgets(make_config(tmp_path), ticks)
    assert fine.disk_low() is False
    fine.min_free_bytes = 2**60
    assert fine.disk_low() is False  # looked up less than a second ago
    ticks.now += 1.0
    assert fine.disk_low() is True


def test_a_low_disk_raises_an_alert() -> None:
    """The alert rules raise disk_low while browser ingest is refused for disk space."""
    alerts = Alerts(make_config(Path("/tmp")).dashboard)
    sample = Sample(0.0, 0, 0, 0, Histogram(), 0, 0, disk_low=True)
    (change,) = alerts.check(sample)
    assert change["alert"] == "disk_low" and change["state"] == "raised"


def abuse_config(tmp_path: Path, **ingest: Any) -> Any:
    return make_config(tmp_path, ingest={"budget_exempt": [], **ingest})


def ws_from(live: LiveServer, address: str) -> Any:
    return connect(
        live.ws_url,
        additional_headers={"Origin": ORIGIN},
        open_timeout=TIMEOUT_UNIT,
        local_addr=(address, 0),
    )


async def test_reconnecting_does_not_refill_an_address_budget(tmp_path: Path) -> None:
    """Events count per address across connections: reconnecting in a loop gets nacks with a
    retry hint once the address's burst is spent, while a shopper elsewhere goes on."""
    config = abuse_config(tmp_path, address_events_per_s=1.0, address_events_burst=20)
    async with run_server(config) as live:
        acked = 0
        for _ in range(5):  # 5 connections x 5 events: the last 5 are over the budget
            async with ws_from(live, ATTACKER) as ws:
                reply = await send_batch(ws, [event() for _ in range(5)])
                acked += len(reply.get("ack", []))
        assert acked == 20
        assert reply["retry_after_ms"] >= 1000 and len(reply["nack"]) == 5
        async with ws_from(live, SHOPPER) as ws:
            assert len((await send_batch(ws, [event()]))["ack"]) == 1
        assert await live.runtime.store.count_events() == 21


async def test_opening_sockets_in_a_loop_is_held_to_the_open_rate(tmp_path: Path) -> None:
    """Past its opens burst an address's sockets are accepted and closed 1013 with a retry
    hint (a browser cannot read a refused handshake's status); another address is not."""
    config = abuse_config(tmp_path, address_opens_per_s=1.0, address_opens_burst=3)
    async with run_server(config) as live:
        for _ in range(3):
            async with ws_from(live, ATTACKER) as ws:
                assert "ack" in await send_batch(ws, [event()])
        async with ws_from(live, ATTACKER) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "retry in" in closed.value.rcvd.reason
        async with ws_from(live, SHOPPER) as ws:
            assert "ack" in await send_batch(ws, [event()])


async def test_the_beacon_path_is_held_to_the_same_budget(tmp_path: Path) -> None:
    """POST /v1/batch with the public key spends the address's events budget: over it, 429
    with Retry-After (the snippet keeps the events and retries); the write key is trusted."""
    config = abuse_config(tmp_path, address_events_per_s=1.0, address_events_burst=10)
    async with run_server(config) as live:

        async def beacon(address: str, count: int) -> httpx.Response:
            transport = httpx.AsyncHTTPTransport(local_address=address)
            async with httpx.AsyncClient(base_url=live.http_url, transport=transport) as http:
                body = {"writeKey": live.config.keys.public, "batch": [event()] * count}
                return await http.post("/v1/batch", json=body, headers={"Origin": ORIGIN})

        assert (await beacon(ATTACKER, 10)).status_code == 200
        refused = await beacon(ATTACKER, 5)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"] == "too many events from this address, retry later"
        assert (await beacon(SHOPPER, 5)).status_code == 200


async def test_browser_ingest_is_refused_while_the_disk_is_almost_full(tmp_path: Path) -> None:
    """Under store.min_free_mb: sockets are accepted and closed 1013, beacons get 503 with
    Retry-After, nothing is stored."""
    async with run_server(make_config(tmp_path, store={"min_free_mb": 2**40})) as live:
        async with live.ws() as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        async with live.http() as http:
            body = {"writeKey": live.config.keys.public, "batch": [event()]}
            answer = await http.post("/v1/batch", json=body, headers={"Origin": ORIGIN})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert await live.runtime.store.count_events() == 0
