"""What a simulation measures, read from the events the dispatch core emits (the same
events a monitor sees) and from the simulated schedulers.

A job's *wait* is counted from when it began waiting for a slot (accepted, queued at
its time, requeued, evicted, or its retry delay over) to when its attempt started, as
the bus's own ``stats`` counts it; each started attempt gives one wait, by the job's
priority.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS

PERCENTILES = (50, 90, 99)
"""The wait percentiles reported for each priority."""

MAX_SAMPLES = 2000
"""Samples of the queue and the slots kept for a plot; past it, every other one goes."""


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of the sorted non-empty ``ordered``."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class WaitStats:
    """The waits of the started attempts of one priority, in seconds."""

    priority: int
    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


@dataclass(frozen=True)
class NodeStats:
    """One scheduler over the run: attempts it started, seconds its slots were busy,
    and that over ``size`` times the makespan (``utilisation``, 0 to 1)."""

    name: str
    size: int
    started: int
    busy_s: float
    utilisation: float


@dataclass
class Samples:
    """The jobs waiting (tracked, not running) and the slots busy, every ``every``
    simulated seconds; halved (every other dropped, ``every`` doubled) past
    :data:`MAX_SAMPLES`."""

    every: float
    times: list[float] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)

    def add(self, t: float, waiting: int, busy: int, slots: int) -> None:
        """Record one sample at ``t``."""
        self.times.append(t)
        self.waiting.append(waiting)
        self.busy.append(busy)
        self.slots.append(slots)
        if len(self.times) > MAX_SAMPLES:
            for series in (self.times, self.waiting, self.busy, self.slots):
                del series[1::2]
            self.every *= 2


class Recorder:
    """Counts the core's events and keeps every wait, by priority."""

    def __init__(self) -> None:
        """Nothing seen yet."""
        self.counts: Counter[str] = Counter()
        self.waits: dict[int, array[float]] = {}
        self._since: dict[str, float] = {}
        self.first_submit: float | None = None
        self.last_final = 0.0

    def event(self, event: JobEvent, now: float) -> None:
        """Take one event the core emitted at ``now``."""
        kind = event.event
        self.counts[kind] += 1
        if kind == "started":
            since = self._since.pop(event.id, now)
            waits = self.waits.get(event.priority)
            if waits is None:
                waits = self.waits[event.priority] = array("d")
            waits.append(now - since)
        elif kind in ("accepted", "queued", "requeued", "evicted"):
            self._since[event.id] = now
            if kind == "accepted" and self.first_submit is None:
                self.first_submit = now
        elif kind == "retrying":
            self._since[event.id] = now + (event.retry_in_s or 0.0)
        elif kind in FINAL_EVENTS:
            self._since.pop(event.id, None)
            self.last_final = now

    @property
    def makespan(self) -> float:
        """Seconds from the first submit to the last final event."""
        return 0.0 if self.first_submit is None else self.last_final - self.first_submit

    def wait_stats(self) -> list[WaitStats]:
        """The waits of each priority that started something, most urgent first."""
        stats = []
        for priority in sorted(self.waits):
            ordered = sorted(self.waits[priority])
            p50, p90, p99 = (percentile(ordered, p) for p in PERCENTILES)
            mean = math.fsum(ordered) / len(ordered)
            stats.append(WaitStats(priority, len(ordered), p50, p90, p99, ordered[-1], mean))
        return stats
