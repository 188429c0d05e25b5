"""The modules a task imports in every job: said once per task, with what to do about it.

A job process starts with what its fork server (or scheduler) had imported: the task
modules and what they import at their top. What a task imports later, inside the task or
on a library's first use (numpy 2 loads ``numpy.random``, and with it OpenSSL's
``libcrypto``, at the first ``np.random``), is imported again in every job process, at a
cost that can exceed the task's own work. Each job process reports those modules with its
result (:func:`~scheduler.worker.task_result.imported_since`); :class:`ImportNotices`
logs them once per task, where a process is forked per job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

log = logging.getLogger(__name__)

SHOWN_NAMES: Final = 8
"""Most module names one notice lists."""


class ImportNotices:
    """Logs, once per task, the modules its job processes import that their parent had
    not (nothing in warm mode, where a slot process imports them once)."""

    def __init__(self, every_job: bool) -> None:
        """``every_job``: each job runs in a process of its own, which pays the imports."""
        self._every_job = every_job
        self._told: set[str] = set()

    def seen(self, task: str, imported: Sequence[str]) -> bool:
        """Note that a job of ``task`` imported ``imported``; log it the first time for
        that task. Returns whether it logged."""
        if not imported or not self._every_job or task in self._told:
            return False
        self._told.add(task)
        names = entry_points(imported)
        shown = ", ".join(names[:SHOWN_NAMES])
        more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
        log.warning(
            "task %s imports modules in its job process (%s%s): every job imports them "
            "again; import them at the top of the task's module to have them loaded once, "
            "before the jobs are forked",
            task,
            shown,
            more,
        )
        return True


def entry_points(imported: Sequence[str]) -> list[str]:
    """The modules of ``imported`` whose package was not imported with them, the
    submodules of packages loaded before first (``numpy.random`` before ``hashlib``):
    what the task's module would import to have them all."""
    new = set(imported)
    entries = [name for name in imported if name.rpartition(".")[0] not in new]
    return [n for n in entries if "." in n] + [n for n in entries if "." not in n]
