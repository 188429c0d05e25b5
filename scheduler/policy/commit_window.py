"""The commit window: how long a group commit that only job events wait for may wait for
more changes to join it. Pure.

A group commit costs the bus about the same CPU however few changes it carries (a
transaction, an fsync, a hand-off to the journal's thread and back). Under load, when
the reports of running attempts come a millisecond apart, commits of a few changes each
cost the bus more than the changes do. So a commit whose only waiting frames are job
events (what a report of a started or ended attempt makes) starts no sooner than
``window_s`` after the previous commit started, and the reports that come meanwhile
join it. Their events reach watchers up to ``window_s`` later; nothing is heard before
it is on disk, as always.

Nothing else waits. A commit starts at once when an acknowledgment, an assignment, a
release, a stop or a reply waits for it, after a quiet spell (the previous commit started
``window_s`` ago or more), and while schedulers hold at most one attempt (a job run one
at a time is never slowed down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_COMMIT_WINDOW_S = 0.02
"""The bus's default ``window_s``."""

MAX_COMMIT_WINDOW_S = 1.0
"""The longest window: events later than this would look lost."""


def check_window(window_s: float) -> None:
    """Raise ValueError, naming the field, unless ``window_s`` is a usable window."""
    if not (math.isfinite(window_s) and 0 <= window_s <= MAX_COMMIT_WINDOW_S):
        raise ValueError(
            f"commit_window must be from 0 to {MAX_COMMIT_WINDOW_S:g} s, not {window_s}"
        )


@dataclass(slots=True)
class CommitWindow:
    """When the next group commit may start, given when the previous one did."""

    window_s: float
    _last_start: float = -math.inf

    def __post_init__(self) -> None:
        check_window(self.window_s)

    def started(self, now: float) -> None:
        """A commit started at ``now`` (monotonic seconds)."""
        self._last_start = now

    def wait(self, now: float, *, urgent: bool, held: int) -> float:
        """Seconds from ``now`` the next commit waits (0: it starts now). ``urgent``: a
        frame other than a job event waits for it; ``held``: how many attempts the
        schedulers hold (assigned or running)."""
        if urgent or held < 2:
            return 0.0
        return max(0.0, self._last_start + self.window_s - now)
