"""The dispatch rules' numbers and every default they have: the one source of truth.

The bus's :class:`~scheduler.bus.server.BusConfig` and the ``python -m scheduler.bus``
options take their defaults from the constants here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from scheduler.policy.aging import Aging
from scheduler.policy.retry import RetryBackoff
from scheduler.policy.start_deadline import StartWatch
from scheduler.policy.stealing import STEAL_STRATEGIES

DEFAULT_LEASE_S: Final = 5.0
"""Seconds a silent or disconnected scheduler keeps its jobs."""

DEFAULT_MAX_EVICTIONS: Final = 3
"""Evictions after which a job is assigned as not evictable."""

DEFAULT_MAX_DELIVERIES: Final = 10
"""Deliveries (plus the job's own ``max_retries``) after which a job is dead."""

DEFAULT_STEAL: Final = "urgent"
"""The work-stealing strategy (one of :data:`~scheduler.policy.stealing.STEAL_STRATEGIES`)."""

DEFAULT_START_DEADLINE_S: Final = 30.0
"""How long a scheduler with room may hold assigned jobs without starting any, as the
bus sets it (a bare :class:`DispatchConfig` has no deadline)."""

DEFAULT_RESTART_GRACE_S: Final = 60.0
"""How long a bus shutting down promises its schedulers their running jobs."""

V1_SIZE: Final = 5
"""Slots assumed for a scheduler that does not say (v1 schedulers never do)."""

DEFAULT_TASKS: Final[frozenset[str]] = frozenset({"sleep"})
"""Tasks assumed for a scheduler that does not list any (every v1 scheduler)."""


@dataclass(frozen=True)
class DispatchConfig:
    """The rules' numbers: ``lease`` seconds a silent or disconnected scheduler keeps its
    jobs; evictions after which a job is no longer evictable; deliveries (plus the job's
    own ``max_retries``) after which it is dead; the retry backoff; the ``steal``
    strategy (``urgent``, ``tail`` or ``off``); ``age_every`` seconds of waiting that
    make a job one level more urgent (None: no aging); ``start_deadline`` seconds a
    scheduler with room may hold assigned attempts without starting any before it loses
    them (None: no deadline); ``misfire_grace`` seconds past its time after which a
    delayed job that gives no grace of its own expires instead of running (None: it
    runs however late)."""

    lease: float = DEFAULT_LEASE_S
    max_evictions: int = DEFAULT_MAX_EVICTIONS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    backoff: RetryBackoff = field(default_factory=RetryBackoff)
    steal: str = DEFAULT_STEAL
    age_every: float | None = None
    start_deadline: float | None = None
    misfire_grace: float | None = None

    def __post_init__(self) -> None:
        """Refuse numbers the rules cannot work with, naming the field."""
        if not self.lease > 0:
            raise ValueError(f"lease must be > 0 s, not {self.lease}")
        if self.max_evictions < 0:
            raise ValueError(f"max_evictions must be >= 0, not {self.max_evictions}")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, not {self.max_deliveries}")
        if self.steal not in STEAL_STRATEGIES:
            raise ValueError(
                f"steal must be one of {', '.join(STEAL_STRATEGIES)}, not {self.steal}"
            )
        Aging(self.age_every)
        if self.start_deadline is not None:
            StartWatch(self.start_deadline)
        if self.misfire_grace is not None and not self.misfire_grace >= 0:
            raise ValueError(f"misfire_grace must be >= 0 s, not {self.misfire_grace}")
