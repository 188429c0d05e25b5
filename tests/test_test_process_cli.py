"""Tests for the ``python -m scheduler.test_process`` showcase command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from scheduler.tools.process_showcase import DEMOS, cli

UNIT = float(os.environ.get("SCHEDBUS_TEST_UNIT", "1.0"))
ROOT = Path(__file__).resolve().parent.parent


def units(n: float) -> float:
    """Return ``n`` test time units in seconds."""
    return n * UNIT


def test_run_demo_alone() -> None:
    outcome = CliRunner().invoke(cli, ["--run"])
    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("run ")
    assert "exit    0" in lines[0] and "exited" in lines[0]


def test_every_demo_runs_by_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.test_process"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=units(30),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(DEMOS)
    by_step = dict(zip(DEMOS, lines, strict=True))
    assert "timed_out" in by_step["timeout"] and "past the deadline" in by_step["timeout"]
    assert "exit   -9" in by_step["terminate"] and "stopped" in by_step["terminate"]
    assert "gone: True" in by_step["tree"]
