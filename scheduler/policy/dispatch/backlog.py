"""The dispatch core's queues in time: jobs waiting for a scheduler (by priority, then
arrival), jobs held back for a retry until a due time, and the expiry of jobs handed to
v1 schedulers (which never report)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from scheduler.policy.dispatch.timers import earliest
from scheduler.policy.job import Job


class Backlog:
    """Ids of queued jobs that wait for a scheduler or for a retry, and v1 expiries.

    Every heap drops entries lazily: an entry whose job left (or moved on) stays in the
    heap and is skipped when met.
    """

    def __init__(self, jobs: Mapping[str, Job]) -> None:
        """Nothing waits among ``jobs`` (every tracked job)."""
        self._jobs = jobs
        # The records of the jobs waiting for a scheduler, in no order (sorted when read:
        # the backlog is only ever taken whole). An entry stands while its very record is
        # tracked and queued: jobs leave the backlog by being taken all at once (take_all)
        # or by leaving the core, and a job that comes back (a retry of a final job) does
        # so as a new record, which no earlier entry names. One reference per queued job,
        # not a tuple: a million queued jobs hold 8 MB here, not 72.
        self._entries: list[Job] = []
        # Jobs held back for a retry: id -> due (monotonic), and (due, seq, id) entries.
        self._due: dict[str, float] = {}
        self._waiting: list[tuple[float, int, str]] = []
        # (handed_at + runtime, id, attempt) of jobs held by schedulers that never report.
        self._v1_due: list[tuple[float, str, int]] = []

    # --- waiting for a scheduler ---------------------------------------------------------

    def push(self, job: Job) -> None:
        """Queued ``job`` waits until a scheduler serving its task has room."""
        self._entries.append(job)

    def ids(self) -> list[str]:
        """The ids waiting for a scheduler, by base priority, then arrival."""
        standing = sorted(filter(self._stands, self._entries), key=_dispatch_order)
        return [job.id for job in standing]

    def _stands(self, job: Job) -> bool:
        """Whether the backlog entry of record ``job`` still stands: cancelled, replaced,
        dispatched or retried jobs leave stale entries behind."""
        return self._jobs.get(job.id) is job and job.state == "queued"

    def take_all(self) -> list[str]:
        """Return :meth:`ids` and empty the backlog (the caller dispatches them again)."""
        ids = self.ids()
        self._entries = []
        return ids

    # --- held back for a retry ---------------------------------------------------------

    def hold_back(self, job: Job, due: float) -> None:
        """Keep queued ``job`` out of dispatch until ``due`` (monotonic)."""
        self._due[job.id] = due
        heapq.heappush(self._waiting, (due, job.seq, job.id))

    def pop_due(self, now: float) -> str | None:
        """The id of a job whose hold-back is over at ``now`` (it is no longer held
        back), earliest first; None if there is none."""
        if not self._waiting:  # asked after every report: seldom is a retry held back
            return None
        self._discard_stale_waiting()
        if not self._waiting or self._waiting[0][0] > now:
            return None
        _, _, job_id = heapq.heappop(self._waiting)
        del self._due[job_id]
        return job_id

    # --- v1 expiry -----------------------------------------------------------------------

    def expire_v1(self, due: float, job: Job) -> None:
        """``job``'s current attempt, at a v1 scheduler, counts as done at ``due``."""
        heapq.heappush(self._v1_due, (due, job.id, job.attempt))

    def pop_v1(self, now: float) -> tuple[str, int] | None:
        """``(id, attempt)`` of a v1 attempt done by ``now`` (forgotten here), or None."""
        if not self._v1_due or self._v1_due[0][0] > now:
            return None
        _, job_id, attempt = heapq.heappop(self._v1_due)
        return job_id, attempt

    def v1_attempts(self) -> set[tuple[str, int]]:
        """Every ``(id, attempt)`` still waiting to expire (stale ones included)."""
        return {(job_id, attempt) for _, job_id, attempt in self._v1_due}

    # --- all of it -----------------------------------------------------------------------

    def discard(self, job_id: str) -> None:
        """``job_id`` leaves the core: it is no longer held back (an entry of it in the
        backlog no longer stands once it is not tracked)."""
        self._due.pop(job_id, None)

    def next_deadline(self) -> float | None:
        """The earliest end of a hold-back or v1 attempt, or None."""
        if not self._waiting and not self._v1_due:
            return None  # no retry held back, no v1 scheduler: the common case
        self._discard_stale_waiting()
        return earliest(
            self._waiting[0][0] if self._waiting else None,
            self._v1_due[0][0] if self._v1_due else None,
        )

    def _discard_stale_waiting(self) -> None:
        while self._waiting and self._due.get(self._waiting[0][2]) != self._waiting[0][0]:
            heapq.heappop(self._waiting)

    def members(self) -> tuple[list[str], set[str]]:
        """The ids of the standing backlog entries (one per job unless an invariant is
        broken), and the ids held back; for checking invariants."""
        return [job.id for job in self._entries if self._stands(job)], set(self._due)


def _dispatch_order(job: Job) -> tuple[int, int]:
    """Base priority, then arrival."""
    return job.priority, job.seq
