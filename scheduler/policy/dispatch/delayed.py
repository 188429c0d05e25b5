"""Delayed jobs (``run_at``/``delay``) in the dispatch core: accepted as ``scheduled``,
``queued`` at their time, ``expired`` when not handed to a scheduler within their
misfire grace of it (the bus was down, or no scheduler served their task).

The misfire deadline guards the first hand-over only: a job once assigned that is later
requeued (lost scheduler, eviction, retry) runs however late.
"""

from __future__ import annotations

from scheduler.policy.dispatch.decisions import Decision
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.dispatch.timers import due_of, grace_of
from scheduler.policy.events import job_event
from scheduler.policy.job import Job


def accept(core: Lifecycle, job: Job, now: float, wall: float, out: list[Decision]) -> None:
    """Dispatch just-accepted ``job`` now, or schedule it if it is due later; one whose
    time is past by more than its grace expires at once."""
    due = due_of(job)
    if due is None:
        core.dispatch(job, now, wall, out)
    elif due > wall:
        job.state = "scheduled"
        core.timers.schedule(job, now + (due - wall))
        core.emit(out, job_event(job, "scheduled", wall, None))
    else:
        _release(core, job, due, now, wall, out)


def release_due(core: Lifecycle, now: float, wall: float, out: list[Decision]) -> None:
    """Queue and dispatch every scheduled job due by ``now`` (``queued`` events), or
    expire it if its grace is already over (the bus was down)."""
    while (job_id := core.timers.pop_due(now)) is not None:
        job = core.jobs[job_id]
        due = due_of(job)
        assert due is not None
        job.state = "queued"
        job.waiting_since = now
        core.touch(job, wall)
        core.emit(out, job_event(job, "queued", wall, None))
        _release(core, job, due, now, wall, out)


def expire_misfires(core: Lifecycle, now: float, wall: float, out: list[Decision]) -> None:
    """Expire every job still waiting for its first scheduler at its misfire deadline."""
    while (job_id := core.timers.pop_misfire(now)) is not None:
        job = core.jobs.get(job_id)
        if job is not None and job.holder is None and job.deliveries == 0:
            due = due_of(job)
            assert due is not None
            _expire(core, job, due, wall, out)


def restore(core: Lifecycle, job: Job, now: float, wall: float) -> bool:
    """Time restored delayed ``job`` (its payload has ``run_at`` or ``delay``) again: a
    scheduled one stays scheduled until its due time (at the next tick if that passed
    while the bus was down); a queued one never handed out keeps its misfire deadline.
    True if it was scheduled (the caller leaves it out of the backlog)."""
    due = due_of(job)
    assert due is not None, "only a delayed job is timed again"
    if job.state == "scheduled":
        core.timers.schedule(job, now + (due - wall))
        return True
    _watch_misfire(core, job, due, now, wall)
    return False


def _release(
    core: Lifecycle, job: Job, due: float, now: float, wall: float, out: list[Decision]
) -> None:
    grace = grace_of(job, core.config.misfire_grace)
    if grace is not None and wall > due + grace:
        _expire(core, job, due, wall, out)
        return
    _watch_misfire(core, job, due, now, wall)
    core.dispatch(job, now, wall, out)


def _watch_misfire(core: Lifecycle, job: Job, due: float, now: float, wall: float) -> None:
    grace = grace_of(job, core.config.misfire_grace)
    if grace is not None and job.deliveries == 0:
        core.timers.misfire_at(job, now + (due + grace - wall))


def _expire(core: Lifecycle, job: Job, due: float, wall: float, out: list[Decision]) -> None:
    grace = grace_of(job, core.config.misfire_grace)
    late = wall - due
    error = f"not started within its misfire grace ({grace} s): {late:.3f} s past its time"
    job.errors += (error,)  # kept in the journal: `jobs show` says why
    core.finish(job, "expired", wall, out, error=error)
