"""Job events built from the bus's :class:`~scheduler.policy.job.Job` record. Pure."""

from __future__ import annotations

from typing import Final

import msgspec

from scheduler.policy.dispatch.timers import due_of
from scheduler.policy.job import Job
from scheduler.protocol import JobEvent, Report
from scheduler.protocol_types import FINAL_EVENTS, EventKind

_FAILED_STATES: Final = frozenset({"failed", "timed_out", "dead"})

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
    p = job.payload
    closing = kind in FINAL_EVENTS or kind == "retrying"
    listed = closing and bool(job.errors)
    return JobEvent(
        event=kind,
        id=job.id,
        priority=job.priority,
        state=job.state,
        time=time,
        runtime=p.runtime,
        task=p.task,
        scheduler=scheduler,
        attempt=job.attempt,
        evictions=job.evictions,
        exit_code=None if report is None else report.exit_code,
        error=error if error is not None or report is None else report.error,
        wall_s=None if report is None else report.wall_s,
        cpu_s=None if report is None else report.cpu_s,
        max_rss_kb=None if report is None else report.max_rss_kb,
        errors=list(job.errors) if listed else None,
        retry_in_s=retry_in_s,
        result=job.result if closing else None,
        traceback=job.traceback if closing else None,
        run_at=due_of(job) if job.state == "scheduled" else None,
        output=job.output if closing else None,
    )


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
    error = job.errors[-1] if job.state in _FAILED_STATES and job.errors else None
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
