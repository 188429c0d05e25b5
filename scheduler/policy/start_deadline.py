"""The start deadline: a scheduler that is given jobs and starts none loses them. Pure.

A scheduler may claim many slots and start nothing (hung, or lying about its size): its
jobs would wait there forever. :class:`StartWatch` keeps, per scheduler, when each of
its attempts still unstarted was assigned and when it last made progress (a ``started``
report, or any report that ends an attempt). Once ``deadline_s`` has passed since the
later of its oldest unstarted assignment and its last progress, the scheduler is
*overdue*: the dispatch core takes those attempts back and gives it no new work until
it starts something or registers again.

Times come from the core's clock, which never goes back (each scheduler's attempts are
kept in the order they were assigned). The bus asks for the next deadline after every
message it applies, so each scheduler's
deadline is kept up to date as it changes and the deadlines sit in a heap: asking costs
the same with 1 or 1,000 schedulers.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

_SLACK = 64
"""Stale heap entries tolerated beyond one per watched scheduler before a rebuild."""


@dataclass(slots=True)
class _Watched:
    """One scheduler's unstarted attempts, oldest first, its last progress, and the
    deadline those give (None while nothing is unstarted)."""

    seq: int
    order: deque[tuple[float, str]] = field(default_factory=deque)
    assigned: dict[str, float] = field(default_factory=dict)
    progress: float = float("-inf")
    due: float | None = None

    def oldest(self) -> float | None:
        """When the oldest attempt still unstarted was assigned (drops stale entries)."""
        order, assigned = self.order, self.assigned
        while order:
            at, job_id = order[0]
            if assigned.get(job_id) == at:
                return at
            order.popleft()
        return None


class StartWatch:
    """Per scheduler, the deadline by which it must start something it was given."""

    def __init__(self, deadline_s: float) -> None:
        """Watch with a deadline of ``deadline_s`` seconds; ValueError unless positive."""
        if not deadline_s > 0:
            raise ValueError(f"start_deadline must be > 0 s, not {deadline_s}")
        self.deadline_s = deadline_s
        self._watched: dict[str, _Watched] = {}
        self._seq = 0
        # (due, seq, name) entries; one that is no longer its scheduler's due is stale.
        self._heap: list[tuple[float, int, str]] = []

    def assigned(self, scheduler: str, job_id: str, now: float) -> None:
        """``job_id`` was assigned to ``scheduler`` at ``now`` and has not started."""
        watched = self._watch(scheduler)
        watched.assigned[job_id] = now
        watched.order.append((now, job_id))
        self._update(scheduler, watched)

    def settled(self, scheduler: str, job_id: str) -> None:
        """``job_id`` started at ``scheduler``, or left it unstarted: no longer watched."""
        watched = self._watched.get(scheduler)
        if watched is not None and watched.assigned.pop(job_id, None) is not None:
            self._update(scheduler, watched)

    def progressed(self, scheduler: str, now: float) -> None:
        """``scheduler`` made progress at ``now`` (started or ended an attempt)."""
        watched = self._watch(scheduler)
        watched.progress = now
        self._update(scheduler, watched)

    def forget(self, scheduler: str) -> None:
        """Stop watching ``scheduler`` (it is gone); unknown names are fine."""
        self._watched.pop(scheduler, None)

    def due(self, scheduler: str) -> float | None:
        """When ``scheduler`` becomes overdue, or None while it has nothing unstarted."""
        watched = self._watched.get(scheduler)
        return None if watched is None else watched.due

    def next_deadline(self) -> float | None:
        """The earliest time any watched scheduler becomes overdue, or None."""
        heap, watched = self._heap, self._watched
        while heap:
            due, seq, name = heap[0]
            w = watched.get(name)
            if w is not None and w.seq == seq and w.due == due:
                return due
            heapq.heappop(heap)
        return None

    def overdue(self, now: float) -> list[str]:
        """The schedulers overdue at ``now``, in the order they were first watched.
        Changes nothing: the caller settles their attempts."""
        found: dict[int, str] = {}
        heap = self._heap
        # Walk the heap's tree below ``now`` only: a node's children are never earlier.
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            due, seq, name = heap[i]
            if due > now:
                continue
            if self._stands(due, seq, name):
                found[seq] = name
            stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
        return [found[seq] for seq in sorted(found)]

    def _watch(self, scheduler: str) -> _Watched:
        watched = self._watched.get(scheduler)
        if watched is None:
            watched = self._watched[scheduler] = _Watched(self._seq)
            self._seq += 1
        return watched

    def _update(self, scheduler: str, watched: _Watched) -> None:
        """Recompute ``scheduler``'s deadline and push it if it changed."""
        oldest = watched.oldest()
        if oldest is None:
            due = None
        else:
            progress = watched.progress
            due = (oldest if oldest >= progress else progress) + self.deadline_s
        if due == watched.due:
            return
        watched.due = due
        if due is None:
            return
        heapq.heappush(self._heap, (due, watched.seq, scheduler))
        if len(self._heap) > 2 * len(self._watched) + _SLACK:
            self._heap = [e for e in self._heap if self._stands(*e)]
            heapq.heapify(self._heap)

    def _stands(self, due: float, seq: int, name: str) -> bool:
        watched = self._watched.get(name)
        return watched is not None and watched.seq == seq and watched.due == due
