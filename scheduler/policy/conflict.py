"""What a submit with a client-chosen ``job_id`` does when that id exists. Pure.

The bus's own ids come first: a client may not choose an id with ``@`` or ``/``
(:data:`RESERVED`). Those are the bus's namespaces: the firings of a schedule
(``NAME@TIME``, :func:`scheduler.policy.schedules.firing_id`) and the runs of a
broadcast (``ID/SCHEDULER``, :func:`scheduler.policy.dispatch.broadcast.run_id`).
Anyone can compute those ids, so a client that could take one would stop another
owner's firing or fail another owner's broadcast. Only the bus's own submit of a firing
(``by_bus``) uses them.

Ownership comes next. A submit from the job's owner with the same payload is a re-send
(say, after the bus crashed before acknowledging it): it gets the existing job whatever
``on_conflict`` says. A submit from anyone else is refused, without a word about the
other owner's job, and ``ignore`` or ``replace`` never act on it. Otherwise ``raise``
refuses it, ``ignore`` answers with the existing job, ``replace`` replaces the
existing job if it has not started running: a scheduled or queued job (waiting for a retry
included) at once, an assigned one once its holder is told to stop that attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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

RESERVED: Final = ("@", "/")
"""The characters of the ids the bus makes: a schedule's firings, a broadcast's runs."""

RESERVED_RULE: Final = "'@' and '/' are reserved for schedule firings and broadcast runs"
"""Why a client-chosen ``job_id`` with a :data:`RESERVED` character is refused."""


def reserved_problem(job_id: str) -> str | None:
    """Why a client may not choose ``job_id`` (it holds a :data:`RESERVED` character),
    or None if it may."""
    if any(char in job_id for char in RESERVED):
        return f"{RESERVED_RULE} (NAME@TIME, ID/SCHEDULER); choose an id without them"
    return None


def resolve(
    existing: Job | None,
    payload: JobPayload,
    owner: str | None,
    *,
    stoppable: bool,
    by_bus: bool = False,
) -> Resolution:
    """Decide a submit of ``payload`` by ``owner`` whose id is held by ``existing``
    (None: the id is free).

    ``stoppable`` says whether the existing job's holder can be told to stop (a v1
    scheduler cannot). ``by_bus``: the bus itself submits (a schedule's firing), so
    the id may be one of the bus's (:data:`RESERVED`). Returns the resolution; changes
    nothing.
    """
    reserved = None if by_bus or payload.job_id is None else reserved_problem(payload.job_id)
    if reserved is not None:
        return Refuse(reserved)
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
