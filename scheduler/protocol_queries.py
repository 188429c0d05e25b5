"""The operator's requests about jobs as a whole, and their replies: list, retry, vacuum
and the figures. Decoding validates; no I/O. (:mod:`scheduler.protocol` holds the jobs'
and connections' messages and both unions.)"""

from __future__ import annotations

from typing import Annotated

import msgspec

from scheduler.protocol_types import (
    MAX_BULK,
    MAX_EPOCH_S,
    JobId,
    JobState,
    Name,
    Ref,
    Seconds,
)


class Vacuum(msgspec.Struct, frozen=True, tag_field="cmd", tag="vacuum", omit_defaults=True):
    """Delete final jobs older than the retention now (or older than ``older_than_s``)."""

    older_than_s: Seconds | None = None
    ref: Ref = None


class GetStats(msgspec.Struct, frozen=True, tag_field="cmd", tag="stats", omit_defaults=True):
    """Ask the bus for a :class:`StatsReply`."""

    ref: Ref = None


class ListJobs(msgspec.Struct, frozen=True, tag_field="cmd", tag="list_jobs", omit_defaults=True):
    """List the jobs the bus tracks (not final), in the order they were submitted,
    optionally only those in ``states``; at most ``limit`` (a producer token sees only
    its own jobs).

    ``final``: the final jobs the journal keeps are listed too. ``newest_first``: the
    latest submitted first. ``task``, ``since`` (epoch seconds: submitted at or after) and
    ``prefix`` (the id starts with it) narrow the list further.
    """

    states: Annotated[list[JobState], msgspec.Meta(max_length=20)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_BULK)] = 1000
    ref: Ref = None
    task: Name | None = None
    since: Annotated[float, msgspec.Meta(ge=0, le=MAX_EPOCH_S)] | None = None
    prefix: JobId | None = None
    final: bool = False
    newest_first: bool = False


class Retry(msgspec.Struct, frozen=True, tag_field="cmd", tag="retry", omit_defaults=True):
    """Run final jobs again (see :mod:`scheduler.policy.dispatch.rerun`): each keeps its
    id, task, args and priority and gets the next attempt. An admin may retry any job, a
    producer only its own."""

    ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=MAX_BULK)]
    ref: Ref = None


class Vacuumed(msgspec.Struct, frozen=True, tag_field="type", tag="vacuumed", omit_defaults=True):
    """How many final jobs a vacuum deleted, by state."""

    deleted: dict[str, int]
    ref: Ref = None
