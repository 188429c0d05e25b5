"""``python -m scheduler.worker --tasks MODULE[,MODULE]``: run your own tasks from the bus.

A task module declares module-level functions with :func:`scheduler.tasks.task`; the
worker imports the modules, registers exactly their task names (and the built-in
``sleep``) with the bus, and runs nothing else. The other options are those of
``python -m scheduler.test_scheduler`` (the sleep-only demo), which shares this module's
option set (:func:`scheduler_options`), job log lines and run function; only the default
``-t`` differs: none here (a job runs until it ends unless it or its task sets a
timeout), 10 s in the demo, as in the original. The demo logs
every job step; the worker only the unusual ones (failures, timeouts, evictions,
cancels) unless given ``--log-jobs``: at a few hundred short jobs a second, two log
lines per job cost the scheduler process 15-20% of its CPU (the pages logging touches
right after each fork are copied first).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar, overload

import click

from scheduler.auth import state_dir
from scheduler.cli_support import (
    configure_logging,
    connection_options,
    pick_token,
    run_until_signalled,
)
from scheduler.connect import RegistrationRefused
from scheduler.ids import short_id
from scheduler.policy.limits import Limits, parse_size
from scheduler.policy.warm import WarmLimits
from scheduler.protocol import Assignment, Report
from scheduler.protocol_types import MAX_NAME_LEN, MAX_SIZE, MAX_TIMEOUT_S, TRANSIENT_EVENTS
from scheduler.tasks import TaskLoadError, TaskRegistry, load_task_modules
from scheduler.worker.cgroups import CgroupError, JobCgroups
from scheduler.worker.client import SchedulerClient, SchedulerConfig
from scheduler.worker.job_output import DEFAULT_KEEP_LOGS
from scheduler.worker.orphans import contain_orphans, kill_orphans

log = logging.getLogger("scheduler.worker")

FC = TypeVar("FC", bound=Callable[..., Any])


_ENDED_AFTER: Final[dict[str, str]] = {"cancelled": "cancelled", "timed_out": "timed out"}
"""Job steps logged as ``... <word> after <wall> s``."""


def log_report(report: Report, assignment: Assignment) -> None:
    """Log one line for a job step: its id as :func:`~scheduler.ids.short_id` shows it
    (which ``jobs`` commands accept), priority and timings (progress and output are no
    steps: not logged).

    The lines are INFO; nothing is formatted unless the logger lets INFO through.
    """
    if report.event in TRANSIENT_EVENTS or not log.isEnabledFor(logging.INFO):
        return
    event, job_id, priority = report.event, short_id(report.id), assignment.priority
    wall = report.wall_s or 0.0
    if event == "started":
        runtime = "" if assignment.runtime is None else f", runtime {assignment.runtime:g} s"
        log.info(
            "job %s p%d started (task %s%s, attempt %d)",
            job_id,
            priority,
            assignment.task,
            runtime,
            report.attempt,
        )
    elif event == "succeeded":
        cpu, rss_mb = report.cpu_s or 0.0, (report.max_rss_kb or 0) / 1024
        log.info(
            "job %s p%d succeeded in %.2f s (cpu %.2f s, rss %.1f MB)",
            job_id,
            priority,
            wall,
            cpu,
            rss_mb,
        )
    elif event == "evicted":
        log.info(
            "job %s p%d evicted after %.2f s, back to the bus (eviction %d)",
            job_id,
            priority,
            wall,
            report.evictions,
        )
    elif event == "revoked":
        log.info("job %s p%d left for another scheduler before it started", job_id, priority)
    elif event in _ENDED_AFTER:
        log.info("job %s p%d %s after %.2f s", job_id, priority, _ENDED_AFTER[event], wall)
    else:
        # The traceback on the lines below, as logging prints an exception's.
        trace = f"\n{report.traceback.rstrip()}" if report.traceback else ""
        log.info(
            "job %s p%d failed after %.2f s: %s%s", job_id, priority, wall, report.error, trace
        )


ROUTINE_REPORTS: Final[frozenset[str]] = frozenset({"started", "succeeded", "revoked"})
"""The job steps :func:`log_unusual_report` leaves out."""


def log_unusual_report(report: Report, assignment: Assignment) -> None:
    """Log a job step as :func:`log_report` does unless it is routine (a start, a success,
    a waiting job handed to another scheduler).

    What the worker logs without ``--log-jobs``: every failure, timeout, eviction and
    cancel, and nothing per job that went well.
    """
    if report.event not in ROUTINE_REPORTS:
        log_report(report, assignment)


def _short_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and len(value) > MAX_NAME_LEN:
        raise click.BadParameter(f"must be at most {MAX_NAME_LEN} characters long")
    return value or None


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _cgroups(ctx: click.Context, param: click.Parameter, value: str | None) -> JobCgroups | None:
    if value is None:
        return None
    try:
        return JobCgroups.open(Path(value))
    except CgroupError as exc:
        raise click.BadParameter(str(exc)) from None


def _timeout_option(default: float | None) -> Callable[[FC], FC]:
    after = "Default: none." if default is None else f"Default: {default:g} s."
    return click.option(
        "-t",
        "--timeout",
        type=click.FloatRange(0, MAX_TIMEOUT_S, min_open=True),
        default=default,
        metavar="SECONDS",
        help="Seconds a job may run unless the job or its task sets its own timeout; then "
        f"its whole process tree is stopped and it is reported timed_out. {after}",
    )


_OPTIONS = (
    click.option(
        "-s",
        "--size",
        type=click.IntRange(1, MAX_SIZE),
        default=5,
        show_default=True,
        help="How many jobs run at once. A more urgent job evicts the least urgent running "
        "one when all slots are taken (the evicted job goes back to the bus).",
    ),
    click.option(
        "--memory-limit",
        metavar="SIZE",
        callback=_size,
        help="Most memory a job's whole process tree may hold (the resident memory of the "
        "job process and every process below it, each shared page counted in proportion), "
        "such as 512M or 2G, unless its task sets its own. Past it the tree is stopped and "
        "the job reported failed. Default: none.",
    ),
    click.option(
        "--cpu-limit",
        type=click.FloatRange(0, min_open=True),
        metavar="SECONDS",
        help="Most CPU time a job's whole process tree may use, unless its task sets its "
        "own. Past it the tree is stopped and the job reported failed. Default: none.",
    ),
    click.option(
        "--cgroup",
        "cgroups",
        metavar="PATH",
        callback=_cgroups,
        help="A cgroup v2 directory delegated to this scheduler (systemd: Delegate=yes). "
        "Each job then runs in a cgroup of its own made there, killed whole "
        "(cgroup.kill) when the job ends; what a killed scheduler's jobs left there is "
        "killed when it starts again. Default: no cgroups.",
    ),
    click.option("-d", "--debug", is_flag=True, help="Log debug detail (every frame and process)."),
    click.option(
        "--name",
        metavar="NAME",
        callback=_short_text,
        help="Name to register under. Default: HOST-PID. A scheduler that reconnects "
        "under its name keeps its jobs.",
    ),
    click.option(
        "--log-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        metavar="DIR",
        help="Where each job's stdout and stderr go: DIR/<scheduler name>/<job id>."
        "<attempt>.log (not this terminal; a job that writes nothing leaves no file). "
        "Default: $XDG_STATE_HOME/schedbus/logs.",
    ),
    click.option(
        "--no-job-logs",
        is_flag=True,
        help="Leave each job's stdout and stderr on this terminal, with no output events "
        "and no output tail (a job that writes output costs a file rename and, later, a "
        "delete; one that writes nothing, no file at all).",
    ),
    click.option(
        "--warm",
        type=click.IntRange(1),
        default=None,
        metavar="N",
        help="Warm mode: each slot keeps a process that runs jobs one after another, "
        "replaced by a fresh one after N jobs (and whenever a job is stopped or kills it). "
        "Module state survives from one job to the next in a slot process. Default: off, "
        "a fresh process per job.",
    ),
    click.option(
        "--warm-max-rss",
        metavar="SIZE",
        callback=_size,
        help="With --warm: replace a slot process whose resident memory is past SIZE "
        "(such as 200M) after a job. Default: none.",
    ),
    click.option(
        "--keep-logs",
        type=click.IntRange(1),
        default=DEFAULT_KEEP_LOGS,
        show_default=True,
        metavar="N",
        help="How many job log files to keep under the log directory (every scheduler's "
        "there); older ones are deleted as new jobs start.",
    ),
    click.option(
        "--no-fork-server",
        is_flag=True,
        help="Fork each job from the scheduler itself instead of from its fork server. The "
        "fork server is a small process started with the scheduler that imports only the "
        "task modules and forks every job: forking the scheduler (tens of MB, the network "
        "stack) costs each job copy-on-write page faults, and a task module's imports are "
        "paid once there. Both keep every guarantee; a job that was running when the fork "
        "server crashed is reported failed, and a new fork server takes over.",
    ),
)


@overload
def scheduler_options(command: FC, /) -> FC: ...


@overload
def scheduler_options(*, default_timeout: float | None = None) -> Callable[[FC], FC]: ...


def scheduler_options(
    command: FC | None = None, /, *, default_timeout: float | None = None
) -> FC | Callable[[FC], FC]:
    """Add the options every scheduler command shares, as ``@scheduler_options`` or
    ``@scheduler_options(default_timeout=10.0)``: ``-s``, ``-t`` (default
    ``default_timeout``, None: no timeout), ``--memory-limit``, ``--cpu-limit``,
    ``--cgroup``, ``-d``, ``--name``, ``--log-dir``, ``--no-job-logs``, ``--warm``,
    ``--warm-max-rss``, ``--keep-logs``, ``--no-fork-server``, and the shared
    ``--bus``, ``--token``, ``--token-file``, ``--cafile``
    (:func:`~scheduler.cli_support.connection_options`), passed to the command
    as ``size``, ``timeout``, ``memory_limit``, ``cpu_limit``, ``cgroups``, ``debug``,
    ``name``, ``log_dir``, ``no_job_logs``, ``warm``, ``warm_max_rss``, ``keep_logs``,
    ``no_fork_server``, ``url``, ``token``,
    ``token_file``, ``cafile``."""

    def add(command: FC) -> FC:
        command = connection_options(command)
        size, *rest = _OPTIONS
        for option in reversed((size, _timeout_option(default_timeout), *rest)):
            command = option(command)
        return command

    return add if command is None else add(command)


def run_scheduler(
    tasks: TaskRegistry,
    *,
    size: int,
    timeout: float | None,
    debug: bool,
    url: str,
    name: str | None,
    token: str | None,
    log_jobs: bool = True,
    token_file: Path | None = None,
    cafile: str | None = None,
    memory_limit: int | None = None,
    cpu_limit: float | None = None,
    cgroups: JobCgroups | None = None,
    log_dir: Path | None = None,
    keep_logs: int = DEFAULT_KEEP_LOGS,
    no_job_logs: bool = False,
    warm: int | None = None,
    warm_max_rss: int | None = None,
    no_fork_server: bool = False,
) -> None:
    """Serve the bus with ``tasks`` until SIGINT or SIGTERM.

    Each job's stdout and stderr go to a file under ``log_dir`` (default
    ``$XDG_STATE_HOME/schedbus/logs``), the newest ``keep_logs`` of them kept, unless
    ``no_job_logs`` (then they stay this process's). With ``warm`` each slot keeps a
    process for up to ``warm`` jobs (and up to ``warm_max_rss`` bytes resident after one);
    else each job is forked by a fork server, unless ``no_fork_server``.

    With ``log_jobs`` (or ``debug``) one INFO line is logged per job step
    (:func:`log_report`), else only for unusual ones (:func:`log_unusual_report`).
    This process becomes a child subreaper that kills whatever a job leaves behind
    (:func:`~scheduler.worker.orphans.contain_orphans`): it must have no other children.
    On the signal every job is stopped and the connection closed; then this returns.
    ``token`` defaults to the scheduler token of ``token_file``. A bus that refuses the
    registration (name in use, bad token) is a ClickException.
    """
    if warm_max_rss is not None and warm is None:
        raise click.UsageError("--warm-max-rss needs --warm N")
    token = pick_token("scheduler", token, token_file)
    configure_logging(logging.DEBUG if debug else logging.INFO)
    # The log format names no source line, thread or process, so every record need not
    # look them up (logging's documented switches; a third of the cost of a job line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Job processes inherit this sys.stdout: line-buffered, a task's print() reaches its
    # log file (and its output events) line by line, not at exit, at no cost per fork.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    log.info("serving tasks: %s", ", ".join(tasks.names))
    config = SchedulerConfig(
        bus_url=url,
        name=name,
        size=size,
        timeout=timeout,
        token=token,
        cafile=cafile,
        limits=Limits(memory_limit, cpu_limit),
        cgroups=cgroups,
        log_dir=None if no_job_logs else log_dir or state_dir() / "logs",
        keep_logs=keep_logs,
        warm=None if warm is None else WarmLimits(warm, warm_max_rss),
        fork_server=not no_fork_server,
    )
    on_report = log_report if log_jobs or debug else log_unusual_report

    async def serve() -> None:
        contain_orphans()
        try:
            await SchedulerClient(config, tasks, on_report=on_report).run()
        finally:
            # What the last jobs stopped left behind, before nobody is here to kill it.
            kill_orphans()

    try:
        run_until_signalled(serve())
    except RegistrationRefused as exc:
        raise click.ClickException(f"the bus {url} refused this scheduler: {exc}") from None


def _load_tasks(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> TaskRegistry:
    modules = [part.strip() for text in value for part in text.split(",") if part.strip()]
    if not modules:
        raise click.BadParameter("name at least one task module")
    # As with `python -m`, modules in the current directory are found (the installed
    # schedbus-worker script alone would only search its own directory).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return load_task_modules(modules)
    except TaskLoadError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--tasks",
    "tasks",
    required=True,
    multiple=True,
    metavar="MODULE[,MODULE]",
    callback=_load_tasks,
    help="Task modules to serve: dotted module names (mypkg.jobs) or paths to .py files, "
    "separated by commas or given as repeated --tasks. Each must declare at least one "
    "task with @scheduler.tasks.task.",
)
@click.option(
    "--log-jobs",
    is_flag=True,
    help="Log a line for every job start and success too, not only for failures, "
    "timeouts, evictions and cancels. At hundreds of short jobs a second these lines "
    "cost the scheduler 15-20% of its CPU.",
)
@scheduler_options
def cli(tasks: TaskRegistry, log_jobs: bool, **options: Any) -> None:
    """Run your own tasks from the schedbus bus, SIZE jobs at a time.

    The scheduler registers the tasks the modules declare (plus the built-in sleep) and
    runs nothing else. Each job runs in its own process, where the environment variables
    SCHEDBUS_JOB_ID and SCHEDBUS_ATTEMPT name the job and its attempt; every process it
    starts, even a daemon in its own session, is killed when the job ends. A job runs
    until it ends unless it, its task or -t sets a timeout. One INFO line is
    logged per failure, timeout, eviction and cancel (with --log-jobs or -d, per start
    and success too). If the bus goes away, jobs keep running and the scheduler
    reconnects and reclaims them; cut off for longer than the bus's lease, it stops them
    (the bus runs them elsewhere). SIGINT or SIGTERM stops every running job and exits 0.
    """
    run_scheduler(tasks, log_jobs=log_jobs, **options)
