"""Job dependencies: which ``blocked`` job waits for which jobs, and what a dependency's
end does to the jobs waiting for it.

Pure bookkeeping and decisions, no clock needed: the dispatch core asks
:func:`check_depends_on` at submit (unknown ids, another submitter's jobs),
:func:`batch_order` for a ``submit_many`` (dependencies inside the batch first, cycles
refused), books a blocked job with :meth:`Dependencies.block` and, when a job ends,
takes the jobs that waited for it with :meth:`Dependencies.settle` and decides each with
:func:`effect`. A job's ``results`` (for ``pass_results``) are collected here as its
dependencies succeed, until the job leaves the core.

Invariant (checked by :mod:`scheduler.policy.dispatch.invariants`): a job is in
``waiting`` exactly when it is ``blocked``; it waits only for tracked, non-final jobs;
``dependents`` is the exact reverse of ``waiting``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from scheduler.policy.job import Job, not_yours
from scheduler.protocol import JobPayload

Effect = Literal["wait", "release", "skip", "gather"]
"""What a dependency's end does to a job that waited for it (``gather``: the last run
of a broadcast ended, see :mod:`.broadcast`)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How a new job with ``depends_on`` starts: the tracked jobs it waits for
    (``pending``), the results of those that already succeeded (``results``), and the
    first one that already ended without succeeding (``failed``: id and state)."""

    pending: tuple[str, ...] = ()
    results: dict[str, object] = field(default_factory=dict)
    failed: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a submit's ``depends_on`` is refused, and the field it names."""

    message: str
    field: str


def check_depends_on(
    payload: JobPayload, prefix: str, lookup: Callable[[str], Job | None], owner: str | None
) -> Plan | Refusal:
    """Check ``payload.depends_on`` for a submit by ``owner``; ``lookup`` finds a job by
    id (tracked or from the journal). Returns the :class:`Plan`, or a :class:`Refusal`
    naming ``{prefix}.depends_on[i]`` for the first unknown id, another submitter's job,
    or the job's own id."""
    pending: list[str] = []
    results: dict[str, object] = {}
    failed: tuple[str, str] | None = None
    for i, dep_id in enumerate(payload.depends_on or ()):
        where = f"{prefix}.depends_on[{i}]"
        if dep_id == payload.job_id:
            return Refusal(f"{where}: a job cannot depend on itself ({dep_id})", where)
        dep = lookup(dep_id)
        if dep is None:
            return Refusal(f"{where}: no job {dep_id}", where)
        refusal = not_yours(dep, owner, "depend on")
        if refusal is not None:
            return Refusal(f"{where}: {refusal}", where)
        if not dep.final:
            pending.append(dep_id)
        elif dep.state == "succeeded":
            results[dep_id] = dep.result
        elif failed is None:
            failed = (dep_id, dep.state)
    return Plan(tuple(dict.fromkeys(pending)), results, failed)


def restore_plan(payload: JobPayload, lookup: Callable[[str], Job | None]) -> Plan:
    """How a restored job's dependencies stand: ``lookup`` finds the restored jobs and
    the journal records of the others; an id the journal no longer has counts as
    failed (``missing from the journal``)."""
    pending: list[str] = []
    results: dict[str, object] = {}
    failed: tuple[str, str] | None = None
    for dep_id in payload.depends_on or ():
        dep = lookup(dep_id)
        if dep is not None and not dep.final:
            pending.append(dep_id)
        elif dep is not None and dep.state == "succeeded":
            results[dep_id] = dep.result
        elif failed is None:
            failed = (dep_id, "missing from the journal" if dep is None else dep.state)
    return Plan(tuple(dict.fromkeys(pending)), results, failed)


def restore_ids(jobs: Iterable[Job]) -> set[str]:
    """The dependencies of ``jobs`` (restored from the journal) that are not among them:
    the bus looks up their final records for :func:`restore_plan`."""
    jobs = list(jobs)
    restored = {job.id for job in jobs}
    return {d for job in jobs for d in job.payload.depends_on or () if d not in restored}


def effect(payload: JobPayload, dependency_state: str, still_waiting: bool) -> Effect:
    """What a dependency ending in ``dependency_state`` does to the job of ``payload``
    that waited for it, ``still_waiting`` for others: skip it (a failed dependency,
    unless ``on_dependency_failure`` is ``run``), release it (the last one), or wait.
    A broadcast parent waits for all its runs whatever they do, then gathers them."""
    if payload.broadcast:
        return "wait" if still_waiting else "gather"
    if dependency_state != "succeeded" and payload.on_dependency_failure == "skip":
        return "skip"
    return "wait" if still_waiting else "release"


def skip_reason(dep_id: str, dependency_state: str) -> str:
    """The error of a job skipped because dependency ``dep_id`` ended ``dependency_state``."""
    if dependency_state == "assigned":
        return f"dependency {dep_id} went to a v1 scheduler, which reports no outcome"
    if dependency_state.startswith("missing"):
        return f"dependency {dep_id} is {dependency_state}"
    return f"dependency {dep_id} ended {dependency_state}"


def batch_order(payloads: Sequence[object]) -> tuple[list[int], dict[int, str]]:
    """The order to submit a batch in so that a job comes after the batch's jobs it
    depends on (by their client ids), else in batch order; and the jobs refused, by
    index, with a message naming the jobs of the cycle they are on or depend on. Items
    that are not :class:`JobPayload` keep their place."""
    index = {_client_id(p): i for i, p in enumerate(payloads) if _client_id(p) is not None}
    deps = {i: _batch_deps(p, index) for i, p in enumerate(payloads)}
    waiters: dict[int, list[int]] = {}
    missing = {i: len(set(d)) for i, d in deps.items()}
    for i, ds in deps.items():
        for j in set(ds):
            waiters.setdefault(j, []).append(i)
    ready = [i for i, n in missing.items() if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for w in waiters.get(i, ()):
            missing[w] -= 1
            if missing[w] == 0:
                heapq.heappush(ready, w)
    left = {i for i, n in missing.items() if n > 0}
    return order, _cycle_refusals(left, deps, payloads)


def _cycle_refusals(
    left: set[int], deps: dict[int, list[int]], payloads: Sequence[object]
) -> dict[int, str]:
    """Refuse each job of ``left`` (jobs that wait, through the batch, for a cycle),
    naming the cycle it is on or depends on: walking its dependencies inside ``left``
    always reaches one."""
    cycle_of: dict[int, str] = {}
    on_cycle: set[int] = set()
    for start in sorted(left):
        path: list[int] = []
        seen: dict[int, int] = {}
        i = start
        while i not in seen and i not in cycle_of:
            seen[i] = len(path)
            path.append(i)
            i = next(j for j in deps[i] if j in left)
        if i not in cycle_of:
            loop = path[seen[i] :]
            on_cycle.update(loop)
            cycle_of[i] = " -> ".join(str(_client_id(payloads[j])) for j in [*loop, i])
        for j in path:
            cycle_of.setdefault(j, cycle_of[i])
    return {
        j: f"jobs.{j}.depends_on: {'a' if j in on_cycle else 'depends on a'} cycle: {names}"
        for j, names in cycle_of.items()
    }


def _client_id(item: object) -> str | None:
    return item.job_id if isinstance(item, JobPayload) else None


def _batch_deps(item: object, index: dict[str | None, int]) -> list[int]:
    if not isinstance(item, JobPayload):
        return []
    return [index[d] for d in item.depends_on or () if d in index]


class Dependencies:
    """The blocked jobs, what each still waits for, and the results collected for them."""

    def __init__(self) -> None:
        """No blocked job."""
        self.waiting: dict[str, set[str]] = {}
        self.dependents: dict[str, set[str]] = {}
        self.results: dict[str, dict[str, object]] = {}
        self.outcomes: dict[str, dict[str, str]] = {}
        """The states of a broadcast parent's runs that ended, by run id."""

    def block(self, job_id: str, pending: Iterable[str]) -> None:
        """Book ``job_id`` as waiting for each id of ``pending`` (not empty)."""
        waits = self.waiting[job_id] = set(pending)
        for dep_id in waits:
            self.dependents.setdefault(dep_id, set()).add(job_id)

    def keep_results(self, job_id: str, results: dict[str, object]) -> None:
        """Add ``results`` (dependency id: result) to those ``job_id`` will be given."""
        self.results.setdefault(job_id, {}).update(results)

    def settle(self, dep_id: str) -> list[tuple[str, bool]]:
        """``dep_id`` ended: it leaves the books; return each job that waited for it,
        sorted, with whether it still waits for others."""
        waiters = sorted(self.dependents.pop(dep_id, ()))
        settled: list[tuple[str, bool]] = []
        for job_id in waiters:
            waits = self.waiting[job_id]
            waits.discard(dep_id)
            if not waits:
                del self.waiting[job_id]
            settled.append((job_id, bool(waits)))
        return settled

    def forget(self, job_id: str) -> None:
        """``job_id`` leaves the core: it waits for nothing and its results go. The jobs
        waiting for it are the caller's (:meth:`settle`)."""
        for dep_id in self.waiting.pop(job_id, ()):
            waiters = self.dependents[dep_id]
            waiters.discard(job_id)
            if not waiters:
                del self.dependents[dep_id]
        self.results.pop(job_id, None)
        self.outcomes.pop(job_id, None)
