"""The wiring point: tasks started by name and stopped in order, and a task that dies stops the
server instead of leaving the others running."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from werkzeug import Response

from rtserver.errors import ConfigError
from rtserver.runtime import STOP_ORDER, Supervisor, load_rules
from tests.support.receiver import Receiver
from tests.support.server import TIMEOUT_UNIT, make_config, run_server


async def _started(supervisor: Supervisor, names: list[str], ended: list[str]) -> None:
    """Start a task per name that records when it ends; return once all of them run."""
    running = {name: asyncio.Event() for name in names}

    async def work(name: str) -> None:
        running[name].set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    for name in names:
        supervisor.start(name, work(name))
    async with asyncio.timeout(TIMEOUT_UNIT):
        for event in running.values():
            await event.wait()


async def test_tasks_stop_in_order_then_the_rest() -> None:
    """stop() cancels the named tasks in the given order, each awaited before the next, then
    any other; none of that counts as a failure."""
    supervisor = Supervisor()
    ended: list[str] = []
    await _started(supervisor, ["sender", "extra", "pipeline", "timer-driver"], ended)
    await supervisor.stop(("timer-driver", "pipeline", "sender"))
    assert ended == ["timer-driver", "pipeline", "sender", "extra"]
    assert supervisor.failure is None and supervisor.tasks == {}
    assert supervisor.stopping.is_set()


def test_the_stop_order_ends_with_the_dashboard() -> None:
    """Timers, the polling sources and the catalog's tasks stop first (no new decisions or
    events), then the pipeline, the senders, the hub last."""
    assert STOP_ORDER[:7] == (
        "timer-driver", "pollers", "catalog-feeds", "catalog-triggers", "pipeline", "sender",
        "courier",
    )  # fmt: skip
    assert STOP_ORDER[-1] == "dashboard-hub"


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [("raise", "died: RuntimeError('disk on fire')"), ("return", "ended"), ("cancel", "cancelled")],
)
async def test_a_task_that_ends_by_itself_is_a_failure(
    outcome: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that raises, returns or is cancelled while the server runs is logged with its
    cause and recorded as the failure (the first one only)."""
    supervisor = Supervisor()
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()
        if outcome == "raise":
            raise RuntimeError("disk on fire")

    supervisor.start("sender", work())
    with caplog.at_level(logging.ERROR, logger="rtserver.runtime"):
        if outcome == "cancel":
            supervisor.tasks["sender"].cancel()
        release.set()
        await asyncio.wait([supervisor.tasks["sender"]])
    assert supervisor.failure is not None and reason in supervisor.failure
    assert "stopping the server" in caplog.text
    await supervisor.stop()
    assert reason in supervisor.failure


async def test_a_new_lifespan_starts_without_the_old_failure() -> None:
    """The same app served again starts with no failure and fresh events."""
    supervisor = Supervisor()

    async def done() -> None:
        return None

    supervisor.start("sender", done())
    await asyncio.wait([supervisor.tasks["sender"]])
    supervisor.draining.set()
    await supervisor.stop()
    assert supervisor.failure is not None
    await _started(supervisor, ["pipeline"], [])
    assert supervisor.failure is None
    assert not supervisor.draining.is_set() and not supervisor.stopping.is_set()
    await supervisor.stop()


async def test_a_dead_task_stops_the_server(tmp_path: Path) -> None:
    """When one of the server's tasks dies, uvicorn stops serving, the lifespan stops the other
    tasks, and the server reports why (the command then exits 1)."""
    async with run_server(make_config(tmp_path)) as live:
        supervisor = live.runtime.supervisor
        assert set(supervisor.tasks) == set(STOP_ORDER)
        supervisor.tasks["retention"].cancel()
        await asyncio.wait_for(live.task, 4 * TIMEOUT_UNIT)
        assert live.server.failure == "task retention was cancelled"
        assert supervisor.tasks == {}


async def test_a_task_that_fails_while_stopping_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A task that raises instead of stopping is logged, and the others still stop."""
    supervisor = Supervisor()
    running = asyncio.Event()
    ended: list[str] = []

    async def stubborn() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("could not flush") from None

    supervisor.start("sender", stubborn())
    await _started(supervisor, ["hub"], ended)
    await asyncio.wait_for(running.wait(), TIMEOUT_UNIT)
    with caplog.at_level(logging.ERROR, logger="rtserver.runtime"):
        await supervisor.stop(("sender", "hub"))
    assert "task sender failed while stopping" in caplog.text
    assert ended == ["hub"] and supervisor.failure is None


def test_check_config_refuses_an_alert_webhook_on_a_metadata_address(tmp_path: Path) -> None:
    """The alert webhook goes through the same guard as webhook steps: a metadata or other
    private address is refused at start and by check-config (unless hooks.allow_private)."""
    metadata = "http://169.254.169.254/latest/meta-data/"
    config = make_config(tmp_path, dashboard={"alert_webhook": metadata})
    with pytest.raises(ConfigError, match=r"dashboard.alert_webhook.*link-local"):
        load_rules(config, resolve=lambda host, port: [host])
    allowed = make_config(tmp_path, dashboard={"alert_webhook": metadata}, hooks=PRIVATE)
    assert load_rules(allowed, resolve=lambda host, port: [host])


PRIVATE = {"allow_private": True}


async def test_the_alert_webhook_follows_no_redirect(tmp_path: Path) -> None:
    """At run time the server's alert poster follows no redirect: a 302 is a failure and the
    place it points to is never asked."""
    async with Receiver.running() as receiver:
        hook = receiver.url_for("/hook")
        receiver.expect_request("/hook", method="POST").respond_with_response(
            Response(status=302, headers={"Location": receiver.url_for("/elsewhere")})
        )
        receiver.expect_request("/elsewhere").respond_with_data("ok")
        config = make_config(tmp_path, dashboard={"alert_webhook": hook}, hooks=PRIVATE)
        async with run_server(config) as live:
            alerts = live.runtime.board.alerts
            await alerts.notify([{"alert": "queue_depth", "state": "raised"}])
            assert alerts.post_failures == 1 and alerts.posted == 0
        assert [request.path for request, _ in receiver.log] == ["/hook"]
