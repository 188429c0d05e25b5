"""The job feed's channels: a log file that cannot be made leaves the job on the
scheduler's terminal instead of failing it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from scheduler.worker.job_feed import JobFeed
from scheduler.worker.job_output import JobLogs


def test_a_log_file_that_cannot_be_made_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "a-file"
    root.write_text("not a directory")
    feed = JobFeed(JobLogs(root, "w"), lambda report, job: None, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING):
        channels = feed.open("j1", 1)
    assert channels.log is None and channels.log_path is None
    assert "job j1 writes to this terminal: no log file" in caplog.text
    channels.close()
