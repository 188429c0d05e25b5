"""A task that fails its first attempts, for tests of retries: serve it with
``python -m scheduler.worker --tasks tests/flaky_tasks.py``."""

from __future__ import annotations

import os

from scheduler.tasks import ATTEMPT_ENV, task


@task(name="flaky")
def flaky(value: int, failures: int = 1) -> int:
    """Raise on the first ``failures`` attempts of the job, then return ``value``."""
    attempt = int(os.environ[ATTEMPT_ENV])
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return value
