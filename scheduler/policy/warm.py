"""When a warm slot process is replaced by a fresh one (``--warm N``, ``--warm-max-rss``).

In warm mode each slot keeps a process that runs jobs one after another
(:mod:`scheduler.worker.warm`). After each job that ends by itself the slot process says
how much memory it holds; :func:`recycle` decides whether it serves the next job or is
retired, as Celery's ``max-tasks-per-child`` and ``max-memory-per-child`` do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WarmLimits:
    """A slot process is replaced after ``max_jobs`` jobs, or once its resident memory
    after a job is past ``max_rss`` bytes (None: never for its memory).

    Raises ``ValueError`` naming the field for a ``max_jobs`` below 1 or a ``max_rss``
    below 1.
    """

    max_jobs: int
    max_rss: int | None = None

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ValueError(f"warm max_jobs must be >= 1, not {self.max_jobs}")
        if self.max_rss is not None and self.max_rss < 1:
            raise ValueError(f"warm max_rss must be >= 1 byte, not {self.max_rss}")


def recycle(limits: WarmLimits, jobs_run: int, rss_bytes: int) -> bool:
    """Whether a slot process that has run ``jobs_run`` jobs and holds ``rss_bytes`` of
    resident memory after its last one must be retired (changes nothing)."""
    if jobs_run >= limits.max_jobs:
        return True
    return limits.max_rss is not None and rss_bytes > limits.max_rss
