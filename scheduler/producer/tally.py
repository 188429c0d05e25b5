"""How the jobs a producer command follows stand: how many ended well or badly, how many run,
how many still wait, and the exit status that follows. Pure: fed job states, no I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from scheduler.protocol_types import FINAL_EVENTS

EXIT_ALL_SUCCEEDED: Final = 0
"""``producer --wait``: every job it submitted succeeded."""
EXIT_NOT_ALL_SUCCEEDED: Final = 3
"""``producer --wait``: some job ended in a final state other than ``succeeded`` (failed,
dead, timed_out, cancelled, expired, skipped) or the bus refused it in a batch. Apart from 1
(an error: the bus unreachable, a submit refused) and 2 (bad usage), so a script can tell
"my jobs failed" from "I could not submit them"."""


@dataclass
class Tally:
    """The current state of every job followed, counted incrementally.

    ``planned`` is how many jobs the command means to submit (grown by broadcast runs as
    they are announced); ``refused`` counts those the bus refused in a batch submit.
    """

    planned: int = 0
    refused: int = 0
    states: dict[str, str] = field(default_factory=dict)
    """The latest state of each job seen so far."""
    counts: Counter[str] = field(default_factory=Counter)
    """How many jobs are in each state now."""

    def expect(self, job_id: str) -> None:
        """Count ``job_id`` as submitted, unless an event about it came first."""
        if job_id not in self.states:
            self.set_state(job_id, "submitted")

    def set_state(self, job_id: str, state: str) -> None:
        """Record that ``job_id`` is now in ``state``; a final state never changes back."""
        old = self.states.get(job_id)
        if old == state or old in FINAL_EVENTS:
            return
        if old is not None:
            self.counts[old] -= 1
        self.states[job_id] = state
        self.counts[state] += 1

    @property
    def total(self) -> int:
        """How many jobs the run ends with: the planned ones less the refused, or every
        job submitted or seen if there are more (a broadcast's runs)."""
        return max(self.planned - self.refused, len(self.states))

    @property
    def succeeded(self) -> int:
        """Jobs that ended ``succeeded``."""
        return self.counts["succeeded"]

    @property
    def final(self) -> int:
        """Jobs in any final state."""
        return sum(self.counts[state] for state in FINAL_EVENTS)

    @property
    def unsuccessful(self) -> int:
        """Jobs in a final state other than ``succeeded``."""
        return self.final - self.succeeded

    @property
    def running(self) -> int:
        """Jobs whose process runs now."""
        return self.counts["running"]

    @property
    def waiting(self) -> int:
        """Jobs not final and not running: not yet submitted, queued, scheduled, blocked,
        assigned, or retrying after a failure."""
        return max(0, self.total - self.final - self.running)

    def exit_code(self) -> int:
        """:data:`EXIT_ALL_SUCCEEDED` if every job followed succeeded and none was refused,
        else :data:`EXIT_NOT_ALL_SUCCEEDED`."""
        if self.refused or self.unsuccessful:
            return EXIT_NOT_ALL_SUCCEEDED
        return EXIT_ALL_SUCCEEDED
