"""The bus's dispatch core: which scheduler holds which job, and what to send.

Pure: no I/O, no clock. Every input takes ``now`` (monotonic seconds: leases, retry
delays, v1 load) and ``wall`` (epoch seconds: stamped on jobs and events) and returns
the decisions the bus carries out, in order (:mod:`.decisions`). Every job the core
changes is collected for the journal (:meth:`Dispatcher.take_changes`); the bus makes
those changes durable before it sends anything the decisions say.

The package, in parts: :mod:`.config` (the rules' numbers and every default),
:mod:`.decisions`, :mod:`.registry` (schedulers, leases, start deadlines),
:mod:`.backlog` (waiting jobs, retry hold-backs, v1 expiry), :mod:`.steals`,
:mod:`.lifecycle` (the job state machine: one ``requeue``, one ``forget``),
:mod:`.reports`, :mod:`.producers` (submit, cancel), :mod:`.rerun` (retry),
:mod:`.sessions` (schedulers come and go, restart), :mod:`.invariants`, and this facade.

Per-job invariants (checked by :meth:`Dispatcher.check_invariants` after every input
in the state-machine test). A job the core tracks is in exactly one state:

=========== ======== ============================================================
state       holder   where the job is booked
=========== ======== ============================================================
queued      None     the backlog (under its own ``seq``) XOR a retry hold-back;
                     no seat, not stealable, no steal, not being cancelled
assigned    ``s``    ``s.held``; a seat not started; if it waits in ``s``'s local
                     queue (v2 only) stealable XOR being stolen (a slot kept at
                     its thief); at a v1 ``s``, an expiry entry for its attempt
running     ``s``    ``s.held``; a started seat; neither stealable nor stolen
scheduled   None     a due time in ``timers`` only (not in the backlog, no hold-back,
                     no seat, not stealable, not being cancelled); ``delayed``
blocked     None     ``deps.waiting`` (a non-empty set of tracked job ids), and
                     nowhere else: not in the backlog, no seat, no steal, no cancel
final       —        nowhere (only in the journal changes)
=========== ======== ============================================================

Dependencies (:mod:`.dependencies`): ``deps.dependents`` is the exact reverse of
``deps.waiting``; results and broadcast outcomes are kept only for tracked jobs
(outcomes only while blocked). A pinned job (a broadcast run, :mod:`.broadcast`) is
held only by its pin and is never stealable nor stolen.

Every tracked job has a waiting time (``since``); ``cancelling`` holds only held
jobs; seats are exactly the held jobs; each scheduler's slots count its started
and unstarted seats (``busy``, ``pending``) and the steals under way for it
(``incoming``). A misfire deadline (``timers``) names only tracked jobs. Transitions: ``submit`` ->
(scheduled -> due ->) queued -> ``assign`` -> assigned ->
``started`` -> running; a held job goes back to queued only through
:meth:`.lifecycle.Lifecycle.requeue` (lost holder, eviction, retry, revoke) and
leaves the core only through :meth:`.lifecycle.Lifecycle.forget` (final, replaced,
v1 runtime over).

Rules:

* Each job has at most one holder. Each assignment raises the job's ``attempt`` and
  ``deliveries`` (a steal raises only ``attempt``: the job never ran at its victim); a
  report about another attempt, or from a scheduler that is not the holder, changes
  nothing (:class:`.Ignored`).
* A job is pushed at once to a connected scheduler serving its task, chosen by
  :func:`~scheduler.policy.placement.place` from the slots the core books for each
  scheduler (a free slot, least loaded first; else the scheduler running the least
  urgent evictable job, if this one is more urgent; else the shortest local queue).
  With none serving its task it waits in the backlog, by priority then arrival, until
  one registers; :meth:`Dispatcher.stats` counts those jobs as ``unserved``, and the
  reply to its submit carries a ``warning`` saying so (:func:`.unserved_warning`).
* Work stealing (``steal`` ``urgent`` or ``tail``, see :mod:`scheduler.policy.stealing`):
  a v2 scheduler with a free slot and nothing waiting in its own queue takes a job
  waiting in another's. The core sends the victim a ``Stop`` of kind ``steal``, books
  the slot for the thief and marks the job; on the victim's ``revoked`` report the job
  is assigned to the thief (attempt + 1); on its ``started`` report the steal failed
  and the mark is cleared. A job has at most one steal under way, and only its holder
  can start it, so it never runs at both.
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
* A cancel ends a queued job at once; a held one is told to stop (a ``Stop`` of kind
  ``cancel``) and ends ``cancelled`` when its holder confirms or is lost, unless it
  finished first. Other stops (a replaced job, an attempt not started in time, one a
  returning scheduler no longer holds) are of kind ``drop``.
* v1 schedulers never report and cannot be told to stop: a job handed to one counts as
  outstanding until ``now >= handed_at + runtime`` and is then forgotten (deleted).
* Dependencies (``depends_on``): a job is ``blocked`` until every dependency
  ``succeeded`` (then queued: held back until the next tick, which the report that
  released it runs at once); a dependency that ends otherwise ends it ``skipped``
  (cascading) unless ``on_dependency_failure`` is ``run``. Unknown ids, another
  submitter's jobs and, in a batch, cycles are refused naming the field.
* Broadcast (``broadcast: true``): one run ``ID/scheduler`` per connected v2 scheduler
  serving the task at submit, pinned there; the parent is ``blocked`` until every run
  ends, then ``succeeded`` (all did) or ``failed`` naming the others. A run still
  waiting when the core forgets its scheduler ends ``dead``.
* Final jobs leave the core; the bus answers about them from its journal. A final job
  that did not succeed may be retried (:mod:`.rerun`): it is tracked again, ``queued``
  for its next attempt, with its deliveries and retries starting over.
* Counters and snapshots for ``stats`` (:mod:`scheduler.policy.stats`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from scheduler.codec import ProtocolError
from scheduler.policy import listing
from scheduler.policy.dispatch import delayed, invariants, producers, reports, rerun, sessions
from scheduler.policy.dispatch.config import DispatchConfig
from scheduler.policy.dispatch.decisions import Decision, JobInfo, SchedulerInfo
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.dispatch.timers import earliest
from scheduler.policy.events import status_event
from scheduler.policy.job import Job, not_yours
from scheduler.policy.listing import JobQuery
from scheduler.protocol import Error, Held, JobEvent, JobPayload, Report
from scheduler.protocol_stats import StatsReply
from scheduler.protocol_types import DEFAULT_PRIORITY


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
        rng = rng if rng is not None else random.Random()
        self._new_id = new_id if new_id is not None else (lambda: f"{rng.getrandbits(128):032x}")
        self._core = Lifecycle(self.config, rng)

    @property
    def accepted(self) -> int:
        """Jobs accepted since the start (replacements included)."""
        return self._core.accepted

    @property
    def finished(self) -> int:
        """Jobs that reached a final state since the start."""
        return self._core.finished

    def held_attempts(self) -> int:
        """How many attempts the schedulers hold (assigned or running)."""
        return len(self._core.seats)

    # --- queries ---------------------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        """Return a snapshot of job ``job_id``, or None once it is final or unknown."""
        return self._core.info(job_id)

    def tracks(self, job_id: str) -> bool:
        """Whether job ``job_id`` is in the core (not final); else only the journal knows it."""
        return job_id in self._core.jobs

    def status(self, job_id: str, wall: float) -> JobEvent | None:
        """The latest event-shaped status of a tracked job, or None (see :func:`status_event`)."""
        job = self._core.jobs.get(job_id)
        return None if job is None else status_event(job, wall)

    def watch(
        self, job_id: str, wall: float, *, stored: Job | None = None, by: str | None = None
    ) -> JobEvent | Error | None:
        """The status of job ``job_id`` for a watch by ``by`` (None: anyone may), as
        :meth:`status` gives it, or from its final journal record ``stored``; an
        :class:`Error` naming ``ids`` if ``by`` does not own it; None if unknown."""
        job = self._core.jobs.get(job_id) or stored
        if job is None:
            return None
        refusal = not_yours(job, by, "watch")
        if refusal is not None:
            return Error(f"ids: {refusal}", field="ids")
        return status_event(job, wall)

    def listed(
        self,
        query: JobQuery,
        limit: int,
        wall: float,
        *,
        stored: Sequence[Job] = (),
        newest_first: bool = False,
    ) -> tuple[list[JobEvent], bool]:
        """The status (as :meth:`status`) of the tracked jobs ``query`` wants and of the
        ``stored`` final journal records it wants (those the core tracks again left
        out), in the order they were submitted or ``newest_first``, at most ``limit``;
        and whether more were left out. Changes nothing."""
        live = (job for job in self._core.jobs.values() if query.matches(job))
        wanted = (job for job in stored if query.matches(job))
        jobs, more = listing.pick(live, wanted, self.tracks, limit, newest_first=newest_first)
        return [status_event(job, wall) for job in jobs], more

    def backlog(self, now: float | None = None) -> list[str]:
        """Return the ids of jobs waiting for a scheduler, in the order they will go out
        (with aging, by their effective priority at ``now``)."""
        return [job.id for job in self._core.backlog_jobs(now)]

    def task_priority(self, task: str) -> int:
        """Return the priority a job of ``task`` that gives none gets: the task's declared
        default, else :data:`~scheduler.protocol_types.DEFAULT_PRIORITY`."""
        return self._core.registry.task_priorities.get(task, DEFAULT_PRIORITY)

    def scheduler(self, name: str) -> SchedulerInfo | None:
        """Return a snapshot of scheduler ``name``, or None if the core does not know it."""
        return self._core.registry.info(name, self._core.steals.stealable.count(name))

    def load(self, name: str, now: float) -> float:
        """Return outstanding / size of scheduler ``name`` at ``now`` (forgets expired v1 jobs)."""
        self._core.expire_v1(now)
        s = self._core.registry.by_name[name]
        return len(s.held) / s.slots.size

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has something to do, or None."""
        core = self._core
        return earliest(
            earliest(core.registry.next_deadline(), core.backlog.next_deadline()),
            core.timers.next_deadline(),
        )

    def take_changes(self) -> tuple[list[Job], list[str]]:
        """Return and forget the jobs changed since the last call (to save, latest state)
        and the ids of jobs forgotten since (to delete)."""
        return self._core.take_changes()

    def stats(self, now: float, uptime_s: float, ref: str | int | None = None) -> StatsReply:
        """A frozen snapshot of the counters, of what waits and runs now, and of every
        scheduler the core knows, at ``now``; ``uptime_s`` is passed through. Changes
        nothing but forgetting expired v1 jobs."""
        core = self._core
        core.expire_v1(now)
        running = sum(s.slots.busy for s in core.registry)
        unserved: dict[str, int] = {}
        for job in core.backlog_jobs(None):
            unserved[job.payload.task] = unserved.get(job.payload.task, 0) + 1
        scheduled = len(core.timers.members()[0])
        waiting = len(core.jobs) - running - scheduled
        bus = core.counters.snapshot(uptime_s, waiting, running, unserved)
        bus = msgspec.structs.replace(bus, scheduled=scheduled)
        schedulers = [core.registry.stats(s, core.seats, now) for s in core.registry]
        return StatsReply(bus, schedulers, ref)

    def __len__(self) -> int:
        """Return how many jobs the core tracks (not final)."""
        return len(self._core.jobs)

    @property
    def steals(self) -> int:
        """How many jobs were stolen from one scheduler's queue by another so far."""
        return self._core.counters.counts["stolen"]

    def tally(self) -> dict[tuple[str, str], int]:
        """Return how many tracked jobs (not final) there are of each (state, task)."""
        counts: dict[tuple[str, str], int] = {}
        for job in self._core.jobs.values():
            key = (job.state, job.payload.task)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def check_invariants(self) -> None:
        """Assert the per-job invariants of this module's table (for tests)."""
        invariants.check_invariants(self._core)

    # --- inputs ----------------------------------------------------------------------

    def restore(
        self,
        jobs: Iterable[Job],
        next_seq: int,
        now: float,
        wall: float,
        *,
        promised_until: float | None = None,
        stored: Mapping[str, Job] | None = None,
    ) -> None:
        """Take back the non-final ``jobs`` a journal kept, before any other input.

        A job with a holder stays held: its holder gets a lease from ``now`` to register
        again and keep it, as if its connection had just broken, or until
        ``promised_until`` (epoch seconds) if that is later: the bus that shut down for a
        restart promised its schedulers their jobs until then. Other jobs are queued
        (held back until ``not_before`` if that is after ``wall``). New jobs continue
        from ``next_seq``. A job counts as waiting since its last change.

        A ``blocked`` job waits again for its dependencies still among ``jobs``;
        ``stored`` holds the final journal records of the others (see
        :func:`.dependencies.restore_ids`): one that succeeded is met (its result kept
        for ``pass_results``), one that failed or is missing skips the job (unless it
        runs anyway). A broadcast parent (its ``depends_on`` lists its runs) waits again
        for its runs still among ``jobs``, or ends as they did if they all ended. Those
        skips and ends are the only changes handed to the journal.
        """
        sessions.restore(self._core, jobs, next_seq, now, wall, promised_until)
        sessions.restore_dependencies(self._core, stored or {}, now, wall, promised_until)

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

        ``size`` None means :data:`.config.V1_SIZE`, ``tasks`` None
        :data:`.config.DEFAULT_TASKS`; ``priorities`` are default priorities of its
        tasks, for jobs submitted from now on without one (the latest registration
        declaring a task's default wins); ``reports`` False marks a v1 scheduler.
        ``held`` lists the attempts it still has: it keeps those it holds, gets a
        :class:`.SendStop` for every other one, and each job it held by the core's
        account but left out is requeued. Then the backlog is dispatched, and a
        scheduler left with a free slot steals. Raises ValueError if ``size`` is below 1.
        """
        return sessions.attach(
            self._core,
            name,
            size=size,
            tasks=tasks,
            reports=reports,
            held=held,
            priorities=priorities,
            now=now,
            wall=wall,
        )

    def detach(self, name: str, *, clean: bool, now: float, wall: float) -> list[Decision]:
        """Scheduler ``name``'s connection closed; ``clean`` if it closed it normally.

        A clean close, a v1 scheduler or one holding nothing is forgotten at once, its
        jobs requeued and dispatched; otherwise it keeps its jobs until its lease expires
        (:meth:`tick`), and steals from it are called off (the thieves may steal
        elsewhere). Unknown names return nothing.
        """
        return sessions.detach(self._core, name, clean=clean, now=now, wall=wall)

    def heartbeat(self, name: str, running: int, queued: int, now: float) -> None:
        """Record the load ``name`` reports at ``now`` and renew its lease; unknown names
        and v1 schedulers change nothing but their numbers."""
        s = self._core.registry.by_name.get(name)
        if s is None:
            return
        s.running, s.queued, s.last_heartbeat = running, queued, now
        self._core.registry.renew(name, now)

    def submit(
        self,
        payload: JobPayload,
        now: float,
        wall: float,
        *,
        stored: Mapping[str, Job] | None = None,
        ref: str | int | None = None,
        owner: str | None = None,
        by_bus: bool = False,
    ) -> list[Decision]:
        """Accept one job from ``owner`` and dispatch it; return a :class:`.SendReply`
        first, then the rest.

        ``stored`` maps ids the core no longer tracks to their final journal record, for
        ``job_id`` conflicts. The reply is :class:`Accepted`, or an :class:`Error` naming
        ``payload.job_id`` (a conflict, or an id with ``@`` or ``/``, which only the bus's
        own submits may use: ``by_bus``, a schedule's firing) or ``payload.runtime`` (a
        ``sleep`` job without one).
        """
        submit = producers.Submit(stored or {}, owner, now, wall, self._new_id, by_bus=by_bus)
        return producers.submit(self._core, payload, submit, ref)

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
        decoding error as that job's error. Return a :class:`.SendReply` with
        :class:`SubmittedMany` (one result per job, in order) first, then the events and
        assignments."""
        submit = producers.Submit(stored or {}, owner, now, wall, self._new_id)
        return producers.submit_many(self._core, payloads, submit, ref)

    def report(self, name: str, report: Report, now: float, wall: float) -> list[Decision]:
        """Apply a report from scheduler ``name`` (renewing its lease); return its
        decisions, or :class:`.Ignored` if it is about another attempt or holder.

        ``started``: running (a steal of it failed). ``evicted``: requeued and
        dispatched again, evictions + 1. ``succeeded``/``cancelled``: final.
        ``failed``/``timed_out``: ``retrying`` while retries are left, then ``dead``;
        final as reported with ``max_retries`` 0. ``revoked`` (it left the local queue
        unstarted): assigned to the thief a steal was under way for, else requeued.
        A held job being cancelled ends ``cancelled`` unless it finished first. Then a
        scheduler left with a free slot steals.
        """
        decisions = reports.apply_report(self._core, name, report, now, wall)
        sessions.dispatch_due(self._core, now, wall, decisions)  # jobs it released
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
        """Cancel job ``job_id`` for ``by`` (None: anyone may); return a :class:`.SendReply`
        first.

        Queued: ``cancelled`` at once. Held by a v2 scheduler: a :class:`.SendStop` of
        kind ``cancel``, reply state ``running``; the job ends when the holder confirms.
        Held by a v1 scheduler, or final (``stored``): nothing changes and the reply
        says so. Unknown, or not owned by ``by``: an :class:`Error` naming ``id``.
        """
        return producers.cancel(self._core, job_id, wall, stored, ref, by)

    def withdraw(self, job_id: str, now: float, wall: float, why: str) -> list[Decision]:
        """Take back job ``job_id``, whose submit was refused, before its assignment left
        the bus: no scheduler ever heard of it, so it ends ``cancelled`` at once (``why``
        as its error) and no stop is sent; the slot it took may steal. Nothing
        for a job that is no longer tracked."""
        return producers.withdraw(self._core, job_id, now, wall, why)

    def retry(
        self,
        job_ids: Sequence[str],
        now: float,
        wall: float,
        *,
        stored: Mapping[str, Job] | None = None,
        ref: str | int | None = None,
        by: str | None = None,
    ) -> list[Decision]:
        """Run final jobs again for ``by`` (None: anyone may), as :mod:`.rerun` says;
        return a :class:`.SendReply` with :class:`Retried` first (the ``retried`` event of
        each, the refusal of every other id), then the events and assignments.

        ``stored`` maps the ids the core does not track (the jobs, and the dependencies of
        those that asked for their results) to their journal records; a retried one is
        tracked again, ``queued`` and dispatched.
        """
        return rerun.retry(self._core, job_ids, stored or {}, now, wall, by, ref)

    def tick(self, now: float, wall: float) -> list[Decision]:
        """Act on every deadline up to ``now``: forget v1 jobs whose runtime elapsed,
        forget schedulers whose lease expired (their jobs requeued, cancelling ones
        cancelled), take back attempts not started in time, dispatch jobs whose
        retry delay is over, queue scheduled jobs whose time came and expire those past
        their misfire grace (:mod:`.delayed`); then a scheduler left with a free slot steals."""
        core = self._core
        core.expire_v1(now)
        decisions: list[Decision] = []
        sessions.expire_leases(core, now, wall, decisions)
        sessions.check_start_deadlines(core, now, wall, decisions)
        delayed.release_due(core, now, wall, decisions)
        delayed.expire_misfires(core, now, wall, decisions)
        sessions.dispatch_due(core, now, wall, decisions)  # after what may release jobs
        core.steals.balance(now, decisions)
        return decisions
