"""The executor's two timers over its running jobs: each job's deadline, and the sampling
of the limited jobs' process trees. One loop timer each, however many jobs run: each
timer costs the loop, and pages written after a fork are copied first."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Final

from scheduler.policy.limits import Usage, over_limits
from scheduler.worker import proc_stat
from scheduler.worker.job_run import Run

LIMIT_SAMPLE_S: Final = 0.2
"""Seconds between two samples of the limited jobs' process trees."""


class Deadlines:
    """Times out each of ``runs`` once ``clock`` passes its deadline, with one loop timer
    armed for the earliest one."""

    def __init__(self, runs: Mapping[str, Run], clock: Callable[[], float]) -> None:
        """Watch ``runs`` (the executor's, by job id); nothing is armed until :meth:`watch`."""
        self._runs = runs
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf
        """When the timer fires (``clock`` time): no later than the earliest deadline of
        the running jobs."""

    @property
    def armed(self) -> bool:
        """Whether a deadline is watched."""
        return self._timer is not None

    def watch(self, deadline: float) -> None:
        """Check the deadlines at ``deadline`` unless a check comes sooner."""
        if deadline >= self._at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._at = deadline
        delay = max(0.0, deadline - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def cancel(self) -> None:
        """Watch no deadline any more."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = None, math.inf

    def _check(self) -> None:
        """Time out every job past its deadline; wait for the next deadline."""
        self._timer, self._at = None, math.inf
        now = self._clock()
        for run in list(self._runs.values()):
            if run.deadline <= now:
                run.process.time_out()
            else:
                self.watch(run.deadline)


class LimitSampler:
    """While one of ``runs`` has a limit, samples the memory and CPU time of every limited
    job's process tree each :data:`LIMIT_SAMPLE_S` (one read of ``/proc``) and calls
    ``stop(run, reason)`` for each past a limit
    (:func:`scheduler.policy.limits.over_limits` decides). Without limits nothing is
    sampled."""

    def __init__(self, runs: Mapping[str, Run], stop: Callable[[Run, str], None]) -> None:
        """Sample ``runs`` (the executor's, by job id) once :meth:`watch` is called."""
        self._runs = runs
        self._stop = stop
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Sample in :data:`LIMIT_SAMPLE_S` unless a sample is due already."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LIMIT_SAMPLE_S, self._sample)

    def cancel(self) -> None:
        """Sample no more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sample(self) -> None:
        """Sample every limited running job's tree; stop those past a limit; sample again
        later while a limited job runs on."""
        self._timer = None
        limited = {
            job_id: run.limits
            for job_id, run in self._runs.items()
            if run.limits.any and run.why is None
        }
        if not limited:
            return
        table = proc_stat.proc_table()
        samples: dict[str, Usage] = {}
        for job_id in limited:
            process = self._runs[job_id].process
            usage = proc_stat.tree_usage(process.pid, table)
            if usage is not None:
                rss, cpu_s = usage
                samples[job_id] = Usage(rss, cpu_s - process.cpu_base)
        for job_id, reason in over_limits(limited, samples).items():
            self._stop(self._runs[job_id], reason)
        self.watch()
