"""The schedulers serving a task, indexed so that placing a job does not look at every
one of them. Pure, no clock.

:func:`scheduler.policy.placement.place` reads every candidate for every job; with a
thousand schedulers that pass is most of the bus's work per job. A :class:`Pool` keeps
the same candidates in three heaps, each entry stamped with the version of its
scheduler's booking it was made from, so a changed scheduler pushes a fresh entry and
the old one is dropped when it comes to the top (or when the heaps are rebuilt once
stale entries outnumber live ones). A change only marks its scheduler; the marked ones
are indexed afresh when the next job is placed, once each however often they changed
(a job's assignment, start and end change its scheduler several times between two
placements), and the eviction victims only when a placement finds no free slot:

- the schedulers with a free slot by ``(load, last pick, position)`` (rule a);
- the full ones by ``(queue, load, last pick, position)`` (rule c);
- every scheduler with an evictable running job by its least urgent job's
  :func:`~scheduler.policy.eviction.eviction_key`, greatest first (rule b).

The answer is :func:`~scheduler.policy.placement.place`'s for the same candidates in the
same order, including every tie-break (a property test checks it).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Final

from scheduler.policy.eviction import eviction_key
from scheduler.policy.placement import Enqueue, EvictFor, FreeSlot, Placement, Slots

_SLACK: Final = 64
"""Stale entries tolerated beyond one per member before a heap is rebuilt."""

# Heap entries: (*key, position, stamp); the stamp is the member's version when pushed.
_Entry = tuple[float, ...]


class Pool:
    """The slots of the schedulers that may run a task, in order, indexed for placing."""

    def __init__(self, members: Sequence[Slots]) -> None:
        """Index ``members`` (their order breaks the last ties) and watch their changes
        until :meth:`close`."""
        self.members = list(members)
        self._by_name = {s.name: s for s in self.members}
        self._stamps = [0] * len(self.members)
        self._victim_stamps = [0] * len(self.members)
        self._free: list[_Entry] = []
        self._full: list[_Entry] = []
        self._victims: list[_Entry] = []
        # Members changed since the last placement: their booking, their victims.
        self._moved: set[int] = set()
        self._victims_moved: set[int] = set()
        for at, s in enumerate(self.members):
            s.watch(self, at)
            self._push(at)
            self._push_victim(at)

    def __len__(self) -> int:
        """How many schedulers may run the task."""
        return len(self.members)

    def __iter__(self) -> Iterator[Slots]:
        """The members, in order."""
        return iter(self.members)

    def get(self, name: str) -> Slots | None:
        """The member named ``name``, or None."""
        return self._by_name.get(name)

    def close(self) -> None:
        """Stop watching the members (the pool is no longer used)."""
        for s in self.members:
            s.unwatch(self)

    def place(self, priority: int) -> Placement | None:
        """What :func:`~scheduler.policy.placement.place` answers for a job of
        ``priority`` among the members. Changes nothing but the index."""
        if self._moved:
            self._reindex()
        free = self._top(self._free, self._stamps)
        if free is not None:
            return FreeSlot(self.members[int(free[-2])].name)
        if self._victims_moved:  # read only when no slot is free: reindexed only then
            self._reindex_victims()
        victim = self._top(self._victims, self._victim_stamps)
        if victim is not None and -victim[0] > priority:
            s = self.members[int(victim[-2])]
            least = s.least_urgent()
            assert least is not None
            return EvictFor(s.name, least[2])
        full = self._top(self._full, self._stamps)
        return None if full is None else Enqueue(self.members[int(full[-2])].name)

    def moved(self, at: int) -> None:
        """Member ``at``'s booking changed: index it afresh before the next placement."""
        self._moved.add(at)

    def victims_changed(self, at: int) -> None:
        """Member ``at``'s evictable running jobs changed: index its least urgent afresh
        before the next placement."""
        self._victims_moved.add(at)

    def _reindex(self) -> None:
        stamps = self._stamps
        for at in self._moved:
            stamps[at] += 1
            self._push(at)
        self._moved.clear()

    def _reindex_victims(self) -> None:
        stamps = self._victim_stamps
        for at in self._victims_moved:
            stamps[at] += 1
            self._push_victim(at)
        self._victims_moved.clear()

    def _push(self, at: int) -> None:
        s = self.members[at]
        size = s.size
        used = s.busy + s.pending + s.incoming
        # The same float as place() computes: equal loads compare equal.
        load = used / size
        if used < size:
            entry: _Entry = (load, s.last_pick, at, self._stamps[at])
            self._free = self._pushed(self._free, entry, self._stamps)
        else:
            entry = (used - size, load, s.last_pick, at, self._stamps[at])
            self._full = self._pushed(self._full, entry, self._stamps)

    def _push_victim(self, at: int) -> None:
        least = self.members[at].least_urgent()
        if least is not None:
            priority, order = eviction_key(*least[:2])
            entry = (-priority, -order, at, self._victim_stamps[at])
            self._victims = self._pushed(self._victims, entry, self._victim_stamps)

    def _pushed(self, heap: list[_Entry], entry: _Entry, stamps: list[int]) -> list[_Entry]:
        """``heap`` with ``entry``; rebuilt from its live entries once they are outnumbered."""
        heapq.heappush(heap, entry)
        if len(heap) <= 2 * len(self.members) + _SLACK:
            return heap
        live = [e for e in heap if stamps[int(e[-2])] == e[-1]]
        heapq.heapify(live)
        return live

    @staticmethod
    def _top(heap: list[_Entry], stamps: list[int]) -> _Entry | None:
        while heap and stamps[int(heap[0][-2])] != heap[0][-1]:
            heapq.heappop(heap)
        return heap[0] if heap else None
