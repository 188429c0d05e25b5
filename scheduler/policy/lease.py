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
        # (deadline, name) entries; one whose deadline is no longer the name's is stale.
        self._heap: list[tuple[float, str]] = []

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` holds a lease."""
        return name in self._deadlines

    def renew(self, name: str, now: float) -> None:
        """Grant or extend the lease of ``name`` until ``now + duration``."""
        deadline = now + self.duration
        if self._deadlines.get(name) != deadline:
            self._deadlines[name] = deadline
            heapq.heappush(self._heap, (deadline, name))

    def extend(self, name: str, deadline: float) -> None:
        """Make the lease of ``name`` last until ``deadline`` if that is later than it
        does now (a holder promised its jobs for longer than one lease)."""
        if deadline > self._deadlines.get(name, -float("inf")):
            self._deadlines[name] = deadline
            heapq.heappush(self._heap, (deadline, name))

    def deadline(self, name: str) -> float | None:
        """When the lease of ``name`` expires, or None if it holds none."""
        return self._deadlines.get(name)

    def drop(self, name: str) -> None:
        """Forget the lease of ``name`` (it ended for another reason); unknown names are fine."""
        self._deadlines.pop(name, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any lease, or None if there is none."""
        self._discard_stale()
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[str]:
        """Remove and return, earliest first, every lease whose deadline is ``<= now``."""
        names: list[str] = []
        self._discard_stale()
        while self._heap and self._heap[0][0] <= now:
            _, name = heapq.heappop(self._heap)
            del self._deadlines[name]
            names.append(name)
            self._discard_stale()
        return names

    def _discard_stale(self) -> None:
        while self._heap and self._deadlines.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
