"""Work stealing: which waiting job a scheduler with a free slot takes. Pure, no clock.

A job *waits* at a scheduler when the bus assigned it there while no slot was free: it
sits in that scheduler's local queue (:class:`WaitingJobs` indexes them). A scheduler
with a free slot and nothing waiting in its own queue is a *thief*; a strategy picks
the job it takes from another scheduler's queue (the *victim*), among the tasks it
serves. Priorities compared are effective ones (:class:`~scheduler.policy.aging.Aging`).

* :class:`Urgent` (the default): the most urgent waiting job anywhere, ties to the
  earliest submitted, so a free slot anywhere runs the most urgent waiting job.
* :class:`Tail`: from the scheduler with the longest queue, its last job (the least
  urgent, and of those the latest to wait there), as classic work-stealing pools do.

The bus brokers the steal (see :mod:`scheduler.policy.dispatch.steals`); this module only
chooses.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from scheduler.policy.aging import Aging

STEAL_STRATEGIES: Final = ("urgent", "tail", "off")
"""The names ``--steal`` accepts; ``off`` disables stealing."""


@dataclass(frozen=True, slots=True)
class Waiter:
    """A job waiting in a local queue: its base ``priority``, the monotonic time it
    began waiting (``since``, for aging) and its arrival order ``seq``."""

    job_id: str
    priority: int
    since: float
    seq: int


@dataclass(frozen=True, slots=True)
class Steal:
    """Take job ``job_id`` from scheduler ``victim``'s local queue."""

    victim: str
    job_id: str


# One scheduler's waiting jobs: task -> base priority -> jobs in the order they came.
_Buckets = dict[str, dict[int, "OrderedDict[str, Waiter]"]]


class WaitingJobs:
    """Every waiting job that may be stolen, by scheduler, task and base priority; each
    bucket in the order its jobs began waiting there."""

    def __init__(self) -> None:
        """No job waits."""
        self._queues: dict[str, _Buckets] = {}
        self._where: dict[str, tuple[str, str, int]] = {}
        self._per_scheduler: Counter[str] = Counter()
        self._per_task: Counter[str] = Counter()

    def add(self, scheduler: str, task: str, waiter: Waiter) -> None:
        """Record ``waiter`` (a job of ``task``) as waiting at ``scheduler``, last of its
        bucket. Raises ValueError if the job is already recorded."""
        if waiter.job_id in self._where:
            raise ValueError(f"job {waiter.job_id!r} already waits")
        bucket = self._queues.setdefault(scheduler, {}).setdefault(task, {})
        bucket.setdefault(waiter.priority, OrderedDict())[waiter.job_id] = waiter
        self._where[waiter.job_id] = (scheduler, task, waiter.priority)
        self._per_scheduler[scheduler] += 1
        self._per_task[task] += 1

    def discard(self, job_id: str) -> bool:
        """Forget job ``job_id`` (it started, left, or is being stolen); return whether
        it was recorded."""
        where = self._where.pop(job_id, None)
        if where is None:
            return False
        scheduler, task, priority = where
        tasks = self._queues[scheduler]
        buckets = tasks[task]
        del buckets[priority][job_id]
        if not buckets[priority]:
            del buckets[priority]
            if not buckets:
                del tasks[task]
                if not tasks:
                    del self._queues[scheduler]
        self._per_scheduler[scheduler] -= 1
        self._per_task[task] -= 1
        return True

    def __contains__(self, job_id: object) -> bool:
        """Whether job ``job_id`` is recorded as waiting."""
        return job_id in self._where

    def __len__(self) -> int:
        """How many jobs wait."""
        return len(self._where)

    def count(self, scheduler: str) -> int:
        """How many jobs wait at ``scheduler``."""
        return self._per_scheduler[scheduler]

    def any_for(self, tasks: Collection[str]) -> bool:
        """Whether a job of one of ``tasks`` waits anywhere."""
        return any(self._per_task[task] for task in tasks)

    def schedulers(self) -> Iterator[str]:
        """The schedulers where jobs wait."""
        return iter(self._queues)

    def buckets(self, scheduler: str, tasks: Collection[str]) -> Iterator[OrderedDict[str, Waiter]]:
        """The non-empty buckets of jobs of ``tasks`` waiting at ``scheduler``."""
        for task, buckets in self._queues.get(scheduler, {}).items():
            if task in tasks:
                yield from buckets.values()


Robbable = Callable[[str], bool]
"""Whether a scheduler may be stolen from now (connected, and it reports)."""


class StealStrategy(Protocol):
    """Chooses the job a thief takes, or None; changes nothing."""

    @property
    def name(self) -> str:
        """The ``--steal`` name of the strategy."""

    def choose(
        self,
        thief: str,
        tasks: Collection[str],
        waiting: WaitingJobs,
        robbable: Robbable,
        now: float,
    ) -> Steal | None:
        """The job that scheduler ``thief`` (serving ``tasks``) takes from another
        scheduler that is ``robbable``, at ``now``; None if there is none."""


@dataclass(frozen=True)
class Urgent:
    """Take the most urgent waiting job anywhere; ties to the earliest submitted."""

    aging: Aging = Aging()
    name: str = "urgent"

    def choose(
        self,
        thief: str,
        tasks: Collection[str],
        waiting: WaitingJobs,
        robbable: Robbable,
        now: float,
    ) -> Steal | None:
        """See :class:`StealStrategy`: the least (effective priority, seq) of the first
        job of every bucket (in a bucket, the first to wait has aged the most)."""
        if not waiting.any_for(tasks):
            return None
        best: Steal | None = None
        best_key = (0, 0)
        for victim in waiting.schedulers():
            if victim == thief or not robbable(victim):
                continue
            for bucket in waiting.buckets(victim, tasks):
                w = next(iter(bucket.values()))
                key = (self.aging.effective(w.priority, w.since, now), w.seq)
                if best is None or key < best_key:
                    best, best_key = Steal(victim, w.job_id), key
        return best


@dataclass(frozen=True)
class Tail:
    """Take the last job of the longest queue: its least urgent, latest waiting job."""

    aging: Aging = Aging()
    name: str = "tail"

    def choose(
        self,
        thief: str,
        tasks: Collection[str],
        waiting: WaitingJobs,
        robbable: Robbable,
        now: float,
    ) -> Steal | None:
        """See :class:`StealStrategy`: among the robbable schedulers holding a job the
        thief serves, the one with the most waiting jobs (ties to the first found); of its
        buckets' last jobs, the greatest (effective priority, seq)."""
        if not waiting.any_for(tasks):
            return None
        victims = [v for v in waiting.schedulers() if v != thief and robbable(v)]
        victims.sort(key=waiting.count, reverse=True)
        for victim in victims:
            best: Waiter | None = None
            best_key = (0, 0)
            for bucket in waiting.buckets(victim, tasks):
                w = next(reversed(bucket.values()))
                key = (self.aging.effective(w.priority, w.since, now), w.seq)
                if best is None or key > best_key:
                    best, best_key = w, key
            if best is not None:
                return Steal(victim, best.job_id)
        return None


def steal_strategy(name: str, aging: Aging | None = None) -> StealStrategy | None:
    """The strategy ``--steal NAME`` selects (None for ``off``), comparing priorities
    aged by ``aging``. Raises ValueError for an unknown name."""
    aging = aging if aging is not None else Aging()
    if name == "urgent":
        return Urgent(aging)
    if name == "tail":
        return Tail(aging)
    if name == "off":
        return None
    raise ValueError(f"steal must be one of {', '.join(STEAL_STRATEGIES)}, not {name!r}")
