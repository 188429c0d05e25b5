"""What the bus tells a scheduler about the attempts it runs: :class:`Assign` (carrying
an :class:`Assignment`), :class:`Release` for a held one, and :class:`Stop`. Decoding
validates; no I/O. :mod:`scheduler.protocol` re-exports them with every other message.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from scheduler.protocol_types import (
    Args,
    Attempt,
    Count,
    JobId,
    Name,
    Priority,
    Runtime,
    Timeout,
)


class Assignment(msgspec.Struct, frozen=True, omit_defaults=True):
    """One attempt of one job handed to one scheduler."""

    id: JobId
    attempt: Attempt
    priority: Priority
    runtime: Runtime | None = None
    task: Name = "sleep"
    args: Args | None = None
    timeout: Timeout | None = None
    evictions: Count = 0
    evictable: bool = True
    results: dict[str, object] | None = None
    """The results of the job's dependencies, by id, when it asked for them
    (``pass_results``); the task gets them as its ``results`` keyword argument."""


StopKind = Literal["cancel", "steal", "drop"]
"""What a :class:`Stop` asks of a scheduler (see there)."""


class Stop(msgspec.Struct, frozen=True, tag_field="type", tag="stop"):
    """The bus tells a scheduler to stop an attempt; ``kind`` says how to, ``reason``
    says why in words (for logs; never branch on it).

    ``cancel``: the job is cancelled: stop its process tree or drop it from the local
    queue, and answer with a ``cancelled`` report. ``drop`` (the default, which is what a
    stop meant before stops had a kind): the attempt is no longer this scheduler's:
    stop or drop it and forget any report of it not yet sent. ``steal``: another
    scheduler wants the job: drop it only if it still waits in the local queue, and
    answer with a ``revoked`` report; if it has started, keep it (the ``started`` report
    tells the bus the steal failed). Schedulers older than ``kind`` ignore it and read
    ``reason`` (``cancelled``, ``stolen`` or other words).
    """

    id: str
    attempt: int
    reason: str
    kind: StopKind = "drop"


class Assign(msgspec.Struct, frozen=True, tag_field="type", tag="assign", omit_defaults=True):
    """The bus gives a v2 scheduler an attempt of a job to run.

    ``hold`` (only to a scheduler that registered with ``hold``): the assignment is not
    journaled yet. The scheduler may fork the job's process now, but the task must not run
    and nothing about it may be reported ``started`` until the :class:`Release` of that
    attempt comes. If the journal refuses the assignment, a :class:`Stop` (``drop``) comes
    instead; if the connection is lost first, the scheduler ends the held process unstarted
    and forgets the attempt.
    """

    job: Assignment
    hold: bool = False


class Release(msgspec.Struct, frozen=True, tag_field="type", tag="release"):
    """The held assignment of ``attempt`` of job ``id`` is journaled: start it now."""

    id: str
    attempt: int
