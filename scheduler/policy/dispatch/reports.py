"""What a scheduler's report about an attempt does to its job: ``started``, ``evicted``,
``failed``/``timed_out`` (retried or final), ``revoked`` (a steal) or final; ``progress``
and ``output`` (transient: shown, not journaled)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from scheduler.policy.dispatch.decisions import Decision, Ignored, Requeued
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.dispatch.registry import KnownScheduler
from scheduler.policy.events import job_event
from scheduler.policy.job import Job
from scheduler.protocol import Report
from scheduler.protocol_types import MAX_OUTPUT_BYTES, TRANSIENT_EVENTS


def apply_report(
    core: Lifecycle, name: str, report: Report, now: float, wall: float
) -> list[Decision]:
    """Apply ``report`` from scheduler ``name`` (see :meth:`Dispatcher.report`)."""
    s = core.registry.by_name.get(name)
    if s is not None and s.reports:
        core.registry.leases.renew(name, now)
    job = core.jobs.get(report.id)
    reason = "unknown or final job" if job is None else _fence(job, name, report)
    if reason is not None:
        return [Ignored(name, report.id, reason)]
    assert job is not None
    assert s is not None  # the holder of a tracked job is known
    if report.event in TRANSIENT_EVENTS:
        return _transient(core, job, s, report, wall)
    unstalled = report.event != "revoked" and core.progressed(s, now)
    if report.evictions is not None and report.event != "evicted":
        job.evictions = max(job.evictions, report.evictions)
    s.counters.reported(report.event)
    applying = _Applying(core, s, report, now, wall, [])
    if report.event == "started":
        applying.started(job)
    elif report.event == "evicted":
        applying.evicted(job)
    elif report.event in ("failed", "timed_out"):
        applying.failed(job)
    elif report.event == "revoked":
        applying.revoked(job)
    else:
        core.finish(job, report.event, wall, applying.out, report)
    if unstalled:
        core.dispatch_backlog(now, wall, applying.out)
    core.steals.balance(now, applying.out)
    return applying.out


def _transient(
    core: Lifecycle, job: Job, s: KnownScheduler, report: Report, wall: float
) -> list[Decision]:
    """Show a ``progress`` or ``output`` report of running ``job``: kept on the job in
    memory (not journaled: the job is not touched) and published as an event."""
    if job.state != "running":
        return [Ignored(s.name, report.id, f"{report.event} of a job that is {job.state}")]
    out: list[Decision] = []
    if report.event == "progress":
        job.progress, job.message = report.progress, report.message
        event = job_event(job, "progress", wall, s.name)
        event = msgspec.structs.replace(event, progress=job.progress, message=job.message)
    else:
        job.output = keep_tail((job.output or "") + (report.output or ""), MAX_OUTPUT_BYTES)
        event = msgspec.structs.replace(
            job_event(job, "output", wall, s.name), output=report.output or ""
        )
    core.emit(out, event)
    return out


def keep_tail(text: str, limit: int) -> str:
    """The end of ``text`` that fits in ``limit`` bytes of UTF-8 (all of it if it fits)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[-limit:].decode(errors="ignore")


def _fence(job: Job, scheduler: str, report: Report) -> str | None:
    """Why ``report`` must be ignored, or None if it applies to the current attempt."""
    if job.holder != scheduler:
        return f"job is held by {job.holder or 'nobody'}"
    if report.attempt != job.attempt:
        return f"stale attempt {report.attempt} (current {job.attempt})"
    return None


@dataclass(slots=True)
class _Applying:
    """One report ``report`` from holder ``s`` at ``now``/``wall``, being applied to
    its job; ``out`` collects the decisions."""

    core: Lifecycle
    s: KnownScheduler
    report: Report
    now: float
    wall: float
    out: list[Decision]

    def started(self, job: Job) -> None:
        """Held ``job`` started: book its slot (once per attempt), record how long it
        waited, and fail a steal of it that was under way."""
        core = self.core
        job.state = "running"
        job.progress = job.message = job.output = None
        job.started_at = self.wall
        core.touch(job, self.wall)
        if core.registry.start_watch is not None:
            core.registry.start_watch.settled(self.s.name, job.id)
        if core.start_seat(self.s, job.id):
            core.counters.waited(job.priority, self.now - job.waiting_since)
        core.steals.leave(job.id)
        core.emit(self.out, job_event(job, "started", self.wall, self.s.name, self.report))

    def evicted(self, job: Job) -> None:
        """``job`` was evicted: requeued and dispatched again, evictions + 1."""
        core, report = self.core, self.report
        if job.id in core.cancelling:
            core.finish(job, "cancelled", self.wall, self.out, report)
            return
        job.evictions = max(job.evictions + 1, report.evictions or 0)
        core.requeue(job, self.wall, self.now)
        core.emit(self.out, job_event(job, "evicted", self.wall, self.s.name, report))
        core.dispatch(job, self.now, self.wall, self.out)

    def revoked(self, job: Job) -> None:
        """``job`` left the holder's queue unstarted: give it to the thief a steal of it
        was for; with none (gone, or never), queue it again."""
        core, wall = self.core, self.wall
        thief_name = core.steals.end(job.id)
        core.requeue(job, wall, None)
        if job.id in core.cancelling:
            core.finish(job, "cancelled", wall, self.out, self.report)
            return
        thief = None if thief_name is None else core.registry.by_name[thief_name]
        if thief is None or not thief.connected:
            why = "revoked, and no thief takes it"
            self.out.append(Requeued(job.id, self.s.name, job.attempt, why))
            core.emit(self.out, job_event(job, "requeued", wall, self.s.name))
            core.dispatch(job, self.now, wall, self.out)
            return
        core.counters.add("stolen")
        self.s.counters.add("stolen_from")
        thief.counters.add("stole")
        priority = core.priority(job, self.now)
        core.assign(job, thief, priority, self.now, wall, self.out, waiting=False, steal=True)

    def failed(self, job: Job) -> None:
        """The attempt failed or timed out: retried while retries are left, else final."""
        report = self.report
        assert report.event in ("failed", "timed_out")
        job.errors += (_error_text(report),)
        job.traceback = report.traceback
        job.output = report.output if report.output is not None else job.output
        retries = job.payload.max_retries
        if job.id in self.core.cancelling or retries == 0:
            self.core.finish(job, report.event, self.wall, self.out, report)
        elif job.retries >= retries:
            self.core.finish(job, "dead", self.wall, self.out, report)
        else:
            self._retry(job)

    def _retry(self, job: Job) -> None:
        core, now, wall = self.core, self.now, self.wall
        job.retries += 1
        delay = core.config.backoff.delay(job.payload.retry_backoff, job.retries, core.rng)
        job.not_before = wall + delay
        core.requeue(job, wall, now + delay)
        event = job_event(job, "retrying", wall, self.s.name, self.report, retry_in_s=delay)
        core.emit(self.out, event)
        if delay > 0:
            core.backlog.hold_back(job, now + delay)
        else:
            core.dispatch(job, now, wall, self.out)


def _error_text(report: Report) -> str:
    """The error of a failed attempt: the scheduler's text, else what is known."""
    if report.error:
        return report.error
    if report.event == "timed_out":
        return "timed out"
    return f"failed with exit code {report.exit_code}"
