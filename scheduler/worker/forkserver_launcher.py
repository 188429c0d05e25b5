"""The executor's launcher when the fork server is on (the default).

:class:`ForkServerLauncher` makes each job a :class:`ServedJobProcess`, a
:class:`~scheduler.worker.process.JobProcess` whose process the fork server forks and
reaps through the link (:mod:`scheduler.worker.forkserver_link`), while everything else
stays in the scheduler as before: the pidfd it watches, the stop of the whole tree, the
timeout, the cgroup, the result and progress pipes (their write ends are sent along with
``SCM_RIGHTS``). A job the fork server cannot serve is forked here instead.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Mapping

from scheduler.tasks import TaskRegistry
from scheduler.worker.cgroups import JobCgroups
from scheduler.worker.forkserver_link import (
    REPLY_TIMEOUT_S,
    ForkServerError,
    ForkServerLink,
    ServerProcess,
    Unservable,
)
from scheduler.worker.process import JobProcess, ProcessResult

__all__ = ["ForkServerLauncher", "ServedJobProcess"]

log = logging.getLogger(__name__)


class ServedJobProcess(JobProcess):
    """A :class:`~scheduler.worker.process.JobProcess` forked and reaped by the fork server
    of ``link`` (forked here instead if that cannot be done; see the module)."""

    def __init__(
        self,
        link: ForkServerLink,
        target: Callable[..., object],
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        name: str | None = None,
        grace: float = 2.0,
        cgroups: JobCgroups | None = None,
    ) -> None:
        """As :class:`~scheduler.worker.process.JobProcess`, through ``link``."""
        super().__init__(target, args, kwargs, name=name, grace=grace, cgroups=cgroups)
        self._link = link
        self._server: ServerProcess | None = None

    def _launch(self) -> tuple[int, int]:
        cgroup = None if self._cgroup is None else str(self._cgroup)
        try:
            self._server, pid, pidfd = self._link.fork(
                self._target, self._args, self._kwargs, cgroup
            )
        except Unservable as exc:
            log.debug("job %s forked here: %s", self._name, exc)
            return super()._launch()
        except ForkServerError as exc:
            log.debug("job %s forked here: %s", self._name, exc)  # the link logged why
            return super()._launch()
        return pid, pidfd

    def _has_exited(self) -> bool:
        if self._server is None:
            return super()._has_exited()
        # Not our child: waitid cannot peek; a pidfd reads as ready once its process ended.
        poll = select.poll()
        poll.register(self._pidfd, select.POLLIN)
        return bool(poll.poll(0))

    def _collect(self, pid: int) -> ProcessResult:
        if self._server is None:
            return super()._collect(pid)
        return self._link.reap(self._server, pid)


class ForkServerLauncher:
    """The executor's launcher (:class:`~scheduler.worker.launch.Launcher`) that has a
    fork server fork every job; the executor closes it when it shuts down."""

    fresh_per_job = True
    carries_records = False

    def __init__(self, tasks: TaskRegistry, timeout: float = REPLY_TIMEOUT_S) -> None:
        """Start the fork server for ``tasks``' modules, which has ``timeout`` seconds to
        answer each fork and reap (see :class:`ForkServerLink`)."""
        self.link = ForkServerLink(tasks, timeout)

    def job(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        *,
        name: str | None,
        grace: float,
        cgroups: JobCgroups | None,
    ) -> JobProcess:
        """A job process that the fork server will fork when it is started."""
        return ServedJobProcess(
            self.link, target, args, kwargs, name=name, grace=grace, cgroups=cgroups
        )

    async def ready(self) -> None:
        """Wait until the fork server has imported the task modules."""
        await self.link.ready()

    async def close(self) -> None:
        """Stop the fork server."""
        self.link.close()
