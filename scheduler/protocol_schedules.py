"""The wire messages of periodic jobs: a schedule's spec, the admin's and monitor's
schedule commands, and the bus's answer to them. No I/O."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from scheduler.protocol_types import (
    MAX_NAME_LEN,
    MAX_SIZE,
    MAX_TIMEOUT_S,
    Args,
    Name,
    Priority,
    Ref,
    Runtime,
    Timeout,
    check_nesting,
)

MAX_SCHEDULE_NAME_LEN: Final = 150
"""A schedule's name leaves room in :data:`JobId` for ``@`` and the firing's time."""
MAX_SCHEDULES: Final = 1000
"""Most schedules one ``register`` may declare."""
MAX_FIRE_COUNT: Final = 1000
"""Most fire times one ``next`` query may ask for."""

ScheduleName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_SCHEDULE_NAME_LEN, pattern=r"^[^@\s]+$")
]
"""A schedule's unique name: no ``@`` (it separates the name in a firing's job id) and
no white space."""


class ScheduleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A periodic job: fire every ``every`` seconds (aligned on multiples of ``every``
    since the epoch) or at the times of the ``cron`` expression in time zone ``tz``; each
    firing submits ``task`` with ``args``, ``priority`` and ``timeout`` as a job whose id
    is ``NAME@<scheduled time, ISO 8601 UTC>`` (``runtime`` as in :class:`JobPayload`:
    the built-in ``sleep`` task needs it).

    ``misfire_grace``: a firing later than this (the bus was down) is not run (None: any
    lateness). ``jitter``: each firing is delayed by a random 0..``jitter`` seconds.
    ``max_instances``: a firing while that many earlier firings are not final is skipped.
    ``coalesce``: after downtime only the latest missed firing runs, not each of them.
    Which of ``every`` and ``cron`` is given, and whether ``cron`` and ``tz`` are valid,
    is checked by :func:`scheduler.policy.schedules.spec_problem`.
    """

    name: ScheduleName
    task: Name
    every: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN)] | None = None
    tz: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN)] = "UTC"
    args: Args | None = None
    runtime: Runtime | None = None
    priority: Priority | None = None
    timeout: Timeout | None = None
    misfire_grace: Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT_S)] | None = None
    jitter: Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT_S)] = 0.0
    max_instances: Annotated[int, msgspec.Meta(ge=1, le=MAX_SIZE)] = 1
    coalesce: bool = True

    def __post_init__(self) -> None:
        """Refuse ``args`` nested deeper than :data:`MAX_NESTING`."""
        check_nesting("args", self.args)


class ScheduleAdd(
    msgspec.Struct, frozen=True, tag_field="cmd", tag="schedule_add", omit_defaults=True
):
    """Add a schedule, or replace the one of the same name (an admin's command)."""

    schedule: ScheduleSpec
    ref: Ref = None


ScheduleAction = Literal["pause", "resume", "remove", "trigger"]
"""What :class:`ScheduleChange` does to a schedule; ``trigger`` fires it now, once."""


class ScheduleChange(
    msgspec.Struct, frozen=True, tag_field="cmd", tag="schedule_change", omit_defaults=True
):
    """Pause, resume, remove or trigger the schedule ``name`` (an admin's command)."""

    action: ScheduleAction
    name: ScheduleName
    ref: Ref = None


ScheduleQueryKind = Literal["list", "show", "next"]
"""What :class:`ScheduleQuery` asks: every schedule, one, or one's next ``count`` times."""


class ScheduleQuery(
    msgspec.Struct, frozen=True, tag_field="cmd", tag="schedule_query", omit_defaults=True
):
    """Read schedules (a monitor's or an admin's command); ``name`` for ``show`` and ``next``."""

    query: ScheduleQueryKind = "list"
    name: ScheduleName | None = None
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_FIRE_COUNT)] = 5
    ref: Ref = None


ScheduleOrigin = Literal["added", "declared"]
"""Who made a schedule what it is: an admin's ``schedule_add`` (``added``), or a
scheduler's ``register`` (``declared``). A declaration never changes an added schedule."""


class ScheduleInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """One schedule as the bus keeps it: its spec, whether it is paused, its next fire
    time (epoch seconds), its latest firing's job id, time and outcome (the job's
    state, or why the firing was skipped), and its ``origin`` (None from a bus that did
    not send one)."""

    spec: ScheduleSpec
    paused: bool = False
    next_fire: float | None = None
    last_fire: float | None = None
    last_job: str | None = None
    last_outcome: str | None = None
    origin: ScheduleOrigin | None = None


class Schedules(msgspec.Struct, frozen=True, tag_field="type", tag="schedules", omit_defaults=True):
    """The answer to every schedule command: the schedules concerned, the fire times a
    ``next`` query asked for (epoch seconds), and what was done, in words."""

    schedules: list[ScheduleInfo] = []
    times: list[float] = []
    message: str | None = None
    ref: Ref = None
