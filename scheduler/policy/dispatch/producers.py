"""What producers ask of the dispatch core: submits (one job or a batch, with the
``job_id`` conflict rules of :mod:`scheduler.policy.conflict`) and cancels, and taking
back a job whose submit was refused before its assignment left the bus."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from scheduler.codec import ProtocolError
from scheduler.policy.conflict import Create, KeepExisting, Refuse, Replace, resolve
from scheduler.policy.dispatch import broadcast, delayed
from scheduler.policy.dispatch.decisions import Decision, SendReply, SendStop
from scheduler.policy.dispatch.dependencies import (
    Plan,
    Refusal,
    batch_order,
    check_depends_on,
)
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.events import job_event
from scheduler.policy.job import Job, not_yours
from scheduler.protocol import (
    Accepted,
    CancelReply,
    Error,
    JobPayload,
    Stop,
    SubmitResult,
    SubmittedMany,
)
from scheduler.protocol_types import DEFAULT_PRIORITY


@dataclass(frozen=True, slots=True)
class Submit:
    """What every job of one submit request shares: the final journal records of taken
    ids, its submitter, the times, and where new ids come from."""

    stored: Mapping[str, Job]
    owner: str | None
    now: float
    wall: float
    new_id: Callable[[], str]
    ended: dict[str, Job] = field(default_factory=dict)
    """Jobs of this request that ended at once (skipped), for later jobs of the batch
    that depend on them."""
    by_bus: bool = False
    """The bus's own submit (a schedule's firing): its id may be one of the bus's
    (see :mod:`scheduler.policy.conflict`)."""


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
            runs=result.runs,
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
    results: dict[int, SubmitResult] = {}
    order, cyclic = batch_order(payloads)
    for i, message in cyclic.items():
        results[i] = SubmitResult(error=message, field=f"jobs.{i}.depends_on")
    for i in order:
        item = payloads[i]
        if isinstance(item, ProtocolError):
            results[i] = _bad_job(i, item)
        else:
            results[i] = _submit_one(core, item, submit, f"jobs.{i}", decisions)
    if core.steals.unbalanced:  # only a replaced job frees a slot here
        core.steals.balance(submit.now, decisions)
    in_order = [results[i] for i in range(len(payloads))]
    return [SendReply(SubmittedMany(in_order, ref)), *decisions]


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
    if job.payload.broadcast and job.state == "blocked":
        return _cancel_runs(core, job, wall, ref, by)
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


def withdraw(core: Lifecycle, job_id: str, now: float, wall: float, why: str) -> list[Decision]:
    """End job ``job_id`` ``cancelled`` (see :meth:`Dispatcher.withdraw`)."""
    job = core.jobs.get(job_id)
    if job is None:
        return []
    out: list[Decision] = []
    core.steals.end(job_id)
    core.finish(job, "cancelled", wall, out, error=why)
    core.steals.balance(now, out)
    return out


def _cancel_runs(
    core: Lifecycle, parent: Job, wall: float, ref: str | int | None, by: str | None
) -> list[Decision]:
    """Cancel every run of broadcast ``parent`` still going; the parent ends (cancelled
    if no run had failed) when the last one does."""
    decisions: list[Decision] = []
    for run in sorted(core.deps.waiting.get(parent.id, ())):
        decisions.extend(cancel(core, run, wall, None, None, by)[1:])
    message = "cancelled" if parent.id not in core.jobs else "stopping its runs"
    state = "cancelled" if parent.final and parent.state == "cancelled" else parent.state
    return [SendReply(CancelReply(parent.id, state, message, ref)), *decisions]


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
    resolution = resolve(existing, payload, submit.owner, stoppable=stoppable, by_bus=submit.by_bus)
    if isinstance(resolution, Refuse):
        where = f"{prefix}.job_id"
        return SubmitResult(error=f"{where}: {resolution.message}", field=where)
    if isinstance(resolution, KeepExisting):
        assert existing is not None
        return SubmitResult(id=existing.id, existing=True)
    plan = _dependency_plan(core, payload, submit, prefix)
    if isinstance(plan, SubmitResult):
        return plan
    refused = _broadcast_refusal(core, payload, existing, prefix)
    if refused is not None:
        return refused
    return _create(core, payload, submit, existing, resolution, plan, out)


def _create(
    core: Lifecycle,
    payload: JobPayload,
    submit: Submit,
    existing: Job | None,
    resolution: Create | Replace,
    plan: Plan | None,
    out: list[Decision],
) -> SubmitResult:
    """Accept checked ``payload`` as a new job (replacing ``existing`` if so resolved)
    and start it: dispatched, blocked on its dependencies, or broadcast."""
    job_id = payload.job_id or _fresh_id(core, submit.new_id)
    attempt = 0
    if isinstance(resolution, Replace):
        assert existing is not None
        _unhold(core, existing, out)
        attempt = existing.attempt
    now, wall = submit.now, submit.wall
    job = Job(job_id, payload, core.seq, wall, attempt=attempt, owner=submit.owner)
    job.waiting_since = now
    core.seq += 1
    core.jobs[job_id] = job
    core.accepted += 1
    core.touch(job, wall)
    core.emit(out, job_event(job, "accepted", wall, None))
    if payload.broadcast:
        runs = core.broadcast(job, _targets(core, payload.task), now, wall, out)
        job.payload = broadcast.parent_payload(payload, runs)  # journaled for a restart
        return SubmitResult(id=job_id, runs=runs)
    if plan is None:
        delayed.accept(core, job, now, wall, out)
    else:
        core.enter(job, plan, now, wall, out)
        if job.final:
            submit.ended[job.id] = job
    warning = None if core.eligible(payload.task, now) else unserved_warning(payload.task)
    return SubmitResult(id=job_id, replaced=isinstance(resolution, Replace), warning=warning)


def _dependency_plan(
    core: Lifecycle, payload: JobPayload, submit: Submit, prefix: str
) -> Plan | SubmitResult | None:
    """How a job with ``depends_on`` starts (None: it has none), or its refusal."""
    if not payload.depends_on:
        return None
    plan = check_depends_on(
        payload,
        prefix,
        lambda job_id: (
            core.jobs.get(job_id) or submit.stored.get(job_id) or submit.ended.get(job_id)
        ),
        submit.owner,
    )
    if isinstance(plan, Refusal):
        return SubmitResult(error=plan.message, field=plan.field)
    return plan


def _targets(core: Lifecycle, task: str) -> list[str]:
    """The schedulers a broadcast of ``task`` runs on now."""
    known = ((s.name, s.connected, s.reports, s.tasks) for s in core.registry)
    return broadcast.targets(known, task)


def _broadcast_refusal(
    core: Lifecycle, payload: JobPayload, existing: Job | None, prefix: str
) -> SubmitResult | None:
    """The refusal of a bad ``broadcast`` or ``pin``, or of replacing a broadcast."""
    if existing is not None and (existing.payload.broadcast or payload.broadcast):
        where = f"{prefix}.job_id"
        why = f"job {existing.id} exists; a broadcast cannot replace or be replaced"
        return SubmitResult(error=f"{where}: {why}", field=where)
    serving = _targets(core, payload.task) if payload.broadcast else []
    taken = [r for n in serving if (r := broadcast.run_id(payload.job_id or "", n)) in core.jobs]
    if taken:
        where = f"{prefix}.job_id"
        why = f"the id of its run {taken[0]} is taken by another job; choose another id"
        return SubmitResult(error=f"{where}: {why}", field=where)
    refusal = broadcast.check(payload, prefix, serving)
    if refusal is None:
        return None
    return SubmitResult(error=refusal.message, field=refusal.field)


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
