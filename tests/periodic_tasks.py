"""A periodic task for the end-to-end tests, kept out of ``sample_tasks`` so that the
schedulers of other tests do not declare a schedule."""

from __future__ import annotations

import os
import time

from scheduler.tasks import ATTEMPT_ENV, JOB_ID_ENV, task

LOG_ENV = "SCHEDBUS_TEST_PERIODIC_LOG"


@task(every=1)
def every_second() -> None:
    """Append this firing's job id, attempt and the time it ran to the file
    ``SCHEDBUS_TEST_PERIODIC_LOG`` names (one short line, appended atomically)."""
    line = f"{os.environ[JOB_ID_ENV]} {os.environ[ATTEMPT_ENV]} {time.time():.6f}\n"
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
