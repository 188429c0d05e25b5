"""The scheduler side's view of its own lease at the bus, and its self-fencing rule. Pure.

The bus renews a scheduler's lease whenever it receives a sign of life from it, and
requeues its jobs once the lease expires. The scheduler cannot see the bus's clock, so it
keeps a conservative view on its own monotonic clock: the lease was surely renewed no
earlier than the moment it *sent* a frame the bus has since answered (a registration, or
a heartbeat followed by a ping the bus ponged). From that anchor on, the lease lasts
``lease_s``; a bus that shut down for a planned restart may promise more (``keep_until``).

Two rules follow, both fed ``now``:

* :meth:`LeaseView.may_start`: a queued job may start only while the lease surely holds
  for a while yet (``start_margin``): a scheduler that was frozen (SIGSTOP) or cut off
  past its lease must not start the stale assignments waiting in its queue.
* :meth:`LeaseView.fence_in`: how long until running jobs must be stopped because the
  bus may have given them to others (less ``stop_margin``, the time stopping takes);
  :meth:`LeaseView.fence_within` applies it to a scheduler that holds jobs and waits to
  reconnect: it stops them once cut off that long, even in the middle of a backoff delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LeaseView:
    """What a scheduler knows of its lease: its length, its anchor, any promise.

    ``start_margin``: a job may start only if the lease holds at least this much longer.
    ``stop_margin``: running jobs are fenced this long before the lease may end.
    """

    start_margin: float = 0.0
    stop_margin: float = 0.0
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

    def may_start(self, now: float) -> bool:
        """Whether a queued job may start at ``now``: the lease holds ``start_margin``
        longer (always, with no lease). Changes nothing."""
        end = self.expires_at()
        return end is None or now < end - self.start_margin

    def fence_in(self, now: float) -> float | None:
        """Seconds from ``now`` until running jobs must be stopped (negative: overdue), or
        None with no lease. Changes nothing."""
        end = self.expires_at()
        if end is None:
            return None
        assert self.lease_s is not None
        return end - min(self.stop_margin, self.lease_s) - now

    def fence_within(self, now: float, seconds: float, holding: bool) -> float | None:
        """If a scheduler ``holding`` jobs must stop them within ``seconds`` of ``now``,
        how long until then (0: at once); else None. A wait (a reconnect's backoff) is
        cut there to fence. Changes nothing."""
        fence = self.fence_in(now) if holding else None
        if fence is None or fence >= seconds:
            return None
        return max(0.0, fence)
