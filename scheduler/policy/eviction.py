"""The eviction order, written once: which running job a full scheduler gives up first
for a more urgent one. Pure.

Only evictable running jobs are candidates. The one with the greatest
:func:`eviction_key` goes first: the least urgent (the highest priority number), and of
equals the most recently started (it has lost the least work). A scheduler's runner
(:mod:`scheduler.policy.runner`) evicts by it, and the bus's placement
(:mod:`scheduler.policy.placement`) predicts the same victim with it.
"""

from __future__ import annotations


def eviction_key(priority: int, started: int) -> tuple[int, int]:
    """The order of a running job of ``priority``, ``started``-th to start, among
    eviction victims: the greatest key is evicted first."""
    return priority, started
