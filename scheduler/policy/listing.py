"""Which jobs a ``list_jobs`` request names, and in which order. Pure.

The bus lists from two places: the jobs the dispatch core tracks (not final) and the
final ones its journal keeps. :class:`JobQuery` is the filter both are read with;
:func:`pick` merges what each gave into one page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scheduler.policy.job import Job, not_yours
from scheduler.protocol_queries import ListJobs


@dataclass(frozen=True, slots=True)
class JobQuery:
    """The jobs wanted: in ``states`` (None: any), of ``task``, submitted at or after
    ``since`` (epoch seconds), whose id starts with ``prefix``, that ``owner`` may see
    (None: anyone's). None means no condition."""

    states: frozenset[str] | None = None
    task: str | None = None
    since: float | None = None
    prefix: str | None = None
    owner: str | None = None

    @classmethod
    def of(cls, request: ListJobs, owner: str | None) -> JobQuery:
        """The query ``request`` asks for, for a client that may see ``owner``'s jobs."""
        states = None if request.states is None else frozenset(request.states)
        return cls(states, request.task, request.since, request.prefix, owner)

    def matches(self, job: Job) -> bool:
        """Whether ``job`` is one of the jobs wanted."""
        return (
            (self.states is None or job.state in self.states)
            and (self.task is None or job.payload.task == self.task)
            and (self.since is None or job.submitted_at >= self.since)
            and (self.prefix is None or job.id.startswith(self.prefix))
            and not_yours(job, self.owner, "list") is None
        )

    def within(self, states: Iterable[str]) -> JobQuery | None:
        """This query limited to ``states`` (the final ones, say), or None if it wants
        none of them."""
        wanted = frozenset(states) if self.states is None else self.states & frozenset(states)
        if not wanted:
            return None
        return JobQuery(wanted, self.task, self.since, self.prefix, self.owner)


def submit_order(job: Job) -> tuple[float, int]:
    """The key that orders jobs as they were submitted: their submit time, then their
    place in arrival order (a retried job keeps its submit time, not its place)."""
    return job.submitted_at, job.seq


def pick(
    live: Iterable[Job],
    stored: Iterable[Job],
    tracked: Callable[[str], bool],
    limit: int,
    *,
    newest_first: bool,
) -> tuple[list[Job], bool]:
    """One page of jobs: ``live`` ones (tracked by the core) and ``stored`` final ones
    (a journal record of a job ``tracked`` again, say retried, is left out), in the
    order they were submitted (:func:`submit_order`) or newest first, at most
    ``limit``; and whether more were left out."""
    merged = [*live, *(job for job in stored if not tracked(job.id))]
    merged.sort(key=submit_order, reverse=newest_first)
    return merged[:limit], len(merged) > limit
