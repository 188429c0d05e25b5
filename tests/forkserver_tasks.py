"""Tasks for the fork server tests: what the job process has imported, an exit status."""

from __future__ import annotations

import sys

from scheduler.tasks import task

NETWORK_STACK = ("asyncio", "websockets", "click", "scheduler.worker.executor", "multiprocessing")
"""Modules a job process forked by the fork server must not have inherited."""


@task
def network_modules() -> list[str]:
    """Which of :data:`NETWORK_STACK` this job process has imported."""
    return [name for name in NETWORK_STACK if name in sys.modules]


@task
def exit3() -> None:
    """Exit with status 3."""
    sys.exit(3)
