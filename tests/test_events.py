"""Events built from the bus's job record."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.policy.events import job_event, status_event
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload, Report
from scheduler.protocol_types import EventKind, JobState

WALL = 1_700_000_000.0


def record(**fields: Any) -> Job:
    payload = JobPayload(priority=2, runtime=3.0, task="render")
    return Job("j", payload, 0, WALL - 10, updated_at=WALL - 1, **fields)


@pytest.mark.parametrize(
    ("fields", "kind", "error", "retry_in_s"),
    [
        ({}, "accepted", None, None),
        ({"attempt": 1}, "requeued", None, None),
        ({"attempt": 1, "not_before": WALL - 5}, "requeued", None, None),
        ({"attempt": 1, "not_before": WALL + 5, "errors": ["x"]}, "retrying", None, 5.0),
        ({"state": "assigned", "holder": "s", "attempt": 1}, "assigned", None, None),
        ({"state": "running", "holder": "s", "attempt": 1}, "started", None, None),
        ({"state": "succeeded", "errors": ["early"]}, "succeeded", None, None),
        ({"state": "dead", "errors": ["a", "b"]}, "dead", "b", None),
        ({"state": "failed"}, "failed", None, None),
    ],
)
def test_status_reads_like_the_latest_event(
    fields: dict[str, Any], kind: str, error: str | None, retry_in_s: float | None
) -> None:
    job = record(**fields)
    event = status_event(job, WALL)
    assert (event.event, event.state, event.error, event.retry_in_s) == (
        kind,
        job.state,
        error,
        retry_in_s,
    )
    assert (event.time, event.task, event.scheduler) == (WALL - 1, "render", job.holder)
    listed = kind in ("retrying", "succeeded", "dead") and job.errors
    assert event.errors == (list(job.errors) if listed else None)


def test_a_report_s_measurements_and_an_overriding_error() -> None:
    job = record(state="failed", errors=("boom",))
    report = Report("failed", "j", 1, exit_code=2, error="boom", wall_s=1.0, max_rss_kb=7)
    event = job_event(job, "failed", WALL, "s", report)
    assert (event.exit_code, event.error, event.wall_s, event.max_rss_kb) == (2, "boom", 1.0, 7)
    assert job_event(job, "failed", WALL, "s", report, error="other").error == "other"


TRACEBACK = "Traceback (most recent call last):\n  ...\nValueError: bad\n"


@pytest.mark.parametrize(
    ("kind", "state", "carried"),
    [
        ("succeeded", "succeeded", True),
        ("failed", "failed", True),
        ("dead", "dead", True),
        ("timed_out", "timed_out", True),
        ("cancelled", "cancelled", True),
        ("retrying", "queued", True),
        ("accepted", "queued", False),
        ("requeued", "queued", False),
        ("assigned", "assigned", False),
        ("started", "running", False),
        ("evicted", "queued", False),
    ],
)
def test_final_and_retrying_events_carry_the_result_and_traceback_others_never(
    kind: EventKind, state: JobState, carried: bool
) -> None:
    job = record(state=state, attempt=1, result={"rows": [1, 2]}, traceback=TRACEBACK)
    event = job_event(job, kind, WALL, "s")
    if carried:
        assert (event.result, event.traceback) == ({"rows": [1, 2]}, TRACEBACK)
    else:
        assert (event.result, event.traceback) == (None, None)


def test_status_of_a_finished_job_keeps_its_result_or_traceback() -> None:
    succeeded = status_event(record(state="succeeded", result=[4]), WALL)
    assert (succeeded.event, succeeded.result, succeeded.traceback) == ("succeeded", [4], None)
    failed = status_event(record(state="failed", errors=("x",), traceback=TRACEBACK), WALL)
    assert (failed.event, failed.result, failed.traceback) == ("failed", None, TRACEBACK)
    retrying = status_event(
        record(attempt=1, not_before=WALL + 5, errors=("x",), traceback=TRACEBACK), WALL
    )
    assert (retrying.event, retrying.traceback) == ("retrying", TRACEBACK)
    running = status_event(
        record(state="running", holder="s", attempt=2, traceback=TRACEBACK), WALL
    )
    assert (running.event, running.traceback) == ("started", None)


def test_status_of_a_job_that_ended_without_running_says_why() -> None:
    """A skipped or expired job's record keeps why in ``errors``; its status shows it
    as ``error`` (what ``jobs show`` prints), as a failed job's does."""
    for state, why in [
        ("skipped", "dependency a ended failed"),
        ("expired", "not handed to a scheduler within its misfire grace"),
        ("failed", "ValueError: bad"),
    ]:
        assert status_event(record(state=state, errors=(why,)), WALL).error == why
    assert status_event(record(state="cancelled", errors=("x",)), WALL).error is None


def test_a_report_s_traceback_is_not_the_event_s_the_job_s_is() -> None:
    job = record(state="failed", errors=("ValueError: bad",), traceback=TRACEBACK)
    report = Report("failed", "j", 1, error="ValueError: bad", traceback="other")
    assert job_event(job, "failed", WALL, "s", report).traceback == TRACEBACK
