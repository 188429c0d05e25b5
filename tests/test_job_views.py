"""How ``jobs`` prints jobs: a table that fits the terminal with ids whole, and the whole
story of one job in text; ``--since`` as an age or a time."""

from __future__ import annotations

import time
from datetime import datetime

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from scheduler.ids import short_id
from scheduler.protocol import JobEvent
from scheduler.tools.job_views import job_text, jobs_table
from scheduler.tools.jobs import Since, cli

NOW = time.time()
GENERATED = "0123456789abcdef0123456789abcdef"
EVENTS = [
    JobEvent(
        event="failed",
        id=GENERATED,
        priority=5,
        state="failed",
        time=NOW,
        task="resize_image",
        scheduler="vm-worker-with-a-long-name-01",
        attempt=3,
        error="ValueError: the input file /srv/uploads/2026/11/30/photo.jpg is truncated",
        submitted_at=NOW - 100,
    ),
    JobEvent(
        event="scheduled",
        id="nightly-report-2026-11-30",
        priority=1,
        state="scheduled",
        time=NOW,
        task="report",
        run_at=NOW + 3600,
        submitted_at=NOW - 3 * 86400,
    ),
]


@pytest.mark.parametrize("width", [120, 80, 60])
def test_the_table_fits_the_width_and_keeps_ids_and_states_whole(width: int) -> None:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    with console.file:
        jobs_table(EVENTS, console)
    lines = console.export_text().splitlines()
    assert all(len(line) <= width for line in lines)
    assert [line.split()[:2] for line in lines[1:]] == [
        [short_id(GENERATED), "failed"],
        ["nightly-report-2026-11-30", "scheduled"],
    ]
    assert ("ValueError" in lines[1]) == (width >= 80)


def test_show_tells_times_attempts_and_the_whole_traceback() -> None:
    event = JobEvent(
        event="dead",
        id=GENERATED,
        priority=2,
        state="dead",
        time=NOW,
        task="add",
        args={"a": 1},
        attempt=2,
        exit_code=1,
        error="RuntimeError: b",
        errors=["RuntimeError: a", "RuntimeError: b"],
        traceback='Traceback (most recent call last):\n  File "t.py", line 3\nRuntimeError: b\n',
        submitted_at=1_800_000_000.0,
        finished_at=1_800_000_005.0,
    )
    text = job_text(event)
    submitted = datetime.fromtimestamp(1_800_000_000.0).astimezone().isoformat()
    assert f"\n  submitted  {submitted}\n" in text
    assert '\n  args       {"a": 1}\n' in text and "\n  attempts   2\n" in text
    assert "\n    1. RuntimeError: a\n    2. RuntimeError: b\n" in text
    assert text.endswith(
        '\n  traceback:\n    Traceback (most recent call last):\n      File "t.py", line 3\n'
        "    RuntimeError: b"
    )


def test_since_takes_an_age_or_an_iso_time_and_refuses_anything_else() -> None:
    assert Since().convert("10m", None, None) == pytest.approx(time.time() - 600, abs=5)
    assert Since().convert("1d", None, None) == pytest.approx(time.time() - 86400, abs=5)
    assert Since().convert("2026-01-31T08:00:00+00:00", None, None) == 1769846400.0
    assert Since().convert("0001-01-01T00:00:00+00:00", None, None) == 0.0
    assert Since().convert("99999999999d", None, None) == 0.0
    with pytest.raises(click.BadParameter):
        Since().convert("yesterday", None, None)
    result = CliRunner().invoke(cli, ["list", "--since", "3 fortnights"])
    assert result.exit_code == 2
    assert "Invalid value for '--since': '3 fortnights' is neither an age" in result.output
