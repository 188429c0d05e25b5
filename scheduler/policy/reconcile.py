"""Reconciling a re-registering scheduler's ``held`` list with what the bus knows. Pure.

A scheduler that registers again lists every attempt it still has. The bus keeps the
ones it still gives to that scheduler, tells it to stop every other one, and takes
back at once each job it thought the scheduler held that the list leaves out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from scheduler.policy.job import Job
from scheduler.protocol import Held, Stop


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """``keep``: attempts the scheduler keeps; ``stop``: attempts it must stop;
    ``lost``: ids of jobs it held by the bus's account but no longer has."""

    keep: list[Held]
    stop: list[Stop]
    lost: list[str]


def reconcile(
    name: str, held: Sequence[Held], jobs: Mapping[str, Job], holding: Collection[str]
) -> Reconciliation:
    """Compare ``held`` (what scheduler ``name`` says it has) with ``jobs`` (every job
    the bus tracks) and ``holding`` (the ids the bus thinks ``name`` holds).

    Returns the reconciliation; changes nothing. An attempt listed twice counts once.
    """
    keep: list[Held] = []
    stop: list[Stop] = []
    seen: set[tuple[str, int]] = set()
    for entry in held:
        if (entry.id, entry.attempt) in seen:
            continue
        seen.add((entry.id, entry.attempt))
        job = jobs.get(entry.id)
        reason = _not_held(name, entry, job)
        if reason is None:
            keep.append(entry)
        else:
            stop.append(Stop(entry.id, entry.attempt, reason, kind="drop"))
    kept = {entry.id for entry in keep}
    lost = [job_id for job_id in holding if job_id not in kept]
    return Reconciliation(keep, stop, lost)


def _not_held(name: str, entry: Held, job: Job | None) -> str | None:
    """Why ``name`` no longer holds ``entry``, or None if it does."""
    if job is None:
        return "the job is final or unknown"
    if job.holder is None:
        return "the job was requeued"
    if job.holder != name:
        return f"the job was reassigned to {job.holder}"
    if job.attempt != entry.attempt:
        return f"stale attempt {entry.attempt} (current {job.attempt})"
    return None
