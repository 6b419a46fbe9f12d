"""Running a benchmark of bench/ as a subprocess, for the smoke checks of the bench scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.server import TIMEOUT_UNIT

ROOT = Path(__file__).resolve().parent.parent.parent


def run_bench(script: str, *flags: str) -> str:
    """Run ``python -m bench.<script>`` (warnings as errors); return its stdout."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", f"bench.{script}", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=24 * TIMEOUT_UNIT,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout
