"""What a scheduler's report about an attempt does to its job: ``started``, ``evicted``,
``failed``/``timed_out`` (retried or final), ``revoked`` (a steal) or final."""

from __future__ import annotations

from scheduler.policy.dispatch.decisions import Decision, Ignored, Requeued
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.dispatch.registry import Scheduler
from scheduler.policy.events import job_event
from scheduler.policy.job import Job
from scheduler.protocol import Report


def apply_report(
    core: Lifecycle, name: str, report: Report, now: float, wall: float
) -> list[Decision]:
    """Apply ``report`` from scheduler ``name`` (see :meth:`Dispatcher.report`)."""
    core.registry.renew(name, now)
    job = core.jobs.get(report.id)
    if job is None:
        return [Ignored(name, report.id, "unknown or final job")]
    reason = _fence(job, name, report)
    if reason is not None:
        return [Ignored(name, report.id, reason)]
    s = core.registry[name]  # the holder of a tracked job is known
    unstalled = report.event != "revoked" and core.progressed(s, now)
    if report.evictions is not None and report.event != "evicted":
        job.evictions = max(job.evictions, report.evictions)
    s.counters.reported(report.event)
    decisions: list[Decision] = []
    if report.event == "started":
        _started(core, job, s, report, now, wall, decisions)
    elif report.event == "evicted":
        _evicted(core, job, report, now, wall, decisions)
    elif report.event in ("failed", "timed_out"):
        _failed(core, job, report, now, wall, decisions)
    elif report.event == "revoked":
        _revoked(core, job, s, report, now, wall, decisions)
    else:
        core.finish(job, report.event, wall, decisions, report)
    if unstalled:
        core.dispatch_backlog(now, wall, decisions)
    core.balance(now, decisions)
    return decisions


def _fence(job: Job, scheduler: str, report: Report) -> str | None:
    """Why ``report`` must be ignored, or None if it applies to the current attempt."""
    if job.holder != scheduler:
        return f"job is held by {job.holder or 'nobody'}"
    if report.attempt != job.attempt:
        return f"stale attempt {report.attempt} (current {job.attempt})"
    return None


def _started(
    core: Lifecycle,
    job: Job,
    s: Scheduler,
    report: Report,
    now: float,
    wall: float,
    out: list[Decision],
) -> None:
    """Held ``job`` started at ``s``: book its slot (once per attempt), record how long
    it waited, and fail a steal of it that was under way."""
    job.state = "running"
    core.touch(job, wall)
    if core.registry.start_watch is not None:
        core.registry.start_watch.settled(s.name, job.id)
    if core.start_seat(s, job.id):
        core.counters.waited(job.priority, now - core.since.get(job.id, now))
    core.steals.leave(job.id)
    core.emit(out, job_event(job, "started", wall, s.name, report))


def _evicted(
    core: Lifecycle, job: Job, report: Report, now: float, wall: float, out: list[Decision]
) -> None:
    if job.id in core.cancelling:
        core.finish(job, "cancelled", wall, out, report)
        return
    holder = job.holder
    job.evictions = max(job.evictions + 1, report.evictions or 0)
    core.requeue(job, wall, now)
    core.emit(out, job_event(job, "evicted", wall, holder, report))
    core.dispatch(job, now, wall, out)


def _revoked(
    core: Lifecycle,
    job: Job,
    s: Scheduler,
    report: Report,
    now: float,
    wall: float,
    out: list[Decision],
) -> None:
    """``job`` left ``s``'s queue unstarted: give it to the thief a steal of it was
    for; with none (gone, or never), queue it again."""
    thief_name = core.steals.end(job.id)
    core.requeue(job, wall, None)
    if job.id in core.cancelling:
        core.finish(job, "cancelled", wall, out, report)
        return
    thief = None if thief_name is None else core.registry[thief_name]
    if thief is None or not thief.connected:
        out.append(Requeued(job.id, s.name, job.attempt, "revoked, and no thief takes it"))
        core.emit(out, job_event(job, "requeued", wall, s.name))
        core.dispatch(job, now, wall, out)
        return
    core.counters.add("stolen")
    s.counters.add("stolen_from")
    thief.counters.add("stole")
    priority = core.priority(job, now)
    core.assign(job, thief, priority, now, wall, out, waiting=False, steal=True)


def _failed(
    core: Lifecycle, job: Job, report: Report, now: float, wall: float, out: list[Decision]
) -> None:
    assert report.event in ("failed", "timed_out")
    job.errors.append(_error_text(report))
    job.traceback = report.traceback
    retries = job.payload.max_retries
    if job.id in core.cancelling or retries == 0:
        core.finish(job, report.event, wall, out, report)
    elif job.retries >= retries:
        core.finish(job, "dead", wall, out, report)
    else:
        _retry(core, job, report, now, wall, out)


def _retry(
    core: Lifecycle, job: Job, report: Report, now: float, wall: float, out: list[Decision]
) -> None:
    holder = job.holder
    job.retries += 1
    delay = core.config.backoff.delay(job.payload.retry_backoff, job.retries, core.rng)
    job.not_before = wall + delay
    core.requeue(job, wall, now + delay)
    event = job_event(job, "retrying", wall, holder, report, retry_in_s=delay)
    core.emit(out, event)
    if delay > 0:
        core.backlog.hold_back(job, now + delay)
    else:
        core.dispatch(job, now, wall, out)


def _error_text(report: Report) -> str:
    """The error of a failed attempt: the scheduler's text, else what is known."""
    if report.error:
        return report.error
    if report.event == "timed_out":
        return "timed out"
    return f"failed with exit code {report.exit_code}"
