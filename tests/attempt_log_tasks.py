"""A task that records each attempt's start and end in a shared file, for tests that check
which attempts of a job ran and whether two ever overlapped.

Serve it with ``python -m scheduler.worker --tasks tests/attempt_log_tasks.py`` and set
``SCHEDBUS_ATTEMPT_LOG`` to the file. Each line is ``start|end JOB_ID ATTEMPT TIME PID``
(``TIME`` from ``time.time()``); an attempt that was stopped has no ``end`` line.
"""

from __future__ import annotations

import os
import time

from scheduler.tasks import ATTEMPT_ENV, JOB_ID_ENV, task

LOG_ENV = "SCHEDBUS_ATTEMPT_LOG"


def _record(what: str) -> None:
    """Append one line in a single O_APPEND write, so lines from many jobs never
    interleave, and fsync it, so it survives whatever kills the job next."""
    line = (
        f"{what} {os.environ[JOB_ID_ENV]} {os.environ[ATTEMPT_ENV]} {time.time()} {os.getpid()}\n"
    )
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@task(name="recorded_sleep")
def recorded_sleep(runtime: float) -> None:
    """Record ``start``, sleep ``runtime`` seconds, record ``end``."""
    _record("start")
    time.sleep(runtime)
    _record("end")
