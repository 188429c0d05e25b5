"""Task modules for the tests: declared with ``@task`` in both of its forms."""

from __future__ import annotations

import os
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
