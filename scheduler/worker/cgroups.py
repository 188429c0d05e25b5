"""Optional cgroup v2 containment: one cgroup per job inside a cgroup delegated to the
scheduler (``--cgroup PATH``), killed whole with ``cgroup.kill`` when the job ends.

Used only when the scheduler is given such a directory (systemd: ``Delegate=yes``); no
cgroup is ever made anywhere else. It adds what the subreaper cannot do: a process that
left the job's tree is still in the job's cgroup, and a scheduler restarted after it was
killed together with its jobs kills what they left (the cgroups of a scheduler that is
gone) before it starts anything. Needs Linux 5.14 (``cgroup.kill``). No controller is
enabled: memory and CPU limits stay those of :mod:`scheduler.policy.limits`.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from pathlib import Path
from typing import Final

from scheduler.worker.lazy_log import lazy_logger

__all__ = ["CgroupError", "JobCgroups", "join"]

log = lazy_logger(__name__)

PREFIX: Final = "schedbus-job-"
"""Job cgroups are named ``PREFIX<scheduler pid>-<n>``."""


class CgroupError(Exception):
    """The directory given cannot hold job cgroups; the message says why."""


class JobCgroups:
    """Makes, kills and removes job cgroups under one delegated cgroup ``path``."""

    def __init__(self, path: Path) -> None:
        """Use ``path`` as it is; :meth:`open` checks it and clears leftovers first."""
        self.path = path
        self._numbers = itertools.count(1)

    @classmethod
    def open(cls, path: Path) -> JobCgroups:
        """Check that ``path`` is a writable cgroup v2 directory that supports
        ``cgroup.kill``, kill and remove what schedulers no longer running left in it,
        and return it. Raises :class:`CgroupError` saying what is wrong."""
        if not (path / "cgroup.procs").is_file():
            raise CgroupError(f"{path} is not a cgroup v2 directory (it has no cgroup.procs)")
        if not (path / "cgroup.kill").is_file():
            raise CgroupError(
                f"{path} has no cgroup.kill: give a cgroup below the root, on Linux 5.14 or later"
            )
        if not os.access(path, os.W_OK) or not os.access(path / "cgroup.procs", os.W_OK):
            raise CgroupError(
                f"{path} is not writable by this user: delegate it (systemd: Delegate=yes)"
            )
        cgroups = cls(path)
        cgroups.clear_leftovers()
        return cgroups

    def clear_leftovers(self) -> int:
        """Kill and remove the job cgroups of schedulers that no longer run; return how
        many there were."""
        cleared = 0
        for leftover in self.path.glob(f"{PREFIX}*"):
            if _owner_alive(leftover.name):
                continue
            log.warning("killing what a gone scheduler left in %s", leftover)
            self.kill(leftover)
            cleared += 1
            for _ in range(200):
                if self.remove(leftover):
                    break
                time.sleep(0.01)
        return cleared

    def make(self) -> Path:
        """Make a new, empty job cgroup and return its path; ``OSError`` if it cannot."""
        cgroup = self.path / f"{PREFIX}{os.getpid()}-{next(self._numbers)}"
        os.mkdir(cgroup)
        return cgroup

    @staticmethod
    def kill(cgroup: Path) -> None:
        """SIGKILL every process in ``cgroup`` and its descendants (``cgroup.kill``)."""
        try:
            (cgroup / "cgroup.kill").write_text("1")
        except FileNotFoundError:
            pass

    @staticmethod
    def remove(cgroup: Path) -> bool:
        """Remove ``cgroup`` if it is empty; return whether it is gone."""
        try:
            os.rmdir(cgroup)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False  # its killed processes are not all gone yet
            raise
        return True


def join(cgroup: str) -> None:
    """Move the calling process into ``cgroup`` (a job process, before it runs its task)."""
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write("0")


def _owner_alive(name: str) -> bool:
    """Whether the scheduler whose pid is in the job cgroup ``name`` still runs."""
    try:
        pid = int(name.removeprefix(PREFIX).split("-", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # A restarted scheduler may have been given the pid of the one that was killed.
    return pid != os.getpid()
