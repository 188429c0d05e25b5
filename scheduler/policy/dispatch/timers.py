"""Delayed jobs' clocks: when each ``scheduled`` job is due, and when a job whose time
came must have been handed to a scheduler (its misfire deadline). Pure.

Times here are monotonic (``now``); the due time itself is wall-clock and lives in the
job's record (:func:`due_of`), so it survives a restart of the bus.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from scheduler.policy.job import Job
from scheduler.protocol_types import parse_run_at


def due_of(job: Job) -> float | None:
    """When ``job`` is due (epoch seconds): its ``run_at``, or its submit time plus its
    ``delay``; None for a job that runs now."""
    p = job.payload
    if isinstance(p.run_at, str):
        return parse_run_at(p.run_at)
    if p.run_at is not None:
        return float(p.run_at)
    if p.delay is not None:
        return job.submitted_at + p.delay
    return None


def earliest(a: float | None, b: float | None) -> float | None:
    """The earlier of two deadlines, None meaning none (asked after every input: no
    list, no generator)."""
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b


def grace_of(job: Job, default: float | None) -> float | None:
    """``job``'s misfire grace in seconds: its own, else the bus's ``default``; None:
    it runs however late."""
    return job.payload.misfire_grace if job.payload.misfire_grace is not None else default


class _Clock:
    """Ids with a deadline each, earliest first (stale heap entries dropped lazily)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []

    def add(self, job: Job, at: float) -> None:
        self.at[job.id] = at
        heapq.heappush(self._heap, (at, job.seq, job.id))

    def first(self) -> float | None:
        heap = self._heap
        if not self.at:  # most jobs run now: no timer, and every entry left is stale
            heap.clear()
            return None
        while self.at.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0]

    def pop(self, now: float) -> str | None:
        first = self.first()
        if first is None or first > now:
            return None
        _, _, job_id = heapq.heappop(self._heap)
        del self.at[job_id]
        return job_id


class Timers:
    """The scheduled jobs' due times and the misfire deadlines, both monotonic."""

    def __init__(self, jobs: Mapping[str, Job]) -> None:
        """No timer yet; ``jobs`` is every tracked job."""
        self._jobs = jobs
        self._due = _Clock()
        self._misfire = _Clock()

    def schedule(self, job: Job, at: float) -> None:
        """``scheduled`` ``job`` becomes queued at ``at``."""
        self._due.add(job, at)

    def misfire_at(self, job: Job, at: float) -> None:
        """``job`` expires at ``at`` unless it was handed to a scheduler by then."""
        self._misfire.add(job, at)

    def pop_due(self, now: float) -> str | None:
        """The id of a scheduled job due by ``now`` (no longer timed), earliest first."""
        return self._due.pop(now)

    def pop_misfire(self, now: float) -> str | None:
        """The id of a job whose misfire deadline passed by ``now``, earliest first."""
        return self._misfire.pop(now)

    def discard(self, job_id: str) -> None:
        """``job_id`` leaves the core: none of its timers stand."""
        self._due.at.pop(job_id, None)
        self._misfire.at.pop(job_id, None)

    def next_deadline(self) -> float | None:
        """The earliest due time or misfire deadline, or None."""
        return earliest(self._due.first(), self._misfire.first())

    def members(self) -> tuple[set[str], set[str]]:
        """The ids with a due time and those with a misfire deadline (for invariants)."""
        return set(self._due.at), set(self._misfire.at)
