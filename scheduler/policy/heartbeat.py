"""When a scheduler sends its heartbeats. Pure: the caller passes ``now``.

A scheduler beats every ``configured_s`` seconds, but at least three times per lease
the bus announced, so one late beat does not cost its jobs. The first beat of a
connection goes out at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def heartbeat_interval(configured_s: float, lease_s: float | None) -> float:
    """Seconds between heartbeats: ``configured_s``, shortened to a third of the lease."""
    return configured_s if lease_s is None else min(configured_s, lease_s / 3)


@dataclass(slots=True)
class HeartbeatSchedule:
    """The heartbeats of one connection: every :attr:`interval_s` from the first.

    ``configured_s``: the scheduler's own interval; ``lease_s``: the lease the bus
    announced (None: none).
    """

    configured_s: float
    lease_s: float | None = None
    interval_s: float = field(init=False)
    """Seconds between two heartbeats (see :func:`heartbeat_interval`)."""
    last_sent: float | None = None
    """When the latest heartbeat was sent (None: none yet)."""

    def __post_init__(self) -> None:
        """Derive :attr:`interval_s`."""
        self.interval_s = heartbeat_interval(self.configured_s, self.lease_s)

    def due_in(self, now: float) -> float:
        """Seconds from ``now`` until the next heartbeat is due (0: now). Changes nothing."""
        if self.last_sent is None:
            return 0.0
        return max(0.0, self.last_sent + self.interval_s - now)

    def sent(self, now: float) -> None:
        """A heartbeat went out at ``now``: the next is due an interval later."""
        self.last_sent = now
