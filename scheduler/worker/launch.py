"""How the executor starts a job's process: the one seam between it and the ways to run one.

:class:`ProcessLauncher` forks a fresh process per job from the scheduler
(:class:`~scheduler.worker.process.JobProcess`; ``--no-fork-server``);
:class:`~scheduler.worker.forkserver_launcher.ForkServerLauncher` has a lean fork server fork
each job (the default); :class:`~scheduler.worker.warm.WarmPool` runs each job in a slot
process that serves jobs one after another (``--warm N``). Each hands back a
:class:`JobHandle`, which is all the executor knows of a running job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol

from scheduler.worker.cgroups import JobCgroups
from scheduler.worker.process import JobProcess, ProcessResult

OWN_RESULT_FD: Final = -2
"""The ``result_fd`` the executor gives a job whose launcher carries its record back
(:attr:`Launcher.carries_records`): the process that runs the job writes it to a
descriptor of its own."""


class JobHandle(Protocol):
    """One job's run as the executor drives it (see :class:`JobProcess` for the meaning
    of each member: every implementation keeps those guarantees)."""

    @property
    def pid(self) -> int:
        """The pid (and process group) of the process running the job."""
        ...

    @property
    def result(self) -> ProcessResult | None:
        """The job's result once it ended, else None."""
        ...

    @property
    def cpu_base(self) -> float:
        """CPU seconds the process running the job had used before it (as ``/proc``
        counts them): what a CPU limit does not count."""
        ...

    def start(self) -> None:
        """Start the job on the running event loop; ``OSError`` if it cannot."""
        ...

    def time_out(self) -> None:
        """Stop the job's whole process tree now as a timeout."""
        ...

    async def stop(self, grace: float | None = None) -> ProcessResult:
        """Stop the job's whole process tree and return its result."""
        ...

    def add_done_callback(self, callback: Callable[[ProcessResult], None]) -> None:
        """Call ``callback(result)`` once from the event loop when the job has ended."""
        ...


class Launcher(Protocol):
    """Makes the :class:`JobHandle` of each job, and releases what it keeps at the end."""

    fresh_per_job: bool
    """Whether each job runs in a process of its own (not warm mode's reused ones)."""

    carries_records: bool
    """Whether a job's record comes back in its :class:`ProcessResult` (``record``), the
    job given :data:`OWN_RESULT_FD`, rather than through a result pipe of the executor."""

    def job(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        *,
        name: str | None,
        grace: float,
        cgroups: JobCgroups | None,
    ) -> JobHandle:
        """A handle that runs ``target(*args, **kwargs)`` once started."""
        ...

    async def ready(self) -> None:
        """Return once it can start jobs (a fork server has imported the task modules)."""
        ...

    async def close(self) -> None:
        """Stop every process it keeps between jobs; return once they are reaped."""
        ...


class ProcessLauncher:
    """A fresh forked process per job (:class:`JobProcess`): the default."""

    fresh_per_job = True
    carries_records = False

    def job(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        *,
        name: str | None,
        grace: float,
        cgroups: JobCgroups | None,
    ) -> JobHandle:
        """A :class:`JobProcess` running ``target(*args, **kwargs)``."""
        return JobProcess(target, args, kwargs, name=name, grace=grace, cgroups=cgroups)

    async def ready(self) -> None:
        """Nothing to wait for: each job is forked when it starts."""

    async def close(self) -> None:
        """Nothing: no process outlives its job."""
