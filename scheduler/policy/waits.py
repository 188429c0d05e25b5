"""Wait-time percentiles per priority with bounded memory. Pure."""

from __future__ import annotations

from collections import deque

from scheduler.protocol_stats import Percentiles


class WaitTimes:
    """Keeps the latest ``window`` waits of each priority and summarises them."""

    def __init__(self, window: int = 10_000) -> None:
        self._window = window
        self._samples: dict[int, deque[float]] = {}

    def record(self, priority: int, seconds: float) -> None:
        """Add one wait of ``seconds`` for a job of ``priority``; forget the oldest past
        the window."""
        samples = self._samples.get(priority)
        if samples is None:
            samples = self._samples[priority] = deque(maxlen=self._window)
        samples.append(seconds)

    def summary(self) -> dict[str, Percentiles]:
        """Percentiles of the kept waits, keyed by priority (as a string, for JSON)."""
        return {
            str(priority): percentiles(samples)
            for priority, samples in sorted(self._samples.items())
        }


def percentiles(samples: deque[float] | list[float]) -> Percentiles:
    """p50/p90/p99/max of ``samples`` (nearest rank); all zero when there are none."""
    if not samples:
        return Percentiles(count=0, p50=0.0, p90=0.0, p99=0.0, max=0.0)
    ordered = sorted(samples)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]

    return Percentiles(
        count=len(ordered), p50=rank(0.5), p90=rank(0.9), p99=rank(0.99), max=ordered[-1]
    )
