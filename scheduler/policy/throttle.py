"""How often a running job's progress may be reported: at most once per interval per
job, the latest value winning, and the last one never lost. Pure; time is an argument.

A value offered within ``interval`` of the key's last sent one is held (replacing any
value held before it); :meth:`ReportThrottle.take_due` hands held values over once their
time comes, and :meth:`ReportThrottle.flush` hands over the held value of a key that ends
(so the last value reaches the bus before the job's final event).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReportThrottle(Generic[K, V]):
    """At most one value per key every ``interval`` seconds; the latest held one wins."""

    def __init__(self, interval: float) -> None:
        """A throttle that has sent nothing; ``ValueError`` if ``interval`` < 0."""
        if interval < 0:
            raise ValueError(f"interval must be >= 0, not {interval}")
        self.interval = interval
        self._sent_at: dict[K, float] = {}
        self._held: dict[K, V] = {}

    def offer(self, key: K, value: V, now: float) -> V | None:
        """``value`` for ``key`` at ``now``: returned if it may be sent now (then counted
        as sent), else held in place of any value held before for ``key`` (returns None)."""
        last = self._sent_at.get(key)
        if last is None or now - last >= self.interval:
            self._sent_at[key] = now
            self._held.pop(key, None)
            return value
        self._held[key] = value
        return None

    def next_due(self) -> float | None:
        """When the earliest held value may be sent, or None if nothing is held."""
        return min((self._sent_at[k] + self.interval for k in self._held), default=None)

    def take_due(self, now: float) -> list[tuple[K, V]]:
        """Remove and return every held value whose time has come by ``now`` (counted as
        sent at ``now``), oldest key first."""
        due = [k for k in self._held if now - self._sent_at[k] >= self.interval]
        for key in due:
            self._sent_at[key] = now
        return [(key, self._held.pop(key)) for key in due]

    def flush(self, key: K) -> V | None:
        """Forget ``key`` (its job ended) and return the value it held, if any."""
        self._sent_at.pop(key, None)
        return self._held.pop(key, None)
