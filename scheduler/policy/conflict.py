"""What a submit with a client-chosen ``job_id`` does when that id exists. Pure.

Ownership comes first. A submit from the job's owner with the same payload is a re-send
(say, after the bus crashed before acknowledging it): it gets the existing job whatever
``on_conflict`` says. A submit from anyone else is refused, without a word about the
other owner's job, and ``ignore`` or ``replace`` never act on it. Otherwise ``raise``
refuses it, ``ignore`` answers with the existing job, ``replace`` replaces the
existing job if it has not started running: a scheduled or queued job (waiting for a retry
included) at once, an assigned one once its holder is told to stop that attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from scheduler.policy.job import Job
from scheduler.protocol import JobPayload


@dataclass(frozen=True, slots=True)
class Create:
    """No job has this id: create it."""


@dataclass(frozen=True, slots=True)
class KeepExisting:
    """Answer with the existing job; change nothing."""


@dataclass(frozen=True, slots=True)
class Replace:
    """Replace the existing job; ``stop_holder``: its holder must first stop its attempt."""

    stop_holder: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the submit with ``message``."""

    message: str


Resolution = Create | KeepExisting | Replace | Refuse


def resolve(
    existing: Job | None, payload: JobPayload, owner: str | None, *, stoppable: bool
) -> Resolution:
    """Decide a submit of ``payload`` by ``owner`` whose id is held by ``existing``
    (None: the id is free).

    ``stoppable`` says whether the existing job's holder can be told to stop (a v1
    scheduler cannot). Returns the resolution; changes nothing.
    """
    if existing is None:
        return Create()
    if existing.owner != owner:
        return Refuse(f"job id {existing.id} is taken by another submitter; choose another id")
    if _same_job(existing.payload, payload):
        return KeepExisting()
    on_conflict = payload.on_conflict
    if on_conflict == "ignore":
        return KeepExisting()
    if on_conflict == "raise":
        return Refuse(f"job {existing.id} already exists (state {existing.state})")
    if existing.state in ("queued", "scheduled", "blocked"):
        return Replace(stop_holder=False)
    if existing.state == "assigned" and stoppable:
        return Replace(stop_holder=True)
    why = "final" if existing.final else "running"
    return Refuse(
        f"job {existing.id} is {why} (state {existing.state}); only a job that has not"
        " started can be replaced"
    )


def _same_job(a: JobPayload, b: JobPayload) -> bool:
    """Whether two payloads ask for the same job (``on_conflict`` only says what to do
    about a clash, so it does not count; nor does the ``depends_on`` the bus gave
    broadcast ``a``: it lists its runs)."""
    depends_on = a.depends_on if a.broadcast and b.broadcast and not b.depends_on else b.depends_on
    return a == msgspec.structs.replace(b, on_conflict=a.on_conflict, depends_on=depends_on)
