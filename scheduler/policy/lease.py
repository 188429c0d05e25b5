"""Leases: how long each scheduler keeps its jobs without a sign of life. Pure, no clock.

A lease is renewed to ``now + duration`` by every sign of life (a heartbeat, a report,
a registration) and expires at that time. The bus's core asks which leases have
expired at ``now`` and when the next one will.
"""

from __future__ import annotations

import heapq


class Leases:
    """Renewable per-name deadlines in monotonic seconds."""

    def __init__(self, duration: float) -> None:
        """Leases of ``duration`` seconds; raise ValueError unless it is positive."""
        if not duration > 0:
            raise ValueError(f"a lease must last more than 0 s, not {duration}")
        self.duration = duration
        self._deadlines: dict[str, float] = {}
        # (deadline, name) entries, at least one per lease no later than its deadline: a
        # renewal that moves a deadline later (every report does) pushes nothing; the
        # entry is moved to the deadline when it comes to the top. An entry whose name
        # holds no lease is stale and dropped there.
        self._heap: list[tuple[float, str]] = []

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` holds a lease."""
        return name in self._deadlines

    def renew(self, name: str, now: float) -> None:
        """Grant or extend the lease of ``name`` until ``now + duration``."""
        self._set(name, now + self.duration)

    def extend(self, name: str, deadline: float) -> None:
        """Make the lease of ``name`` last until ``deadline`` if that is later than it
        does now (a holder promised its jobs for longer than one lease)."""
        if deadline > self._deadlines.get(name, -float("inf")):
            self._set(name, deadline)

    def _set(self, name: str, deadline: float) -> None:
        old = self._deadlines.get(name)
        self._deadlines[name] = deadline
        if old is None or deadline < old:
            heapq.heappush(self._heap, (deadline, name))

    def deadline(self, name: str) -> float | None:
        """When the lease of ``name`` expires, or None if it holds none."""
        return self._deadlines.get(name)

    def drop(self, name: str) -> None:
        """Forget the lease of ``name`` (it ended for another reason); unknown names are fine."""
        self._deadlines.pop(name, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any lease, or None if there is none."""
        self._settle_top()
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[str]:
        """Remove and return, earliest first, every lease whose deadline is ``<= now``."""
        names: list[str] = []
        self._settle_top()
        while self._heap and self._heap[0][0] <= now:
            _, name = heapq.heappop(self._heap)
            del self._deadlines[name]
            names.append(name)
            self._settle_top()
        return names

    def _settle_top(self) -> None:
        """Make the top entry name a lease's deadline: drop stale entries, move one
        earlier than its lease's deadline to that deadline."""
        heap, deadlines = self._heap, self._deadlines
        while heap:
            at, name = heap[0]
            deadline = deadlines.get(name)
            if deadline == at:
                return
            if deadline is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (deadline, name))
