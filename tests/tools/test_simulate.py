"""``rtserver simulate``: the shipped example through the shipped workflows, in virtual time."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from rtserver.cli import main
from rtserver.config.schema import load_config
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
 +3d00h00m  u1  welcome  step 3  send welcome_offer
 +3d00h00m  u1  welcome  step 2  end (completed)
 +3d01h20m  u2  post_purchase  step 2  send post_purchase
 +3d01h20m  u2  post_purchase  step 1  end (completed)
"""


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
