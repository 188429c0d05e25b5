"""The wire messages of the bus's figures: the ``stats`` reply with the bus's counters,
each scheduler's load and the waits per priority. No I/O."""

from __future__ import annotations

import msgspec

from scheduler.protocol_types import Ref


class Percentiles(msgspec.Struct, frozen=True):
    """A distribution of durations in seconds over ``count`` samples."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


class SchedulerStats(msgspec.Struct, frozen=True):
    """A snapshot of one scheduler as the bus sees it.

    ``running_priorities`` lists the priority of each job it runs; ``stole`` counts jobs
    it took from others, ``stolen_from`` jobs others took from its queue.
    """

    name: str
    protocol: int
    size: int
    busy: int
    queued: int
    tasks: list[str]
    running_priorities: list[int]
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    evicted: int = 0
    stole: int = 0
    stolen_from: int = 0
    heartbeat_age_s: float | None = None


class BusStats(msgspec.Struct, frozen=True):
    """A snapshot of the bus: counts since it started, what waits now, and how long jobs
    waited from submit to start, per priority (``wait_s`` keyed by priority)."""

    uptime_s: float
    submitted: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    evicted: int = 0
    requeued: int = 0
    retried: int = 0
    cancelled: int = 0
    dead: int = 0
    stolen: int = 0
    steal_attempts: int = 0
    not_started: int = 0
    """Attempts taken back from schedulers that started nothing within the start deadline."""
    expired: int = 0
    """Delayed jobs that missed their misfire grace."""
    scheduled: int = 0
    """Delayed jobs waiting for their time (not counted in ``queued``)."""
    queued: int = 0
    running: int = 0
    unserved: dict[str, int] = {}
    wait_s: dict[str, Percentiles] = {}


class StatsReply(msgspec.Struct, frozen=True, tag_field="type", tag="stats", omit_defaults=True):
    """The answer to :class:`GetStats`. ``unserved`` in ``bus`` counts waiting jobs by a
    task no connected scheduler serves (they wait for one that does)."""

    bus: BusStats
    schedulers: list[SchedulerStats]
    ref: Ref = None
