"""Capacity-aware placement: which scheduler a job goes to. Pure, no clock.

The bus books every scheduler's slots from what it assigned and what was reported
(:class:`Slots`): attempts that started (``busy``, with the priority each was assigned
and whether it may be evicted), attempts assigned but not started yet (``pending``: on
their way, or waiting in its local queue) and steals on their way to it (``incoming``).
Among the schedulers that may run a job (:func:`place`):

a. one with a free slot, the least loaded first (ties to the one picked least recently);
b. else, if the job is more urgent than the first evictable running job of them all in
   the eviction order (:mod:`scheduler.policy.eviction`, the order a scheduler's runner
   evicts by), the scheduler running that job: its runner evicts it for this one;
c. else the one with the shortest local queue (ties to the least loaded, then to the
   one picked least recently); the job waits there.

A scheduler that never reports (v1) has every job it holds booked as pending: it is
placed on by load, never chosen to evict, and nothing waiting there is stolen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.policy.eviction import eviction_key


@dataclass(slots=True)
class Seat:
    """One held attempt as the bus books it: the ``priority`` it was assigned with,
    whether its scheduler may evict it, and its start order once it started (None while
    it is on its way or waits)."""

    priority: int
    evictable: bool
    started: int | None = None


@dataclass(eq=False, slots=True)
class Slots:
    """One scheduler's ``size`` slots as the bus books them."""

    name: str
    size: int
    busy: int = 0
    pending: int = 0
    incoming: int = 0
    last_pick: int = -1
    # priority -> {job id: start order}, in start order: the evictable running jobs.
    _victims: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def free(self) -> int:
        """Slots neither running, promised to an assigned attempt, nor to a steal
        (negative when jobs wait in its local queue)."""
        return self.size - self.busy - self.pending - self.incoming

    @property
    def queue(self) -> int:
        """How many of its jobs wait for a slot, by the booking."""
        return max(0, -self.free)

    @property
    def load(self) -> float:
        """Booked jobs per slot."""
        return (self.busy + self.pending + self.incoming) / self.size

    def book(self) -> None:
        """Count one more attempt assigned here and not started."""
        self.pending += 1

    def start(self, job_id: str, seat: Seat, order: int) -> None:
        """Move booked attempt ``job_id`` from pending to running, ``order``-th to start;
        an evictable one becomes a possible eviction victim."""
        seat.started = order
        self.pending -= 1
        self.busy += 1
        if seat.evictable:
            self._victims.setdefault(seat.priority, {})[job_id] = order

    def release(self, job_id: str, seat: Seat) -> None:
        """Forget booked attempt ``job_id`` (it ended, or left this scheduler)."""
        if seat.started is None:
            self.pending -= 1
            return
        self.busy -= 1
        self.spare(job_id, seat.priority)

    def spare(self, job_id: str, priority: int) -> None:
        """No longer offer running ``job_id`` as an eviction victim: an eviction of it is
        on its way (so the next urgent job picks another), or it left."""
        victims = self._victims.get(priority)
        if victims is not None and victims.pop(job_id, None) is not None and not victims:
            del self._victims[priority]

    def least_urgent(self) -> tuple[int, int, str] | None:
        """``(priority, start order, job id)`` of the evictable running job this
        scheduler's runner would evict first (the greatest :func:`eviction_key`), or None."""
        if not self._victims:
            return None
        priority = max(self._victims)
        # Each priority's jobs are in start order, so the last has the greatest key.
        job_id, order = next(reversed(self._victims[priority].items()))
        return priority, order, job_id


@dataclass(frozen=True, slots=True)
class FreeSlot:
    """Send the job to ``scheduler``: it has a free slot and starts it at once."""

    scheduler: str


@dataclass(frozen=True, slots=True)
class EvictFor:
    """Send the job to ``scheduler``, whose runner evicts running job ``victim`` for it."""

    scheduler: str
    victim: str


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Send the job to ``scheduler``, where it waits in the local queue for a slot."""

    scheduler: str


Placement = FreeSlot | EvictFor | Enqueue


def place(priority: int, candidates: Sequence[Slots]) -> Placement | None:
    """Where a job of (effective) ``priority`` goes among ``candidates`` (the schedulers
    that may run it), by rules a, b, c of this module; None if there is none. Changes
    nothing."""
    # One pass for the three rules: this runs for every job submitted.
    free: tuple[float, int] | None = None
    shortest: tuple[int, float, int] | None = None
    victim: tuple[int, int, str] | None = None
    free_at = shortest_at = victim_at = ""
    for s in candidates:
        used = s.busy + s.pending + s.incoming
        # Equal loads give equal floats (division is correctly rounded).
        load = used / s.size
        if used < s.size:
            if free is None or (load, s.last_pick) < free:
                free, free_at = (load, s.last_pick), s.name
        elif free is None:
            if shortest is None or (used - s.size, load, s.last_pick) < shortest:
                shortest, shortest_at = (used - s.size, load, s.last_pick), s.name
            # Read in place (not through least_urgent) as most full schedulers have
            # nothing less urgent than the job to offer.
            if s._victims and max(s._victims) > priority:
                least = s.least_urgent()
                assert least is not None
                if victim is None or eviction_key(*least[:2]) > eviction_key(*victim[:2]):
                    victim, victim_at = least, s.name
    if free is not None:
        return FreeSlot(free_at)
    if victim is not None:
        return EvictFor(victim_at, victim[2])
    return None if shortest is None else Enqueue(shortest_at)
