"""Tasks for the fork server tests: what the job process has imported, an exit status."""

from __future__ import annotations

import os
import sys

from scheduler.tasks import task

NETWORK_STACK = ("asyncio", "websockets", "click", "scheduler.worker.executor", "multiprocessing")
"""Modules a job process forked by the fork server must not have inherited."""
SCHEDULE_STACK = ("croniter", "dateutil", "scheduler.protocol", "scheduler.policy.schedules")
"""Modules only a task that declares a schedule needs: the fork server (whose every page
each fork maps again) has not imported them for tasks that declare none."""
FORK_HOOKS = ("logging", "threading")
"""Modules that register fork hooks, which run in every job process forked after them:
the fork server has not imported them for tasks that do not import them."""


@task
def network_modules() -> list[str]:
    """Which of :data:`NETWORK_STACK` this job process has imported."""
    return [name for name in NETWORK_STACK if name in sys.modules]


@task
def schedule_modules() -> list[str]:
    """Which of :data:`SCHEDULE_STACK` this job process has imported."""
    return [name for name in SCHEDULE_STACK if name in sys.modules]


@task
def fork_hook_modules() -> list[str]:
    """Which of :data:`FORK_HOOKS` this job process has imported."""
    return [name for name in FORK_HOOKS if name in sys.modules]


@task
def exit3() -> None:
    """Exit with status 3."""
    sys.exit(3)


@task
def lazy_import() -> str:
    """Import :mod:`colorsys` inside the task: every job process imports it again."""
    import colorsys

    return colorsys.__name__


@task
def job_side_files() -> list[str]:
    """The files this job process's setup and its fork server's loop were loaded from."""
    names = ("scheduler.worker.child", "scheduler.worker.forkserver")
    return [str(sys.modules[name].__file__) for name in names]


@task
def scheduling_policy() -> dict[str, bool]:
    """Whether this job process, and a process it starts, run as batch work."""
    import subprocess

    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        "job": os.sched_getscheduler(0) == os.SCHED_BATCH,
        "its_child": int(child.stdout) == os.SCHED_BATCH,
    }
