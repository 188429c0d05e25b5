"""Slot admission, the local priority queue and eviction for one scheduler. Pure: no I/O.

A :class:`Runner` is fed events (a job arrived, a job's process exited, a job was removed)
and answers with decisions (:class:`Start`, :class:`Evict`, :class:`StopRun`) that the caller
carries out. An evicted job leaves the runner: the bus requeues it and may hand it to any
scheduler (this one included, as a new attempt). The runner never starts a job while an
earlier process of the same job is still being stopped: such a job is *parked* until
:meth:`Runner.exited` reports that process gone.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

from scheduler.policy.eviction import eviction_key


@dataclass(frozen=True, slots=True)
class LocalJob:
    """A job as the runner sees it. ``priority`` 0 is the most urgent; a job that is not
    ``evictable`` keeps its slot until it ends; one that may not ``evict`` (a held
    assignment not yet released: the bus may still take it back) waits for a free slot
    instead of taking a less urgent job's."""

    id: str
    priority: int
    evictions: int = 0
    evictable: bool = True
    evict: bool = True


@dataclass(frozen=True, slots=True)
class Start:
    """Start a process for ``job_id`` now; it holds a slot."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Evict:
    """Stop ``job_id``'s process: the job leaves this runner (the bus requeues it), having
    been evicted ``evictions`` times. The caller reports :meth:`Runner.exited` once the
    process is gone."""

    job_id: str
    evictions: int


@dataclass(frozen=True, slots=True)
class StopRun:
    """Stop ``job_id``'s process for good (removed). The caller reports :meth:`Runner.exited`."""

    job_id: str


RunnerDecision = Start | Evict | StopRun


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job holding a slot, with the ``now`` it was started at."""

    job: LocalJob
    started_at: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The runner's state: running jobs by start order, waiting jobs in the order they
    would start, and ids whose process is still being stopped."""

    running: tuple[RunningJob, ...]
    waiting: tuple[LocalJob, ...]
    stopping: tuple[str, ...]


@dataclass(slots=True)
class _Entry:
    job: LocalJob
    arrival: int
    started: int = -1
    started_at: float = 0.0

    def key(self) -> tuple[int, int, str]:
        return (self.job.priority, self.arrival, self.job.id)


@dataclass
class Runner:
    """``size`` slots and a local queue ordered by priority, then arrival."""

    size: int
    _running: dict[str, _Entry] = field(default_factory=dict, init=False)
    _waiting: dict[str, _Entry] = field(default_factory=dict, init=False)
    _heap: list[tuple[int, int, str]] = field(default_factory=list, init=False)
    _parked: dict[str, _Entry] = field(default_factory=dict, init=False)
    _stopping: set[str] = field(default_factory=set, init=False)
    # default_factory: mypyc leaves a plain default of an init=False field unset
    _arrivals: int = field(default_factory=int, init=False)
    _starts: int = field(default_factory=int, init=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1, not {self.size}")

    @property
    def running(self) -> int:
        """How many jobs hold a slot."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """How many jobs wait for a slot, including jobs parked behind a stopping process."""
        return len(self._waiting) + len(self._parked)

    def __contains__(self, job_id: object) -> bool:
        """Whether ``job_id`` is running or waiting (a removed, stopping job is not)."""
        return job_id in self._running or job_id in self._waiting or job_id in self._parked

    def submit(self, job: LocalJob, now: float) -> list[RunnerDecision]:
        """Take a new job: start it, start it in the place of an evicted job, or queue it.

        Adds the job to the running set or the queue; an evicted job moves from running to
        stopping and leaves the runner. Returns ``[Start]``, ``[Evict, Start]`` or ``[]``.
        Raises ``ValueError`` if the id is already running or waiting.
        """
        if job.id in self:
            raise ValueError(f"job {job.id!r} is already held")
        entry = _Entry(job, self._arrivals)
        self._arrivals += 1
        if job.id in self._stopping:
            self._parked[job.id] = entry
            return []
        if len(self._running) < self.size:
            return [self._start(entry, now)]
        victim = self._victim() if job.evict else None
        if victim is None or victim.job.priority <= job.priority:
            self._enqueue(entry)
            return []
        evict = self._evict(victim)
        return [evict, self._start(entry, now)]

    def allow_eviction(self, job_id: str, now: float) -> list[RunnerDecision]:
        """Let waiting ``job_id`` evict from now on (a held assignment just released):
        it takes a less urgent job's slot now if there is one, else keeps its place in
        the queue. Returns ``[Evict, Start]`` or ``[]``; an id not waiting changes
        nothing."""
        entry = self._waiting.get(job_id)
        if entry is None:
            return []
        entry.job = replace(entry.job, evict=True)
        victim = self._victim()
        if victim is None or victim.job.priority <= entry.job.priority:
            return []
        del self._waiting[job_id]
        self._heap = [key for key in self._heap if key[2] != job_id]
        heapq.heapify(self._heap)
        return [self._evict(victim), self._start(entry, now)]

    def exited(self, job_id: str, now: float) -> list[Start]:
        """Record that ``job_id``'s process is gone, and fill the free slots.

        A running job frees its slot; a stopping job's parked successor (a job submitted
        under the same id meanwhile) joins the queue. An unknown or waiting id changes
        nothing. Returns the jobs to start.
        """
        if job_id in self._running:
            del self._running[job_id]
        elif job_id in self._stopping:
            self._stopping.discard(job_id)
            parked = self._parked.pop(job_id, None)
            if parked is not None:
                self._enqueue(parked)
        return self._fill(now)

    def remove(self, job_id: str, now: float) -> list[RunnerDecision]:
        """Forget ``job_id`` (cancelled, or no longer ours): drop it from the queue or from
        parking, or stop it if it runs.

        A running job moves to stopping and its slot goes to the next waiting job.
        Returns ``[StopRun, Start...]`` for a running job, else ``[]``.
        """
        if job_id in self._waiting:
            del self._waiting[job_id]
            self._heap = [key for key in self._heap if key[2] != job_id]
            heapq.heapify(self._heap)
            return []
        if self._parked.pop(job_id, None) is not None or job_id not in self._running:
            return []
        del self._running[job_id]
        self._stopping.add(job_id)
        return [StopRun(job_id), *self._fill(now)]

    def clear(self) -> list[StopRun]:
        """Forget every job (shutdown): empty the queue, move every running job to stopping.

        Returns a ``StopRun`` per running job.
        """
        stops = [StopRun(job_id) for job_id in self._running]
        self._stopping.update(self._running)
        self._running.clear()
        self._waiting.clear()
        self._parked.clear()
        self._heap.clear()
        return stops

    def snapshot(self) -> Snapshot:
        """The current state, for heartbeats and status pages. Changes nothing."""
        by_start = sorted(self._running.values(), key=lambda e: e.started)
        waiting = sorted([*self._waiting.values(), *self._parked.values()], key=_Entry.key)
        return Snapshot(
            running=tuple(RunningJob(e.job, e.started_at) for e in by_start),
            waiting=tuple(e.job for e in waiting),
            stopping=tuple(sorted(self._stopping)),
        )

    def _start(self, entry: _Entry, now: float) -> Start:
        entry.started = self._starts
        entry.started_at = now
        self._starts += 1
        self._running[entry.job.id] = entry
        return Start(entry.job.id)

    def _enqueue(self, entry: _Entry) -> None:
        self._waiting[entry.job.id] = entry
        heapq.heappush(self._heap, entry.key())

    def _victim(self) -> _Entry | None:
        """The evictable running job to evict first (:func:`eviction_key`); of equal keys
        the first, as ``max`` gives (one pass: this runs whenever a full runner is given
        a job)."""
        victim: _Entry | None = None
        best = (0, 0)
        for e in self._running.values():
            if e.job.evictable:
                key = eviction_key(e.job.priority, e.started)
                if victim is None or key > best:
                    victim, best = e, key
        return victim

    def _evict(self, victim: _Entry) -> Evict:
        job_id = victim.job.id
        del self._running[job_id]
        self._stopping.add(job_id)
        return Evict(job_id, victim.job.evictions + 1)

    def _fill(self, now: float) -> list[Start]:
        starts: list[Start] = []
        while len(self._running) < self.size and self._heap:
            _, _, job_id = heapq.heappop(self._heap)
            starts.append(self._start(self._waiting.pop(job_id), now))
        return starts
