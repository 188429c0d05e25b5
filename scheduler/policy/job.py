"""The bus's record of one job: what the dispatch core works on and the journal stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.protocol import JobPayload
from scheduler.protocol_types import DEFAULT_PRIORITY, FINAL_EVENTS, JobState


@dataclass(slots=True)
class Job:
    """Everything the bus knows about one job.

    Times are wall-clock epoch seconds (they outlive a bus restart). ``seq`` is the
    arrival order, kept across restarts, so ties in priority run in arrival order.
    ``attempt`` is the number of the latest assignment (0: never assigned);
    ``deliveries`` counts assignments, ``retries`` the retries used, ``errors`` the
    error of every failed attempt (a tuple: the one empty tuple until an attempt fails, so
    a million queued jobs hold no list each). ``not_before`` holds a retry back until then.
    ``result`` is what the task returned (once ``succeeded``); ``traceback`` is the
    traceback of the latest failed attempt if an exception failed it. ``owner`` names
    the token that submitted it (None: submitted to a bus without tokens, or before
    owners were recorded); a producer may cancel and watch only the jobs it owns.
    ``progress`` and ``message`` are the latest progress the running attempt reported
    (in memory only); ``output`` is the latest (at most 4 KiB) of the attempt's output:
    gathered from its ``output`` reports while it runs (in memory only), then the tail its
    closing report carried (journaled with the final state). ``started_at`` is when the
    latest attempt started; ``exit_code`` how the attempt that ended the job exited.
    ``waiting_since`` is when the job last began waiting (monotonic, for aging; in memory
    only): the dispatch core sets it whenever it takes the job in or queues it again.
    """

    id: str
    payload: JobPayload
    seq: int
    submitted_at: float
    state: JobState = "queued"
    attempt: int = 0
    holder: str | None = None
    deliveries: int = 0
    evictions: int = 0
    retries: int = 0
    errors: tuple[str, ...] = ()
    not_before: float | None = None
    updated_at: float = 0.0
    finished_at: float | None = None
    result: object | None = None  # mypyc cannot build a bare `object` field
    traceback: str | None = None
    owner: str | None = None
    progress: float | None = None
    message: str | None = None
    output: str | None = None
    started_at: float | None = None
    exit_code: int | None = None
    waiting_since: float = field(default=0.0, compare=False)

    @property
    def priority(self) -> int:
        """The job's priority: its payload's (the bus fills in a default at submit), else
        :data:`~scheduler.protocol_types.DEFAULT_PRIORITY`."""
        return DEFAULT_PRIORITY if self.payload.priority is None else self.payload.priority

    @property
    def final(self) -> bool:
        """True once the job is in a state it never leaves."""
        return self.state in FINAL_EVENTS


def not_yours(job: Job, by: str | None, action: str) -> str | None:
    """Why submitter ``by`` may not ``action`` (cancel, watch) ``job``, or None if it may.

    ``by`` None stands for a client whose role may act on any job (admin, monitor reads,
    a bus without tokens); a producer may act only on the jobs it owns.
    """
    if by is None or job.owner == by:
        return None
    return f"job {job.id} belongs to another submitter; a producer may {action} only its own jobs"
