"""Which report closes an attempt whose process ended. Pure.

Every attempt gets exactly one closing report, made once its processes are gone:
``succeeded`` / ``failed`` / ``timed_out`` when it ended by itself (or by its timeout),
``evicted`` or ``cancelled`` when the scheduler stopped it for that reason, ``failed``
with the reason when it went past its memory or CPU limit, and none when the bus took it
back (``dropped``) or the scheduler shut down.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Literal

from scheduler.protocol import Report
from scheduler.protocol_types import SchedulerReport

Outcome = Literal["exited", "timed_out", "stopped"]
"""How a job process ended: by itself, past its deadline, or stopped by the scheduler."""

Why = Literal["evicted", "cancelled", "dropped", "shutdown", "limited"]
"""Why the scheduler stops a job process; decides which report, if any, its end gets."""


@dataclass(frozen=True, slots=True)
class Ending:
    """How one attempt's process ended, and why the scheduler stopped it if it did.

    ``exit_code`` follows multiprocessing (0 ok, >0 exit status, -N killed by signal N,
    None if lost); ``error``/``traceback``: the exception the task raised, if any;
    ``result``: what it returned; ``timeout_s``: the timeout it ran under;
    ``limit_error``: which limit it went past (with ``why="limited"``).
    """

    outcome: Outcome
    exit_code: int | None
    wall_s: float
    cpu_s: float
    max_rss_kb: int
    why: Why | None = None
    evictions: int = 0
    limit_error: str = ""
    timeout_s: float = 0.0
    error: str | None = None
    traceback: str | None = None
    result: object | None = None  # mypyc cannot build a bare `object` field


def closing_report(job_id: str, attempt: int, ending: Ending) -> Report | None:
    """The report that closes ``attempt`` of ``job_id``, or None when nobody may hear of
    it (the bus took it back, or the scheduler shut down). Changes nothing."""
    if ending.why == "dropped":
        return None
    # "stopped" means we stopped it: any other outcome is its own end (or its timeout),
    # even if a stop raced it, so that end is what happened and is final.
    if ending.outcome != "stopped":
        return final_report(job_id, attempt, ending)
    if ending.why == "evicted":
        return Report(
            "evicted",
            job_id,
            attempt,
            evictions=ending.evictions,
            wall_s=ending.wall_s,
            cpu_s=ending.cpu_s,
            max_rss_kb=ending.max_rss_kb,
        )
    if ending.why == "cancelled":
        return Report("cancelled", job_id, attempt, wall_s=ending.wall_s, cpu_s=ending.cpu_s)
    if ending.why == "limited":
        return Report(
            "failed",
            job_id,
            attempt,
            exit_code=ending.exit_code,
            error=ending.limit_error,
            wall_s=ending.wall_s,
            cpu_s=ending.cpu_s,
            max_rss_kb=ending.max_rss_kb,
        )
    return None


def final_report(job_id: str, attempt: int, ending: Ending) -> Report:
    """The ``succeeded`` / ``failed`` / ``timed_out`` report for a process that ended by
    itself or by its timeout: a timeout wins, then an exception the task raised, then the
    exit status. Changes nothing."""
    event: SchedulerReport
    error: str | None = None
    traceback: str | None = None
    value: object | None = None  # mypyc cannot build a bare `object` field
    if ending.outcome == "timed_out":
        event, error = "timed_out", f"timed out after {ending.timeout_s:g} s"
    elif ending.error is not None:
        event, error, traceback = "failed", ending.error, ending.traceback or None
    elif ending.exit_code == 0:
        event, value = "succeeded", ending.result
    else:
        event, error = "failed", exit_text(ending.exit_code)
    return Report(
        event,
        job_id,
        attempt,
        exit_code=ending.exit_code,
        error=error,
        wall_s=ending.wall_s,
        cpu_s=ending.cpu_s,
        max_rss_kb=ending.max_rss_kb,
        result=value,
        traceback=traceback,
    )


def exit_text(exit_code: int | None) -> str:
    """``exit code 3``, ``killed by signal 9 (SIGKILL)``, or that the status was lost."""
    if exit_code is None:
        return "exit status lost"
    if exit_code > 0:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        return f"killed by signal {-exit_code}"
    return f"killed by signal {-exit_code} ({name})"
