"""One simulated scheduler: what :class:`~scheduler.worker.executor.Executor` and
:class:`~scheduler.worker.client.SchedulerClient` do around the real
:class:`~scheduler.policy.runner.Runner`, with job processes that are only times.

An assignment goes to the runner, which answers start, evict or stop; a started
"process" is forked in the scheduler's start cost (one fork at a time, as the client's
event loop does them) and reported ``started`` then; it ends when its runtime (or its
timeout) is over, plus the exit cost; a stopped one after the stop time; each
attempt's closing report is the one :func:`~scheduler.policy.closing.closing_report`
makes, as live. Stops from the bus (``steal``, ``cancel``, ``drop``) are carried out as
the client does.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.policy.closing import Ending, Outcome, Why, closing_report
from scheduler.policy.runner import Evict, LocalJob, Runner, RunnerDecision, Start
from scheduler.protocol import Assignment, Held, Report, Stop
from scheduler.simulate.fleet import SchedulerSpec

_SIGTERM_EXIT = -15


class Clock(Protocol):
    """What a node needs of the simulation: the time, timers, the way to the bus."""

    now: float

    def at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` at simulated time ``t``."""

    def to_bus(self, node: SimNode, report: Report) -> None:
        """Send ``report`` from ``node`` to the bus."""

    def fails(self, assignment: Assignment) -> bool:
        """Whether this attempt fails (exit code 1) when its runtime is over."""

    def started(self, node: SimNode, job: LocalJob) -> None:
        """``node`` started a process for ``job``."""

    def ended(self, node: SimNode, job_id: str, ran_s: float) -> None:
        """``node``'s process of ``job_id`` is gone after ``ran_s`` seconds."""


@dataclass(slots=True, eq=False)
class _Run:
    """One live simulated process, its slot taken at ``claimed`` and its fork done at
    ``started``: it ends by itself as ``outcome`` with ``exit_code`` unless stopped
    first (``why``)."""

    assignment: Assignment
    job: LocalJob
    claimed: float
    started: float
    outcome: Outcome
    exit_code: int
    timeout_s: float
    why: Why | None = None
    evictions: int = 0
    done: bool = False


class SimNode:
    """A scheduler of ``spec`` serving ``tasks``, on ``clock``, stopping a process in
    ``stop_s`` simulated seconds."""

    def __init__(
        self, spec: SchedulerSpec, tasks: frozenset[str], clock: Clock, stop_s: float
    ) -> None:
        """Not connected yet, nothing held."""
        self.spec = spec
        self.name = spec.name
        self.tasks = tasks
        self.runner = Runner(spec.size)
        self._clock = clock
        self._stop_s = stop_s
        self.jobs: dict[str, Assignment] = {}
        """Attempts held: waiting, running, or stopping with a report due."""
        self.runs: dict[str, _Run] = {}
        self.alive = True
        self.session = 0
        """Number of the current connection to the bus (0: none yet)."""
        self.connected = False
        self.last_sent = -1.0
        self.outbox: list[Report] = []
        """Reports made while the bus is away, in order."""
        self.busy_s = 0.0
        self.starts = 0
        self._forks_free = 0.0
        """When the fork (or eviction) under way is done: the next fork is no earlier."""
        self._inbox: dict[str, float] = {}
        """When the latest message about each job still on its way is taken."""
        costs = spec.costs
        drawn = costs.start_draws or costs.exit_draws or costs.dispatch_draws
        self._draws = random.Random(f"{spec.name}:{costs.seed}") if drawn else None

    # --- from the bus ------------------------------------------------------------------

    def assign(self, assignment: Assignment) -> None:
        """An assignment arrives: taken (:meth:`take`) once its dispatch cost is over."""
        if not self._held_back(self.take, assignment):
            self.take(assignment)

    def take(self, assignment: Assignment) -> None:
        """Take an assignment as :meth:`Executor.submit` does: a newer attempt of a job
        held replaces the older one; an older one is ignored."""
        if assignment.task not in self.tasks:
            error = f"task {assignment.task!r} is not registered"
            self._report(Report("failed", assignment.id, assignment.attempt, error=error))
            return
        held = self.jobs.get(assignment.id)
        if held is not None:
            if assignment.attempt <= held.attempt:
                return
            self._end(held, "dropped")
        self.jobs[assignment.id] = assignment
        job = LocalJob(
            assignment.id, assignment.priority, assignment.evictions, assignment.evictable
        )
        self._carry_out(self.runner.submit(job, self._clock.now))

    def stop(self, stop: Stop) -> None:
        """A stop arrives: carried out (:meth:`halt`) once its dispatch cost is over."""
        if not self._held_back(self.halt, stop):
            self.halt(stop)

    def halt(self, stop: Stop) -> None:
        """Carry out the bus's ``Stop`` as the client does."""
        held = self.jobs.get(stop.id)
        if held is None or held.attempt != stop.attempt:
            return
        if stop.kind == "steal":
            run = self.runs.get(stop.id)
            if run is not None and run.assignment is held:
                return  # started: the started report ends the steal
            self._end(held, "dropped")
            self._report(Report("revoked", stop.id, stop.attempt))
        elif stop.kind == "cancel":
            self._end(held, "cancelled")
        else:
            self._end(held, "dropped")

    def _held_back(self, handle: Callable[[Any], None], message: Assignment | Stop) -> bool:
        """Whether ``message`` waits for its dispatch cost (then ``handle`` takes it, if
        the connection it came on still stands). Messages about one job keep their order;
        others may pass each other, as frames released by different commits would."""
        now = self._clock.now
        delay = self._draw(self.spec.costs.dispatch, self.spec.costs.dispatch_draws)
        due = self._inbox.get(message.id, now)
        if not delay and due <= now:
            return False
        at = self._inbox[message.id] = max(now + delay, due)
        self._clock.at(at, self._dispatched, (self.session, handle, message, at))
        return True

    def _dispatched(self, arg: tuple[int, Callable[[Any], None], Assignment | Stop, float]) -> None:
        session, handle, message, at = arg
        if self._inbox.get(message.id) == at:
            del self._inbox[message.id]
        if self.alive and self.connected and self.session == session:
            handle(message)

    def held(self) -> list[Held]:
        """Every attempt not reported closed, and those closed whose report waits in the
        outbox, as a re-registering scheduler lists them."""
        done = [Held(r.id, r.attempt, done=True) for r in self.outbox if r.event != "started"]
        return [*(Held(a.id, a.attempt) for a in self.jobs.values()), *done]

    # --- fleet events ------------------------------------------------------------------

    def die(self) -> None:
        """The scheduler crashes: its processes die with it, nothing more is reported."""
        self.alive = self.connected = False
        now = self._clock.now
        for run in self.runs.values():
            run.done = True
            self._gone(run, now)
        self.runs.clear()
        self.jobs.clear()
        self.outbox.clear()
        self.runner = Runner(self.spec.size)
        self._forks_free = 0.0
        self._inbox.clear()

    # --- processes ---------------------------------------------------------------------

    def _end(self, assignment: Assignment, why: Why) -> None:
        """Stop or unqueue held ``assignment``; a cancel keeps it held until reported."""
        job_id = assignment.id
        run = self.runs.get(job_id)
        live = run is not None and run.assignment is assignment
        if why == "dropped" or not live:
            del self.jobs[job_id]
        if run is not None and live:
            run.why = why
        self._carry_out(self.runner.remove(job_id, self._clock.now))
        if why == "cancelled" and not live:
            self._report(Report("cancelled", job_id, assignment.attempt))

    def _carry_out(self, decisions: Sequence[RunnerDecision]) -> None:
        """Start, evict and stop as decided; the stops go once the forks are done (the
        client forks in its event loop and stops processes in tasks that run after); an
        eviction keeps the loop busy for the eviction cost before the next fork."""
        pending: deque[RunnerDecision] = deque(decisions)
        stopping: list[_Run] = []
        while pending:
            decision = pending.popleft()
            if type(decision) is Start:
                self._start(decision.job_id)
            elif type(decision) is Evict:
                run = self.runs[decision.job_id]
                run.why, run.evictions = "evicted", decision.evictions
                stopping.append(run)
                if self.spec.costs.evict:
                    now = self._clock.now
                    self._forks_free = max(now, self._forks_free) + self.spec.costs.evict
            else:
                stopping.append(self.runs[decision.job_id])
        if stopping:
            at = max(self._clock.now, self._forks_free) + self._stop_s
            for run in stopping:
                self._clock.at(at, self._stopped, run)

    def _start(self, job_id: str) -> None:
        """Fork ``job_id``'s process, after the forks (and evictions) under way."""
        clock = self._clock
        now = clock.now
        start, exit_cost = self._costs()
        forked = now
        if start or self._forks_free > now:
            forked = self._forks_free = max(now, self._forks_free) + start
        assignment = self.jobs[job_id]
        runtime = assignment.runtime or 0.0
        timeout = assignment.timeout or self.spec.timeout
        job = LocalJob(job_id, assignment.priority, assignment.evictions, assignment.evictable)
        if timeout is not None and timeout < runtime:
            run = _Run(assignment, job, now, forked, "timed_out", _SIGTERM_EXIT, timeout)
            clock.at(forked + timeout + exit_cost, self._ended, run)
        else:
            code = 1 if clock.fails(assignment) else 0
            run = _Run(assignment, job, now, forked, "exited", code, timeout or 0.0)
            clock.at(forked + runtime + exit_cost, self._ended, run)
        self.runs[job_id] = run
        self.starts += 1
        clock.started(self, job)
        if forked == now:
            self._forked(run)
        else:
            clock.at(forked, self._forked, run)

    def _costs(self) -> tuple[float, float]:
        """This job's start and exit costs: the spec's, or drawn from its samples."""
        costs = self.spec.costs
        return self._draw(costs.start, costs.start_draws), self._draw(costs.exit, costs.exit_draws)

    def _draw(self, fixed: float, draws: tuple[float, ...]) -> float:
        """One of ``draws`` at random, or ``fixed`` when there are none."""
        return self._draws.choice(draws) if draws and self._draws is not None else fixed

    def _forked(self, run: _Run) -> None:
        """``run``'s fork returned: report it started (unless its scheduler died first)."""
        if not run.done:
            self._report(Report("started", run.assignment.id, run.assignment.attempt))

    def _ended(self, run: _Run) -> None:
        if not run.done:
            self._finish(run, run.outcome)

    def _stopped(self, run: _Run) -> None:
        if not run.done:
            run.exit_code = _SIGTERM_EXIT
            self._finish(run, "stopped")

    def _finish(self, run: _Run, outcome: Outcome) -> None:
        """``run``'s process is gone: report its end, let the runner fill the slot."""
        run.done = True
        assignment = run.assignment
        job_id = assignment.id
        del self.runs[job_id]
        if self.jobs.get(job_id) is assignment:
            del self.jobs[job_id]
        now = self._clock.now
        ran_s = self._gone(run, now)
        ending = Ending(
            outcome, run.exit_code, ran_s, 0.0, 0, run.why, run.evictions, timeout_s=run.timeout_s
        )
        report = closing_report(job_id, assignment.attempt, ending)
        if report is not None:
            self._report(report)
        self._carry_out(self.runner.exited(job_id, now))

    def _gone(self, run: _Run, now: float) -> float:
        """Count ``run``'s slot time; return its process's life (fork done to gone)."""
        ran_s = max(0.0, now - run.started)
        self.busy_s += now - run.claimed
        self._clock.ended(self, run.assignment.id, ran_s)
        return ran_s

    def _report(self, report: Report) -> None:
        if self.connected:
            self.last_sent = self._clock.now
            self._clock.to_bus(self, report)
        else:
            self.outbox.append(report)
