"""The bus's counters and their frozen snapshots. Pure, no clock.

:class:`BusCounters` counts job events as the core emits them (``accepted`` counts as
submitted, ``retrying`` as retried), steals and steal attempts, and the wait before
each start per base priority (:class:`~scheduler.policy.waits.WaitTimes`).
:class:`SchedulerCounters` counts what one scheduler reported and what it stole or had
stolen. Snapshots are the protocol's frozen :class:`~scheduler.protocol_stats.BusStats` and
:class:`~scheduler.protocol_stats.SchedulerStats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from scheduler.policy.waits import WaitTimes
from scheduler.protocol_stats import BusStats, SchedulerStats

BUS_COUNTERS: Final = (
    "submitted", "started", "succeeded", "failed", "timed_out", "evicted", "requeued",
    "retried", "cancelled", "dead", "stolen", "steal_attempts", "not_started",
    "expired",
)  # fmt: skip
"""What :class:`BusCounters` counts, as :class:`~scheduler.protocol_stats.BusStats` names it."""

_COUNTER_OF_EVENT: Final[Mapping[str, str]] = {
    "accepted": "submitted",
    "retrying": "retried",
    **{kind: kind for kind in ("started", "succeeded", "failed", "timed_out", "evicted")},
    **{kind: kind for kind in ("requeued", "cancelled", "dead", "expired")},
}

SCHEDULER_COUNTERS: Final = (
    "started", "succeeded", "failed", "timed_out", "evicted", "stole", "stolen_from",
)  # fmt: skip
"""What :class:`SchedulerCounters` counts, as :class:`~scheduler.protocol_stats.SchedulerStats`
names it."""

_REPORTED: Final = frozenset(SCHEDULER_COUNTERS[:5])


class BusCounters:
    """The bus's counts since it started and the waits before start per priority."""

    def __init__(self, window: int = 10_000) -> None:
        """Every count at 0; ``window`` waits kept per priority."""
        self.counts: dict[str, int] = dict.fromkeys(BUS_COUNTERS, 0)
        self.waits = WaitTimes(window)

    def event(self, kind: str) -> None:
        """Count one job event of ``kind`` (kinds that are not counted change nothing)."""
        name = _COUNTER_OF_EVENT.get(kind)
        if name is not None:
            self.counts[name] += 1

    def add(self, name: str) -> None:
        """Add one to counter ``name`` (one of :data:`BUS_COUNTERS`)."""
        self.counts[name] += 1

    def waited(self, priority: int, seconds: float) -> None:
        """Record that a job of base ``priority`` started after waiting ``seconds``."""
        self.waits.record(priority, max(0.0, seconds))

    def snapshot(
        self, uptime_s: float, queued: int, running: int, unserved: Mapping[str, int]
    ) -> BusStats:
        """A frozen snapshot with the current ``queued``/``running`` jobs and the waiting
        jobs of tasks nobody serves (``unserved``, by task)."""
        return BusStats(
            uptime_s=uptime_s,
            queued=queued,
            running=running,
            unserved=dict(sorted(unserved.items())),
            wait_s=self.waits.summary(),
            **self.counts,
        )


class SchedulerCounters:
    """What one scheduler reported (started, succeeded, failed, timed out, evicted) and
    how many jobs it stole and had stolen."""

    def __init__(self) -> None:
        """Every count at 0."""
        self.counts: dict[str, int] = dict.fromkeys(SCHEDULER_COUNTERS, 0)

    def reported(self, event: str) -> None:
        """Count a report of ``event`` (``cancelled``, ``revoked``: not counted)."""
        if event in _REPORTED:
            self.counts[event] += 1

    def add(self, name: str) -> None:
        """Add one to counter ``name`` (``stole`` or ``stolen_from``, say)."""
        self.counts[name] += 1

    def snapshot(
        self,
        name: str,
        *,
        protocol: int,
        size: int,
        busy: int,
        queued: int,
        tasks: Sequence[str],
        running_priorities: Sequence[int],
        heartbeat_age_s: float | None,
    ) -> SchedulerStats:
        """A frozen snapshot of scheduler ``name`` with these figures and the counts."""
        return SchedulerStats(
            name=name,
            protocol=protocol,
            size=size,
            busy=busy,
            queued=queued,
            tasks=sorted(tasks),
            running_priorities=sorted(running_priorities),
            heartbeat_age_s=heartbeat_age_s,
            **self.counts,
        )
