"""Folds a job's events into a summary: final state, where it ran, how long it waited and ran.

Pure: fed the bus's events (which carry the bus's wall-clock stamps), no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS, TRANSIENT_EVENTS


@dataclass
class JobRecord:
    """What is known of one job so far. ``wait_s``/``run_s`` are sums over every run;
    ``wall_s`` is the scheduler's measure of the last process's life; ``result`` the task's
    JSON result and ``traceback`` that of the exception that failed the latest attempt."""

    id: str
    priority: int
    runtime: float | None
    task: str = "sleep"
    state: str = "queued"
    scheduler: str | None = None
    evictions: int = 0
    attempts: int = 0
    exit_code: int | None = None
    error: str | None = None
    wall_s: float | None = None
    result: object = None
    traceback: str | None = None
    first_seen: float | None = None
    final_at: float | None = None
    run_s: float = 0.0
    _running_since: float | None = None

    @property
    def final(self) -> bool:
        """True once the job reached a state it never leaves."""
        return self.state in FINAL_EVENTS

    @property
    def wait_s(self) -> float:
        """Time from acceptance to the end that was not spent running."""
        if self.first_seen is None or self.final_at is None:
            return 0.0
        return max(0.0, self.final_at - self.first_seen - self.run_s)

    def as_dict(self) -> dict[str, object]:
        """The JSON line ``producer --wait --json`` prints for a final job."""
        return {
            "id": self.id,
            "priority": self.priority,
            "runtime": self.runtime,
            "task": self.task,
            "state": self.state,
            "scheduler": self.scheduler,
            "evictions": self.evictions,
            "attempts": self.attempts,
            "wait_s": round(self.wait_s, 4),
            "run_s": round(self.run_s, 4),
            "wall_s": self.wall_s,
            "exit_code": self.exit_code,
            "error": self.error,
            "traceback": self.traceback,
            "result": self.result,
        }


class JobTracker:
    """Keeps a :class:`JobRecord` per job id and tells when each becomes final."""

    def __init__(self) -> None:
        self.records: dict[str, JobRecord] = {}

    def apply(self, event: JobEvent) -> JobRecord:
        """Fold ``event`` into its job's record and return the record (a ``progress`` or
        ``output`` event changes nothing of it)."""
        record = self.records.get(event.id)
        if record is None:
            record = JobRecord(event.id, event.priority, event.runtime, event.task)
            self.records[event.id] = record
        if event.event in TRANSIENT_EVENTS:
            return record
        if record.first_seen is None or event.event == "accepted":
            record.first_seen = event.time
        self._stop_clock(record, event.time)
        if event.event == "started":
            record._running_since = event.time
        record.scheduler = event.scheduler or record.scheduler
        record.evictions = max(record.evictions, event.evictions)
        record.attempts = max(record.attempts, event.attempt)
        record.exit_code = event.exit_code if event.exit_code is not None else record.exit_code
        record.error = event.error or record.error
        record.wall_s = event.wall_s if event.wall_s is not None else record.wall_s
        record.result = event.result if event.result is not None else record.result
        if event.event in FINAL_EVENTS or event.event == "retrying":
            record.traceback = event.traceback
        record.state = event.event if event.event in FINAL_EVENTS else event.state
        if record.final:
            record.final_at = event.time
        return record

    @staticmethod
    def _stop_clock(record: JobRecord, now: float) -> None:
        if record._running_since is not None:
            record.run_s += max(0.0, now - record._running_since)
            record._running_since = None
