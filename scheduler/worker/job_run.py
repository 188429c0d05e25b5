"""One live job process as the executor keeps it, and what its end tells the closing rule.

Kept apart from :mod:`scheduler.worker.executor`, which decides when runs start and stop;
this module only opens a run's pipes and holds its state: its clock (``started_at``,
``deadline``), why it is being stopped, and, for a held attempt, the go pipe its process
waits on (:mod:`scheduler.worker.held`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scheduler.policy.closing import Ending, Why
from scheduler.policy.limits import NO_LIMITS, Limits
from scheduler.protocol import Assignment
from scheduler.worker.held import GoPipe
from scheduler.worker.job_feed import JobChannels, JobFeed
from scheduler.worker.launch import JobHandle
from scheduler.worker.process import ProcessResult
from scheduler.worker.task_result import NOTHING, ResultPipe, TaskRecord, parse_record


@dataclass(slots=True)
class Run:
    """One live job process, and why we are stopping it if we are."""

    assignment: Assignment
    process: JobHandle
    pipe: ResultPipe | None
    """Where the job's record comes; None when its launcher carries it back."""
    channels: JobChannels
    started_at: float
    """When the job started (``clock`` time): its fork, or its release if it was held."""
    deadline: float
    limits: Limits = NO_LIMITS
    why: Why | None = None
    evictions: int = 0
    limit_error: str = ""
    go: GoPipe | None = None
    """Set while the process waits for its attempt's release: it has not started yet."""
    held_s: float = 0.0
    """How long the process waited for its release: not part of the job's wall time."""

    def release(self, now: float, timeout: float | None) -> bool:
        """Let the process waiting for its release run its task from ``now`` under
        ``timeout``; return whether it starts. One being stopped meanwhile does not: its
        go pipe is closed instead, so it exits without running its task."""
        go, self.go = self.go, None
        if go is None:
            return False
        if self.why is not None:
            go.close()
            return False
        go.go()
        self.held_s = now - self.started_at
        self.started_at = now
        self.deadline = math.inf if timeout is None else now + timeout
        return True

    def withhold(self) -> None:
        """Close the go pipe without releasing: the process exits without running its
        task (and, still unreleased, is reported ``revoked``)."""
        if self.go is not None:
            self.go.close()

    def close(self) -> None:
        """The process is reaped: close what only its wait for a release needed."""
        if self.go is not None:
            self.go.close()
            self.go = None


def open_pipes(
    feed: JobFeed, assignment: Assignment, held: bool, result_pipe: bool = True
) -> tuple[ResultPipe | None, JobChannels, GoPipe | None]:
    """The result pipe (if ``result_pipe``) and ``feed``'s channels of a job about to
    fork, and its go pipe if ``held``; ``OSError``, having closed what it made, if one
    cannot be made."""
    pipe = ResultPipe() if result_pipe else None
    try:
        channels = feed.open(assignment.id, assignment.attempt)
    except OSError:
        close_pipes(pipe)
        raise
    if not held:
        return pipe, channels, None
    try:
        return pipe, channels, GoPipe()
    except OSError:
        close_pipes(pipe, channels)
        raise


def close_pipes(
    pipe: ResultPipe | None, channels: JobChannels | None = None, go: GoPipe | None = None
) -> None:
    """Close what :func:`open_pipes` made, for a job that did not start."""
    for opened in (pipe, channels, go):
        if opened is not None:
            opened.close()


def forked(pipe: ResultPipe | None, go: GoPipe | None) -> None:
    """The job's process is forked: close the executor's copies of the write ends."""
    for opened in (pipe, go):
        if opened is not None:
            opened.forked()


def collect(run: Run, result: ProcessResult) -> TaskRecord:
    """What ``run``'s job left: read from its result pipe (then closed), or carried back
    in ``result`` by its launcher."""
    if run.pipe is not None:
        return run.pipe.collect()
    return NOTHING if result.record is None else parse_record(result.record)


def ending(run: Run, result: ProcessResult, record: TaskRecord) -> Ending:
    """What :func:`~scheduler.policy.closing.closing_report` needs to know of ``run``'s end."""
    raised = record.raised
    error = result.lost or (None if raised is None else raised.error)
    return Ending(
        outcome=result.outcome,
        exit_code=result.exit_code,
        wall_s=max(0.0, result.wall_s - run.held_s),
        cpu_s=result.cpu_s,
        max_rss_kb=result.max_rss_kb,
        why=run.why,
        evictions=run.evictions,
        limit_error=run.limit_error,
        timeout_s=run.deadline - run.started_at,
        error=error,
        traceback=None if raised is None or result.lost else raised.traceback,
        result=record.result,
    )
