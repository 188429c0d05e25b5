"""Work stealing as the dispatch core brokers it: which held jobs wait in a local queue
(and may be stolen), which steals are under way and for which thief, and which
schedulers may have room to steal.

A steal starts when a thief with a free slot and an empty queue is chosen a job by the
strategy (:mod:`scheduler.policy.stealing`): the victim gets a ``steal`` stop, a slot
is kept for the thief (``incoming``) and the job is marked. It ends when the job is
``revoked`` (the thief gets it), starts, or leaves its holder, or when the victim or
the thief goes: the kept slot is given back then, exactly once (:meth:`Steals.end`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from scheduler.policy.dispatch.decisions import Decision, SendStop
from scheduler.policy.dispatch.registry import KnownScheduler, Registry
from scheduler.policy.job import Job
from scheduler.policy.stats import BusCounters
from scheduler.policy.stealing import StealStrategy, Waiter, WaitingJobs
from scheduler.protocol import Stop


class Steals:
    """The stealable jobs, the steals under way and the schedulers to balance."""

    def __init__(
        self,
        registry: Registry,
        jobs: Mapping[str, Job],
        strategy: StealStrategy | None,
        counters: BusCounters,
    ) -> None:
        """No steal yet, among ``jobs`` (every tracked job); ``strategy`` None: off."""
        self._registry = registry
        self._jobs = jobs
        self._strategy = strategy
        self._counters = counters
        self.stealable = WaitingJobs()
        # Job id -> the thief a steal of it is under way for.
        self._thieves: dict[str, str] = {}
        # Schedulers that may have a free slot and an empty queue (a dict keeps the
        # order, so that steals happen in the same order on every run).
        self._unbalanced: dict[str, None] = {}

    def thief(self, job_id: str) -> str | None:
        """The scheduler a steal of ``job_id`` is under way for, if any."""
        return self._thieves.get(job_id)

    def thieves(self) -> Mapping[str, str]:
        """Job id -> thief of every steal under way."""
        return self._thieves

    def may_steal(self, name: str) -> None:
        """``name`` may have a free slot and an empty queue: let it steal next balance."""
        self._unbalanced[name] = None

    @property
    def unbalanced(self) -> bool:
        """Whether a scheduler may steal at the next :meth:`balance`."""
        return bool(self._unbalanced)

    def waits(self, s: KnownScheduler, job: Job, since: float) -> None:
        """Held ``job`` waits in ``s``'s local queue since ``since``: it may be stolen."""
        waiter = Waiter(job.id, job.priority, since, job.seq)
        self.stealable.add(s.name, job.payload.task, waiter)

    def end(self, job_id: str) -> str | None:
        """A steal of ``job_id`` (if any) ended: free the slot kept for its thief, which
        may steal again. Returns the thief."""
        thief = self._thieves.pop(job_id, None)
        if thief is not None:
            self._registry.by_name[thief].slots.incoming -= 1
            self._unbalanced[thief] = None
        return thief

    def leave(self, job_id: str) -> None:
        """``job_id`` no longer waits in a local queue (it started or left its holder):
        it may not be stolen, and a steal of it under way ends."""
        self.stealable.discard(job_id)
        if job_id in self._thieves:
            self.end(job_id)

    def call_off_from(self, victim: Collection[str]) -> None:
        """Forget the steals of the jobs in ``victim`` (the ids a scheduler that lost
        its connection holds): their thieves get their slots back. If the victim gave a
        job up meanwhile, it no longer lists it when it comes back, and the job is
        requeued."""
        for job_id in [j for j in self._thieves if j in victim]:
            self.end(job_id)

    def drop_for(self, thief: str) -> None:
        """Forget the steals for ``thief`` (it is gone; its slots go with it)."""
        for job_id in [j for j, t in self._thieves.items() if t == thief]:
            del self._thieves[job_id]

    def balance(self, now: float, out: list[Decision]) -> None:
        """Let every scheduler that may have a free slot and an empty queue steal."""
        if self._strategy is None or not self.stealable:  # off, or no job waits anywhere
            self._unbalanced.clear()
            return
        while self._unbalanced:
            name = next(iter(self._unbalanced))
            del self._unbalanced[name]
            s = self._registry.by_name.get(name)
            if s is not None and s.connected and s.reports and not s.stalled:
                self._steal_for(s, self._strategy, now, out)

    def _steal_for(
        self,
        thief: KnownScheduler,
        strategy: StealStrategy,
        now: float,
        out: list[Decision],
    ) -> None:
        """While ``thief`` has a free slot and nothing waits in its own queue, start a
        steal of the job the strategy chooses: the victim is told to give it up, the slot
        is kept for it, and the job is marked."""
        while thief.slots.free > 0 and not self.stealable.count(thief.name):
            steal = strategy.choose(
                thief.name, thief.tasks, self.stealable, self._registry.robbable, now
            )
            if steal is None:
                return
            job = self._jobs[steal.job_id]
            self.stealable.discard(job.id)
            self._thieves[job.id] = thief.name
            thief.slots.incoming += 1
            self._counters.add("steal_attempts")
            stop = Stop(job.id, job.attempt, "stolen", kind="steal")
            out.append(SendStop(steal.victim, stop))
