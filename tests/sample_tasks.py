"""Task modules for the tests: declared with ``@task`` in both of its forms."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from scheduler.tasks import ATTEMPT_ENV, JOB_ID_ENV, task

PROBE_ENV = "SCHEDBUS_TEST_PROBE"


@task
def double(runtime: float) -> float:
    """Registered under its own name, with no defaults."""
    return runtime * 2


@task(name="job-probe", priority=2, timeout=30)
def probe(runtime: float) -> None:
    """Write the job id and attempt the job process sees to the file named by
    ``SCHEDBUS_TEST_PROBE``."""
    Path(os.environ[PROBE_ENV]).write_text(f"{os.environ[JOB_ID_ENV]} {os.environ[ATTEMPT_ENV]}")


def helper(runtime: float) -> None:
    """Not a task: not declared."""


@task
def add(a: float, b: float) -> float:
    """Return ``a + b``: called with keyword or positional JSON arguments."""
    return a + b


@task
def describe(*items: object, **options: object) -> dict[str, object]:
    """Return what it was called with, as JSON."""
    return {"items": list(items), "options": options}


class TaskFailure(Exception):
    """What :func:`explode` raises: a user-defined exception type."""


@task
def explode(message: str) -> None:
    """Fail with :class:`TaskFailure` carrying ``message``."""
    raise TaskFailure(message)


@task
def too_big(size: int) -> str:
    """Return a string of ``size`` characters (JSON of ``size + 2`` bytes)."""
    return "x" * size


@task
def spawn_grandchildren(linger: float) -> dict[str, int]:
    """Start two grandchildren that would outlive the task by ``linger`` seconds: one
    ``sleep`` program and one forked copy of this process (which holds the job's result
    pipe open). Return their pids, and end at once: the job's end must stop both."""
    program = subprocess.Popen(["sleep", str(linger)])
    forked = os.fork()
    if forked == 0:
        time.sleep(linger)
        os._exit(0)
    return {"program": program.pid, "forked": forked}


@task(priority=1, timeout=1.0)
def nap(seconds: float) -> None:
    """Sleep ``seconds``; its jobs default to priority 1 and a 1 s timeout."""
    time.sleep(seconds)
