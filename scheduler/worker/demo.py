"""``python -m scheduler.test_scheduler``: run the bus's ``sleep`` jobs, ``-s`` at a time.

The original test scheduler's flags still work (``-s``, ``-t``, ``-d``), and ``-t``
still defaults to 10 s. Each job step
(start, end, eviction, timeout) is logged as one INFO line: that is the demo's output;
``-q`` logs only the steps that went wrong, as ``scheduler.worker`` does by default.
To run your own tasks, use ``python -m scheduler.worker`` (same options plus ``--tasks``).
"""

from __future__ import annotations

from typing import Any

import click

from scheduler.tasks import TaskRegistry
from scheduler.worker.cli import run_scheduler, scheduler_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@scheduler_options(default_timeout=10.0)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Log no line for a job that starts or succeeds, only for failures, timeouts, "
    "evictions and cancels (as scheduler.worker does without --log-jobs). At hundreds of "
    "short jobs a second the two lines per job cost the scheduler up to a sixth of its CPU.",
)
def cli(quiet: bool, **options: Any) -> None:
    """Run jobs from the schedbus bus: the built-in sleep task, SIZE at a time.

    Each job runs in its own process; one INFO line is logged per start, end, eviction
    and timeout (with -q only for the jobs that did not succeed). If the bus goes away,
    jobs keep running and the scheduler reconnects and reclaims them. SIGINT or SIGTERM
    stops every running job and exits 0.
    """
    run_scheduler(TaskRegistry(), log_jobs=not quiet, **options)
