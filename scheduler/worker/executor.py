"""Runs jobs as processes under the runner's decisions, and reports what happens to them.

The :class:`~scheduler.policy.runner.Runner` decides who starts, waits and is evicted; the
executor only starts and stops :class:`~scheduler.worker.process.JobProcess` es and turns their
ends into :class:`~scheduler.protocol.Report` s. Everything runs on the event loop's thread:
no thread pool, so forking job processes stays safe.

Every attempt gets exactly one closing report, sent once its processes are gone; which
one is :func:`scheduler.policy.closing.closing_report`'s rule (nothing when the bus took it
back, :meth:`Executor.drop`, or the executor shut down).

A held attempt (:meth:`Executor.submit` with ``hold``) is forked when it starts but runs
its task, counts its timeout and is reported ``started`` only on :meth:`Executor.release`
(:mod:`scheduler.worker.held`).

While a running job has a limit, the memory and CPU time of every limited job's process
tree is sampled (:class:`~scheduler.worker.run_timers.LimitSampler`); one timer watches
every job's deadline (:class:`~scheduler.worker.run_timers.Deadlines`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import msgspec

from scheduler.policy.closing import Why, closing_report
from scheduler.policy.limits import NO_LIMITS, Limits
from scheduler.policy.runner import (
    Evict,
    LocalJob,
    Runner,
    RunnerDecision,
    Snapshot,
    Start,
    StopRun,
)
from scheduler.protocol import Assignment, Held, Report
from scheduler.tasks import TaskRegistry, UnknownTaskError, call_arguments, run_task
from scheduler.worker.cgroups import JobCgroups
from scheduler.worker.held import Key, Unreleased
from scheduler.worker.job_feed import JobFeed
from scheduler.worker.job_imports import ImportNotices
from scheduler.worker.job_output import JobLogs
from scheduler.worker.job_run import Run, close_pipes, collect, ending, forked, open_pipes
from scheduler.worker.launch import OWN_RESULT_FD, Launcher, ProcessLauncher
from scheduler.worker.process import ProcessResult
from scheduler.worker.run_timers import Deadlines, LimitSampler

log = logging.getLogger(__name__)

EventSink = Callable[[Report, Assignment], None]
"""Receives each report with the assignment it is about."""
ErrorSink = Callable[[BaseException], None]
"""Receives an exception that escaped a background task (such as a failing event sink)."""


def _local(assignment: Assignment, evict: bool) -> LocalJob:
    """``assignment`` as the runner sees it (``evict``: it may take a slot by eviction)."""
    return LocalJob(
        assignment.id, assignment.priority, assignment.evictions, assignment.evictable, evict
    )


def _log_error(exc: BaseException) -> None:
    log.error("an executor task failed", exc_info=exc)


class Executor:
    """Runs assignments in job processes, ``size`` at a time, with timeouts and eviction.

    ``on_event`` receives every report (``started``, ``evicted``, ``cancelled``,
    ``succeeded``, ``failed``, ``timed_out``) ready to send to the bus, with its
    assignment. ``grace`` is how long a stopped job may react to SIGTERM before its whole
    process tree is killed. ``on_error`` receives exceptions raised in background tasks
    (by default they are logged). A job without a timeout gets its task's default, else
    ``default_timeout`` (None: it runs until it ends). A job's process tree is held to its
    task's limits, each unset one taken from ``limits``. With ``cgroups`` each job also
    runs in a cgroup of its own there, killed whole when the job ends. With ``logs`` each
    job's stdout and stderr go to a log file of its own there (see
    :class:`~scheduler.worker.job_feed.JobFeed`), else they stay the scheduler's.
    ``launcher`` makes each job's process (default: a fresh fork per job from this
    process, :class:`~scheduler.worker.launch.ProcessLauncher`; see
    :mod:`scheduler.worker.launch` for the others) and is closed by :meth:`shutdown`.
    """

    def __init__(
        self,
        size: int,
        default_timeout: float | None,
        tasks: TaskRegistry,
        on_event: EventSink,
        grace: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_error: ErrorSink = _log_error,
        may_start: Callable[[], bool] = lambda: True,
        limits: Limits = NO_LIMITS,
        cgroups: JobCgroups | None = None,
        logs: JobLogs | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        """Set up an idle executor; nothing runs until :meth:`submit`.

        ``may_start`` is asked before each job starts; when it says no (the lease may have
        expired), the attempt is given back unstarted: reported ``revoked``.
        """
        self._may_start = may_start
        self._runner = Runner(size)
        self._default_timeout = default_timeout
        self._tasks = tasks
        self._on_event = on_event
        self._on_error = on_error
        self._grace = grace
        self._clock = clock
        self._limits = limits
        self._cgroups = cgroups
        self._launcher: Launcher = launcher or ProcessLauncher()
        self._imports = ImportNotices(self._launcher.fresh_per_job)
        self._feed = JobFeed(logs, on_event, clock)
        self._jobs: dict[str, Assignment] = {}
        """The attempts we hold: queued, parked, running, or stopping with a report due."""
        self._runs: dict[str, Run] = {}
        self._unreleased = Unreleased()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.launched = 0
        """How many job processes this executor has started."""
        self._deadlines = Deadlines(self._runs, clock)
        self._sampler = LimitSampler(self._runs, self._stop_over_limit)

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

    @property
    def holding(self) -> bool:
        """Whether any attempt is held (see :meth:`held`)."""
        return bool(self._jobs)

    def held(self) -> list[Held]:
        """Every attempt not yet reported closed (waiting, running, or being stopped for an
        eviction or a cancel), as a re-registering scheduler lists them. Changes nothing."""
        return [Held(a.id, a.attempt) for a in self._jobs.values()]

    def submit(self, assignment: Assignment, hold: bool = False) -> None:
        """Take an assignment: start it now, start it by evicting a less urgent job, or queue it.

        With ``hold`` the attempt awaits its :meth:`release`: its process is forked when
        it starts, but its task runs, its timeout counts and ``started`` is reported only
        once released. A job naming an unregistered task is reported ``failed`` at once
        and never started.
        A newer attempt of a job already held replaces the older one, whose process is
        stopped first and which is reported no further; an attempt no newer than the held
        one is ignored. Raises ``RuntimeError`` after :meth:`shutdown`.
        """
        if self._closed:
            raise RuntimeError("executor is shut down")
        key = (assignment.id, assignment.attempt)
        try:
            self._tasks.get(assignment.task)
        except UnknownTaskError as exc:
            if hold:
                self._unreleased.add(key)
            self._emit_failed(assignment, str(exc))
            return
        job_id = assignment.id
        held = self._jobs.get(job_id)
        if held is not None:
            if assignment.attempt <= held.attempt:
                log.debug("ignoring attempt %d of %s", assignment.attempt, job_id)
                return
            log.debug(
                "attempt %d of %s replaces attempt %d", assignment.attempt, job_id, held.attempt
            )
            self._end(held, "dropped")
        if hold:
            self._unreleased.add(key)
        self._jobs[job_id] = assignment
        self._carry_out(self._runner.submit(_local(assignment, evict=not hold), self._clock()))

    def cancel(self, job_id: str, attempt: int) -> bool:
        """Stop ``attempt`` of ``job_id`` for a cancel: drop it from the queue or stop its
        process tree, then report ``cancelled`` (at once if it was waiting, else once its
        processes are gone; if it ended by itself first, that end is reported instead).

        Returns False, changing nothing, if that attempt is not held.
        """
        return self._end_attempt(job_id, attempt, "cancelled")

    def drop(self, job_id: str, attempt: int) -> bool:
        """Forget ``attempt`` of ``job_id`` (the bus took it back): drop it from the queue
        or stop its process tree, and report nothing more about it.

        Returns False, changing nothing, if that attempt is not held.
        """
        self._unreleased.discard((job_id, attempt))
        return self._end_attempt(job_id, attempt, "dropped")

    def release(self, job_id: str, attempt: int) -> bool:
        """The bus journaled held ``attempt`` of ``job_id``: let its forked process run its
        task now (its timeout counts from now, and it is reported ``started``); one still
        waiting in the local queue starts as any job when it gets a slot.

        Returns False, changing nothing, if that attempt does not await its release.
        """
        if not self._unreleased.discard((job_id, attempt)):
            log.debug("ignoring a release of %s attempt %d: not held for one", job_id, attempt)
            return False
        run = self._runs.get(job_id)
        if run is None or run.assignment.attempt != attempt:
            # Still waiting for a slot: from now on it may take a less urgent job's.
            self._carry_out(self._runner.allow_eviction(job_id, self._clock()))
            return True
        if not self._may_start():
            log.info("not starting %s attempt %d: the lease may have lapsed", job_id, attempt)
            run.withhold()
            return True
        if run.release(self._clock(), self._timeout(run.assignment)):
            self._deadlines.watch(run.deadline)
            self._on_event(Report("started", job_id, attempt), run.assignment)
        return True

    def forget_unreleased(self) -> list[Key]:
        """The connection the held attempts came on is lost: drop every one still
        awaiting its release (as :meth:`drop`: nothing more is reported about it), and
        return them all, with those that ended meanwhile, whose reports must go too."""
        # They stay unreleased until all are dropped, and the queued ones go first: a
        # slot freed by dropping a forked one must not start a queued one as released.
        keys = self._unreleased.keys()
        for job_id, attempt in sorted(keys, key=lambda key: key[0] in self._runs):
            if self._end_attempt(job_id, attempt, "dropped"):
                log.info(
                    "dropped %s attempt %d: its connection was lost before its release",
                    job_id,
                    attempt,
                )
        self._unreleased.take_all()
        return keys

    def revoke(self, job_id: str, attempt: int) -> Assignment | None:
        """Give up ``attempt`` of ``job_id`` only if it has not started (it waits in the
        local queue): drop it, reporting nothing more about it, and return its assignment.

        Returns None, changing nothing, if that attempt is not held or has a process.
        """
        held = self._jobs.get(job_id)
        run = self._runs.get(job_id)
        if held is None or held.attempt != attempt or (run is not None and run.assignment is held):
            return None
        self._end(held, "dropped")
        return held

    async def shutdown(self) -> None:
        """Stop every job process (whole trees), forget every queued job, refuse new ones.

        Returns once every job process has been reaped. A job stopped here is reported no
        further; one that ended by itself meanwhile, or was being evicted or cancelled,
        gets its report.
        """
        self._closed = True
        self._runner.clear()
        self._unreleased.take_all()
        self._jobs.clear()
        for run in self._runs.values():
            if run.why is None:
                run.why = "shutdown"
        self._deadlines.cancel()
        self._sampler.cancel()
        self._feed.shutdown()
        stops = [run.process.stop() for run in self._runs.values()]
        # Each process's end callback (registered when it started) runs before the stop
        # that reaped it is seen done: nothing runs on, and nothing reports, after this.
        await asyncio.gather(*stops, *self._background, return_exceptions=True)
        self._feed.close()
        await self._launcher.close()

    def _end_attempt(self, job_id: str, attempt: int, why: Why) -> bool:
        held = self._jobs.get(job_id)
        if held is None or held.attempt != attempt:
            return False
        self._end(held, why)
        return True

    def _end(self, assignment: Assignment, why: Why) -> None:
        """Stop or unqueue the held ``assignment``; a cancel keeps it held until reported."""
        job_id = assignment.id
        run = self._runs.get(job_id)
        live = run is not None and run.assignment is assignment
        if why == "dropped" or not live:
            del self._jobs[job_id]
        if run is not None and live:
            run.why = why
        self._carry_out(self._runner.remove(job_id, self._clock()))
        if why == "cancelled" and not live:
            self._on_event(Report("cancelled", job_id, assignment.attempt), assignment)

    def _carry_out(self, decisions: Sequence[RunnerDecision]) -> None:
        pending: deque[RunnerDecision] = deque(decisions)
        while pending:
            decision = pending.popleft()
            if isinstance(decision, Start):
                pending.extend(self._start(decision.job_id))
            elif isinstance(decision, Evict):
                self._evict(decision)
            else:
                self._stop(decision)

    def _start(self, job_id: str) -> Sequence[Start]:
        """Fork the job's process (one awaiting its release waits on a go pipe, its task
        not run); returns what the runner starts next if the fork failed."""
        assignment = self._jobs[job_id]
        if not self._may_start():
            return self._give_back(assignment)
        held = (job_id, assignment.attempt) in self._unreleased
        carried = self._launcher.carries_records
        try:
            pipe, channels, go = open_pipes(self._feed, assignment, held, not carried)
        except OSError as exc:
            return self._not_started(assignment, exc)
        spec = self._tasks.spec(assignment.task)
        args, kwargs = call_arguments(assignment.args, assignment.runtime, assignment.results)
        fds: dict[str, object] = {
            "result_fd": OWN_RESULT_FD if pipe is None else pipe.write_fd,
            "progress_fd": channels.progress.write_fd,
            "log_path": channels.log_path,
        }
        if go is not None:
            fds["go_fd"] = go.read_fd
        process = self._launcher.job(
            run_task,
            (spec.function, args, kwargs, job_id, assignment.attempt),
            fds,
            name=f"job-{job_id}",
            grace=self._grace,
            cgroups=self._cgroups,
        )
        try:
            process.start()
        except OSError as exc:
            close_pipes(pipe, channels, go)
            return self._not_started(assignment, exc)
        self.launched += 1
        forked(pipe, go)
        self._feed.started(assignment, channels)
        started_at = self._clock()
        timeout = self._timeout(assignment)
        deadline = math.inf if timeout is None or held else started_at + timeout
        limits = spec.limits.over(self._limits)
        run = Run(assignment, process, pipe, channels, started_at, deadline, limits, go=go)
        self._runs[job_id] = run
        if limits.any:
            self._sampler.watch()
        # A callback rather than a task awaiting the process, and one timer for every
        # deadline: each costs the loop, and pages written after a fork are copied first.
        process.add_done_callback(partial(self._ended, run))
        self._deadlines.watch(run.deadline)
        log.debug("started %s attempt %d pid %d", job_id, assignment.attempt, process.pid)
        if go is None:
            self._on_event(Report("started", job_id, assignment.attempt), assignment)
        return []

    def _timeout(self, assignment: Assignment) -> float | None:
        """The timeout ``assignment`` runs under: its own, else its task's, else ours."""
        spec = self._tasks.spec(assignment.task)
        return assignment.timeout or spec.timeout or self._default_timeout

    def _give_back(self, assignment: Assignment) -> Sequence[Start]:
        """Report ``assignment`` ``revoked`` instead of starting it (the bus may have given
        it to another scheduler); return what the runner starts next."""
        job_id = assignment.id
        log.warning(
            "not starting %s attempt %d: the lease may have expired", job_id, assignment.attempt
        )
        del self._jobs[job_id]
        self._on_event(Report("revoked", job_id, assignment.attempt), assignment)
        return self._runner.exited(job_id, self._clock())

    def _not_started(self, assignment: Assignment, exc: OSError) -> Sequence[Start]:
        """The job's process could not be made: fail it; return what the runner starts next."""
        job_id = assignment.id
        log.error("could not start job %s: %s", job_id, exc)
        del self._jobs[job_id]
        self._emit_failed(assignment, f"could not start the job process: {exc}")
        return self._runner.exited(job_id, self._clock())

    def _evict(self, decision: Evict) -> None:
        run = self._runs[decision.job_id]
        run.why = "evicted"
        run.evictions = decision.evictions
        log.debug("evicting %s (eviction %d)", decision.job_id, decision.evictions)
        self._spawn(run.process.stop())

    def _stop(self, decision: StopRun) -> None:
        log.debug("stopping %s", decision.job_id)
        self._spawn(self._runs[decision.job_id].process.stop())

    def _stop_over_limit(self, run: Run, reason: str) -> None:
        """Kill ``run``'s whole tree at once; its end is reported ``failed`` with ``reason``."""
        log.info("stopping %s: %s", run.assignment.id, reason)
        run.why, run.limit_error = "limited", reason
        self._spawn(run.process.stop(grace=0))

    def _ended(self, run: Run, result: ProcessResult) -> None:
        """``run``'s process is reaped (by itself, its timeout or a stop): report, refill."""
        try:
            self._report_end(run, result)
        except Exception as exc:
            self._on_error(exc)

    def _report_end(self, run: Run, result: ProcessResult) -> None:
        assignment = run.assignment
        job_id = assignment.id
        del self._runs[job_id]
        unreleased = run.go is not None
        run.close()
        if self._jobs.get(job_id) is assignment:
            del self._jobs[job_id]
        record = collect(run, result)
        self._imports.seen(assignment.task, record.imported)
        log.debug("%s attempt %d ended: %s", job_id, assignment.attempt, result)
        report = closing_report(job_id, assignment.attempt, ending(run, result, record))
        if unreleased and report is not None and report.event != "cancelled":
            # Its task never ran, whatever ended the process: the attempt goes back.
            report = Report("revoked", job_id, assignment.attempt)
        tail = self._feed.ended(assignment, report is not None)
        if report is not None:
            if tail:
                report = msgspec.structs.replace(report, output=tail)
            self._on_event(report, assignment)
        self._carry_out(self._runner.exited(job_id, self._clock()))

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._on_error(error)

    def _emit_failed(self, assignment: Assignment, error: str) -> None:
        self._on_event(Report("failed", assignment.id, assignment.attempt, error=error), assignment)
