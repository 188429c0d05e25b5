"""Runs jobs as processes under the runner's decisions, and reports what happens to them.

The :class:`~scheduler.policy.runner.Runner` decides who starts, waits and is evicted; the
executor only starts and stops :class:`~scheduler.process.JobProcess` es and turns their
ends into :class:`~scheduler.protocol.Report` s. Everything runs on the event loop's thread:
no thread pool, so forking job processes stays safe.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.policy.runner import Decision, Evict, Job, Runner, Snapshot, Start, Stop
from scheduler.process import JobProcess, ProcessResult
from scheduler.protocol import Assignment, Report, SchedulerReport
from scheduler.tasks import TaskRegistry, UnknownTaskError

log = logging.getLogger(__name__)

EventSink = Callable[[Report], None]


@dataclass(slots=True)
class _Run:
    """One live job process and why we are stopping it, if we are."""

    assignment: Assignment
    process: JobProcess
    started_at: float
    deadline: float
    evicted: bool = False
    removed: bool = False


class Executor:
    """Runs assignments in job processes, ``size`` at a time, with timeouts and eviction.

    ``on_event`` receives every report (``started``, ``evicted``, ``succeeded``,
    ``failed``, ``timed_out``) ready to send to the bus. ``grace`` is how long a
    stopped job may react to SIGTERM before its whole process group is killed.
    ``max_evictions`` caps how often one job may be evicted (``None``: no cap).
    """

    def __init__(
        self,
        size: int,
        default_timeout: float,
        tasks: TaskRegistry,
        on_event: EventSink,
        grace: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_evictions: int | None = None,
    ) -> None:
        """Set up an idle executor; nothing runs until :meth:`submit`."""
        self._runner = Runner(size, max_evictions=max_evictions)
        self._default_timeout = default_timeout
        self._tasks = tasks
        self._on_event = on_event
        self._grace = grace
        self._clock = clock
        self._jobs: dict[str, Assignment] = {}
        self._runs: dict[str, _Run] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def running(self) -> int:
        """How many jobs hold a slot."""
        return self._runner.running

    @property
    def queued(self) -> int:
        """How many jobs wait for a slot."""
        return self._runner.queued

    def snapshot(self) -> Snapshot:
        """The runner's state (running, waiting, stopping jobs). Changes nothing."""
        return self._runner.snapshot()

    def pid_of(self, job_id: str) -> int | None:
        """The pid (and process group) of ``job_id``'s live process, if it has one."""
        run = self._runs.get(job_id)
        return run.process.pid if run is not None else None

    def submit(self, assignment: Assignment) -> None:
        """Take an assignment: start it now, start it by evicting a less urgent job, or queue it.

        A job naming an unregistered task is reported ``failed`` at once and never started.
        A newer attempt of a job already held replaces the older one (whose process is
        stopped first); an attempt no newer than the held one is ignored.
        Raises ``RuntimeError`` after :meth:`shutdown`.
        """
        if self._closed:
            raise RuntimeError("executor is shut down")
        try:
            self._tasks.get(assignment.task)
        except UnknownTaskError as exc:
            self._emit_failed(assignment, str(exc))
            return
        job_id = assignment.id
        held = self._jobs.get(job_id)
        now = self._clock()
        if held is not None:
            if assignment.attempt <= held.attempt:
                log.debug("ignoring attempt %d of %s", assignment.attempt, job_id)
                return
            old = self._runs.get(job_id)
            if old is not None:  # running, or evicted and still stopping
                old.removed = True
            self._carry_out(self._runner.remove(job_id, now))
        self._jobs[job_id] = assignment
        job = Job(job_id, assignment.priority, assignment.evictions)
        self._carry_out(self._runner.submit(job, now))

    async def shutdown(self) -> None:
        """Stop every job process (whole trees), forget every queued job, refuse new ones.

        Returns once every job process has been reaped. Reports nothing for stopped jobs.
        """
        self._closed = True
        self._runner.clear()
        self._jobs.clear()
        for run in self._runs.values():
            run.removed = True
        stops = [run.process.stop() for run in self._runs.values()]
        # The supervisors and eviction stops finish too: nothing runs on after this.
        await asyncio.gather(*stops, *self._background)

    def _carry_out(self, decisions: Sequence[Decision]) -> None:
        pending: deque[Decision] = deque(decisions)
        while pending:
            decision = pending.popleft()
            if isinstance(decision, Start):
                pending.extend(self._start(decision.job_id))
            elif isinstance(decision, Evict):
                self._evict(decision)
            else:
                self._stop(decision)

    def _start(self, job_id: str) -> Sequence[Start]:
        """Fork the job's process; returns what the runner starts next if the fork failed."""
        assignment = self._jobs[job_id]
        process = JobProcess(
            self._tasks.get(assignment.task),
            (assignment.runtime,),
            name=f"job-{job_id}",
            grace=self._grace,
        )
        try:
            process.start()
        except OSError as exc:
            log.error("could not start job %s: %s", job_id, exc)
            del self._jobs[job_id]
            self._emit_failed(assignment, f"could not start the job process: {exc}")
            return self._runner.exited(job_id, self._clock())
        started_at = self._clock()
        timeout = assignment.timeout or self._default_timeout
        run = _Run(assignment, process, started_at, started_at + timeout)
        self._runs[job_id] = run
        log.debug("started %s attempt %d pid %d", job_id, assignment.attempt, process.pid)
        self._on_event(Report("started", job_id, assignment.attempt))
        self._spawn(self._supervise(run))
        return []

    def _evict(self, decision: Evict) -> None:
        run = self._runs[decision.job_id]
        run.evicted = True
        log.debug("evicting %s (eviction %d)", decision.job_id, decision.evictions)
        wall_s = self._clock() - run.started_at
        self._on_event(
            Report(
                "evicted",
                decision.job_id,
                run.assignment.attempt,
                evictions=decision.evictions,
                wall_s=wall_s,
            )
        )
        self._spawn(run.process.stop())

    def _stop(self, decision: Stop) -> None:
        run = self._runs[decision.job_id]
        run.removed = True
        log.debug("stopping %s", decision.job_id)
        self._spawn(run.process.stop())

    async def _supervise(self, run: _Run) -> None:
        """Wait for ``run`` to end (stopping it at its deadline), then report and refill."""
        result = await run.process.wait(max(0.0, run.deadline - self._clock()))
        job_id = run.assignment.id
        del self._runs[job_id]
        log.debug("%s ended: %s", job_id, result)
        # "stopped" means we stopped it (evicted or removed): any other outcome is its own
        # end, even if an eviction raced it, so it is final and must not run again.
        if result.outcome != "stopped" and not run.removed:
            if run.evicted:
                self._runner.remove(job_id, self._clock())
            del self._jobs[job_id]
            self._on_event(_final_report(run, result))
        self._carry_out(self._runner.exited(job_id, self._clock()))

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _emit_failed(self, assignment: Assignment, error: str) -> None:
        self._on_event(Report("failed", assignment.id, assignment.attempt, error=error))


def _final_report(run: _Run, result: ProcessResult) -> Report:
    """The ``succeeded`` / ``failed`` / ``timed_out`` report for a process that ended."""
    a = run.assignment
    event: SchedulerReport
    error: str | None
    if result.outcome == "timed_out":
        event, error = "timed_out", f"timed out after {run.deadline - run.started_at:g} s"
    elif result.exit_code == 0:
        event, error = "succeeded", None
    else:
        event, error = "failed", _exit_text(result.exit_code)
    return Report(
        event,
        a.id,
        a.attempt,
        exit_code=result.exit_code,
        error=error,
        wall_s=result.wall_s,
        cpu_s=result.cpu_s,
        max_rss_kb=result.max_rss_kb,
    )


def _exit_text(exit_code: int | None) -> str:
    """``exit code 3``, ``killed by signal 9 (SIGKILL)``, or that the status was lost."""
    if exit_code is None:
        return "exit status lost"
    if exit_code > 0:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        return f"killed by signal {-exit_code}"
    return f"killed by signal {-exit_code} ({name})"
