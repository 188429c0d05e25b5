"""What producers ask of the dispatch core: submits (one job or a batch, with the
``job_id`` conflict rules of :mod:`scheduler.policy.conflict`) and cancels."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from scheduler.codec import ProtocolError
from scheduler.policy.conflict import KeepExisting, Refuse, Replace, resolve
from scheduler.policy.dispatch import delayed
from scheduler.policy.dispatch.decisions import Decision, SendReply, SendStop
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.events import job_event
from scheduler.policy.job import Job, not_yours
from scheduler.protocol import (
    DEFAULT_PRIORITY,
    Accepted,
    CancelReply,
    Error,
    JobPayload,
    Stop,
    SubmitResult,
    SubmittedMany,
)


@dataclass(frozen=True, slots=True)
class Submit:
    """What every job of one submit request shares: the final journal records of taken
    ids, its submitter, the times, and where new ids come from."""

    stored: Mapping[str, Job]
    owner: str | None
    now: float
    wall: float
    new_id: Callable[[], str]


def unserved_warning(task: str) -> str:
    """The warning an accepted job of ``task`` gets when no connected scheduler serves it."""
    return f'no connected scheduler serves task "{task}"; the job waits until one registers'


def submit(
    core: Lifecycle, payload: JobPayload, submit: Submit, ref: str | int | None
) -> list[Decision]:
    """Accept one job (see :meth:`Dispatcher.submit`)."""
    decisions: list[Decision] = []
    result = _submit_one(core, payload, submit, "payload", decisions)
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
    if core.steals.unbalanced:  # only a replaced job frees a slot here
        core.steals.balance(submit.now, decisions)
    return [SendReply(reply), *decisions]


def submit_many(
    core: Lifecycle,
    payloads: Sequence[JobPayload | ProtocolError],
    submit: Submit,
    ref: str | int | None,
) -> list[Decision]:
    """Accept a batch (see :meth:`Dispatcher.submit_many`)."""
    decisions: list[Decision] = []
    results: list[SubmitResult] = []
    for i, item in enumerate(payloads):
        if isinstance(item, ProtocolError):
            results.append(_bad_job(i, item))
        else:
            results.append(_submit_one(core, item, submit, f"jobs.{i}", decisions))
    if core.steals.unbalanced:  # only a replaced job frees a slot here
        core.steals.balance(submit.now, decisions)
    return [SendReply(SubmittedMany(results, ref)), *decisions]


def cancel(
    core: Lifecycle,
    job_id: str,
    wall: float,
    stored: Job | None,
    ref: str | int | None,
    by: str | None,
) -> list[Decision]:
    """Cancel job ``job_id`` for ``by`` (see :meth:`Dispatcher.cancel`)."""
    job = core.jobs.get(job_id)
    known = job or stored
    refusal = None if known is None else not_yours(known, by, "cancel")
    if refusal is not None:
        return [SendReply(Error(f"id: {refusal}", field="id", ref=ref))]
    if job is None:
        if stored is None:
            return [SendReply(Error(f"id: no job {job_id}", field="id", ref=ref))]
        done = f"job {job_id} is already {stored.state}; nothing was done"
        return [SendReply(CancelReply(job_id, stored.state, done, ref))]
    if job.holder is None:
        decisions: list[Decision] = []
        core.finish(job, "cancelled", wall, decisions)
        return [SendReply(CancelReply(job_id, "cancelled", "cancelled", ref)), *decisions]
    if not core.registry.by_name[job.holder].reports:
        why = f"job {job_id} is held by v1 scheduler {job.holder}, which cannot be told"
        return [SendReply(CancelReply(job_id, job.state, f"{why} to stop; nothing was done", ref))]
    core.cancelling.add(job_id)
    return [
        SendReply(CancelReply(job_id, "running", "stopping", ref)),
        SendStop(job.holder, Stop(job_id, job.attempt, "cancelled", kind="cancel")),
    ]


def _submit_one(
    core: Lifecycle, payload: JobPayload, submit: Submit, prefix: str, out: list[Decision]
) -> SubmitResult:
    if payload.task == "sleep" and payload.runtime is None:
        where = f"{prefix}.runtime"
        return SubmitResult(error=f"{where}: required, > 0 for the sleep task", field=where)
    if payload.priority is None:
        priority = core.registry.task_priorities.get(payload.task, DEFAULT_PRIORITY)
        payload = msgspec.structs.replace(payload, priority=priority)
    existing = None
    if payload.job_id is not None:
        existing = core.jobs.get(payload.job_id) or submit.stored.get(payload.job_id)
    holder = None if existing is None or existing.holder is None else existing.holder
    s = None if holder is None else core.registry.by_name.get(holder)
    stoppable = s is not None and s.reports
    resolution = resolve(existing, payload, submit.owner, stoppable=stoppable)
    if isinstance(resolution, Refuse):
        where = f"{prefix}.job_id"
        return SubmitResult(error=f"{where}: {resolution.message}", field=where)
    if isinstance(resolution, KeepExisting):
        assert existing is not None
        return SubmitResult(id=existing.id, existing=True)
    job_id = payload.job_id or _fresh_id(core, submit.new_id)
    attempt = 0
    if isinstance(resolution, Replace):
        assert existing is not None
        _unhold(core, existing, out)
        attempt = existing.attempt
    now, wall = submit.now, submit.wall
    job = Job(job_id, payload, core.seq, wall, attempt=attempt, owner=submit.owner)
    core.seq += 1
    core.jobs[job_id] = job
    core.since[job_id] = now
    core.accepted += 1
    core.touch(job, wall)
    core.emit(out, job_event(job, "accepted", wall, None))
    delayed.accept(core, job, now, wall, out)
    warning = None if core.eligible(payload.task, now) else unserved_warning(payload.task)
    return SubmitResult(id=job_id, replaced=isinstance(resolution, Replace), warning=warning)


def _fresh_id(core: Lifecycle, new_id: Callable[[], str]) -> str:
    while (job_id := new_id()) in core.jobs:
        pass
    return job_id


def _unhold(core: Lifecycle, old: Job, out: list[Decision]) -> None:
    """Take ``old`` out of the core before its replacement: its holder stops it."""
    core.forget(old.id)
    if old.holder is not None:
        out.append(SendStop(old.holder, Stop(old.id, old.attempt, "replaced", kind="drop")))


def _bad_job(index: int, error: ProtocolError) -> SubmitResult:
    """The result of job ``index`` of a batch that failed to decode, naming its field."""
    where = f"jobs.{index}"
    if error.field is None:
        message = error.message.removeprefix("frame: ")
        return SubmitResult(error=f"{where}: {message}", field=where)
    return SubmitResult(error=f"{where}.{error.message}", field=f"{where}.{error.field}")
