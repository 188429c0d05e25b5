"""The scheduler side's view of its own lease at the bus, and its self-fencing rule. Pure.

The bus renews a scheduler's lease whenever it receives a sign of life from it, and
requeues its jobs once the lease expires. The scheduler cannot see the bus's clock, so it
keeps a conservative view on its own monotonic clock: the lease was surely renewed no
earlier than the moment it *sent* a frame the bus has since answered (a registration, or
a heartbeat followed by a ping the bus ponged). From that anchor on, the lease lasts
``lease_s``; a bus that shut down for a planned restart may promise more (``keep_until``).

One point in time follows, fed ``now``: the *fence*, a stop margin (the time stopping
takes) before the lease may end. Nothing may run past it without a newer answer:

* :meth:`LeaseView.may_start`: a queued job starts only before the fence: a scheduler
  that was frozen (SIGSTOP) or cut off must not start the stale assignments in its queue.
* :meth:`LeaseView.fence_due`: at the fence, a scheduler that holds jobs stops them all,
  whether its connection is believed up (a cut that resets nothing: a pulled cable, a
  firewall that drops, a frozen bus), being opened, or lost and waiting to reconnect.
  :meth:`LeaseView.recheck_in` says when to look again.

The stop margin is cut to leave at least two heartbeats between the anchor and the fence
(a bus whose lease is shorter than the margin would otherwise have every job stopped at
once): one pong may come a heartbeat late without costing the jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.policy.heartbeat import heartbeat_interval


@dataclass(slots=True)
class LeaseView:
    """What a scheduler knows of its lease: its length, its anchor, any promise.

    ``stop_margin``: running jobs are fenced this long before the lease may end (cut to
    leave two heartbeats after the anchor). ``heartbeat_s``: the scheduler's configured
    heartbeat interval (shortened to a third of the lease, as the heartbeats are).
    """

    stop_margin: float = 0.0
    heartbeat_s: float = 1.0
    lease_s: float | None = None
    """The lease the bus announced; None: it announced none (nothing is ever fenced)."""
    anchor: float | None = None
    """The latest send time of a frame the bus has answered (monotonic)."""
    keep_until: float | None = None
    """The bus promised to keep our jobs until this time (monotonic), for a restart."""

    def granted(self, lease_s: float | None, sent_at: float) -> None:
        """The bus confirmed a registration sent at ``sent_at``, with lease ``lease_s``.
        Sets the lease and the anchor; ends any promise (the bus is back)."""
        self.lease_s = lease_s
        self.keep_until = None
        self.anchor = sent_at if self.anchor is None else max(self.anchor, sent_at)

    def confirmed(self, sent_at: float) -> None:
        """The bus answered a frame sent after a heartbeat at ``sent_at``: the lease runs
        from there at least. An older confirmation changes nothing."""
        if self.anchor is not None:
            self.anchor = max(self.anchor, sent_at)

    def promised(self, keep_until: float) -> None:
        """The bus, shutting down, promised to keep our jobs until ``keep_until``."""
        self.keep_until = keep_until

    def expires_at(self) -> float | None:
        """When the lease may end at the bus (the later of the lease and any promise), or
        None if there is no lease to lose."""
        if self.lease_s is None or self.anchor is None:
            return None
        end = self.anchor + self.lease_s
        return end if self.keep_until is None else max(end, self.keep_until)

    def margin(self) -> float:
        """How long before the lease may end the fence falls: the stop margin, cut to
        leave two heartbeats after the anchor (0 with no lease)."""
        if self.lease_s is None:
            return 0.0
        beats = 2 * heartbeat_interval(self.heartbeat_s, self.lease_s)
        return min(self.stop_margin, self.lease_s - beats)

    def fence_in(self, now: float) -> float | None:
        """Seconds from ``now`` until the fence (negative: past it), or None with no
        lease. Changes nothing."""
        end = self.expires_at()
        return None if end is None else end - self.margin() - now

    def may_start(self, now: float) -> bool:
        """Whether a queued job may start at ``now``: the fence is still ahead (always,
        with no lease). Changes nothing."""
        fence = self.fence_in(now)
        return fence is None or fence > 0

    def fence_due(self, now: float, holding: bool) -> bool:
        """Whether a scheduler ``holding`` jobs must stop them all at ``now``: the fence
        has come. Changes nothing."""
        fence = self.fence_in(now)
        return holding and fence is not None and fence <= 0

    def recheck_in(self, now: float) -> float | None:
        """Seconds from ``now`` until :meth:`fence_due` must be asked again: until the
        fence, or, past it, a heartbeat interval (jobs may be assigned meanwhile); None
        with no lease (until one is granted). Changes nothing."""
        fence = self.fence_in(now)
        if fence is None or fence > 0:
            return fence
        return heartbeat_interval(self.heartbeat_s, self.lease_s)
