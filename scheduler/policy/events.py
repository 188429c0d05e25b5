"""Job events built from the bus's :class:`~scheduler.policy.job.Job` record. Pure."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from scheduler.policy.dispatch.timers import due_of
from scheduler.policy.job import Job
from scheduler.protocol import JobEvent, Report
from scheduler.protocol_types import DEFAULT_PRIORITY, FINAL_EVENTS, EventKind

_EXPLAINED_STATES: Final = frozenset({"failed", "timed_out", "dead", "skipped", "expired"})
"""The states whose status carries the latest of the job's ``errors`` as its ``error``:
a failure, or a job that ended without running (the reason its record keeps)."""

_KIND_OF_STATE: Final[dict[str, EventKind]] = {
    "assigned": "assigned",
    "running": "started",
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "timed_out",
    "cancelled": "cancelled",
    "dead": "dead",
    "scheduled": "scheduled",
    "expired": "expired",
    "blocked": "blocked",
    "skipped": "skipped",
}


def job_event(
    job: Job,
    kind: EventKind,
    time: float,
    scheduler: str | None,
    report: Report | None = None,
    *,
    error: str | None = None,
    retry_in_s: float | None = None,
) -> JobEvent:
    """The event ``kind`` about ``job`` as it stands, stamped ``time``.

    ``report`` adds its measurements; ``error`` overrides the report's error. Final and
    ``retrying`` events list the errors of every failed attempt and carry the job's result,
    its latest traceback and the tail of its latest attempt's output.
    """
    # Only the fields that differ from their defaults are passed: msgspec builds a
    # struct from 15 arguments or fewer several times faster than from more, and the
    # core builds several events per job.
    extra: dict[str, Any] = {}
    if report is not None:
        _measured(report, extra)
        if error is None:
            error = report.error
    if error is not None:
        extra["error"] = error
    if retry_in_s is not None:
        extra["retry_in_s"] = retry_in_s
    if kind in FINAL_EVENTS or kind == "retrying":
        _closing(job, extra)
    if job.state == "scheduled":
        extra["run_at"] = due_of(job)
    p = job.payload
    return JobEvent(
        kind,
        job.id,
        DEFAULT_PRIORITY if p.priority is None else p.priority,
        job.state,
        time,
        p.runtime,
        p.task,
        scheduler,
        job.attempt,
        job.evictions,
        **extra,
    )


def _measured(report: Report, extra: dict[str, Any]) -> None:
    """Add what ``report`` measured of its attempt to ``extra`` (what it has)."""
    if report.exit_code is not None:
        extra["exit_code"] = report.exit_code
    if report.wall_s is not None:
        extra["wall_s"] = report.wall_s
    if report.cpu_s is not None:
        extra["cpu_s"] = report.cpu_s
    if report.max_rss_kb is not None:
        extra["max_rss_kb"] = report.max_rss_kb


def _closing(job: Job, extra: dict[str, Any]) -> None:
    """Add what a final or ``retrying`` event carries of ``job`` to ``extra``: the
    errors of its failed attempts, its result, latest traceback and output tail."""
    if job.errors:
        extra["errors"] = list(job.errors)
    if job.result is not None:
        extra["result"] = job.result
    if job.traceback is not None:
        extra["traceback"] = job.traceback
    if job.output is not None:
        extra["output"] = job.output


def status_event(job: Job, wall: float) -> JobEvent:
    """The latest event-shaped status of ``job`` as of ``wall`` (epoch seconds).

    A queued job reads ``retrying`` while held back for a retry (with the seconds left),
    ``requeued`` once it has been assigned before, else ``accepted``. The event's time is
    when the job last changed; it also carries the job's args, when it was submitted, when
    its latest attempt started and when it finished (with the exit code of a final job).
    A running job's status carries its latest progress and message and the latest of its
    output.
    """
    retry_in_s: float | None = None
    if job.state != "queued":
        kind = _KIND_OF_STATE[job.state]
    elif job.not_before is not None and job.not_before > wall:
        kind, retry_in_s = "retrying", job.not_before - wall
    elif job.attempt > 0:
        kind = "requeued"
    else:
        kind = "accepted"
    error = job.errors[-1] if job.state in _EXPLAINED_STATES and job.errors else None
    event = job_event(job, kind, job.updated_at, job.holder, error=error, retry_in_s=retry_in_s)
    event = msgspec.structs.replace(
        event,
        args=job.payload.args,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        exit_code=job.exit_code if job.final else None,
    )
    if job.state != "running":
        return event
    return msgspec.structs.replace(
        event, progress=job.progress, message=job.message, output=job.output
    )
