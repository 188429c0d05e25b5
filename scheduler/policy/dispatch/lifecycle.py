"""The job state machine of the dispatch core: every job it tracks, and the one place
each transition is written (assign, start a seat, requeue, finish, forget).

A tracked job is ``scheduled`` (a delayed job before its time, see :mod:`.delayed`),
``queued`` (no holder; it waits in the backlog for a scheduler or is
held back for a retry), ``assigned`` (held by a scheduler, not started) or ``running``
(held, started). A final job leaves the core (:meth:`Lifecycle.forget`); so does a job
handed to a v1 scheduler once its runtime has elapsed. The invariants each state keeps
are listed in :mod:`scheduler.policy.dispatch.dispatcher` and checked by
A tracked job is ``blocked`` (waiting for its dependencies or, for a broadcast, its
runs: :mod:`.dependencies`), ``queued`` (no holder; it waits in the backlog for a
scheduler or is held back for a retry), ``assigned`` (held by a scheduler, not started)
or ``running`` (held, started). A final job leaves the core
(:meth:`Lifecycle.forget`); so does a job handed to a v1 scheduler once its runtime has
elapsed. The invariants each state keeps are listed in
:mod:`scheduler.policy.dispatch.dispatcher` and checked by
:mod:`scheduler.policy.dispatch.invariants`.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from scheduler.policy.aging import Aging
from scheduler.policy.dispatch.backlog import Backlog
from scheduler.policy.dispatch.broadcast import gone_error, parent_outcome, run_id, run_payload
from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    JobInfo,
    Requeued,
    SendAssign,
)
from scheduler.policy.dispatch.dependencies import Dependencies, Plan, effect, skip_reason
from scheduler.policy.dispatch.registry import KnownScheduler, Registry
from scheduler.policy.dispatch.steals import Steals
from scheduler.policy.dispatch.timers import Timers
from scheduler.policy.events import job_event
from scheduler.policy.job import Job
from scheduler.policy.placement import Enqueue, EvictFor, Seat, place
from scheduler.policy.placement_index import Pool
from scheduler.policy.stats import BusCounters
from scheduler.policy.stealing import steal_strategy
from scheduler.protocol import Assignment, JobEvent, Report
from scheduler.protocol_types import EventKind


class Lifecycle:
    """Every tracked job and the parts that book it: schedulers, backlog and steals."""

    def __init__(self, config: DispatchConfig, rng: random.Random) -> None:
        """No job yet."""
        self.config = config
        self.rng = rng
        self.aging = Aging(config.age_every)
        self.counters = BusCounters()
        self.registry = Registry(config)
        self.jobs: dict[str, Job] = {}
        self.backlog = Backlog(self.jobs)
        self.timers = Timers(self.jobs)
        strategy = steal_strategy(config.steal, self.aging)
        self.steals = Steals(self.registry, self.jobs, strategy, self.counters)
        self.seats: dict[str, Seat] = {}
        self.cancelling: set[str] = set()
        self.deps = Dependencies()
        self._changed: dict[str, Job] = {}
        self._deleted: set[str] = set()
        self.seq = 0
        self._picks = 0
        self._starts = 0
        self.accepted = 0
        self.finished = 0

    # --- records -----------------------------------------------------------------------

    def touch(self, job: Job, wall: float) -> None:
        """``job`` changed at ``wall``: the journal saves its latest state."""
        job.updated_at = wall
        self._changed[job.id] = job
        if self._deleted:
            self._deleted.discard(job.id)

    def take_changes(self) -> tuple[list[Job], list[str]]:
        """Return and forget the jobs changed (to save) and the ids forgotten (to delete)."""
        changed, self._changed = list(self._changed.values()), {}
        if not self._deleted:  # asked after every input; jobs are seldom deleted
            return changed, []
        deleted, self._deleted = sorted(self._deleted), set()
        return changed, deleted

    def emit(self, out: list[Decision], event: JobEvent) -> None:
        """Publish ``event`` and count it."""
        out.append(EmitEvent(event))
        self.counters.event(event.event)

    def priority(self, job: Job, now: float) -> int:
        """``job``'s effective priority at ``now`` (aged while it waits)."""
        return self.aging.effective(job.priority, job.waiting_since, now)

    def info(self, job_id: str) -> JobInfo | None:
        """A snapshot of job ``job_id``, or None once it is final or unknown."""
        job = self.jobs.get(job_id)
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
            job.errors,
            job.not_before,
            job.id in self.cancelling,
            self.steals.thief(job.id),
        )

    # --- dispatch ------------------------------------------------------------------------

    def eligible(self, task: str, now: float) -> Pool:
        """The slots of the connected schedulers serving ``task`` (v1 jobs expired first)."""
        self.expire_v1(now)
        return self.registry.serving(task)

    def dispatch(self, job: Job, now: float, wall: float, out: list[Decision]) -> None:
        """Hand queued ``job`` to the scheduler :func:`place` chooses, or put it in the
        backlog; a job out of deliveries is dead instead."""
        limit = self.config.max_deliveries + job.payload.max_retries
        if job.deliveries >= limit:
            error = f"delivered {job.deliveries} times (limit {limit}) without an outcome"
            self.finish(job, "dead", wall, out, error=_kept(job, error))
            return
        pool = self.eligible(job.payload.task, now)
        pin = job.payload.pin
        pinned = None if pin is None else pool.get(pin)
        if not pool or (pin is not None and pinned is None):
            self.backlog.push(job)
            return
        priority = self.priority(job, now)
        where = pool.place(priority) if pinned is None else place(priority, [pinned])
        assert where is not None
        s = self.registry.by_name[where.scheduler]
        if isinstance(where, EvictFor):
            s.slots.spare(where.victim, self.seats[where.victim].priority)
        self.assign(job, s, priority, now, wall, out, waiting=isinstance(where, Enqueue))

    def backlog_jobs(self, now: float | None) -> list[Job]:
        """The jobs of the backlog in dispatch order: by priority (effective at ``now``
        with aging, when ``now`` is given), then arrival."""
        jobs = [self.jobs[job_id] for job_id in self.backlog.ids()]
        if now is not None and self.aging.every is not None:
            jobs.sort(key=lambda job: (self.priority(job, now), job.seq))
        return jobs

    def dispatch_backlog(self, now: float, wall: float, out: list[Decision]) -> None:
        """Dispatch every job of the backlog again, in order."""
        waiting = self.backlog_jobs(now)
        self.backlog.take_all()
        for job in waiting:
            self.dispatch(job, now, wall, out)

    def assign(
        self,
        job: Job,
        s: KnownScheduler,
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
        self.touch(job, wall)
        evictable = job.evictions < self.config.max_evictions
        self.hold(s, job, Seat(priority, evictable))
        p = job.payload
        if not s.reports:
            self.backlog.expire_v1(now + (p.runtime or 0.0), job)
        else:
            watch = self.registry.start_watch
            if watch is not None:
                watch.assigned(s.name, job.id, now)
            if waiting and p.pin is None:  # a pinned run is never stolen
                self.steals.waits(s, job, job.waiting_since)
        s.slots.last_pick = self._picks
        self._picks += 1
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
            results=dict(self.deps.results.get(job.id, {})) if p.pass_results else None,
        )
        out.append(SendAssign(s.name, assignment, p))
        self.emit(out, job_event(job, "assigned", wall, s.name))

    # --- holders -------------------------------------------------------------------------

    def hold(self, s: KnownScheduler, job: Job, seat: Seat) -> None:
        """Book ``job`` as held by ``s`` with ``seat``, not started."""
        s.held.add(job.id)
        self.seats[job.id] = seat
        s.slots.book()

    def start_seat(self, s: KnownScheduler, job_id: str) -> bool:
        """Book held ``job_id`` as running at ``s``; False if it already was."""
        seat = self.seats[job_id]
        if seat.started is not None:
            return False
        s.slots.start(job_id, seat, self._starts)
        self._starts += 1
        return True

    def leave_holder(self, job: Job) -> None:
        """``job`` leaves its holder's books (it ended, is requeued or moves): its slot,
        its place in the queue of stealable jobs, a steal of it under way. Keeps
        ``job.holder`` for the caller's event."""
        assert job.holder is not None
        registry = self.registry
        s = registry.by_name[job.holder]
        s.held.discard(job.id)
        s.slots.release(job.id, self.seats.pop(job.id))
        if registry.start_watch is not None:
            registry.start_watch.settled(s.name, job.id)
        self.steals.leave(job.id)
        self.steals.may_steal(s.name)

    def progressed(self, s: KnownScheduler, now: float) -> bool:
        """``s`` showed it works at ``now`` (it started or ended an attempt, or registered):
        its start deadline runs from here, and it may get work again. Returns whether it
        was stalled (then the caller dispatches the backlog)."""
        if self.registry.start_watch is not None:
            self.registry.start_watch.progressed(s.name, now)
        if not s.stalled:
            return False
        s.stalled = False
        self.registry.changed()
        self.steals.may_steal(s.name)
        return True

    # --- transitions ---------------------------------------------------------------------

    def requeue(self, job: Job, wall: float, since: float | None) -> None:
        """Held ``job`` goes back to ``queued``: it leaves its holder (``job.holder`` is
        cleared; the caller read it first), waiting since ``since`` (None: as before).
        The caller dispatches it or holds it back."""
        self.leave_holder(job)
        job.holder, job.state = None, "queued"
        if since is not None:
            job.waiting_since = since
        self.touch(job, wall)

    def take_back(
        self,
        s: KnownScheduler,
        jobs: Collection[Job],
        reason: str,
        now: float,
        wall: float,
        out: list[Decision],
    ) -> None:
        """Requeue ``jobs`` held by ``s`` (``requeued`` events), then dispatch them; a job
        being cancelled ends ``cancelled`` instead."""
        requeued: list[Job] = []
        for job in sorted(jobs, key=lambda job: (job.priority, job.seq)):
            if job.id in self.cancelling:
                error = f"its scheduler left before confirming the stop ({reason})"
                self.finish(job, "cancelled", wall, out, error=error)
                continue
            self.requeue(job, wall, now)
            out.append(Requeued(job.id, s.name, job.attempt, reason))
            self.emit(out, job_event(job, "requeued", wall, s.name))
            requeued.append(job)
        for job in requeued:
            self.dispatch(job, now, wall, out)

    def finish(
        self,
        job: Job,
        state: EventKind,
        wall: float,
        out: list[Decision],
        report: Report | None = None,
        error: str | None = None,
    ) -> None:
        """End ``job`` in final ``state``: it leaves the core and its holder."""
        self._end(job, state, wall, out, report, error)
        self._settle(job, wall, out)

    def _end(
        self,
        job: Job,
        state: EventKind,
        wall: float,
        out: list[Decision],
        report: Report | None,
        error: str | None,
    ) -> None:
        assert state in (
            "succeeded",
            "failed",
            "timed_out",
            "cancelled",
            "dead",
            "expired",
            "skipped",
        )
        self.forget(job.id)
        job.state = state
        job.finished_at = wall
        if state == "succeeded":  # a broadcast parent keeps the result it gathered
            job.result = job.result if report is None else report.result
            job.traceback = None
        if report is not None and report.output is not None:
            job.output = report.output
        job.exit_code = None if report is None else report.exit_code
        self.finished += 1
        self.touch(job, wall)
        self.emit(out, job_event(job, state, wall, job.holder, report, error=error))

    # --- dependencies ----------------------------------------------------------------

    def enter(self, job: Job, plan: Plan, now: float, wall: float, out: list[Decision]) -> None:
        """New (or restored) ``job`` with dependencies starts as ``plan`` says: skipped
        if one already failed (unless it runs anyway), ``blocked`` while some are
        pending, else dispatched."""
        if job.payload.pass_results:
            self.deps.keep_results(job.id, plan.results)
        if plan.failed is not None and job.payload.on_dependency_failure == "skip":
            self.finish(job, "skipped", wall, out, error=_kept(job, skip_reason(*plan.failed)))
        elif plan.pending:
            job.state = "blocked"
            self.deps.block(job.id, plan.pending)
            self.touch(job, wall)
            self.emit(out, job_event(job, "blocked", wall, None))
        else:
            self.dispatch(job, now, wall, out)

    def enter_restored(self, job: Job, plan: Plan, wall: float, out: list[Decision]) -> None:
        """Restored blocked ``job``, already booked for ``plan.pending``: skipped if a
        dependency failed while the bus was down (unless it runs anyway), released if
        none is pending any more, else it keeps waiting."""
        if plan.failed is not None and job.payload.on_dependency_failure == "skip":
            self.finish(job, "skipped", wall, out, error=_kept(job, skip_reason(*plan.failed)))
        elif job.id not in self.deps.waiting:
            job.state = "queued"
            self.touch(job, wall)
            self.backlog.hold_back(job, float("-inf"))

    def _settle(self, ended: Job, wall: float, out: list[Decision]) -> None:
        """``ended`` is final: each job waiting for it is skipped (and so on down the
        line), released (held back until the next tick, which dispatches it) or waits on."""
        if ended.id not in self.deps.dependents:  # most jobs: nothing waits for them
            return
        todo = [ended]
        while todo:
            dep = todo.pop()
            for job_id, still_waiting in self.deps.settle(dep.id):
                job = self.jobs[job_id]
                if dep.state == "succeeded" and (job.payload.pass_results or job.payload.broadcast):
                    self.deps.keep_results(job_id, {dep.id: dep.result})
                if job.payload.broadcast:
                    self.deps.outcomes.setdefault(job_id, {})[dep.id] = dep.state
                what = effect(job.payload, dep.state, still_waiting)
                if what == "gather":
                    self._gather(job, wall, out)
                    todo.append(job)
                elif what == "skip":
                    why = _kept(job, skip_reason(dep.id, dep.state))
                    self._end(job, "skipped", wall, out, None, why)
                    todo.append(job)
                elif what == "release":
                    job.state = "queued"
                    self.touch(job, wall)
                    self.backlog.hold_back(job, float("-inf"))

    # --- broadcast ---------------------------------------------------------------------

    def broadcast(
        self, parent: Job, schedulers: list[str], now: float, wall: float, out: list[Decision]
    ) -> list[str]:
        """Make new ``parent``'s run on each of ``schedulers`` (accepted, pinned,
        dispatched) and block the parent on them; return the runs' ids."""
        runs = [
            Job(
                run_id(parent.id, name),
                run_payload(parent.payload, parent.id, name),
                parent.seq,
                wall,
                owner=parent.owner,
            )
            for name in schedulers
        ]
        for run in runs:
            run.seq, self.seq = self.seq, self.seq + 1
            self.jobs[run.id] = run
            run.waiting_since = now
            self.accepted += 1
            self.touch(run, wall)
            self.emit(out, job_event(run, "accepted", wall, None))
        self.enter(parent, Plan(tuple(run.id for run in runs)), now, wall, out)
        for run in runs:
            self.dispatch(run, now, wall, out)
        return [run.id for run in runs]

    def _gather(self, parent: Job, wall: float, out: list[Decision]) -> None:
        """Every run of broadcast ``parent`` ended: it ends as they did."""
        state, error = parent_outcome(self.deps.outcomes.get(parent.id, {}))
        parent.result = self.deps.results.get(parent.id, {}) if state == "succeeded" else None
        if error is not None:
            parent.errors += (error,)  # kept in the journal: `jobs show` says why
        self._end(parent, state, wall, out, None, error)

    def end_pinned(self, scheduler: str, wall: float, out: list[Decision]) -> None:
        """The core forgot ``scheduler``: the runs pinned to it that still wait end ``dead``."""
        stranded = [
            job
            for job in self.jobs.values()
            if job.payload.pin == scheduler and job.holder is None and job.state == "queued"
        ]
        for job in stranded:
            self.finish(job, "dead", wall, out, error=gone_error(scheduler))

    def forget(self, job_id: str) -> Job:
        """Take tracked job ``job_id`` out of every structure of the core: its holder's
        books, the backlog, the hold-backs, the cancels; return
        it. Keeps ``job.holder`` for the caller's event; the journal is the caller's
        business."""
        job = self.jobs.pop(job_id)
        if job.holder is not None:
            self.leave_holder(job)
        self.deps.forget(job_id)
        self.cancelling.discard(job_id)
        self.backlog.discard(job_id)
        self.timers.discard(job_id)
        return job

    def expire_v1(self, now: float) -> None:
        """Forget the jobs of v1 schedulers whose runtime has elapsed."""
        while (due := self.backlog.pop_v1(now)) is not None:
            job_id, attempt = due
            job = self.jobs.get(job_id)
            if job is None or job.attempt != attempt or job.holder is None:
                continue
            self.forget(job_id)
            self._changed.pop(job_id, None)
            self._deleted.add(job_id)
            # Its outcome is unknown: jobs waiting for it are settled as after a failure,
            # stamped when the bus takes it to have ended.
            self._settle(job, job.updated_at + (job.payload.runtime or 0.0), [])


def _kept(job: Job, why: str) -> str:
    """Keep ``why`` (the reason ``job`` ends without running) in its record, so the
    journal has it and ``jobs show`` says it; return it for the event."""
    job.errors += (why,)
    return why
