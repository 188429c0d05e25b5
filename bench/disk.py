"""What a file costs where the bench keeps its state: a job that writes output has its
log file created there (a fresh spool, ``--log-dir`` under ``XDG_STATE_HOME``), and on some
file systems that alone weighs on the per-job figures.

On the bench's usual guest (an ext4 virtual disk) one create cost from 14 to 570 µs of
CPU, changing from minute to minute in every directory of the disk, and warm mode ran
between 1,129 and 2,598 jobs/s while every job still created a file. So the run reports
the cost in its own scratch directory (``TMPDIR`` chooses where that is), at its start and
at its end.
"""

from __future__ import annotations

import os
import resource
import tempfile
from pathlib import Path

from bench.stats import median
from scheduler.worker.job_output import SPOOL_FLAGS


def file_create_us(parent: Path, files: int = 200, rounds: int = 3) -> float:
    """CPU microseconds per file created as a job's spool is, in a new directory under
    ``parent`` (as each scheduler's log directory is): the median of ``rounds`` rounds of
    ``files`` files. Everything it made is removed."""
    per_file = []
    for _ in range(rounds):
        directory = tempfile.mkdtemp(dir=parent)
        before = _cpu_s()
        for n in range(files):
            os.close(os.open(os.path.join(directory, f"{n}.1.log"), SPOOL_FLAGS, 0o600))
        per_file.append((_cpu_s() - before) * 1e6 / files)
        for n in range(files):
            os.unlink(os.path.join(directory, f"{n}.1.log"))
        os.rmdir(directory)
    return round(median(per_file), 1)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
