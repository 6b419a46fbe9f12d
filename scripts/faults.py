"""The fault suite behind ./scripts/faults: groups of fault tests run at larger sizes, each in
its own pytest process with a time bound, and a table of what each checked and found."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Group:
    name: str
    checks: str
    tests: tuple[str, ...]
    large: dict[str, str]
    """Environment of the larger run."""
    size: str
    budget_s: int


GROUPS = (
    Group(
        "kill -9, ingest",
        "browsers stream while a nemesis SIGKILLs the server: every acked event stored once",
        ("tests/test_durability.py",),
        {"RTSERVER_KILL9_EVENTS": "40000", "RTSERVER_KILL9_INGEST_KILLS": "40"},
        "40,000 events, 40 kills (CI: 10,000, 20)",
        1200,
    ),
    Group(
        "kill -9, timers",
        "SIGKILL while timers fire: every due step decided once, no mail twice",
        ("tests/test_firing_durability.py",),
        {"RTSERVER_KILL9_CARTS": "2400", "RTSERVER_KILL9_TIMER_KILLS": "30"},
        "2,400 carts, 30 kills (CI: 600, 12)",
        1200,
    ),
    Group(
        "kill -9, polling",
        "SIGKILL mid-cycle of a polled API: each order once, the cursor kept",
        ("tests/test_poll_durability.py",),
        {},
        "9 orders over 5 pages, a 429, a kill",
        300,
    ),
    Group(
        "disk full",
        "a store that cannot grow: nacks and 503s, never a false ack; readiness; the free-disk "
        "guard",
        (
            "tests/ingest/test_segment.py::test_storage_full_is_503_with_retry_after_then_recovers",
            "tests/ingest/test_segment.py::test_segment_library_sees_retry_after_when_storage_is_full",
            "tests/test_app.py::test_readyz_turns_503_while_commits_fail_and_recovers_without_traffic",
            "tests/ingest/test_budgets.py",
        ),
        {},
        "CI sizes",
        300,
    ),
    Group(
        "SMTP faults",
        "refused, hung, dropped and 4xx/5xx relays; lost acks after DATA; retries and leases",
        ("tests/mail/test_sender.py", "tests/mail/test_smtp.py"),
        {},
        "CI sizes",
        600,
    ),
    Group(
        "clock jumps",
        "a state machine of carts, orders, restarts and clock jumps forwards and backwards",
        ("tests/engine/test_engine_model.py",),
        {"RTSERVER_MODEL_EXAMPLES": "1000"},
        "1,000 examples of 40 steps (CI: 100)",
        1800,
    ),
    Group(
        "slow viewers",
        "dashboard viewers that stop reading are dropped; ingest and the others go on",
        ("tests/dashboard/test_hub.py",),
        {},
        "CI sizes",
        300,
    ),
)


def run(group: Group, quick: bool, folder: Path) -> tuple[str, int, int, float]:
    """(outcome, passed, failed, seconds) of one group."""
    report = folder / f"{abs(hash(group.name))}.xml"
    env = {**os.environ, **({} if quick else group.large)}
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
        f"--junitxml={report}", *group.tests,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        subprocess.run(command, cwd=ROOT, env=env, timeout=group.budget_s, check=False)
    except subprocess.TimeoutExpired:
        return f"over its {group.budget_s}s bound", 0, 0, time.monotonic() - started
    elapsed = time.monotonic() - started
    if not report.exists():
        return "did not run", 0, 0, elapsed
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return ("ok" if failed == 0 and total else "FAILED"), total - failed - skipped, failed, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the CI sizes")
    parser.add_argument("groups", nargs="*", help="run only the groups whose name contains these")
    args = parser.parse_args()
    chosen = [g for g in GROUPS if not args.groups or any(w in g.name for w in args.groups)]
    rows = []
    with TemporaryDirectory() as folder:
        for group in chosen:
            print(f"==> {group.name}: {group.checks}", flush=True)
            rows.append((group, *run(group, args.quick, Path(folder))))
    print("\n| fault | what it checks | size | tests passed | failed | seconds | found |")
    print("|---|---|---|---|---|---|---|")
    for group, outcome, passed, failed, seconds in rows:
        size = "CI sizes" if args.quick else group.size
        print(f"| {group.name} | {group.checks} | {size} | {passed} | {failed} | "
              f"{seconds:.0f} | {outcome} |")  # fmt: skip
    return 0 if all(row[1] == "ok" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
