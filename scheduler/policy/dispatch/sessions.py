"""Schedulers coming and going: registration (with the attempts a returning scheduler
still holds), disconnects, lease expiry, the start deadline, and a restart of the bus
from its journal."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from scheduler.policy.dispatch import broadcast, delayed
from scheduler.policy.dispatch.decisions import Decision, LeaseExpired, SendStop, StartOverdue
from scheduler.policy.dispatch.dependencies import Plan, restore_plan
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.dispatch.registry import KnownScheduler
from scheduler.policy.job import Job
from scheduler.policy.placement import Seat
from scheduler.policy.reconcile import reconcile
from scheduler.protocol import Held, Stop


def attach(
    core: Lifecycle,
    name: str,
    *,
    size: int | None,
    tasks: Iterable[str] | None,
    reports: bool,
    held: Sequence[Held],
    priorities: Mapping[str, int] | None,
    now: float,
    wall: float,
) -> list[Decision]:
    """Register scheduler ``name`` (see :meth:`Dispatcher.attach`)."""
    if size is not None and size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    s = core.registry.register(name, size, tasks, reports, priorities)
    if reports:
        core.registry.leases.renew(name, now)
        core.progressed(s, now)
    decisions: list[Decision] = []
    outcome = reconcile(name, held, core.jobs, s.held)
    decisions.extend(SendStop(name, stop) for stop in outcome.stop)
    for entry in outcome.keep:
        if entry.id in core.cancelling and not entry.done:
            stop = Stop(entry.id, entry.attempt, "cancelled", kind="cancel")
            decisions.append(SendStop(name, stop))
    lost = [core.jobs[job_id] for job_id in outcome.lost]
    core.take_back(s, lost, "not held after reconnecting", now, wall, decisions)
    core.dispatch_backlog(now, wall, decisions)
    core.steals.may_steal(name)
    core.steals.balance(now, decisions)
    return decisions


def detach(core: Lifecycle, name: str, *, clean: bool, now: float, wall: float) -> list[Decision]:
    """Scheduler ``name``'s connection closed (see :meth:`Dispatcher.detach`)."""
    s = core.registry.by_name.get(name)
    if s is None:
        return []
    s.connected = False
    core.registry.changed()
    decisions: list[Decision] = []
    if clean or not s.reports or not s.held:
        decisions = forget_scheduler(core, s, "released on disconnect", now, wall)
    else:
        core.steals.call_off_from(s.held)
    core.steals.balance(now, decisions)
    return decisions


def forget_scheduler(
    core: Lifecycle, s: KnownScheduler, reason: str, now: float, wall: float
) -> list[Decision]:
    """Forget ``s`` and requeue every job it held; steals for it are dropped (a job
    its victim gives up is then requeued)."""
    s.connected = False
    core.registry.changed()
    core.expire_v1(now)
    core.steals.drop_for(s.name)
    decisions: list[Decision] = []
    lost = [core.jobs[job_id] for job_id in s.held]
    core.take_back(s, lost, reason, now, wall, decisions)
    core.registry.remove(s)
    core.end_pinned(s.name, wall, decisions)
    return decisions


def expire_leases(core: Lifecycle, now: float, wall: float, out: list[Decision]) -> None:
    """Forget every scheduler whose lease expired by ``now``; their jobs are requeued."""
    for name in core.registry.leases.expired(now):
        s = core.registry.by_name[name]
        out.append(LeaseExpired(name, len(s.held), s.connected))
        out.extend(forget_scheduler(core, s, "lease expired", now, wall))


def check_start_deadlines(core: Lifecycle, now: float, wall: float, out: list[Decision]) -> None:
    """Take back the unstarted attempts of every connected scheduler that had room
    and started nothing within the start deadline; it gets no new work until it
    starts something or registers again. One that is full or disconnected waits
    legitimately (or for its lease): its deadline starts over."""
    watch = core.registry.start_watch
    if watch is None:
        return
    for name in watch.overdue(now):
        s = core.registry.by_name[name]
        if not s.connected or s.slots.busy >= s.slots.size:
            watch.progressed(name, now)
            continue
        pending = [core.jobs[j] for j in s.held if core.seats[j].started is None]
        s.stalled = True
        core.registry.changed()
        out.append(StartOverdue(name, len(pending)))
        for job in sorted(pending, key=lambda job: (job.priority, job.seq)):
            stop = Stop(job.id, job.attempt, "not started in time", kind="drop")
            out.append(SendStop(name, stop))
            core.counters.add("not_started")
        reason = "not started within the start deadline"
        core.take_back(s, pending, reason, now, wall, out)


def dispatch_due(core: Lifecycle, now: float, wall: float, out: list[Decision]) -> None:
    """Dispatch every job whose retry hold-back is over by ``now``."""
    while (job_id := core.backlog.pop_due(now)) is not None:
        core.dispatch(core.jobs[job_id], now, wall, out)


def restore(
    core: Lifecycle,
    jobs: Iterable[Job],
    next_seq: int,
    now: float,
    wall: float,
    promised_until: float | None,
) -> None:
    """Take back the jobs a journal kept (see :meth:`Dispatcher.restore`)."""
    kept_until = now if promised_until is None else now + (promised_until - wall)
    # A million jobs go through this loop at a restart: the usual case (queued, not
    # delayed) takes the fewest steps.
    tracked, push, high = core.jobs, core.backlog.push, max(core.seq, next_seq)
    for job in jobs:
        tracked[job.id] = job
        high = max(high, job.seq + 1)
        job.waiting_since = now - max(0.0, wall - job.updated_at)
        p = job.payload
        if job.state == "blocked":
            job.holder = None  # booked by restore_dependencies
        elif job.holder is not None and job.state in ("assigned", "running"):
            _restore_held(core, job, now)
            core.registry.leases.extend(job.holder, kept_until)
        elif (p.run_at is not None or p.delay is not None) and delayed.restore(
            core, job, now, wall
        ):
            continue
        elif job.not_before is not None and job.not_before > wall:
            job.state, job.holder = "queued", None
            core.backlog.hold_back(job, now + (job.not_before - wall))
        else:
            job.state, job.holder = "queued", None
            push(job)
    core.seq = high


def restore_dependencies(
    core: Lifecycle,
    stored: Mapping[str, Job],
    now: float,
    wall: float,
    promised_until: float | None = None,
) -> None:
    """Book the restored ``blocked`` jobs again, then skip or release those whose
    dependencies ended while the bus was down (``stored``: their journal records), and
    give the results back to restored jobs that asked for them. A broadcast parent
    waits again for its runs still open, or ends as they did if none is; the scheduler
    of a run still waiting for it is known again, with the lease of a scheduler that
    held jobs (see :func:`restore`), so the run ends ``dead`` if it never comes back."""
    out: list[Decision] = []  # nobody is connected yet: the events reach no one
    plans: list[tuple[Job, Plan]] = []
    gathered: list[Job] = []

    def lookup(job_id: str) -> Job | None:
        return core.jobs.get(job_id) or stored.get(job_id)

    for job in list(core.jobs.values()):
        if job.payload.broadcast and job.state == "blocked":
            if _restore_parent(core, job, lookup, now, wall, promised_until):
                gathered.append(job)
        elif job.payload.depends_on:
            _restore_dependent(core, job, lookup, plans)
    for job, plan in plans:
        if job.id in core.jobs:
            core.enter_restored(job, plan, wall, out)
    for parent in gathered:  # last: the jobs waiting for it are booked and entered
        _gather_restored(core, parent, wall, out)


def _restore_dependent(
    core: Lifecycle,
    job: Job,
    lookup: Callable[[str], Job | None],
    plans: list[tuple[Job, Plan]],
) -> None:
    """Give restored ``job`` the results of its dependencies that succeeded; if it is
    ``blocked``, book it on those still open and add its plan to ``plans``."""
    plan = restore_plan(job.payload, lookup)
    if job.payload.pass_results:
        core.deps.keep_results(job.id, plan.results)
    if job.state == "blocked":
        if plan.pending:
            core.deps.block(job.id, plan.pending)
        plans.append((job, plan))


def _restore_parent(
    core: Lifecycle,
    parent: Job,
    lookup: Callable[[str], Job | None],
    now: float,
    wall: float,
    promised_until: float | None,
) -> bool:
    """Book restored broadcast ``parent`` on its runs still open, keeping the outcomes
    of those that ended; return whether it is to end now (none is open)."""
    runs = broadcast.restore_runs(parent.payload, lookup)
    core.deps.keep_results(parent.id, runs.results)
    core.deps.outcomes[parent.id] = runs.states
    if not runs.pending:
        return True
    core.deps.block(parent.id, runs.pending)
    kept_until = now if promised_until is None else now + (promised_until - wall)
    for run_id in runs.pending:
        pin = core.jobs[run_id].payload.pin
        if pin is not None and pin not in core.registry.by_name:
            core.registry.add(pin, True, connected=False)
            core.registry.leases.renew(pin, now)
            core.registry.leases.extend(pin, kept_until)
    return False


def _gather_restored(core: Lifecycle, parent: Job, wall: float, out: list[Decision]) -> None:
    """Every run of restored broadcast ``parent`` ended (its record may list none): it
    ends as they did. Its error is kept in the journal, as no one hears the event."""
    states = core.deps.outcomes.get(parent.id, {})
    if states:
        state, error = broadcast.parent_outcome(states)
    else:
        state, error = "failed", broadcast.unrecorded_error(parent.id)
    parent.result = core.deps.results.get(parent.id, {}) if state == "succeeded" else None
    if error is not None:
        parent.errors += (error,)
    core.finish(parent, state, wall, out, error=error)


def _restore_held(core: Lifecycle, job: Job, now: float) -> None:
    assert job.holder is not None
    s = core.registry.by_name.get(job.holder)
    if s is None:
        s = core.registry.add(job.holder, True, connected=False)
        core.registry.leases.renew(job.holder, now)
    evictable = job.evictions < core.config.max_evictions
    core.hold(s, job, Seat(job.priority, evictable))
    if job.state == "running":
        core.start_seat(s, job.id)
        return
    if core.registry.start_watch is not None:
        core.registry.start_watch.assigned(s.name, job.id, now)
    if s.reports and job.payload.pin is None:
        # It may wait in the holder's local queue: a thief may ask for it, and the holder
        # gives it up only if it has not started (a steal of a started job fails).
        core.steals.waits(s, job, job.waiting_since)
