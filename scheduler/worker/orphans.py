"""What the scheduler adopts as a child subreaper: frozen, killed and reaped.

A job process that dies leaves its descendants to the scheduler when the scheduler is a
child subreaper (:meth:`OrphanReaper.enable`). The reaper freezes every such adopted
process and everything below it at once (:class:`~scheduler.worker.containment.Freezer`),
so a chain that keeps re-forking (each parent exiting at once) is stopped whole in one
sweep rather than one generation per sweep, then kills them all and reaps each adopted one
by pid (never ``waitpid(-1)``, which could take a job's exit status).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from scheduler.worker.containment import Freezer, set_child_subreaper

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "LAZY_SWEEP_S",
    "REAPER",
    "OrphanReaper",
    "contain_orphans",
    "keep_child",
    "kill_orphans",
    "release_child",
]

log = logging.getLogger(__name__)

LAZY_SWEEP_S: Final = 1.0
"""How soon after a job that exited by itself the scheduler looks for what it left."""


class OrphanReaper:
    """Kills and reaps what this process adopts as a child subreaper.

    ``is_job(pid)`` tells the process's own live job processes (and other children it
    keeps), which are never touched: every other child is an adopted orphan. Does nothing
    until :meth:`enable`; call only from the event loop's thread.
    """

    def __init__(self, is_job: Callable[[int], bool]) -> None:
        """An idle reaper; nothing is looked at until :meth:`enable`."""
        self.is_job = is_job
        self.enabled = False
        self._adopted: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._urgent = False

    def enable(self) -> None:
        """Make this process a child subreaper and start looking after its orphans."""
        set_child_subreaper()
        self.enabled = True

    def sweep_soon(self, *, urgent: bool) -> None:
        """Look for adopted orphans on the next loop pass if ``urgent`` (a job was killed
        or died by a signal), else within :data:`LAZY_SWEEP_S` (a job exited by itself,
        after killing its own leftovers; this catches one that skipped that)."""
        if not self.enabled or (self._timer is not None and (self._urgent or not urgent)):
            return
        if self._timer is not None:
            self._timer.cancel()
        import asyncio  # here: job processes and the fork server never load it

        loop = asyncio.get_running_loop()
        self._urgent = urgent
        self._timer = loop.call_later(0 if urgent else LAZY_SWEEP_S, self.sweep)

    def sweep(self) -> None:
        """Freeze every child of this process that is not a live job and everything below
        them, kill them all, and reap each adopted one (at once if it is dead already,
        else as soon as it is)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        freezer = Freezer(adopter=os.getpid(), spare=self.is_job)
        try:
            freezer.freeze()
        finally:
            freezer.kill()
        if killed := len(freezer.members) - freezer.zombies:
            log.info("killed %d process(es) left behind by jobs", killed)
        self.reap(freezer.adopted)

    def reap(self, pids: list[int]) -> None:
        """Reap each of ``pids`` (adopted children, killed): now if it is dead, else once
        its pidfd says it is. Either way, what each one had below it is ours once it is
        gone: another sweep takes it."""
        reaped = False
        for pid in pids:
            if pid in self._adopted:
                continue
            if _reaped(pid):
                reaped = True
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError as exc:
                # Out of descriptors: it is killed; a later sweep reaps it.
                log.warning("cannot watch adopted pid %d: %s", pid, exc)
                continue
            self._adopted[pid] = pidfd
            import asyncio

            asyncio.get_running_loop().add_reader(pidfd, self._reap, pid)
        if reaped:
            self.sweep_soon(urgent=True)

    def _reap(self, pid: int) -> None:
        pidfd = self._adopted.pop(pid)
        import asyncio

        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        _reaped(pid)
        # Its own children, killed with it, are ours now: reap them too.
        self.sweep_soon(urgent=True)


def _reaped(pid: int) -> bool:
    """Reap the child ``pid`` if it has exited; whether it is gone now."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


_live_jobs: set[int] = set()
"""The pids of the job processes started here and not yet reaped, and of the children kept
by :func:`keep_child`: never taken for orphans."""
REAPER = OrphanReaper(_live_jobs.__contains__)
"""The scheduler's reaper of what its job processes leave behind (:func:`contain_orphans`)."""


def contain_orphans() -> None:
    """Make this process a child subreaper that kills and reaps what its job processes
    leave behind when they die (a job killed by a signal re-parents its descendants here).

    For a process that runs job processes and has no other children of its own (the
    scheduler): every child that is not a live job process is killed. Raises ``OSError``
    if the kernel refuses.
    """
    REAPER.enable()


def keep_child(pid: int) -> None:
    """Never take the child ``pid`` (a fork server) for an orphan, until
    :func:`release_child`."""
    _live_jobs.add(pid)


def release_child(pid: int) -> None:
    """Undo :func:`keep_child` for ``pid`` (reaped by its owner by now)."""
    _live_jobs.discard(pid)


def kill_orphans() -> None:
    """Kill at once every child of this process that is not a live job process, if
    :func:`contain_orphans` was called (else nothing): for a scheduler about to exit,
    which will not be there to reap them (init will)."""
    if REAPER.enabled:
        REAPER.sweep()
