"""The bus's dispatch bookkeeping: which scheduler holds which job, and what to send.

Pure: no I/O, no clock. Every input takes ``now`` (monotonic seconds: leases, retry
delays, v1 load) and ``wall`` (epoch seconds: stamped on jobs and events) and returns
the decisions the bus carries out, in order. Every job the core changes is collected
for the journal (:meth:`Dispatcher.take_changes`); the bus makes those changes durable
before it sends anything the decisions say.

Rules:

* Each job has at most one holder. Each assignment raises the job's ``attempt`` and
  ``deliveries``; a report about another attempt, or from a scheduler that is not the
  holder, changes nothing (:class:`Ignored`).
* A job is pushed at once to the connected scheduler serving its task with the lowest
  load = outstanding / size, ties to the one picked least recently. With none it waits
  in the backlog, by priority then arrival, until one registers.
* A v2 scheduler holds a lease, renewed by every heartbeat, report or registration.
  When its socket closes cleanly it releases its jobs at once; when the socket breaks
  or it falls silent it keeps them until the lease expires, so that it can register
  again under the same name, list what it still has (``held``) and keep it.
  A job whose holder is lost is ``requeued``.
* An eviction is a requeue (``evicted``), not a failure; after ``max_evictions`` a job
  is assigned as not evictable. A ``failed`` or ``timed_out`` attempt is retried after
  a backoff while the job has retries left, then the job is ``dead``. A job delivered
  ``max_deliveries`` + its ``max_retries`` times is ``dead`` instead of assigned again.
* A cancel ends a queued job at once; a held one is told to stop and ends ``cancelled``
  when its holder confirms or is lost, unless it finished first.
* v1 schedulers never report and cannot be told to stop: a job handed to one counts as
  outstanding until ``now >= handed_at + runtime`` and is then forgotten (deleted).
* Final jobs leave the core; the bus answers about them from its journal.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from scheduler.policy.conflict import KeepExisting, Refuse, Replace, resolve
from scheduler.policy.events import job_event, status_event
from scheduler.policy.job import Job
from scheduler.policy.lease import Leases
from scheduler.policy.reconcile import reconcile
from scheduler.policy.retry import RetryBackoff
from scheduler.protocol import (
    Accepted,
    Assignment,
    CancelReply,
    Error,
    EventKind,
    Held,
    JobEvent,
    JobPayload,
    JobState,
    ProtocolError,
    Report,
    Stop,
    SubmitResult,
    SubmittedMany,
)

V1_SIZE: Final = 5
"""Slots assumed for a scheduler that does not say (v1 schedulers never do)."""

DEFAULT_TASKS: Final[frozenset[str]] = frozenset({"sleep"})
"""Tasks assumed for a scheduler that does not list any (every v1 scheduler)."""


@dataclass(frozen=True)
class DispatchConfig:
    """The rules' numbers: ``lease`` seconds a silent or disconnected scheduler keeps its
    jobs; evictions after which a job is no longer evictable; deliveries (plus the job's
    own ``max_retries``) after which it is dead; the retry backoff."""

    lease: float = 5.0
    max_evictions: int = 3
    max_deliveries: int = 10
    backoff: RetryBackoff = field(default_factory=RetryBackoff)

    def __post_init__(self) -> None:
        """Refuse numbers the rules cannot work with, naming the field."""
        if not self.lease > 0:
            raise ValueError(f"lease must be > 0 s, not {self.lease}")
        if self.max_evictions < 0:
            raise ValueError(f"max_evictions must be >= 0, not {self.max_evictions}")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, not {self.max_deliveries}")


# --- decisions -----------------------------------------------------------------------


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
class Reply:
    """Answer the request being handled with ``message``."""

    message: Accepted | Error | SubmittedMany | CancelReply


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


Decision = SendAssign | SendStop | EmitEvent | Reply | Requeued | Ignored | LeaseExpired


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


# --- state ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Scheduler:
    name: str
    size: int
    tasks: frozenset[str]
    reports: bool
    connected: bool = True
    held: set[str] = field(default_factory=set)
    last_pick: int = -1
    running: int = 0
    queued: int = 0
    last_heartbeat: float | None = None


def _random_id(rng: random.Random) -> Callable[[], str]:
    return lambda: f"{rng.getrandbits(128):032x}"


class Dispatcher:
    """Jobs, schedulers, leases and the backlog of the bus; hands back decisions."""

    def __init__(
        self,
        config: DispatchConfig | None = None,
        rng: random.Random | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        """An empty core. ``rng`` draws retry jitter; ``new_id`` makes ids for jobs that
        bring none (default: 128 random bits from ``rng``, as hex)."""
        self.config = config if config is not None else DispatchConfig()
        self._rng = rng if rng is not None else random.Random()
        self._new_id = new_id if new_id is not None else _random_id(self._rng)
        self._jobs: dict[str, Job] = {}
        self._schedulers: dict[str, _Scheduler] = {}
        self._leases = Leases(self.config.lease)
        self._backlog: list[tuple[int, int, str]] = []
        # Jobs held back for a retry: id -> due (monotonic), and (due, seq, id) entries.
        self._due: dict[str, float] = {}
        self._waiting: list[tuple[float, int, str]] = []
        # (handed_at + runtime, id, attempt) of jobs held by schedulers that never report.
        self._v1_due: list[tuple[float, str, int]] = []
        self._cancelling: set[str] = set()
        self._changed: dict[str, Job] = {}
        self._deleted: set[str] = set()
        self._seq = 0
        self._picks = 0
        self.accepted = 0
        """Jobs accepted since the start (replacements included)."""
        self.finished = 0
        """Jobs that reached a final state since the start."""

    # --- queries ---------------------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        """Return a snapshot of job ``job_id``, or None once it is final or unknown."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return JobInfo(
            job.id,
            job.state,
            job.holder,
            job.attempt,
            job.deliveries,
            job.evictions,
            job.retries,
            tuple(job.errors),
            job.not_before,
            job.id in self._cancelling,
        )

    def tracks(self, job_id: str) -> bool:
        """Whether job ``job_id`` is in the core (not final); else only the journal knows it."""
        return job_id in self._jobs

    def status(self, job_id: str, wall: float) -> JobEvent | None:
        """The latest event-shaped status of a tracked job, or None (see :func:`status_event`)."""
        job = self._jobs.get(job_id)
        return None if job is None else status_event(job, wall)

    def backlog(self) -> list[str]:
        """Return the ids of jobs waiting for a scheduler, in the order they will go out."""
        entries = sorted(self._backlog)
        return [job_id for _, seq, job_id in entries if self._in_backlog(seq, job_id)]

    def scheduler(self, name: str) -> SchedulerInfo | None:
        """Return a snapshot of scheduler ``name``, or None if the core does not know it."""
        s = self._schedulers.get(name)
        if s is None:
            return None
        return SchedulerInfo(
            s.name,
            s.size,
            s.tasks,
            s.reports,
            s.connected,
            len(s.held),
            s.running,
            s.queued,
            s.last_heartbeat,
            self._leases.deadline(name),
        )

    def load(self, name: str, now: float) -> float:
        """Return outstanding / size of scheduler ``name`` at ``now`` (forgets expired v1 jobs)."""
        self._expire_v1(now)
        s = self._schedulers[name]
        return len(s.held) / s.size

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has something to do, or None."""
        self._discard_stale_waiting()
        candidates = [
            self._leases.next_deadline(),
            self._waiting[0][0] if self._waiting else None,
            self._v1_due[0][0] if self._v1_due else None,
        ]
        return min((c for c in candidates if c is not None), default=None)

    def take_changes(self) -> tuple[list[Job], list[str]]:
        """Return and forget the jobs changed since the last call (to save, latest state)
        and the ids of jobs forgotten since (to delete)."""
        changed, self._changed = list(self._changed.values()), {}
        deleted, self._deleted = sorted(self._deleted), set()
        return changed, deleted

    def __len__(self) -> int:
        """Return how many jobs the core tracks (not final)."""
        return len(self._jobs)

    # --- restart -----------------------------------------------------------------------

    def restore(self, jobs: Iterable[Job], next_seq: int, now: float, wall: float) -> None:
        """Take back the non-final ``jobs`` a journal kept, before any other input.

        A job with a holder stays held: its holder gets a lease from ``now`` to register
        again and keep it, as if its connection had just broken. Other jobs are queued
        (held back until ``not_before`` if that is after ``wall``). New jobs continue
        from ``next_seq``. Changes nothing in the journal.
        """
        self._seq = max(self._seq, next_seq)
        for job in jobs:
            self._jobs[job.id] = job
            self._seq = max(self._seq, job.seq + 1)
            if job.holder is not None and job.state in ("assigned", "running"):
                s = self._schedulers.get(job.holder)
                if s is None:
                    s = _Scheduler(job.holder, V1_SIZE, DEFAULT_TASKS, True, connected=False)
                    self._schedulers[job.holder] = s
                    self._leases.renew(job.holder, now)
                s.held.add(job.id)
            elif job.not_before is not None and job.not_before > wall:
                job.state, job.holder = "queued", None
                self._hold_back(job, now + (job.not_before - wall))
            else:
                job.state, job.holder = "queued", None
                heapq.heappush(self._backlog, (job.payload.priority, job.seq, job.id))

    # --- schedulers --------------------------------------------------------------------

    def attach(
        self,
        name: str,
        *,
        size: int | None,
        tasks: Iterable[str] | None,
        reports: bool,
        held: Sequence[Held] = (),
        now: float,
        wall: float,
    ) -> list[Decision]:
        """Register scheduler ``name``, or reattach it if the core still knows it.

        ``size`` None means :data:`V1_SIZE`, ``tasks`` None :data:`DEFAULT_TASKS`;
        ``reports`` False marks a v1 scheduler. ``held`` lists the attempts it still
        has: it keeps those it holds, gets a :class:`SendStop` for every other one, and
        each job it held by the core's account but left out is requeued. Then the
        backlog is dispatched. Raises ValueError if ``size`` is below 1.
        """
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        s = self._schedulers.get(name)
        if s is None:
            s = self._schedulers[name] = _Scheduler(name, V1_SIZE, DEFAULT_TASKS, reports)
        s.size = V1_SIZE if size is None else size
        s.tasks = DEFAULT_TASKS if tasks is None else frozenset(tasks)
        s.reports, s.connected = reports, True
        if reports:
            self._leases.renew(name, now)
        decisions: list[Decision] = []
        outcome = reconcile(name, held, self._jobs, s.held)
        decisions.extend(SendStop(name, stop) for stop in outcome.stop)
        for entry in outcome.keep:
            if entry.id in self._cancelling and not entry.done:
                decisions.append(SendStop(name, Stop(entry.id, entry.attempt, "cancelled")))
        lost = [self._jobs[job_id] for job_id in outcome.lost]
        self._take_back(s, lost, "not held after reconnecting", now, wall, decisions)
        self._dispatch_backlog(now, wall, decisions)
        return decisions

    def detach(self, name: str, *, clean: bool, now: float, wall: float) -> list[Decision]:
        """Scheduler ``name``'s connection closed; ``clean`` if it closed it normally.

        A clean close, a v1 scheduler or one holding nothing is forgotten at once, its
        jobs requeued and dispatched; otherwise it keeps its jobs until its lease expires
        (:meth:`tick`). Unknown names return nothing.
        """
        s = self._schedulers.get(name)
        if s is None:
            return []
        s.connected = False
        if clean or not s.reports or not s.held:
            return self._forget_scheduler(s, "released on disconnect", now, wall)
        return []

    def heartbeat(self, name: str, running: int, queued: int, now: float) -> None:
        """Record the load ``name`` reports at ``now`` and renew its lease; unknown names
        and v1 schedulers change nothing but their numbers."""
        s = self._schedulers.get(name)
        if s is None:
            return
        s.running, s.queued, s.last_heartbeat = running, queued, now
        if s.reports:
            self._leases.renew(name, now)

    # --- jobs ----------------------------------------------------------------------------

    def submit(
        self,
        payload: JobPayload,
        now: float,
        wall: float,
        *,
        stored: Mapping[str, Job] | None = None,
        ref: str | int | None = None,
    ) -> list[Decision]:
        """Accept one job and dispatch it; return a :class:`Reply` first, then the rest.

        ``stored`` maps ids the core no longer tracks to their final journal record, for
        ``job_id`` conflicts. The reply is :class:`Accepted` or an :class:`Error` naming
        ``payload.job_id``.
        """
        decisions: list[Decision] = []
        result = self._submit_one(payload, stored or {}, "payload.job_id", now, wall, decisions)
        reply: Accepted | Error
        if result.id is None:
            reply = Error(message=result.error or "", field=result.field, ref=ref)
        else:
            reply = Accepted(result.id, ref, existing=result.existing, replaced=result.replaced)
        return [Reply(reply), *decisions]

    def submit_many(
        self,
        payloads: Sequence[JobPayload | ProtocolError],
        now: float,
        wall: float,
        *,
        stored: Mapping[str, Job] | None = None,
        ref: str | int | None = None,
    ) -> list[Decision]:
        """Accept a batch: each payload as :meth:`submit` does, each decoding error as
        that job's error. Return a :class:`Reply` with :class:`SubmittedMany` (one
        result per job, in order) first, then the events and assignments."""
        decisions: list[Decision] = []
        results: list[SubmitResult] = []
        for i, item in enumerate(payloads):
            if isinstance(item, ProtocolError):
                results.append(_bad_job(i, item))
            else:
                where = f"jobs.{i}.job_id"
                results.append(self._submit_one(item, stored or {}, where, now, wall, decisions))
        return [Reply(SubmittedMany(results, ref)), *decisions]

    def report(self, name: str, report: Report, now: float, wall: float) -> list[Decision]:
        """Apply a report from scheduler ``name`` (renewing its lease); return its
        decisions, or :class:`Ignored` if it is about another attempt or holder.

        ``started``: running. ``evicted``: requeued and dispatched again, evictions + 1.
        ``succeeded``/``cancelled``: final. ``failed``/``timed_out``: ``retrying`` while
        retries are left, then ``dead``; final as reported with ``max_retries`` 0.
        A held job being cancelled ends ``cancelled`` unless it finished first.
        """
        s = self._schedulers.get(name)
        if s is not None and s.reports:
            self._leases.renew(name, now)
        job = self._jobs.get(report.id)
        if job is None:
            return [Ignored(name, report.id, "unknown or final job")]
        reason = _fence(job, name, report)
        if reason is not None:
            return [Ignored(name, report.id, reason)]
        if report.evictions is not None and report.event != "evicted":
            job.evictions = max(job.evictions, report.evictions)
        decisions: list[Decision] = []
        if report.event == "started":
            job.state = "running"
            self._touch(job, wall)
            decisions.append(EmitEvent(job_event(job, "started", wall, name, report)))
        elif report.event == "evicted":
            self._evicted(job, report, now, wall, decisions)
        elif report.event in ("failed", "timed_out"):
            self._failed(job, report, now, wall, decisions)
        elif report.event != "revoked":
            self._finish(job, report.event, wall, decisions, report)
        return decisions

    def cancel(
        self, job_id: str, wall: float, *, stored: Job | None = None, ref: str | int | None = None
    ) -> list[Decision]:
        """Cancel job ``job_id``; return a :class:`Reply` first.

        Queued: ``cancelled`` at once. Held by a v2 scheduler: a :class:`SendStop` with
        reason ``cancelled``, reply state ``running``; the job ends when the holder
        confirms. Held by a v1 scheduler, or final (``stored``): nothing changes and the
        reply says so. Unknown: an :class:`Error` naming ``id``.
        """
        job = self._jobs.get(job_id)
        if job is None:
            if stored is None:
                return [Reply(Error(f"id: no job {job_id}", field="id", ref=ref))]
            done = f"job {job_id} is already {stored.state}; nothing was done"
            return [Reply(CancelReply(job_id, stored.state, done, ref))]
        if job.holder is None:
            decisions: list[Decision] = []
            self._finish(job, "cancelled", wall, decisions)
            return [Reply(CancelReply(job_id, "cancelled", "cancelled", ref)), *decisions]
        if not self._schedulers[job.holder].reports:
            why = f"job {job_id} is held by v1 scheduler {job.holder}, which cannot be told"
            return [Reply(CancelReply(job_id, job.state, f"{why} to stop; nothing was done", ref))]
        self._cancelling.add(job_id)
        return [
            Reply(CancelReply(job_id, "running", "stopping", ref)),
            SendStop(job.holder, Stop(job_id, job.attempt, "cancelled")),
        ]

    def tick(self, now: float, wall: float) -> list[Decision]:
        """Act on every deadline up to ``now``: forget v1 jobs whose runtime elapsed,
        forget schedulers whose lease expired (their jobs requeued, cancelling ones
        cancelled), and dispatch jobs whose retry delay is over."""
        self._expire_v1(now)
        decisions: list[Decision] = []
        for name in self._leases.expired(now):
            s = self._schedulers[name]
            decisions.append(LeaseExpired(name, len(s.held), s.connected))
            decisions.extend(self._forget_scheduler(s, "lease expired", now, wall))
        self._discard_stale_waiting()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, job_id = heapq.heappop(self._waiting)
            del self._due[job_id]
            self._dispatch(self._jobs[job_id], now, wall, decisions)
            self._discard_stale_waiting()
        return decisions

    # --- internals: jobs ----------------------------------------------------------------

    def _submit_one(
        self,
        payload: JobPayload,
        stored: Mapping[str, Job],
        where: str,
        now: float,
        wall: float,
        out: list[Decision],
    ) -> SubmitResult:
        existing = None
        if payload.job_id is not None:
            existing = self._jobs.get(payload.job_id) or stored.get(payload.job_id)
        resolution = resolve(existing, payload.on_conflict, stoppable=self._stoppable(existing))
        if isinstance(resolution, Refuse):
            return SubmitResult(error=f"{where}: {resolution.message}", field=where)
        if isinstance(resolution, KeepExisting):
            assert existing is not None
            return SubmitResult(id=existing.id, existing=True)
        job_id = payload.job_id or self._fresh_id()
        attempt = 0
        if isinstance(resolution, Replace):
            assert existing is not None
            self._unhold(existing, resolution.stop_holder, out)
            attempt = existing.attempt
        job = Job(job_id, payload, self._seq, wall, attempt=attempt)
        self._seq += 1
        self._jobs[job_id] = job
        self.accepted += 1
        self._touch(job, wall)
        out.append(EmitEvent(job_event(job, "accepted", wall, None)))
        self._dispatch(job, now, wall, out)
        return SubmitResult(id=job_id, replaced=isinstance(resolution, Replace))

    def _fresh_id(self) -> str:
        while (job_id := self._new_id()) in self._jobs:
            pass
        return job_id

    def _stoppable(self, job: Job | None) -> bool:
        s = None if job is None or job.holder is None else self._schedulers.get(job.holder)
        return s is not None and s.reports

    def _unhold(self, old: Job, stop_holder: bool, out: list[Decision]) -> None:
        """Take ``old`` out of the core before its replacement: its holder stops it."""
        if stop_holder and old.holder is not None:
            self._schedulers[old.holder].held.discard(old.id)
            out.append(SendStop(old.holder, Stop(old.id, old.attempt, "replaced")))
        self._cancelling.discard(old.id)
        self._due.pop(old.id, None)

    def _evicted(
        self, job: Job, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        if job.id in self._cancelling:
            self._finish(job, "cancelled", wall, out, report)
            return
        holder = job.holder
        assert holder is not None
        self._schedulers[holder].held.discard(job.id)
        job.evictions = max(job.evictions + 1, report.evictions or 0)
        job.holder, job.state = None, "queued"
        self._touch(job, wall)
        out.append(EmitEvent(job_event(job, "evicted", wall, holder, report)))
        self._dispatch(job, now, wall, out)

    def _failed(
        self, job: Job, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        assert report.event in ("failed", "timed_out")
        job.errors.append(_error_text(report))
        retries = job.payload.max_retries
        if job.id in self._cancelling or retries == 0:
            self._finish(job, report.event, wall, out, report)
        elif job.retries >= retries:
            self._finish(job, "dead", wall, out, report)
        else:
            self._retry(job, report, now, wall, out)

    def _retry(
        self, job: Job, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        holder = job.holder
        assert holder is not None
        self._schedulers[holder].held.discard(job.id)
        job.retries += 1
        delay = self.config.backoff.delay(job.payload.retry_backoff, job.retries, self._rng)
        job.holder, job.state, job.not_before = None, "queued", wall + delay
        self._touch(job, wall)
        event = job_event(job, "retrying", wall, holder, report, retry_in_s=delay)
        out.append(EmitEvent(event))
        if delay > 0:
            self._hold_back(job, now + delay)
        else:
            self._dispatch(job, now, wall, out)

    def _finish(
        self,
        job: Job,
        state: EventKind,
        wall: float,
        out: list[Decision],
        report: Report | None = None,
        error: str | None = None,
    ) -> None:
        """End ``job`` in final ``state``: it leaves the core and its holder."""
        assert state in ("succeeded", "failed", "timed_out", "cancelled", "dead")
        if job.holder is not None:
            self._schedulers[job.holder].held.discard(job.id)
        job.state = state
        job.finished_at = wall
        del self._jobs[job.id]
        self._cancelling.discard(job.id)
        self._due.pop(job.id, None)
        self.finished += 1
        self._touch(job, wall)
        out.append(EmitEvent(job_event(job, state, wall, job.holder, report, error=error)))

    def _touch(self, job: Job, wall: float) -> None:
        job.updated_at = wall
        self._changed[job.id] = job
        self._deleted.discard(job.id)

    # --- internals: dispatch ------------------------------------------------------------

    def _hold_back(self, job: Job, due: float) -> None:
        """Keep queued ``job`` out of dispatch until ``due`` (monotonic)."""
        self._due[job.id] = due
        heapq.heappush(self._waiting, (due, job.seq, job.id))

    def _dispatch_backlog(self, now: float, wall: float, out: list[Decision]) -> None:
        waiting = [self._jobs[job_id] for job_id in self.backlog()]
        self._backlog = []
        for job in waiting:
            self._dispatch(job, now, wall, out)

    def _in_backlog(self, seq: int, job_id: str) -> bool:
        """Whether backlog entry (``seq``, ``job_id``) still stands: cancelled, replaced or
        dispatched jobs leave stale entries behind."""
        job = self._jobs.get(job_id)
        return job is not None and job.seq == seq and job.state == "queued"

    def _dispatch(self, job: Job, now: float, wall: float, out: list[Decision]) -> None:
        """Hand queued ``job`` to the least-loaded eligible scheduler, or put it in the
        backlog; a job out of deliveries is dead instead."""
        limit = self.config.max_deliveries + job.payload.max_retries
        if job.deliveries >= limit:
            error = f"delivered {job.deliveries} times (limit {limit}) without an outcome"
            self._finish(job, "dead", wall, out, error=error)
            return
        s = self._choose(job.payload.task, now)
        if s is None:
            heapq.heappush(self._backlog, (job.payload.priority, job.seq, job.id))
            return
        job.attempt += 1
        job.deliveries += 1
        job.holder, job.state, job.not_before = s.name, "assigned", None
        self._touch(job, wall)
        s.held.add(job.id)
        if not s.reports:
            runtime = job.payload.runtime or 0.0
            heapq.heappush(self._v1_due, (now + runtime, job.id, job.attempt))
        s.last_pick = self._picks
        self._picks += 1
        p = job.payload
        evictable = job.evictions < self.config.max_evictions
        assignment = Assignment(
            id=job.id,
            attempt=job.attempt,
            priority=p.priority,
            runtime=p.runtime,
            task=p.task,
            args=p.args,
            timeout=p.timeout,
            evictions=job.evictions,
            evictable=evictable,
        )
        out.append(SendAssign(s.name, assignment, p))
        out.append(EmitEvent(job_event(job, "assigned", wall, s.name)))

    def _choose(self, task: str, now: float) -> _Scheduler | None:
        """The connected scheduler serving ``task`` with the lowest load; ties go to the
        least recently picked."""
        self._expire_v1(now)
        best: _Scheduler | None = None
        best_key = (0.0, 0)
        for s in self._schedulers.values():
            if not s.connected or task not in s.tasks:
                continue
            # Equal ratios give equal floats (division is correctly rounded).
            key = (len(s.held) / s.size, s.last_pick)
            if best is None or key < best_key:
                best, best_key = s, key
        return best

    def _forget_scheduler(
        self, s: _Scheduler, reason: str, now: float, wall: float
    ) -> list[Decision]:
        """Forget ``s`` and requeue every job it held."""
        s.connected = False
        self._leases.drop(s.name)
        self._expire_v1(now)
        decisions: list[Decision] = []
        lost = [self._jobs[job_id] for job_id in s.held]
        self._take_back(s, lost, reason, now, wall, decisions)
        del self._schedulers[s.name]
        return decisions

    def _take_back(
        self,
        s: _Scheduler,
        jobs: Collection[Job],
        reason: str,
        now: float,
        wall: float,
        out: list[Decision],
    ) -> None:
        """Requeue ``jobs`` held by ``s`` (``requeued`` events), then dispatch them; a job
        being cancelled ends ``cancelled`` instead."""
        requeued: list[Job] = []
        for job in sorted(jobs, key=_order):
            if job.id in self._cancelling:
                error = f"its scheduler left before confirming the stop ({reason})"
                self._finish(job, "cancelled", wall, out, error=error)
                continue
            s.held.discard(job.id)
            job.holder, job.state = None, "queued"
            self._touch(job, wall)
            out.append(Requeued(job.id, s.name, job.attempt, reason))
            out.append(EmitEvent(job_event(job, "requeued", wall, s.name)))
            requeued.append(job)
        for job in requeued:
            self._dispatch(job, now, wall, out)

    def _expire_v1(self, now: float) -> None:
        """Forget the jobs of v1 schedulers whose runtime has elapsed."""
        while self._v1_due and self._v1_due[0][0] <= now:
            _, job_id, attempt = heapq.heappop(self._v1_due)
            job = self._jobs.get(job_id)
            if job is None or job.attempt != attempt or job.holder is None:
                continue
            self._schedulers[job.holder].held.discard(job_id)
            del self._jobs[job_id]
            self._changed.pop(job_id, None)
            self._deleted.add(job_id)

    def _discard_stale_waiting(self) -> None:
        while self._waiting and self._due.get(self._waiting[0][2]) != self._waiting[0][0]:
            heapq.heappop(self._waiting)


def _order(job: Job) -> tuple[int, int]:
    return job.payload.priority, job.seq


def _fence(job: Job, scheduler: str, report: Report) -> str | None:
    """Why ``report`` must be ignored, or None if it applies to the current attempt."""
    if job.holder != scheduler:
        return f"job is held by {job.holder or 'nobody'}"
    if report.attempt != job.attempt:
        return f"stale attempt {report.attempt} (current {job.attempt})"
    return None


def _error_text(report: Report) -> str:
    """The error of a failed attempt: the scheduler's text, else what is known."""
    if report.error:
        return report.error
    if report.event == "timed_out":
        return "timed out"
    return f"failed with exit code {report.exit_code}"


def _bad_job(index: int, error: ProtocolError) -> SubmitResult:
    """The result of job ``index`` of a batch that failed to decode, naming its field."""
    where = f"jobs.{index}"
    if error.field is None:
        message = error.message.removeprefix("frame: ")
        return SubmitResult(error=f"{where}: {message}", field=where)
    return SubmitResult(error=f"{where}.{error.message}", field=f"{where}.{error.field}")
