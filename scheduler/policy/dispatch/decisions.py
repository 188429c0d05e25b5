"""What the dispatch core answers with: the decisions the bus carries out, in order, and
the snapshots it gives of one job or one scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.protocol import (
    Accepted,
    Assignment,
    CancelReply,
    Error,
    JobEvent,
    JobPayload,
    Retried,
    Stop,
    SubmittedMany,
)
from scheduler.protocol_types import JobState


@dataclass(frozen=True, slots=True)
class SendAssign:
    """Send ``assignment`` to scheduler ``scheduler``; a v1 scheduler gets bare ``payload``."""

    scheduler: str
    assignment: Assignment
    payload: JobPayload


@dataclass(frozen=True, slots=True)
class SendStop:
    """Tell scheduler ``scheduler`` to stop an attempt (dropped if it is not connected)."""

    scheduler: str
    stop: Stop


@dataclass(frozen=True, slots=True)
class EmitEvent:
    """Publish ``event`` to the job's watchers and every monitor."""

    event: JobEvent


@dataclass(frozen=True, slots=True)
class SendReply:
    """Answer the request being handled with ``message``."""

    message: Accepted | Error | SubmittedMany | CancelReply | Retried


@dataclass(frozen=True, slots=True)
class Requeued:
    """Job ``job_id`` was taken back from ``scheduler`` after ``attempt``, for ``reason``."""

    job_id: str
    scheduler: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A report from ``scheduler`` about ``job_id`` changed nothing; ``reason`` says why."""

    scheduler: str
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """Scheduler ``scheduler`` lost its lease and its ``jobs`` jobs; the core forgot it.
    ``connected``: its connection is still open (silent) and must be closed."""

    scheduler: str
    jobs: int
    connected: bool


@dataclass(frozen=True, slots=True)
class StartOverdue:
    """Scheduler ``scheduler`` started none of its ``jobs`` assigned attempts within the
    start deadline: they are taken back, and it gets no new work until it starts
    something or registers again."""

    scheduler: str
    jobs: int


Decision = (
    SendAssign | SendStop | EmitEvent | SendReply | Requeued | Ignored | LeaseExpired | StartOverdue
)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of one job the core tracks."""

    id: str
    state: JobState
    holder: str | None
    attempt: int
    deliveries: int
    evictions: int
    retries: int
    errors: tuple[str, ...]
    not_before: float | None
    cancelling: bool
    thief: str | None = None
    """The scheduler a steal of this job is under way for, if any."""


@dataclass(frozen=True, slots=True)
class SchedulerInfo:
    """A snapshot of one scheduler the core knows (connected, or keeping its lease)."""

    name: str
    size: int
    tasks: frozenset[str]
    reports: bool
    connected: bool
    outstanding: int
    running: int
    queued: int
    last_heartbeat: float | None
    lease_deadline: float | None
    busy: int = 0
    """Its attempts that started, by the core's booking (``running`` is what it said)."""
    pending: int = 0
    """Its attempts assigned and not started: on their way, or waiting in its queue."""
    incoming: int = 0
    """Steals under way for it (a slot is kept for each)."""
    waiting: int = 0
    """Its jobs that wait in its local queue and may be stolen."""
