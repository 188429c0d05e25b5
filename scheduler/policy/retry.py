"""Retry backoff: how long a failed job waits before its next attempt. Pure.

The n-th retry waits ``backoff * 2**(n-1)`` seconds, capped at ``max_delay``, times a
jitter drawn uniformly from ``[jitter_low, jitter_high]`` so that jobs which failed
together do not all come back at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scheduler.protocol_types import MAX_BACKOFF_S


@dataclass(frozen=True)
class RetryBackoff:
    """Exponential backoff with multiplicative jitter."""

    jitter_low: float = 0.5
    jitter_high: float = 1.5
    max_delay: float = MAX_BACKOFF_S
    """Cap on the delay before jitter (a job may ask for 100 retries)."""

    def __post_init__(self) -> None:
        """Refuse a jitter range that is empty or negative."""
        if not 0 <= self.jitter_low <= self.jitter_high:
            raise ValueError(f"need 0 <= jitter_low <= jitter_high, not {self}")

    def delay(self, backoff: float, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), drawing from ``rng``."""
        if retry < 1:
            raise ValueError(f"retries count from 1, not {retry}")
        base = min(backoff * 2.0 ** (retry - 1), self.max_delay)
        return base * rng.uniform(self.jitter_low, self.jitter_high)
