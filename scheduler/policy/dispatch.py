"""The bus's dispatch bookkeeping: which scheduler holds which job, and what to send.

Pure: no I/O, no clock. Every input takes ``now`` (monotonic seconds: leases, retry
delays, v1 load) and ``wall`` (epoch seconds: stamped on jobs and events) and returns
the decisions the bus carries out, in order. Every job the core changes is collected
for the journal (:meth:`Dispatcher.take_changes`); the bus makes those changes durable
before it sends anything the decisions say.

Rules:

* Each job has at most one holder. Each assignment raises the job's ``attempt`` and
  ``deliveries`` (a steal raises only ``attempt``: the job never ran at its victim); a
  report about another attempt, or from a scheduler that is not the holder, changes
  nothing (:class:`Ignored`).
* A job is pushed at once to a connected scheduler serving its task, chosen by
  :func:`~scheduler.policy.placement.place` from the slots the core books for each
  scheduler (a free slot, least loaded first; else the scheduler running the least
  urgent evictable job, if this one is more urgent; else the shortest local queue).
  With none serving its task it waits in the backlog, by priority then arrival, until
  one registers; :meth:`Dispatcher.stats` counts those jobs as ``unserved``, and the
  reply to its submit carries a ``warning`` saying so (:func:`unserved_warning`).
* Work stealing (``steal`` ``urgent`` or ``tail``, see :mod:`scheduler.policy.stealing`):
  a v2 scheduler with a free slot and nothing waiting in its own queue takes a job
  waiting in another's. The core sends the victim ``Stop(reason="stolen")``, books the
  slot for the thief and marks the job; on the victim's ``revoked`` report the job is
  assigned to the thief (attempt + 1); on its ``started`` report the steal failed and
  the mark is cleared. A job has at most one steal under way, and only its holder can
  start it, so it never runs at both.
* Aging (``age_every``, see :mod:`scheduler.policy.aging`): a waiting job's effective
  priority orders the backlog, is compared with running jobs when it is placed and
  when stolen, and is sent as the assignment's priority.
* A submit of the ``sleep`` task without a ``runtime`` is refused, naming
  ``payload.runtime``.
* A v2 scheduler holds a lease, renewed by every heartbeat, report or registration.
  When its socket closes cleanly it releases its jobs at once; when the socket breaks
  or it falls silent it keeps them until the lease expires, so that it can register
  again under the same name, list what it still has (``held``) and keep it.
  A job whose holder is lost is ``requeued``.
* An eviction is a requeue (``evicted``), not a failure; after ``max_evictions`` a job
  is assigned as not evictable. A ``failed`` or ``timed_out`` attempt is retried after
  a backoff while the job has retries left, then the job is ``dead``. A job delivered
  ``max_deliveries`` + its ``max_retries`` times is ``dead`` instead of assigned again.
* Ownership: a job records its submitter (``owner``). A producer's cancel or watch of a
  job it does not own is refused (``by``); a re-sent submit of an existing id and
  payload by its owner returns that job (:mod:`scheduler.policy.conflict`).
* A cancel ends a queued job at once; a held one is told to stop and ends ``cancelled``
  when its holder confirms or is lost, unless it finished first.
* v1 schedulers never report and cannot be told to stop: a job handed to one counts as
  outstanding until ``now >= handed_at + runtime`` and is then forgotten (deleted).
* Final jobs leave the core; the bus answers about them from its journal.
* Counters and snapshots for ``stats`` (:mod:`scheduler.policy.stats`).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from scheduler.policy.aging import Aging
from scheduler.policy.conflict import KeepExisting, Refuse, Replace, resolve
from scheduler.policy.events import job_event, status_event
from scheduler.policy.job import Job, not_yours
from scheduler.policy.lease import Leases
from scheduler.policy.placement import Enqueue, EvictFor, Seat, Slots, place
from scheduler.policy.reconcile import reconcile
from scheduler.policy.retry import RetryBackoff
from scheduler.policy.start_deadline import StartWatch
from scheduler.policy.stats import BusCounters, SchedulerCounters
from scheduler.policy.stealing import STEAL_STRATEGIES, Waiter, WaitingJobs, steal_strategy
from scheduler.protocol import (
    DEFAULT_PRIORITY,
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
    SchedulerStats,
    StatsReply,
    Stop,
    SubmitResult,
    SubmittedMany,
)

DEFAULT_LEASE_S: Final = 5.0
"""Seconds a silent or disconnected scheduler keeps its jobs."""

DEFAULT_MAX_EVICTIONS: Final = 3
"""Evictions after which a job is assigned as not evictable."""

DEFAULT_MAX_DELIVERIES: Final = 10
"""Deliveries (plus the job's own ``max_retries``) after which a job is dead."""

DEFAULT_STEAL: Final = "urgent"
"""The work-stealing strategy (one of :data:`~scheduler.policy.stealing.STEAL_STRATEGIES`)."""

DEFAULT_START_DEADLINE_S: Final = 30.0
"""How long a scheduler with room may hold assigned jobs without starting any, as the
bus sets it (a bare :class:`DispatchConfig` has no deadline)."""

DEFAULT_RESTART_GRACE_S: Final = 60.0
"""How long a bus shutting down promises its schedulers their running jobs."""

V1_SIZE: Final = 5
"""Slots assumed for a scheduler that does not say (v1 schedulers never do)."""

DEFAULT_TASKS: Final[frozenset[str]] = frozenset({"sleep"})
"""Tasks assumed for a scheduler that does not list any (every v1 scheduler)."""

MAX_CACHED_TASKS: Final = 1024
"""Task names whose schedulers the core remembers between changes of the schedulers."""


@dataclass(frozen=True)
class DispatchConfig:
    """The rules' numbers: ``lease`` seconds a silent or disconnected scheduler keeps its
    jobs; evictions after which a job is no longer evictable; deliveries (plus the job's
    own ``max_retries``) after which it is dead; the retry backoff; the ``steal``
    strategy (``urgent``, ``tail`` or ``off``); ``age_every`` seconds of waiting that
    make a job one level more urgent (None: no aging); ``start_deadline`` seconds a
    scheduler with room may hold assigned attempts without starting any before it loses
    them (None: no deadline)."""

    lease: float = DEFAULT_LEASE_S
    max_evictions: int = DEFAULT_MAX_EVICTIONS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    backoff: RetryBackoff = field(default_factory=RetryBackoff)
    steal: str = DEFAULT_STEAL
    age_every: float | None = None
    start_deadline: float | None = None

    def __post_init__(self) -> None:
        """Refuse numbers the rules cannot work with, naming the field."""
        if not self.lease > 0:
            raise ValueError(f"lease must be > 0 s, not {self.lease}")
        if self.max_evictions < 0:
            raise ValueError(f"max_evictions must be >= 0, not {self.max_evictions}")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, not {self.max_deliveries}")
        if self.steal not in STEAL_STRATEGIES:
            raise ValueError(
                f"steal must be one of {', '.join(STEAL_STRATEGIES)}, not {self.steal}"
            )
        Aging(self.age_every)
        if self.start_deadline is not None:
            StartWatch(self.start_deadline)


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


@dataclass(frozen=True, slots=True)
class StartOverdue:
    """Scheduler ``scheduler`` started none of its ``jobs`` assigned attempts within the
    start deadline: they are taken back, and it gets no new work until it starts
    something or registers again."""

    scheduler: str
    jobs: int


Decision = (
    SendAssign | SendStop | EmitEvent | Reply | Requeued | Ignored | LeaseExpired | StartOverdue
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


# --- state ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Scheduler:
    name: str
    tasks: frozenset[str]
    reports: bool
    slots: Slots
    connected: bool = True
    held: set[str] = field(default_factory=set)
    running: int = 0
    queued: int = 0
    last_heartbeat: float | None = None
    counters: SchedulerCounters = field(default_factory=SchedulerCounters)
    stalled: bool = False
    """It missed the start deadline: no new work until it starts something or registers."""


def _new_scheduler(name: str, reports: bool, *, connected: bool = True) -> _Scheduler:
    return _Scheduler(name, DEFAULT_TASKS, reports, Slots(name, V1_SIZE), connected)


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
        self._aging = Aging(self.config.age_every)
        self._strategy = steal_strategy(self.config.steal, self._aging)
        self._jobs: dict[str, Job] = {}
        self._schedulers: dict[str, _Scheduler] = {}
        self._leases = Leases(self.config.lease)
        deadline = self.config.start_deadline
        self._start_watch = None if deadline is None else StartWatch(deadline)
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
        self._starts = 0
        # When each job began waiting (monotonic): submit, requeue or retry due; for aging.
        self._since: dict[str, float] = {}
        self._seats: dict[str, Seat] = {}
        self._stealable = WaitingJobs()
        # Job id -> the thief a steal of it is under way for.
        self._stealing: dict[str, str] = {}
        # Schedulers that may have a free slot and an empty queue (a dict keeps the
        # order, so that steals happen in the same order on every run).
        self._unbalanced: dict[str, None] = {}
        # Task -> slots of the connected schedulers serving it; cleared when they change.
        self._serving: dict[str, list[Slots]] = {}
        # Task -> its default priority, as the latest scheduler declaring one registered it.
        self._task_priorities: dict[str, int] = {}
        self._counters = BusCounters()
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
            self._stealing.get(job.id),
        )

    def tracks(self, job_id: str) -> bool:
        """Whether job ``job_id`` is in the core (not final); else only the journal knows it."""
        return job_id in self._jobs

    def status(self, job_id: str, wall: float) -> JobEvent | None:
        """The latest event-shaped status of a tracked job, or None (see :func:`status_event`)."""
        job = self._jobs.get(job_id)
        return None if job is None else status_event(job, wall)

    def watch(
        self, job_id: str, wall: float, *, stored: Job | None = None, by: str | None = None
    ) -> JobEvent | Error | None:
        """The status of job ``job_id`` for a watch by ``by`` (None: anyone may), as
        :meth:`status` gives it, or from its final journal record ``stored``; an
        :class:`Error` naming ``ids`` if ``by`` does not own it; None if unknown."""
        job = self._jobs.get(job_id) or stored
        if job is None:
            return None
        refusal = not_yours(job, by, "watch")
        if refusal is not None:
            return Error(f"ids: {refusal}", field="ids")
        return status_event(job, wall)

    def backlog(self, now: float | None = None) -> list[str]:
        """Return the ids of jobs waiting for a scheduler, in the order they will go out
        (with aging, by their effective priority at ``now``)."""
        return [job.id for job in self._backlog_jobs(now)]

    def scheduler(self, name: str) -> SchedulerInfo | None:
        """Return a snapshot of scheduler ``name``, or None if the core does not know it."""
        s = self._schedulers.get(name)
        if s is None:
            return None
        return SchedulerInfo(
            s.name,
            s.slots.size,
            s.tasks,
            s.reports,
            s.connected,
            len(s.held),
            s.running,
            s.queued,
            s.last_heartbeat,
            self._leases.deadline(name),
            s.slots.busy,
            s.slots.pending,
            s.slots.incoming,
            self._stealable.count(name),
        )

    def load(self, name: str, now: float) -> float:
        """Return outstanding / size of scheduler ``name`` at ``now`` (forgets expired v1 jobs)."""
        self._expire_v1(now)
        s = self._schedulers[name]
        return len(s.held) / s.slots.size

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has something to do, or None."""
        self._discard_stale_waiting()
        candidates = [
            self._leases.next_deadline(),
            None if self._start_watch is None else self._start_watch.next_deadline(),
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

    def stats(self, now: float, uptime_s: float, ref: str | int | None = None) -> StatsReply:
        """A frozen snapshot of the counters, of what waits and runs now, and of every
        scheduler the core knows, at ``now``; ``uptime_s`` is passed through. Changes
        nothing but forgetting expired v1 jobs."""
        self._expire_v1(now)
        running = sum(s.slots.busy for s in self._schedulers.values())
        unserved: dict[str, int] = {}
        for job in self._backlog_jobs(None):
            unserved[job.payload.task] = unserved.get(job.payload.task, 0) + 1
        bus = self._counters.snapshot(uptime_s, len(self._jobs) - running, running, unserved)
        schedulers = [self._scheduler_stats(s, now) for s in self._schedulers.values()]
        return StatsReply(bus, schedulers, ref)

    def __len__(self) -> int:
        """Return how many jobs the core tracks (not final)."""
        return len(self._jobs)

    # --- restart -----------------------------------------------------------------------

    def restore(
        self,
        jobs: Iterable[Job],
        next_seq: int,
        now: float,
        wall: float,
        *,
        promised_until: float | None = None,
    ) -> None:
        """Take back the non-final ``jobs`` a journal kept, before any other input.

        A job with a holder stays held: its holder gets a lease from ``now`` to register
        again and keep it, as if its connection had just broken, or until
        ``promised_until`` (epoch seconds) if that is later: the bus that shut down for a
        restart promised its schedulers their jobs until then. Other jobs are queued
        (held back until ``not_before`` if that is after ``wall``). New jobs continue
        from ``next_seq``. A job counts as waiting since its last change. Changes nothing
        in the journal.
        """
        self._seq = max(self._seq, next_seq)
        kept_until = now if promised_until is None else now + (promised_until - wall)
        for job in jobs:
            self._jobs[job.id] = job
            self._seq = max(self._seq, job.seq + 1)
            self._since[job.id] = now - max(0.0, wall - job.updated_at)
            if job.holder is not None and job.state in ("assigned", "running"):
                self._restore_held(job, now)
                self._leases.extend(job.holder, kept_until)
            elif job.not_before is not None and job.not_before > wall:
                job.state, job.holder = "queued", None
                self._hold_back(job, now + (job.not_before - wall))
            else:
                job.state, job.holder = "queued", None
                heapq.heappush(self._backlog, (job.priority, job.seq, job.id))

    def _restore_held(self, job: Job, now: float) -> None:
        assert job.holder is not None
        s = self._schedulers.get(job.holder)
        if s is None:
            s = self._schedulers[job.holder] = _new_scheduler(job.holder, True, connected=False)
            self._leases.renew(job.holder, now)
        evictable = job.evictions < self.config.max_evictions
        self._hold(s, job, Seat(job.priority, evictable))
        if job.state == "running":
            self._start_seat(s, job.id)
        elif self._start_watch is not None:
            self._start_watch.assigned(s.name, job.id, now)

    # --- schedulers --------------------------------------------------------------------

    def attach(
        self,
        name: str,
        *,
        size: int | None,
        tasks: Iterable[str] | None,
        reports: bool,
        held: Sequence[Held] = (),
        priorities: Mapping[str, int] | None = None,
        now: float,
        wall: float,
    ) -> list[Decision]:
        """Register scheduler ``name``, or reattach it if the core still knows it.

        ``size`` None means :data:`V1_SIZE`, ``tasks`` None :data:`DEFAULT_TASKS`;
        ``priorities`` are default priorities of its tasks, for jobs submitted from now on
        without one (the latest registration declaring a task's default wins);
        ``reports`` False marks a v1 scheduler. ``held`` lists the attempts it still
        has: it keeps those it holds, gets a :class:`SendStop` for every other one, and
        each job it held by the core's account but left out is requeued. Then the
        backlog is dispatched, and a scheduler left with a free slot steals. Raises
        ValueError if ``size`` is below 1.
        """
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        s = self._schedulers.get(name)
        if s is None:
            s = self._schedulers[name] = _new_scheduler(name, reports)
        s.slots.size = V1_SIZE if size is None else size
        s.tasks = DEFAULT_TASKS if tasks is None else frozenset(tasks)
        self._task_priorities.update(priorities or {})
        s.reports, s.connected, s.stalled = reports, True, False
        self._serving.clear()
        if reports:
            self._leases.renew(name, now)
            self._progressed(s, now)
        decisions: list[Decision] = []
        outcome = reconcile(name, held, self._jobs, s.held)
        decisions.extend(SendStop(name, stop) for stop in outcome.stop)
        for entry in outcome.keep:
            if entry.id in self._cancelling and not entry.done:
                decisions.append(SendStop(name, Stop(entry.id, entry.attempt, "cancelled")))
        lost = [self._jobs[job_id] for job_id in outcome.lost]
        self._take_back(s, lost, "not held after reconnecting", now, wall, decisions)
        self._dispatch_backlog(now, wall, decisions)
        self._unbalanced[name] = None
        self._balance(now, decisions)
        return decisions

    def detach(self, name: str, *, clean: bool, now: float, wall: float) -> list[Decision]:
        """Scheduler ``name``'s connection closed; ``clean`` if it closed it normally.

        A clean close, a v1 scheduler or one holding nothing is forgotten at once, its
        jobs requeued and dispatched; otherwise it keeps its jobs until its lease expires
        (:meth:`tick`), and steals from it are called off (the thieves may steal
        elsewhere). Unknown names return nothing.
        """
        s = self._schedulers.get(name)
        if s is None:
            return []
        s.connected = False
        self._serving.clear()
        decisions: list[Decision] = []
        if clean or not s.reports or not s.held:
            decisions = self._forget_scheduler(s, "released on disconnect", now, wall)
        else:
            self._call_off_steals_from(name)
        self._balance(now, decisions)
        return decisions

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
        owner: str | None = None,
    ) -> list[Decision]:
        """Accept one job from ``owner`` and dispatch it; return a :class:`Reply` first,
        then the rest.

        ``stored`` maps ids the core no longer tracks to their final journal record, for
        ``job_id`` conflicts. The reply is :class:`Accepted`, or an :class:`Error` naming
        ``payload.job_id`` (a conflict) or ``payload.runtime`` (a ``sleep`` job without one).
        """
        decisions: list[Decision] = []
        submit = _Submit(stored or {}, owner, now, wall)
        result = self._submit_one(payload, submit, "payload", decisions)
        reply: Accepted | Error
        if result.id is None:
            reply = Error(message=result.error or "", field=result.field, ref=ref)
        else:
            reply = Accepted(
                result.id,
                ref,
                existing=result.existing,
                replaced=result.replaced,
                warning=result.warning,
            )
        if self._unbalanced:  # only a replaced job frees a slot here
            self._balance(now, decisions)
        return [Reply(reply), *decisions]

    def submit_many(
        self,
        payloads: Sequence[JobPayload | ProtocolError],
        now: float,
        wall: float,
        *,
        stored: Mapping[str, Job] | None = None,
        ref: str | int | None = None,
        owner: str | None = None,
    ) -> list[Decision]:
        """Accept a batch from ``owner``: each payload as :meth:`submit` does, each
        decoding error as that job's error. Return a :class:`Reply` with
        :class:`SubmittedMany` (one result per job, in order) first, then the events and
        assignments."""
        decisions: list[Decision] = []
        results: list[SubmitResult] = []
        submit = _Submit(stored or {}, owner, now, wall)
        for i, item in enumerate(payloads):
            if isinstance(item, ProtocolError):
                results.append(_bad_job(i, item))
            else:
                results.append(self._submit_one(item, submit, f"jobs.{i}", decisions))
        if self._unbalanced:  # only a replaced job frees a slot here
            self._balance(now, decisions)
        return [Reply(SubmittedMany(results, ref)), *decisions]

    def report(self, name: str, report: Report, now: float, wall: float) -> list[Decision]:
        """Apply a report from scheduler ``name`` (renewing its lease); return its
        decisions, or :class:`Ignored` if it is about another attempt or holder.

        ``started``: running (a steal of it failed). ``evicted``: requeued and
        dispatched again, evictions + 1. ``succeeded``/``cancelled``: final.
        ``failed``/``timed_out``: ``retrying`` while retries are left, then ``dead``;
        final as reported with ``max_retries`` 0. ``revoked`` (it left the local queue
        unstarted): assigned to the thief a steal was under way for, else requeued.
        A held job being cancelled ends ``cancelled`` unless it finished first. Then a
        scheduler left with a free slot steals.
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
        assert s is not None  # the holder of a tracked job is known
        unstalled = report.event != "revoked" and self._progressed(s, now)
        if report.evictions is not None and report.event != "evicted":
            job.evictions = max(job.evictions, report.evictions)
        s.counters.reported(report.event)
        decisions: list[Decision] = []
        if report.event == "started":
            self._started(job, s, report, now, wall, decisions)
        elif report.event == "evicted":
            self._evicted(job, report, now, wall, decisions)
        elif report.event in ("failed", "timed_out"):
            self._failed(job, report, now, wall, decisions)
        elif report.event == "revoked":
            self._revoked(job, s, report, now, wall, decisions)
        else:
            self._finish(job, report.event, wall, decisions, report)
        if unstalled:
            self._dispatch_backlog(now, wall, decisions)
        self._balance(now, decisions)
        return decisions

    def cancel(
        self,
        job_id: str,
        wall: float,
        *,
        stored: Job | None = None,
        ref: str | int | None = None,
        by: str | None = None,
    ) -> list[Decision]:
        """Cancel job ``job_id`` for ``by`` (None: anyone may); return a :class:`Reply` first.

        Queued: ``cancelled`` at once. Held by a v2 scheduler: a :class:`SendStop` with
        reason ``cancelled``, reply state ``running``; the job ends when the holder
        confirms. Held by a v1 scheduler, or final (``stored``): nothing changes and the
        reply says so. Unknown, or not owned by ``by``: an :class:`Error` naming ``id``.
        """
        job = self._jobs.get(job_id)
        known = job or stored
        refusal = None if known is None else not_yours(known, by, "cancel")
        if refusal is not None:
            return [Reply(Error(f"id: {refusal}", field="id", ref=ref))]
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
        cancelled), and dispatch jobs whose retry delay is over; then a scheduler left
        with a free slot steals."""
        self._expire_v1(now)
        decisions: list[Decision] = []
        for name in self._leases.expired(now):
            s = self._schedulers[name]
            decisions.append(LeaseExpired(name, len(s.held), s.connected))
            decisions.extend(self._forget_scheduler(s, "lease expired", now, wall))
        self._check_start_deadlines(now, wall, decisions)
        self._discard_stale_waiting()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, job_id = heapq.heappop(self._waiting)
            del self._due[job_id]
            self._dispatch(self._jobs[job_id], now, wall, decisions)
            self._discard_stale_waiting()
        self._balance(now, decisions)
        return decisions

    # --- internals: jobs ----------------------------------------------------------------

    def _submit_one(
        self, payload: JobPayload, submit: _Submit, prefix: str, out: list[Decision]
    ) -> SubmitResult:
        if payload.task == "sleep" and payload.runtime is None:
            where = f"{prefix}.runtime"
            return SubmitResult(error=f"{where}: required, > 0 for the sleep task", field=where)
        if payload.priority is None:
            priority = self._task_priorities.get(payload.task, DEFAULT_PRIORITY)
            payload = msgspec.structs.replace(payload, priority=priority)
        existing = None
        if payload.job_id is not None:
            existing = self._jobs.get(payload.job_id) or submit.stored.get(payload.job_id)
        stoppable = self._stoppable(existing)
        resolution = resolve(existing, payload, submit.owner, stoppable=stoppable)
        if isinstance(resolution, Refuse):
            where = f"{prefix}.job_id"
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
        now, wall = submit.now, submit.wall
        job = Job(job_id, payload, self._seq, wall, attempt=attempt, owner=submit.owner)
        self._seq += 1
        self._jobs[job_id] = job
        self._since[job_id] = now
        self.accepted += 1
        self._touch(job, wall)
        self._emit(out, job_event(job, "accepted", wall, None))
        self._dispatch(job, now, wall, out)
        warning = None if self._eligible(payload.task, now) else unserved_warning(payload.task)
        return SubmitResult(id=job_id, replaced=isinstance(resolution, Replace), warning=warning)

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
            self._leave_holder(old)
            out.append(SendStop(old.holder, Stop(old.id, old.attempt, "replaced")))
        self._cancelling.discard(old.id)
        self._due.pop(old.id, None)

    def _started(
        self, job: Job, s: _Scheduler, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        """Held ``job`` started at ``s``: book its slot (once per attempt), record how long
        it waited, and fail a steal of it that was under way."""
        job.state = "running"
        self._touch(job, wall)
        if self._start_watch is not None:
            self._start_watch.settled(s.name, job.id)
        if self._start_seat(s, job.id):
            self._counters.waited(job.priority, now - self._since.get(job.id, now))
        self._stealable.discard(job.id)
        thief = self._stealing.pop(job.id, None)
        if thief is not None:
            self._unreserve(thief)
        self._emit(out, job_event(job, "started", wall, s.name, report))

    def _evicted(
        self, job: Job, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        if job.id in self._cancelling:
            self._finish(job, "cancelled", wall, out, report)
            return
        holder = job.holder
        self._leave_holder(job)
        job.evictions = max(job.evictions + 1, report.evictions or 0)
        job.holder, job.state = None, "queued"
        self._since[job.id] = now
        self._touch(job, wall)
        self._emit(out, job_event(job, "evicted", wall, holder, report))
        self._dispatch(job, now, wall, out)

    def _revoked(
        self, job: Job, s: _Scheduler, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        """``job`` left ``s``'s queue unstarted: give it to the thief a steal of it was
        for; with none (gone, or never), queue it again."""
        thief_name = self._stealing.pop(job.id, None)
        if thief_name is not None:
            self._unreserve(thief_name)
        self._leave_holder(job)
        job.holder, job.state = None, "queued"
        self._touch(job, wall)
        if job.id in self._cancelling:
            self._finish(job, "cancelled", wall, out, report)
            return
        thief = None if thief_name is None else self._schedulers[thief_name]
        if thief is None or not thief.connected:
            out.append(Requeued(job.id, s.name, job.attempt, "revoked, and no thief takes it"))
            self._emit(out, job_event(job, "requeued", wall, s.name))
            self._dispatch(job, now, wall, out)
            return
        self._counters.add("stolen")
        s.counters.add("stolen_from")
        thief.counters.add("stole")
        self._assign(
            job, thief, self._priority(job, now), now, wall, out, waiting=False, steal=True
        )

    def _failed(
        self, job: Job, report: Report, now: float, wall: float, out: list[Decision]
    ) -> None:
        assert report.event in ("failed", "timed_out")
        job.errors.append(_error_text(report))
        job.traceback = report.traceback
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
        self._leave_holder(job)
        job.retries += 1
        delay = self.config.backoff.delay(job.payload.retry_backoff, job.retries, self._rng)
        job.holder, job.state, job.not_before = None, "queued", wall + delay
        self._since[job.id] = now + delay
        self._touch(job, wall)
        event = job_event(job, "retrying", wall, holder, report, retry_in_s=delay)
        self._emit(out, event)
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
            self._leave_holder(job)
        job.state = state
        job.finished_at = wall
        if state == "succeeded":
            job.result, job.traceback = None if report is None else report.result, None
        del self._jobs[job.id]
        self._since.pop(job.id, None)
        self._cancelling.discard(job.id)
        self._due.pop(job.id, None)
        self.finished += 1
        self._touch(job, wall)
        self._emit(out, job_event(job, state, wall, job.holder, report, error=error))

    def _touch(self, job: Job, wall: float) -> None:
        job.updated_at = wall
        self._changed[job.id] = job
        self._deleted.discard(job.id)

    def _emit(self, out: list[Decision], event: JobEvent) -> None:
        """Publish ``event`` and count it."""
        out.append(EmitEvent(event))
        self._counters.event(event.event)

    def _priority(self, job: Job, now: float) -> int:
        """``job``'s effective priority at ``now`` (aged while it waits)."""
        return self._aging.effective(job.priority, self._since.get(job.id, now), now)

    # --- internals: dispatch ------------------------------------------------------------

    def _hold_back(self, job: Job, due: float) -> None:
        """Keep queued ``job`` out of dispatch until ``due`` (monotonic)."""
        self._due[job.id] = due
        heapq.heappush(self._waiting, (due, job.seq, job.id))

    def _backlog_jobs(self, now: float | None) -> list[Job]:
        """The jobs of the backlog in dispatch order: by priority (effective at ``now``
        with aging, when ``now`` is given), then arrival."""
        entries = sorted(e for e in self._backlog if self._in_backlog(e[1], e[2]))
        jobs = [self._jobs[job_id] for _, _, job_id in entries]
        if now is not None and self._aging.every is not None:
            jobs.sort(key=lambda job: (self._priority(job, now), job.seq))
        return jobs

    def _dispatch_backlog(self, now: float, wall: float, out: list[Decision]) -> None:
        waiting = self._backlog_jobs(now)
        self._backlog = []
        for job in waiting:
            self._dispatch(job, now, wall, out)

    def _in_backlog(self, seq: int, job_id: str) -> bool:
        """Whether backlog entry (``seq``, ``job_id``) still stands: cancelled, replaced or
        dispatched jobs leave stale entries behind."""
        job = self._jobs.get(job_id)
        return job is not None and job.seq == seq and job.state == "queued"

    def _dispatch(self, job: Job, now: float, wall: float, out: list[Decision]) -> None:
        """Hand queued ``job`` to the scheduler :func:`place` chooses, or put it in the
        backlog; a job out of deliveries is dead instead."""
        limit = self.config.max_deliveries + job.payload.max_retries
        if job.deliveries >= limit:
            error = f"delivered {job.deliveries} times (limit {limit}) without an outcome"
            self._finish(job, "dead", wall, out, error=error)
            return
        candidates = self._eligible(job.payload.task, now)
        if not candidates:
            heapq.heappush(self._backlog, (job.priority, job.seq, job.id))
            return
        priority = self._priority(job, now)
        where = place(priority, candidates)
        assert where is not None
        s = self._schedulers[where.scheduler]
        if isinstance(where, EvictFor):
            s.slots.spare(where.victim, self._seats[where.victim].priority)
        self._assign(job, s, priority, now, wall, out, waiting=isinstance(where, Enqueue))

    def _assign(
        self,
        job: Job,
        s: _Scheduler,
        priority: int,
        now: float,
        wall: float,
        out: list[Decision],
        *,
        waiting: bool,
        steal: bool = False,
    ) -> None:
        """Give queued ``job`` to ``s`` as a new attempt at (effective) ``priority``;
        ``waiting``: it waits in the local queue there (it may be stolen); ``steal``: it
        never ran at the scheduler it leaves, so this is not one more delivery."""
        job.attempt += 1
        job.deliveries += not steal
        job.holder, job.state, job.not_before = s.name, "assigned", None
        self._touch(job, wall)
        evictable = job.evictions < self.config.max_evictions
        self._hold(s, job, Seat(priority, evictable))
        if s.reports and self._start_watch is not None:
            self._start_watch.assigned(s.name, job.id, now)
        if not s.reports:
            runtime = job.payload.runtime or 0.0
            heapq.heappush(self._v1_due, (now + runtime, job.id, job.attempt))
        elif waiting:
            waiter = Waiter(job.id, job.priority, self._since.get(job.id, now), job.seq)
            self._stealable.add(s.name, job.payload.task, waiter)
        s.slots.last_pick = self._picks
        self._picks += 1
        p = job.payload
        assignment = Assignment(
            id=job.id,
            attempt=job.attempt,
            priority=priority,
            runtime=p.runtime,
            task=p.task,
            args=p.args,
            timeout=p.timeout,
            evictions=job.evictions,
            evictable=evictable,
        )
        out.append(SendAssign(s.name, assignment, p))
        self._emit(out, job_event(job, "assigned", wall, s.name))

    def _eligible(self, task: str, now: float) -> list[Slots]:
        """The slots of the connected schedulers serving ``task`` (v1 jobs expired first)."""
        self._expire_v1(now)
        found = self._serving.get(task)
        if found is None:
            if len(self._serving) >= MAX_CACHED_TASKS:  # producers choose task names
                self._serving.clear()
            found = [
                s.slots
                for s in self._schedulers.values()
                if s.connected and not s.stalled and task in s.tasks
            ]
            self._serving[task] = found
        return found

    def _hold(self, s: _Scheduler, job: Job, seat: Seat) -> None:
        """Book ``job`` as held by ``s`` with ``seat``, not started."""
        s.held.add(job.id)
        self._seats[job.id] = seat
        s.slots.book()

    def _start_seat(self, s: _Scheduler, job_id: str) -> bool:
        """Book held ``job_id`` as running at ``s``; False if it already was."""
        seat = self._seats[job_id]
        if seat.started is not None:
            return False
        s.slots.start(job_id, seat, self._starts)
        self._starts += 1
        return True

    def _leave_holder(self, job: Job) -> None:
        """``job`` leaves its holder's books (it ended, is requeued or moves): its slot,
        its place in the queue of stealable jobs, a steal of it under way. Keeps
        ``job.holder`` for the caller's event."""
        assert job.holder is not None
        s = self._schedulers[job.holder]
        s.held.discard(job.id)
        s.slots.release(job.id, self._seats.pop(job.id))
        if self._start_watch is not None:
            self._start_watch.settled(s.name, job.id)
        self._stealable.discard(job.id)
        thief = self._stealing.pop(job.id, None)
        if thief is not None:
            self._unreserve(thief)
        self._unbalanced[s.name] = None

    # --- internals: stealing ------------------------------------------------------------

    def _balance(self, now: float, out: list[Decision]) -> None:
        """Let every scheduler that may have a free slot and an empty queue steal."""
        if self._strategy is None:
            self._unbalanced.clear()
            return
        while self._unbalanced:
            name = next(iter(self._unbalanced))
            del self._unbalanced[name]
            s = self._schedulers.get(name)
            if s is not None and s.connected and s.reports and not s.stalled:
                self._steal_for(s, now, out)

    def _steal_for(self, thief: _Scheduler, now: float, out: list[Decision]) -> None:
        """While ``thief`` has a free slot and nothing waits in its own queue, start a
        steal of the job the strategy chooses: the victim is told to give it up, the slot
        is kept for it, and the job is marked."""
        assert self._strategy is not None
        while thief.slots.free > 0 and not self._stealable.count(thief.name):
            steal = self._strategy.choose(
                thief.name, thief.tasks, self._stealable, self._robbable, now
            )
            if steal is None:
                return
            job = self._jobs[steal.job_id]
            self._stealable.discard(job.id)
            self._stealing[job.id] = thief.name
            thief.slots.incoming += 1
            self._counters.add("steal_attempts")
            out.append(SendStop(steal.victim, Stop(job.id, job.attempt, "stolen")))

    def _robbable(self, name: str) -> bool:
        s = self._schedulers.get(name)
        return s is not None and s.connected and s.reports

    def _unreserve(self, thief: str) -> None:
        """A steal for ``thief`` ended: free the slot kept for it (it may steal again)."""
        self._schedulers[thief].slots.incoming -= 1
        self._unbalanced[thief] = None

    def _call_off_steals_from(self, victim: str) -> None:
        """Forget the steals from ``victim`` (it lost its connection): their thieves get
        their slots back. If the victim gave a job up meanwhile, it no longer lists it
        when it comes back, and the job is requeued."""
        for job_id, thief in list(self._stealing.items()):
            if self._jobs[job_id].holder == victim:
                del self._stealing[job_id]
                self._unreserve(thief)

    # --- internals: schedulers ------------------------------------------------------------

    def _forget_scheduler(
        self, s: _Scheduler, reason: str, now: float, wall: float
    ) -> list[Decision]:
        """Forget ``s`` and requeue every job it held; steals for it are dropped (a job
        its victim gives up is then requeued)."""
        s.connected = False
        self._serving.clear()
        self._leases.drop(s.name)
        if self._start_watch is not None:
            self._start_watch.forget(s.name)
        self._expire_v1(now)
        for job_id, thief in list(self._stealing.items()):
            if thief == s.name:
                del self._stealing[job_id]
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
            self._leave_holder(job)
            job.holder, job.state = None, "queued"
            self._since[job.id] = now
            self._touch(job, wall)
            out.append(Requeued(job.id, s.name, job.attempt, reason))
            self._emit(out, job_event(job, "requeued", wall, s.name))
            requeued.append(job)
        for job in requeued:
            self._dispatch(job, now, wall, out)

    def _progressed(self, s: _Scheduler, now: float) -> bool:
        """``s`` showed it works at ``now`` (it started or ended an attempt, or registered):
        its start deadline runs from here, and it may get work again. Returns whether it
        was stalled (then the caller dispatches the backlog)."""
        if self._start_watch is not None:
            self._start_watch.progressed(s.name, now)
        if not s.stalled:
            return False
        s.stalled = False
        self._serving.clear()
        self._unbalanced[s.name] = None
        return True

    def _check_start_deadlines(self, now: float, wall: float, out: list[Decision]) -> None:
        """Take back the unstarted attempts of every connected scheduler that had room
        and started nothing within the start deadline; it gets no new work until it
        starts something or registers again. One that is full or disconnected waits
        legitimately (or for its lease): its deadline starts over."""
        if self._start_watch is None:
            return
        for name in self._start_watch.overdue(now):
            s = self._schedulers[name]
            if not s.connected or s.slots.busy >= s.slots.size:
                self._start_watch.progressed(name, now)
                continue
            pending = [self._jobs[j] for j in s.held if self._seats[j].started is None]
            s.stalled = True
            self._serving.clear()
            out.append(StartOverdue(name, len(pending)))
            for job in sorted(pending, key=_order):
                out.append(SendStop(name, Stop(job.id, job.attempt, "not started in time")))
                self._counters.add("not_started")
            reason = "not started within the start deadline"
            self._take_back(s, pending, reason, now, wall, out)

    def _scheduler_stats(self, s: _Scheduler, now: float) -> SchedulerStats:
        running = [
            seat.priority for job_id in s.held if (seat := self._seats[job_id]).started is not None
        ]
        if s.reports:
            busy, queued = s.slots.busy, s.slots.pending
        else:
            # A v1 scheduler never reports a start: its jobs fill its slots, then wait.
            busy, queued = min(len(s.held), s.slots.size), max(0, len(s.held) - s.slots.size)
        age = None if s.last_heartbeat is None else max(0.0, now - s.last_heartbeat)
        return s.counters.snapshot(
            s.name,
            protocol=2 if s.reports else 1,
            size=s.slots.size,
            busy=busy,
            queued=queued,
            tasks=sorted(s.tasks),
            running_priorities=running,
            heartbeat_age_s=age,
        )

    def _expire_v1(self, now: float) -> None:
        """Forget the jobs of v1 schedulers whose runtime has elapsed."""
        while self._v1_due and self._v1_due[0][0] <= now:
            _, job_id, attempt = heapq.heappop(self._v1_due)
            job = self._jobs.get(job_id)
            if job is None or job.attempt != attempt or job.holder is None:
                continue
            self._leave_holder(job)
            del self._jobs[job_id]
            self._since.pop(job_id, None)
            self._changed.pop(job_id, None)
            self._deleted.add(job_id)

    def _discard_stale_waiting(self) -> None:
        while self._waiting and self._due.get(self._waiting[0][2]) != self._waiting[0][0]:
            heapq.heappop(self._waiting)


@dataclass(frozen=True, slots=True)
class _Submit:
    """What every job of one submit request shares: the final journal records of taken
    ids, its submitter, and the times."""

    stored: Mapping[str, Job]
    owner: str | None
    now: float
    wall: float


def unserved_warning(task: str) -> str:
    """The warning an accepted job of ``task`` gets when no connected scheduler serves it."""
    return f'no connected scheduler serves task "{task}"; the job waits until one registers'


def _order(job: Job) -> tuple[int, int]:
    return job.priority, job.seq


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
