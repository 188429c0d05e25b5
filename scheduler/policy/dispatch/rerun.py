"""The ``retry`` command in the dispatch core: a final job that did not succeed runs
again.

A retried job keeps its id, task, args, priority, owner and submit time; it goes back
to ``queued`` (a ``retried`` event) as the latest arrival, is dispatched, and its next
assignment is its next attempt. What limits one run starts over: its deliveries and its
automatic retries (``max_retries``). Its history stays: the errors of earlier attempts,
its evictions.
A delayed job runs now (its ``run_at``/``delay`` are dropped, so it cannot expire
again); a job with dependencies does not wait for them again, and one that asked for
their results gets those of the dependencies that succeeded.

Refused, with the reason: an unknown id, another submitter's job (for a producer), a
job that succeeded or is not final, and a broadcast job or one of its runs (submit it
again instead).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from scheduler.policy.dispatch.decisions import Decision, SendReply
from scheduler.policy.dispatch.lifecycle import Lifecycle
from scheduler.policy.events import job_event
from scheduler.policy.job import Job, not_yours
from scheduler.protocol import JobEvent, Retried

RETRYABLE: Final = frozenset({"failed", "dead", "timed_out", "cancelled", "expired", "skipped"})
"""The final states a job may be retried from (every one but ``succeeded``)."""


def retry_refusal(job_id: str, job: Job | None, by: str | None) -> str | None:
    """Why ``by`` (None: a client that may act on any job) may not retry ``job`` (the
    core's or the journal's record of ``job_id``, None if unknown), or None if it may."""
    if job is None:
        return f"no job {job_id} (never submitted, or vacuumed)"
    refusal = not_yours(job, by, "retry")
    if refusal is not None:
        return refusal
    if job.state == "succeeded":
        return (
            f"job {job_id} succeeded; only a job that did not succeed may be retried"
            " (submit it again to run it once more)"
        )
    if job.state not in RETRYABLE:
        return f"job {job_id} is {job.state}, not final: it may still run; retry it once it ends"
    if job.payload.broadcast or job.payload.pin is not None:
        return (
            f"job {job_id} is a broadcast or one of its runs, which cannot be retried;"
            " submit it again"
        )
    return None


def retry(
    core: Lifecycle,
    job_ids: Iterable[str],
    stored: Mapping[str, Job],
    now: float,
    wall: float,
    by: str | None,
    ref: str | int | None,
) -> list[Decision]:
    """Retry each of ``job_ids`` for ``by`` (see :meth:`Dispatcher.retry`); ``stored``
    holds the journal's records of the jobs and of their dependencies."""
    retried: list[JobEvent] = []
    errors: dict[str, str] = {}
    out: list[Decision] = []
    for job_id in dict.fromkeys(job_ids):
        job = core.jobs.get(job_id) or stored.get(job_id)
        refusal = retry_refusal(job_id, job, by)
        if refusal is not None:
            errors[job_id] = refusal
            continue
        assert job is not None
        retried.append(_run_again(core, copy.copy(job), stored, now, wall, out))
    return [SendReply(Retried(retried, errors, ref)), *out]


def _run_again(
    core: Lifecycle,
    job: Job,
    stored: Mapping[str, Job],
    now: float,
    wall: float,
    out: list[Decision],
) -> JobEvent:
    """Put final ``job`` back in the core, queued, and dispatch it; return its event.

    ``job`` is a new record (a copy): an entry the final one left in the backlog then
    names a record the core no longer tracks, which never stands again."""
    p = job.payload
    if p.run_at is not None or p.delay is not None:
        job.payload = msgspec.structs.replace(p, run_at=None, delay=None, misfire_grace=None)
    job.state, job.holder, job.not_before = "queued", None, None
    job.finished_at, job.result = None, None
    job.progress = job.message = job.output = None
    job.started_at = job.exit_code = None
    job.deliveries = job.retries = 0
    # A new place in arrival order.
    job.seq, core.seq = core.seq, core.seq + 1
    core.jobs[job.id] = job
    job.waiting_since = now
    if p.pass_results:
        done = (core.jobs.get(dep) or stored.get(dep) for dep in p.depends_on or ())
        results = {d.id: d.result for d in done if d is not None and d.state == "succeeded"}
        core.deps.keep_results(job.id, results)
    core.touch(job, wall)
    event = job_event(job, "retried", wall, None)
    core.emit(out, event)
    core.dispatch(job, now, wall, out)
    return event
