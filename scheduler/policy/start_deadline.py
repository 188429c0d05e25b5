"""The start deadline: a scheduler that is given jobs and starts none loses them. Pure.

A scheduler may claim many slots and start nothing (hung, or lying about its size): its
jobs would wait there forever. :class:`StartWatch` keeps, per scheduler, when each of
its attempts still unstarted was assigned and when it last made progress (a ``started``
report, or any report that ends an attempt). Once ``deadline_s`` has passed since the
later of its oldest unstarted assignment and its last progress, the scheduler is
*overdue*: the dispatch core takes those attempts back and gives it no new work until
it starts something or registers again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Watched:
    """One scheduler's unstarted attempts, oldest first, and its last progress."""

    order: deque[tuple[float, str]] = field(default_factory=deque)
    assigned: dict[str, float] = field(default_factory=dict)
    progress: float = float("-inf")

    def oldest(self) -> float | None:
        """When the oldest attempt still unstarted was assigned (drops stale entries)."""
        while self.order and self.assigned.get(self.order[0][1]) != self.order[0][0]:
            self.order.popleft()
        return self.order[0][0] if self.order else None


class StartWatch:
    """Per scheduler, the deadline by which it must start something it was given."""

    def __init__(self, deadline_s: float) -> None:
        """Watch with a deadline of ``deadline_s`` seconds; ValueError unless positive."""
        if not deadline_s > 0:
            raise ValueError(f"start_deadline must be > 0 s, not {deadline_s}")
        self.deadline_s = deadline_s
        self._watched: dict[str, _Watched] = {}

    def assigned(self, scheduler: str, job_id: str, now: float) -> None:
        """``job_id`` was assigned to ``scheduler`` at ``now`` and has not started."""
        watched = self._watched.setdefault(scheduler, _Watched())
        watched.assigned[job_id] = now
        watched.order.append((now, job_id))

    def settled(self, scheduler: str, job_id: str) -> None:
        """``job_id`` started at ``scheduler``, or left it unstarted: no longer watched."""
        watched = self._watched.get(scheduler)
        if watched is not None:
            watched.assigned.pop(job_id, None)

    def progressed(self, scheduler: str, now: float) -> None:
        """``scheduler`` made progress at ``now`` (started or ended an attempt)."""
        watched = self._watched.setdefault(scheduler, _Watched())
        watched.progress = now

    def forget(self, scheduler: str) -> None:
        """Stop watching ``scheduler`` (it is gone); unknown names are fine."""
        self._watched.pop(scheduler, None)

    def due(self, scheduler: str) -> float | None:
        """When ``scheduler`` becomes overdue, or None while it has nothing unstarted."""
        watched = self._watched.get(scheduler)
        oldest = None if watched is None else watched.oldest()
        if oldest is None:
            return None
        assert watched is not None
        return max(oldest, watched.progress) + self.deadline_s

    def next_deadline(self) -> float | None:
        """The earliest time any watched scheduler becomes overdue, or None."""
        dues = [due for name in self._watched if (due := self.due(name)) is not None]
        return min(dues, default=None)

    def overdue(self, now: float) -> list[str]:
        """The schedulers overdue at ``now``, in the order they were first watched.
        Changes nothing: the caller settles their attempts."""
        return [
            name for name in self._watched if (due := self.due(name)) is not None and due <= now
        ]
