"""bench.run_all --write: the ratio table from the runs' reports, written between markers."""

from __future__ import annotations

from pathlib import Path

from bench.run_all import BEGIN, END, ratio_table, write_between_markers

REPORTS = {
    "ws_ingest": [
        {"ratio": 0.4, "cpu_ratio": 0.3, "machine": {"load_avg_1m": 0.4}, "results": [
            {"server": "rtserver", "events_per_s": 20000.0, "cpu_us_per_event": 50.0},
            {"server": "bare-websockets", "events_per_s": 50000.0, "cpu_us_per_event": 15.0},
        ]},
        {"ratio": 0.5, "cpu_ratio": 0.4, "machine": {"load_avg_1m": 0.9}, "results": [
            {"server": "rtserver", "events_per_s": 24000.0, "cpu_us_per_event": 40.0},
            {"server": "bare-websockets", "events_per_s": 48000.0, "cpu_us_per_event": 16.0},
        ]},
    ],
    "recommend": [
        {"results": [
            {"server": "ours", "hit_rate": 0.195}, {"server": "popular", "hit_rate": 0.078},
        ]}
    ],
}  # fmt: skip


def test_the_ratio_table_and_the_markers(tmp_path: Path) -> None:
    table = ratio_table(REPORTS, "2026-12-07 16:00:00", "servers on uvloop, 2 cores")
    assert "2 cores, load average 0.4–0.9 during the runs;" in table
    assert (
        "| durable acked WebSocket ingest, 100 connections | 22,000 events/s, 45.0 CPU µs/event | "
        "bare-websockets: 49,000 events/s, 15.5 CPU µs/event | 0.45× | 0.35 |"
    ) in table
    assert "| 0.195 hit-rate@4 | popular: 0.078 hit-rate@4 |  |  |" in table
    page = tmp_path / "RESULTS.md"
    page.write_text(f"# Results\n{BEGIN}\nold\n{END}\nby hand\n")
    assert write_between_markers(page, table)
    text = page.read_text()
    assert "old" not in text and table in text and text.endswith(f"{END}\nby hand\n")
    bare = tmp_path / "other.md"
    bare.write_text("no markers\n")
    assert not write_between_markers(bare, table) and bare.read_text() == "no markers\n"
