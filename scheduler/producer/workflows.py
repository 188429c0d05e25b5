"""Workflows of dependent jobs, built as one batch for ``submit_many``.

``chain(a, b, c)`` runs ``a``, then ``b``, then ``c``, each waiting for the one before to
succeed; ``group(a, b)`` runs its members side by side. They nest: a diamond is
``chain(a, group(b, c), d)`` (``d`` waits for both ``b`` and ``c``). Each job gets a
client id (``job_id``, kept if it has one) so the batch can name its own jobs in
``depends_on``; the bus refuses a cycle or an unknown id. Pure: no I/O::

    flow = chain(JobPayload(task="fetch"), group(p1, p2), JobPayload(task="merge"))
    results = await client.submit_many(flow.jobs)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from scheduler.protocol import JobPayload


@dataclass(frozen=True, slots=True)
class Workflow:
    """A batch of jobs: ``jobs`` in submit order, ``heads`` (the jobs that wait for
    nothing inside it: what a step before it gates) and ``tails`` (the jobs a step
    after it waits for)."""

    jobs: tuple[JobPayload, ...]
    heads: tuple[str, ...]
    tails: tuple[str, ...]

    @property
    def ids(self) -> list[str]:
        """The client id of every job, in submit order."""
        return [job.job_id or "" for job in self.jobs]

    def after(self, ids: Iterable[str], *, pass_results: bool = False) -> Workflow:
        """This workflow with its heads also waiting for ``ids`` (and given their
        results with ``pass_results``)."""
        extra = list(ids)
        heads = set(self.heads)
        jobs = tuple(
            _waiting(job, extra, pass_results) if job.job_id in heads else job for job in self.jobs
        )
        return Workflow(jobs, self.heads, self.tails)


def job_ids(payload: JobPayload) -> JobPayload:
    """``payload`` with a client id: its own, else a fresh one (submitted with
    ``on_conflict="ignore"``, so a re-sent batch is idempotent)."""
    if payload.job_id is not None:
        return payload
    return msgspec.structs.replace(payload, job_id=uuid.uuid4().hex, on_conflict="ignore")


def group(*steps: JobPayload | Workflow) -> Workflow:
    """Run ``steps`` side by side: a step after the group waits for all of them."""
    flows = [_flow(step) for step in steps]
    return Workflow(
        tuple(job for flow in flows for job in flow.jobs),
        tuple(i for flow in flows for i in flow.heads),
        tuple(i for flow in flows for i in flow.tails),
    )


def chain(*steps: JobPayload | Workflow, pass_results: bool = False) -> Workflow:
    """Run ``steps`` one after the other: each waits for the one before to succeed
    (and gets its results as ``results=`` with ``pass_results``). Raises ValueError
    without steps."""
    if not steps:
        raise ValueError("chain needs at least one step")
    done = _flow(steps[0])
    for step in steps[1:]:
        flow = _flow(step).after(done.tails, pass_results=pass_results)
        done = Workflow(done.jobs + flow.jobs, done.heads, flow.tails)
    return done


def _flow(step: JobPayload | Workflow) -> Workflow:
    if isinstance(step, Workflow):
        return step
    payload = job_ids(step)
    assert payload.job_id is not None
    return Workflow((payload,), (payload.job_id,), (payload.job_id,))


def _waiting(job: JobPayload, ids: list[str], pass_results: bool) -> JobPayload:
    depends_on = [*(job.depends_on or ()), *ids]
    return msgspec.structs.replace(
        job, depends_on=depends_on, pass_results=job.pass_results or pass_results
    )
