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
from dataclasses import dataclass
from typing import Protocol

from scheduler.policy.eviction import eviction_key


@dataclass(slots=True)
class Seat:
    """One held attempt as the bus books it: the ``priority`` it was assigned with,
    whether its scheduler may evict it, and its start order once it started (None while
    it is on its way or waits)."""

    priority: int
    evictable: bool
    started: int | None = None


class SlotsWatcher(Protocol):
    """An index over some schedulers' :class:`Slots` (:mod:`scheduler.policy.placement_index`)
    that learns of every change that can move a placement."""

    def moved(self, at: int) -> None:
        """The booking (load, size or last pick) of its member ``at`` changed."""

    def victims_changed(self, at: int) -> None:
        """The least urgent evictable running job of its member ``at`` may have changed."""


class Slots:
    """One scheduler's ``size`` slots as the bus books them.

    Every change that can move a placement tells the watchers (indexes of the
    schedulers serving a task) the scheduler is in: set ``size``, ``incoming`` and
    ``last_pick`` by assignment, and ``busy`` and ``pending`` through the methods.
    """

    __slots__ = (
        "name",
        "_size",
        "busy",
        "pending",
        "_incoming",
        "_last_pick",
        "_victims",
        "_watchers",
    )

    def __init__(self, name: str, size: int) -> None:
        """``size`` free slots of scheduler ``name``, never picked yet."""
        self.name = name
        self._size = size
        self.busy = 0
        self.pending = 0
        self._incoming = 0
        self._last_pick = -1
        # priority -> {job id: start order}, in start order: the evictable running jobs.
        self._victims: dict[int, dict[str, int]] = {}
        # Each watcher with this scheduler's position in it.
        self._watchers: list[tuple[SlotsWatcher, int]] = []

    @property
    def size(self) -> int:
        """How many jobs it runs at once."""
        return self._size

    @size.setter
    def size(self, size: int) -> None:
        self._size = size
        self._moved()

    @property
    def incoming(self) -> int:
        """Slots kept for steals on their way to it."""
        return self._incoming

    @incoming.setter
    def incoming(self, incoming: int) -> None:
        self._incoming = incoming
        self._moved()

    @property
    def last_pick(self) -> int:
        """When placement last chose it (a count; -1: never)."""
        return self._last_pick

    @last_pick.setter
    def last_pick(self, last_pick: int) -> None:
        self._last_pick = last_pick
        self._moved()

    @property
    def free(self) -> int:
        """Slots neither running, promised to an assigned attempt, nor to a steal
        (negative when jobs wait in its local queue)."""
        return self._size - self.busy - self.pending - self._incoming

    @property
    def queue(self) -> int:
        """How many of its jobs wait for a slot, by the booking."""
        return max(0, -self.free)

    @property
    def load(self) -> float:
        """Booked jobs per slot."""
        return (self.busy + self.pending + self._incoming) / self._size

    def watch(self, watcher: SlotsWatcher, at: int) -> None:
        """Tell ``watcher`` of every change from now on, as its member ``at``."""
        self._watchers.append((watcher, at))

    def unwatch(self, watcher: SlotsWatcher) -> None:
        """Stop telling ``watcher`` of changes."""
        self._watchers = [(w, at) for w, at in self._watchers if w is not watcher]

    def book(self) -> None:
        """Count one more attempt assigned here and not started."""
        self.pending += 1
        self._moved()

    def start(self, job_id: str, seat: Seat, order: int) -> None:
        """Move booked attempt ``job_id`` from pending to running, ``order``-th to start;
        an evictable one becomes a possible eviction victim."""
        seat.started = order
        self.pending -= 1
        self.busy += 1
        if seat.evictable:
            self._victims.setdefault(seat.priority, {})[job_id] = order
            self._victims_changed()

    def release(self, job_id: str, seat: Seat) -> None:
        """Forget booked attempt ``job_id`` (it ended, or left this scheduler)."""
        if seat.started is None:
            self.pending -= 1
        else:
            self.busy -= 1
            self.spare(job_id, seat.priority)
        self._moved()

    def spare(self, job_id: str, priority: int) -> None:
        """No longer offer running ``job_id`` as an eviction victim: an eviction of it is
        on its way (so the next urgent job picks another), or it left."""
        victims = self._victims.get(priority)
        if victims is not None and victims.pop(job_id, None) is not None:
            if not victims:
                del self._victims[priority]
            self._victims_changed()

    def least_urgent(self) -> tuple[int, int, str] | None:
        """``(priority, start order, job id)`` of the evictable running job this
        scheduler's runner would evict first (the greatest :func:`eviction_key`), or None."""
        if not self._victims:
            return None
        priority = max(self._victims)
        # Each priority's jobs are in start order, so the last has the greatest key.
        job_id, order = next(reversed(self._victims[priority].items()))
        return priority, order, job_id

    def _moved(self) -> None:
        for watcher, at in self._watchers:
            watcher.moved(at)

    def _victims_changed(self) -> None:
        for watcher, at in self._watchers:
            watcher.victims_changed(at)


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
