"""``rtserver simulate``: the shipped example through the shipped workflows, in virtual time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from rtserver.cli import main
from rtserver.config.schema import Config, load_config
from rtserver.errors import InvalidEvent
from rtserver.tools.simulate import format_offset, read_events, simulate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cart.jsonl"
CONFIG = ROOT / "config.toml"

EXPECTED = """\
    +0m05s  u1  welcome  step 1  send welcome
   +40m00s  u1  cart_abandonment  step 2  skip (frequency cap)
 +1h20m00s  u2  cart_abandonment  step 1  end (exit on Order Completed)
 +3h05m00s  u3  browse_abandonment  step 2  send browse_reminder
 +3h05m00s  u3  browse_abandonment  step 1  end (completed)
 +5h00m10s  u4  high_value_visit  step 2  send high_value_followup
 +5h00m10s  u4  high_value_visit  step 1  end (completed)
 +1d00h40m  u1  cart_abandonment  step 4  send cart_reminder_2
 +1d00h40m  u1  cart_abandonment  step 3  end (completed)
 +3d00h00m  u1  welcome  step 3  send welcome_offer @ Sat 10:00 (optimal: 0 engagements; \
best Sat 10:00 0.006, Sat 11:00 0.006, Sat 12:00 0.006)
 +3d00h00m  u1  welcome  step 2  end (completed)
 +3d01h20m  u2  post_purchase  step 2  send post_purchase @ Sat 11:00 (optimal: 0 engagements; \
best Sat 11:00 0.006, Sat 12:00 0.006, Sat 13:00 0.006)
 +3d01h20m  u2  post_purchase  step 1  end (completed)
"""
"""With no engagement anywhere yet, every hour is as good: optimal sends go at once."""


def test_example_prints_the_expected_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped example gives the documented schedule: one line per decision, in order."""
    started = time.perf_counter()
    assert main(["simulate", str(EXAMPLE), "--config", str(CONFIG)]) == 0
    elapsed = time.perf_counter() - started
    assert capsys.readouterr().out == EXPECTED
    print(f"simulated 3 days in {elapsed:.3f}s")  # informative: a bench, not an assertion


def test_json_output_has_the_same_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the same decisions, one JSON object per line."""
    assert main(["simulate", str(EXAMPLE), "--config", str(CONFIG), "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == EXPECTED.count("\n")
    assert rows[0]["workflow"] == "welcome" and rows[0]["offset_s"] == 5.0
    assert rows[1] == rows[1] | {"action": "skip", "detail": "frequency cap", "step": 2}


def test_bad_event_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid line is reported with its number; exit status 2."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type": "track", "event": "X", "userId": "u", "timestamp": "2026-01-01"}\n{')
    assert main(["simulate", str(path), "--config", str(CONFIG)]) == 2
    assert "line 2: malformed json" in capsys.readouterr().err


def test_missing_event_file_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that cannot be read exits 2 with the reason."""
    assert main(["simulate", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_events_without_timestamps_follow_the_line_before() -> None:
    """A line without a timestamp happens when the previous one did; ids come from line numbers."""
    config = load_config(None, env={})
    lines = [
        "# a comment",
        '{"type": "track", "event": "A", "userId": "u", "timestamp": "2026-01-01T00:00:00+00:00"}',
        "",
        '{"type": "track", "event": "B", "userId": "u"}',
    ]
    events = read_events(lines, config)
    assert [t for t, _ in events] == [events[0][0]] * 2
    assert [e.message_id for _, e in events] == ["sim-2", "sim-4"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"type": "track", "event": "A", "userId": "u"}',
            "line 1: the first event needs a timestamp",
        ),
        ("[1]", "line 1: event must be an object"),
        ('{"type": "track", "event": "A", "userId": "u", "timestamp": "never"}', "line 1: "),
    ],
)
def test_bad_lines_are_refused(line: str, message: str) -> None:
    """Lines that are not timed Segment messages are refused, naming the line."""
    with pytest.raises(InvalidEvent, match=message):
        read_events([line], load_config(None, env={}))


async def test_no_events_no_decisions() -> None:
    """An empty file simulates nothing."""
    assert await simulate(load_config(None, env={}), []) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "+0m05s"), (1800, "+30m00s"), (7200, "+2h00m00s"), (86400 + 2400, "+1d00h40m")],
)
def test_offsets_read_like_durations(seconds: float, text: str) -> None:
    """Offsets are compact and sortable by eye."""
    assert format_offset(seconds) == text


async def test_emit_and_webhook_decisions_are_printed(tmp_path: Path) -> None:
    """Emit and webhook steps show their event name and URL."""
    flows = [
        {
            "name": "crm",
            "trigger": "Order Completed",
            "step": [{"emit": "Customer Won"}, {"webhook": "https://crm.example/h"}],
        }
    ]
    overrides = {"workflow": flows, "hooks": {"allow": ["https://crm.example/"]}}
    config = load_config(None, env={}, overrides=overrides)
    line = orjson.dumps(
        {"type": "track", "event": "Order Completed", "userId": "u", "timestamp": "2026-01-01"}
    ).decode()
    decisions = await simulate(config, read_events([line], config))
    assert [d.line().split("step ")[1] for d in decisions] == [
        "1  emit Customer Won",
        "2  webhook https://crm.example/h",
        "1  end (completed)",
    ]


def timed_config(**send_time: float) -> Config:
    flows = [{"name": "w", "trigger": "Signed Up", "step": [
        {"send": "welcome", "send_time": "optimal", "within": "24h"}]}]  # fmt: skip
    overrides = {"workflow": flows, "send_time": send_time, "mail": {"frequency_cap": "off"}}
    return load_config(None, env={}, overrides=overrides)


def lines(*raws: dict[str, Any]) -> list[str]:
    return [orjson.dumps(raw).decode() for raw in raws]


async def test_optimal_sends_show_the_chosen_time_and_reason() -> None:
    """A person who opens mail at 19:00 signs up at 10:00: the send shows at +9h, with the
    hour, the history and the best hours; a control send goes at once and says so."""
    user = {"userId": "u1"}
    identify = {"type": "identify", **user, "timestamp": "2026-03-01T08:00:00+00:00",
                "traits": {"email": "ann@example.com", "consent": "confirmed_opt_in"}}  # fmt: skip
    opens = [{"type": "track", "event": "Email Opened", **user,
              "timestamp": f"2026-03-{day:02d}T19:00:00+00:00"} for day in range(1, 9)]  # fmt: skip
    signed = {"type": "track", "event": "Signed Up", **user,
              "timestamp": "2026-03-09T10:00:00+00:00"}  # fmt: skip
    config = timed_config(exploration=0.0, control=0.0)
    decisions = await simulate(config, read_events(lines(identify, *opens, signed), config))
    (send,) = [d for d in decisions if d.action == "send"]
    assert format_offset(send.at - datetime(2026, 3, 9, 10, tzinfo=UTC).timestamp()) == "+9h00m00s"
    assert send.detail.startswith(
        "welcome @ Mon 19:00 (optimal: 7.63 engagements; best Mon 19:00 0.041"
    )  # decayed
    config = timed_config(control=1.0)
    decisions = await simulate(config, read_events(lines(identify, signed), config))
    (send,) = [d for d in decisions if d.action == "send"]
    assert send.detail == "welcome (control: at once)"


async def test_a_quiet_window_says_so() -> None:
    """An optimal send whose whole window is quiet says why it went when it did."""
    flows = [{"name": "w", "trigger": "Signed Up", "step": [
        {"send": "welcome", "send_time": "optimal", "within": "1h"}]}]  # fmt: skip
    overrides = {"workflow": flows, "send_time": {"control": 0.0},
                 "mail": {"quiet_hours": "21:00-08:00"}}  # fmt: skip
    config = load_config(None, env={}, overrides=overrides)
    identify = {"type": "identify", "userId": "u1", "timestamp": "2026-03-09T21:00:00+00:00",
                "traits": {"email": "ann@example.com", "consent": "confirmed_opt_in"}}  # fmt: skip
    signed = {"type": "track", "event": "Signed Up", "userId": "u1",
              "timestamp": "2026-03-09T22:00:00+00:00"}  # fmt: skip
    decisions = await simulate(config, read_events(lines(identify, signed), config))
    (send,) = [d for d in decisions if d.action == "send"]
    assert send.detail == "welcome (optimal: window quiet)"


async def test_bandit_sends_show_the_arm_and_how_the_arms_stand() -> None:
    """A send of a ``selection = "bandit"`` step names its arm and every arm's sends and goals
    so far (this send counted): three sign-ups, three sends counted one by one."""
    flows = [{"name": "w", "trigger": "Signed Up", "step": [
        {"variant": [{"send": "welcome", "name": "plain"}, {"send": "cart_reminder"}],
         "selection": "bandit"}]}]  # fmt: skip
    overrides = {"workflow": flows, "mail": {"frequency_cap": "off"}}
    config = load_config(None, env={}, overrides=overrides)
    raws = []
    for n in range(3):
        at = f"2026-03-09T10:0{n}:00+00:00"
        raws += [{"type": "identify", "userId": f"u{n}", "timestamp": at,
                  "traits": {"email": f"p{n}@example.com", "consent": "confirmed_opt_in"}},
                 {"type": "track", "event": "Signed Up", "userId": f"u{n}"}]  # fmt: skip
    decisions = await simulate(config, read_events(lines(*raws), config))
    sends = [d.detail for d in decisions if d.action == "send"]
    assert len(sends) == 3
    totals = []
    for detail in sends:
        arm = detail[detail.index("[") + 1 : detail.index("]")]
        assert arm in ("plain", "B")
        assert detail.startswith(("welcome [plain] (bandit;", "cart_reminder [B] (bandit;"))
        counts = detail.split("sends/goals ")[1].rstrip(")").split(", ")
        assert [c.split()[0] for c in counts] == ["plain", "B"]
        totals.append(sum(int(c.split()[1].split("/")[0]) for c in counts))
    assert totals == [1, 2, 3]
