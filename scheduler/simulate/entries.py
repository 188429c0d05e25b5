"""Workload entries besides jobs: a producer's cancel, and a periodic schedule that an
admin adds (``schedules add``) and later removes.

In a JSON-lines workload file they are lines of their own:

* ``{"at": 30, "cancel": "ID"}``: cancel job ``ID`` (a job line's ``id``, a firing's
  ``NAME@TIME`` or a broadcast run's ``ID/SCHEDULER``) at 30 s;
* ``{"at": 0, "until": 600, "schedule": {"name": "tick", "task": "sleep", "every": 60,
  "runtime": 5}}``: add that schedule (any field of ``schedules add``: ``every`` or
  ``cron`` and ``tz``, ``priority``, ``timeout``, ``misfire_grace``, ``jitter``,
  ``max_instances``, ``coalesce``) at 0 s and remove it at ``until`` (required: a
  schedule fires for ever, a simulation must end).

Simulated time starts at the epoch, so an ``every`` schedule fires at multiples of
``every`` seconds from the start, and a cron schedule at its times of 1 January 1970.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from scheduler.policy.schedules import spec_problem
from scheduler.protocol_schedules import ScheduleSpec


class EntryError(ValueError):
    """An entry that cannot be read; the message names the field and the rule."""


@dataclass(frozen=True, slots=True)
class SimCancel:
    """At ``at``, a producer cancels job ``job_id``."""

    at: float
    job_id: str


@dataclass(frozen=True, slots=True)
class SimSchedule:
    """At ``at``, an admin adds ``spec`` (or replaces the schedule of its name)."""

    at: float
    spec: ScheduleSpec


@dataclass(frozen=True, slots=True)
class SimUnschedule:
    """At ``at``, an admin removes schedule ``name`` (its firings' jobs stay)."""

    at: float
    name: str


Request = SimCancel | SimSchedule | SimUnschedule
"""A workload entry that is not a job."""


def cancel_entry(at: float, entry: dict[str, Any]) -> SimCancel:
    """The cancel of a ``{"at", "cancel"}`` line; raises :class:`EntryError`."""
    extra = sorted(entry.keys() - {"at", "cancel"})
    if extra:
        raise EntryError(f"{extra[0]}: a cancel line has only at and cancel")
    job_id = entry["cancel"]
    if not isinstance(job_id, str) or not job_id:
        raise EntryError(f"cancel: must be a job id (a string), not {job_id!r}")
    return SimCancel(at, job_id)


def schedule_entries(at: float, entry: dict[str, Any]) -> tuple[SimSchedule, SimUnschedule]:
    """The add and the removal of a ``{"at", "until", "schedule"}`` line; raises
    :class:`EntryError` naming the field."""
    extra = sorted(entry.keys() - {"at", "until", "schedule"})
    if extra:
        raise EntryError(f"{extra[0]}: a schedule line has only at, until and schedule")
    until = entry.get("until")
    if isinstance(until, bool) or not isinstance(until, int | float) or until < at:
        raise EntryError(
            f"until: must be the seconds the schedule is removed at (>= at), not {until!r}"
        )
    try:
        spec = msgspec.convert(entry["schedule"], ScheduleSpec)
    except msgspec.ValidationError as exc:
        raise EntryError(f"schedule: {exc}") from None
    problem = spec_problem(spec)
    if problem is not None:
        raise EntryError(f"schedule.{problem[1]}")
    if spec.task == "sleep" and spec.runtime is None:
        raise EntryError("schedule.runtime: a sleep schedule needs one")
    return SimSchedule(at, spec), SimUnschedule(float(until), spec.name)
