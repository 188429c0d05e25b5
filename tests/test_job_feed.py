"""The job feed's channels: a log file that cannot be made leaves the job on the
scheduler's terminal instead of failing it; a short job's progress pipe is read at its end
without ever being watched, a longer one's while it runs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scheduler.protocol import Assignment, Report
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


async def test_a_short_job_costs_the_loop_no_reader_and_its_progress_still_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reports: list[Report] = []
    heard = asyncio.Event()

    def emit(report: Report, job: Assignment) -> None:
        reports.append(report)
        heard.set()

    feed = JobFeed(None, emit, clock=time.monotonic)
    loop = asyncio.get_running_loop()
    watched: list[int] = []
    add_reader = loop.add_reader

    def counted(fd: int, callback: Callable[..., object], *args: object) -> None:
        watched.append(fd)
        add_reader(fd, callback, *args)

    monkeypatch.setattr(loop, "add_reader", counted)
    short = Assignment("short", 1, 5, runtime=0.0)
    channels = feed.open(short.id, 1)
    job_end = os.dup(channels.progress.write_fd)  # the job process's copy
    feed.started(short, channels)
    os.write(job_end, b'[0.5, "half"]\n')
    os.close(job_end)
    assert feed.ended(short, report=True) is None
    assert [(r.event, r.progress, r.message) for r in reports] == [("progress", 0.5, "half")]
    assert watched == [], "ended before WATCH_AFTER_S: read once, at its end"

    heard.clear()
    running = Assignment("running", 1, 5, runtime=1.0)
    channels = feed.open(running.id, 1)
    job_end = os.dup(channels.progress.write_fd)
    feed.started(running, channels)
    os.write(job_end, b'[0.25, "a quarter"]\n')
    await asyncio.wait_for(heard.wait(), 5)
    assert (reports[-1].id, reports[-1].progress) == ("running", 0.25), "heard while it runs"
    assert watched == [channels.progress.read_fd]
    os.close(job_end)
    feed.ended(running, report=True)
    feed.shutdown()
