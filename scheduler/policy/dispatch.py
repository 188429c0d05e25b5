"""The bus's dispatch bookkeeping: which scheduler holds which job, and what to send.

Pure: no I/O, no clock. Every method takes ``now`` (monotonic seconds, used for load)
and ``wall`` (epoch seconds, stamped on events) and returns the decisions the bus
carries out, in order.

Rules:

* Each job has at most one holder. A job is pushed at once to the eligible scheduler
  (one whose tasks include the job's task) with the lowest load = outstanding / size,
  ties going to the scheduler picked least recently (round-robin). Jobs are pushed
  beyond a scheduler's free slots: it keeps a local priority queue and must see
  urgent jobs while full.
* With no eligible scheduler the job waits in the backlog, ordered by priority then
  arrival, and is dispatched when one registers.
* v1 schedulers never report, so a job handed to one counts as outstanding until
  ``now >= handed_at + runtime`` and is forgotten after that.
* Reports are fenced: a report about an unknown job, a job held by someone else, or
  another attempt changes nothing.
* A scheduler that leaves loses every job it held back to dispatch, attempt + 1.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from scheduler.protocol import (
    FINAL_EVENTS,
    Assignment,
    EventKind,
    JobEvent,
    JobPayload,
    JobState,
    Report,
    SchedulerReport,
)

V1_SIZE: Final = 5
"""Slots assumed for a scheduler that does not say (v1 schedulers never do)."""

DEFAULT_TASKS: Final[frozenset[str]] = frozenset({"sleep"})
"""Tasks assumed for a scheduler that does not list any (every v1 scheduler)."""

_STATE_AFTER: Final[dict[SchedulerReport, JobState]] = {
    "started": "running",
    "evicted": "assigned",
    "succeeded": "succeeded",
    "failed": "failed",
    "timed_out": "timed_out",
}


# --- decisions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendAssign:
    """Send ``assignment`` to scheduler ``scheduler``; a v1 scheduler gets bare ``payload``."""

    scheduler: str
    assignment: Assignment
    payload: JobPayload


@dataclass(frozen=True, slots=True)
class EmitEvent:
    """Publish ``event`` to every monitor and, when not None, to producer ``producer``."""

    event: JobEvent
    producer: str | None


@dataclass(frozen=True, slots=True)
class Requeued:
    """Job ``job_id`` was taken back from ``scheduler`` and will run as ``attempt``."""

    job_id: str
    scheduler: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """A report from ``scheduler`` about ``job_id`` changed nothing; ``reason`` says why."""

    scheduler: str
    job_id: str
    reason: str


Decision = SendAssign | EmitEvent | Requeued | Ignored


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A snapshot of one job the bus still tracks."""

    id: str
    state: JobState
    holder: str | None
    attempt: int
    evictions: int


@dataclass(frozen=True, slots=True)
class SchedulerInfo:
    """A snapshot of one registered scheduler."""

    name: str
    size: int
    tasks: frozenset[str]
    reports: bool
    outstanding: int
    running: int
    queued: int
    last_heartbeat: float | None


# --- state ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Job:
    id: str
    payload: JobPayload
    producer: str | None
    seq: int
    attempt: int = 1
    evictions: int = 0
    state: JobState = "queued"
    holder: str | None = None


@dataclass(eq=False, slots=True)
class _Scheduler:
    name: str
    size: int
    tasks: frozenset[str]
    reports: bool
    held: set[str] = field(default_factory=set)
    # (handed_at + runtime, job id) of jobs held by a scheduler that never reports.
    expiries: list[tuple[float, str]] = field(default_factory=list)
    last_pick: int = -1
    running: int = 0
    queued: int = 0
    last_heartbeat: float | None = None


class Dispatcher:
    """Jobs, schedulers and the backlog of the bus; hands back decisions to carry out."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._schedulers: dict[str, _Scheduler] = {}
        self._backlog: list[tuple[int, int, str]] = []
        self._seq = 0
        self._picks = 0
        self.accepted = 0
        """Jobs accepted since the start."""
        self.finished = 0
        """Jobs that reached a final state (v1 expiries not counted)."""

    # --- queries ---------------------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        """Return a snapshot of job ``job_id``, or None once it is final or unknown."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return JobInfo(job.id, job.state, job.holder, job.attempt, job.evictions)

    def backlog(self) -> list[str]:
        """Return the ids of waiting jobs in the order they will be dispatched."""
        return [job_id for _, _, job_id in sorted(self._backlog)]

    def scheduler(self, name: str) -> SchedulerInfo | None:
        """Return a snapshot of scheduler ``name``, or None if it is not registered."""
        s = self._schedulers.get(name)
        if s is None:
            return None
        return SchedulerInfo(
            s.name,
            s.size,
            s.tasks,
            s.reports,
            len(s.held),
            s.running,
            s.queued,
            s.last_heartbeat,
        )

    def load(self, name: str, now: float) -> float:
        """Return outstanding / size of scheduler ``name`` at ``now`` (forgets expired v1 jobs)."""
        s = self._schedulers[name]
        self._expire(s, now)
        return len(s.held) / s.size

    def __len__(self) -> int:
        """Return how many jobs the bus tracks (waiting or held)."""
        return len(self._jobs)

    # --- inputs ----------------------------------------------------------------------

    def add_scheduler(
        self,
        name: str,
        *,
        size: int | None,
        tasks: Iterable[str] | None,
        reports: bool,
        now: float,
        wall: float,
    ) -> list[Decision]:
        """Register scheduler ``name`` and dispatch the backlog; return the assignments.

        ``size`` None means :data:`V1_SIZE`, ``tasks`` None means :data:`DEFAULT_TASKS`;
        ``reports`` False marks a v1 scheduler, whose load decays with time.
        Raises ValueError if ``name`` is already registered or ``size`` is below 1.
        """
        if name in self._schedulers:
            raise ValueError(f"scheduler {name!r} is already registered")
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self._schedulers[name] = _Scheduler(
            name=name,
            size=V1_SIZE if size is None else size,
            tasks=DEFAULT_TASKS if tasks is None else frozenset(tasks),
            reports=reports,
        )
        waiting = [self._jobs[job_id] for _, _, job_id in sorted(self._backlog)]
        self._backlog = []
        decisions: list[Decision] = []
        for job in waiting:
            self._dispatch(job, now, wall, decisions)
        return decisions

    def remove_scheduler(self, name: str, now: float, wall: float) -> list[Decision]:
        """Unregister scheduler ``name``; requeue every job it held with attempt + 1.

        Returns a :class:`Requeued` per job, then the assignments of those jobs to the
        remaining schedulers (jobs with no eligible scheduler go to the backlog).
        Removing an unknown name returns nothing.
        """
        s = self._schedulers.pop(name, None)
        if s is None:
            return []
        self._expire(s, now)
        lost = sorted((self._jobs[job_id] for job_id in s.held), key=_order)
        decisions: list[Decision] = []
        for job in lost:
            job.attempt += 1
            job.holder = None
            job.state = "queued"
            decisions.append(Requeued(job.id, name, job.attempt))
        for job in lost:
            self._dispatch(job, now, wall, decisions)
        return decisions

    def submit(
        self, job_id: str, payload: JobPayload, producer: str | None, now: float, wall: float
    ) -> list[Decision]:
        """Track a new job and dispatch it; return its ``accepted`` event then its assignment.

        ``producer`` is who receives the job's events (None: monitors only).
        Raises ValueError if ``job_id`` is already tracked.
        """
        if job_id in self._jobs:
            raise ValueError(f"job {job_id!r} already exists")
        job = _Job(id=job_id, payload=payload, producer=producer, seq=self._seq)
        self._seq += 1
        self._jobs[job_id] = job
        self.accepted += 1
        decisions: list[Decision] = [EmitEvent(_event(job, "accepted", wall), producer)]
        self._dispatch(job, now, wall, decisions)
        return decisions

    def report(self, scheduler: str, report: Report, wall: float) -> list[Decision]:
        """Apply a report from ``scheduler``; return its event, or :class:`Ignored` if fenced.

        ``started`` makes the job running, ``evicted`` puts it back to assigned (the
        scheduler requeued it locally) and counts the eviction, a final report
        forgets the job. The eviction count never falls below what a report states.
        """
        job = self._jobs.get(report.id)
        if job is None:
            return [Ignored(scheduler, report.id, "unknown job")]
        reason = _fence(job, scheduler, report)
        if reason is not None:
            return [Ignored(scheduler, report.id, reason)]
        job.state = _STATE_AFTER[report.event]
        if report.event == "evicted":
            job.evictions += 1
        if report.evictions is not None:
            job.evictions = max(job.evictions, report.evictions)
        if report.event in FINAL_EVENTS:
            self._schedulers[scheduler].held.discard(job.id)
            del self._jobs[job.id]
            self.finished += 1
        return [EmitEvent(_event(job, report.event, wall, report), job.producer)]

    def heartbeat(self, scheduler: str, running: int, queued: int, now: float) -> None:
        """Record the load ``scheduler`` reports at ``now``; unknown names are ignored."""
        s = self._schedulers.get(scheduler)
        if s is not None:
            s.running, s.queued, s.last_heartbeat = running, queued, now

    # --- internals -------------------------------------------------------------------

    def _dispatch(self, job: _Job, now: float, wall: float, out: list[Decision]) -> None:
        """Hand ``job`` to the least-loaded eligible scheduler, or put it in the backlog."""
        s = self._choose(job.payload.task, now)
        if s is None:
            job.state = "queued"
            heapq.heappush(self._backlog, (job.payload.priority, job.seq, job.id))
            return
        job.holder = s.name
        job.state = "assigned"
        s.held.add(job.id)
        if not s.reports:
            heapq.heappush(s.expiries, (now + job.payload.runtime, job.id))
        s.last_pick = self._picks
        self._picks += 1
        p = job.payload
        assignment = Assignment(
            job.id, job.attempt, p.priority, p.runtime, p.task, p.timeout, job.evictions
        )
        out.append(SendAssign(s.name, assignment, p))
        out.append(EmitEvent(_event(job, "assigned", wall), job.producer))

    def _choose(self, task: str, now: float) -> _Scheduler | None:
        """The eligible scheduler with the lowest load; ties go to the least recently picked."""
        best: _Scheduler | None = None
        best_key = (0.0, 0)
        for s in self._schedulers.values():
            if task not in s.tasks:
                continue
            self._expire(s, now)
            # Equal ratios give equal floats (division is correctly rounded).
            key = (len(s.held) / s.size, s.last_pick)
            if best is None or key < best_key:
                best, best_key = s, key
        return best

    def _expire(self, s: _Scheduler, now: float) -> None:
        """Forget the v1 jobs of ``s`` whose runtime has elapsed."""
        while s.expiries and s.expiries[0][0] <= now:
            _, job_id = heapq.heappop(s.expiries)
            if job_id in s.held:
                s.held.discard(job_id)
                del self._jobs[job_id]


def _order(job: _Job) -> tuple[int, int]:
    return job.payload.priority, job.seq


def _fence(job: _Job, scheduler: str, report: Report) -> str | None:
    """Why ``report`` must be ignored, or None if it applies to the current attempt."""
    if job.holder != scheduler:
        return f"job is held by {job.holder or 'nobody'}"
    if report.attempt != job.attempt:
        return f"stale attempt {report.attempt} (current {job.attempt})"
    return None


def _event(job: _Job, kind: EventKind, wall: float, report: Report | None = None) -> JobEvent:
    """The event ``kind`` about ``job`` as it stands, with ``report``'s measurements."""
    p = job.payload
    return JobEvent(
        event=kind,
        id=job.id,
        priority=p.priority,
        state=job.state,
        time=wall,
        runtime=p.runtime,
        task=p.task,
        scheduler=job.holder,
        attempt=job.attempt,
        evictions=job.evictions,
        exit_code=None if report is None else report.exit_code,
        error=None if report is None else report.error,
        wall_s=None if report is None else report.wall_s,
        cpu_s=None if report is None else report.cpu_s,
        max_rss_kb=None if report is None else report.max_rss_kb,
    )
