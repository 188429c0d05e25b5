"""Anti-starvation aging: a job grows more urgent while it waits. Pure, no clock.

Every ``every`` seconds a job waits (since it was submitted, or since it was last queued
again) counts as one priority level more urgent, never past 0. The bus uses this
*effective* priority to order its backlog, to compare a job with running jobs when it
places it, to choose what to steal, and sends it as the assignment's priority. Running
jobs do not age: a job keeps the priority it was assigned with until it waits again.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.protocol_types import PRIORITY_MIN


@dataclass(frozen=True, slots=True)
class Aging:
    """One level more urgent per ``every`` seconds of waiting; ``every`` None: no aging."""

    every: float | None = None

    def __post_init__(self) -> None:
        """Refuse a period that is not positive."""
        if self.every is not None and not self.every > 0:
            raise ValueError(f"age_every must be > 0 s, not {self.every}")

    def effective(self, priority: int, since: float, now: float) -> int:
        """The priority at ``now`` of a job of ``priority`` waiting since ``since``
        (monotonic seconds; a ``since`` in the future means it does not wait yet)."""
        if self.every is None or now <= since:
            return priority
        return max(PRIORITY_MIN, priority - int((now - since) // self.every))
