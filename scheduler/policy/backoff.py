"""Reconnect delays for clients of the bus. Pure (the caller sleeps).

:class:`Backoff` hands out the delay before each new connection attempt: it doubles
from ``base`` with every failed try up to ``cap``, and each delay is drawn uniformly
from the upper half of that ceiling ([d/2, d], "equal jitter"), so that clients cut off
together do not all come back at the same instant, yet none retries at once. Used by
:class:`scheduler.connect.Connector` between tries to reach or register with the bus,
and reset only once a registration succeeds. Retry delays of failed *jobs* are another
matter: :mod:`scheduler.policy.retry`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from ``base`` up to ``cap``, each drawn uniformly in [0.5d, d]."""

    base: float = 0.1
    cap: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """Return the delay before the next try and count the try."""
        ceiling = min(self.cap, self.base * (2**self._attempt))
        self._attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Forget past failures: call once the bus has accepted us (``registered``), not
        when a socket opens, or a bus that closes on a bad token is retried at once."""
        self._attempt = 0
