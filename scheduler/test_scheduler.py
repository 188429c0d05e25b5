"""``python -m scheduler.test_scheduler``: run the bus's ``sleep`` jobs, ``-s`` at a time.

The original test scheduler's flags still work (``-s``, ``-t``, ``-d``). Each job step
(start, end, eviction, timeout) is logged as one INFO line: that is the demo's output.
"""

from __future__ import annotations

import logging

import click
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from scheduler.cli_support import configure_logging, run_until_signalled
from scheduler.protocol import MAX_NAME_LEN, MAX_SIZE, MAX_TIMEOUT_S, Assignment, Report
from scheduler.scheduler_client import SchedulerClient, SchedulerConfig
from scheduler.tasks import TaskRegistry

log = logging.getLogger("scheduler.test_scheduler")

DEFAULT_URL = "ws://localhost:8101"


def log_report(report: Report, assignment: Assignment) -> None:
    """Log one line for a job step: the id's first 8 characters, priority and timings."""
    head = f"job {report.id[:8]} p{assignment.priority}"
    wall = f"{report.wall_s or 0.0:.2f} s"
    if report.event == "started":
        log.info("%s started (runtime %g s, attempt %d)", head, assignment.runtime, report.attempt)
    elif report.event == "succeeded":
        cpu, rss_mb = report.cpu_s or 0.0, (report.max_rss_kb or 0) / 1024
        log.info("%s succeeded in %s (cpu %.2f s, rss %.1f MB)", head, wall, cpu, rss_mb)
    elif report.event == "evicted":
        log.info("%s evicted after %s, requeued", head, wall)
    elif report.event == "timed_out":
        log.info("%s timed out after %s", head, wall)
    else:
        log.info("%s failed after %s: %s", head, wall, report.error)


def _bus_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_uri(value)
    except InvalidURI as exc:
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// URL ({exc})") from None
    return value


def _short_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and len(value) > MAX_NAME_LEN:
        raise click.BadParameter(f"must be at most {MAX_NAME_LEN} characters long")
    return value or None


async def _serve(config: SchedulerConfig) -> None:
    await SchedulerClient(config, TaskRegistry(), on_report=log_report).run()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-s",
    "--size",
    type=click.IntRange(1, MAX_SIZE),
    default=5,
    show_default=True,
    help="How many jobs run at once. A more urgent job evicts the least urgent running "
    "one when all slots are taken (the evicted job is requeued).",
)
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(0, MAX_TIMEOUT_S, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a job may run, unless the job sets its own timeout; then it is stopped "
    "and reported timed_out.",
)
@click.option("-d", "--debug", is_flag=True, help="Log debug detail (every frame and process).")
@click.option(
    "--bus",
    envvar="SCHEDBUS_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    metavar="URL",
    callback=_bus_url,
    help="URL of the bus. While it is unreachable the scheduler retries with backoff.",
)
@click.option(
    "--name",
    metavar="NAME",
    callback=_short_text,
    help="Name to register under; the bus makes it unique. Default: the bus picks one.",
)
@click.option(
    "--token",
    envvar="SCHEDBUS_TOKEN",
    show_envvar=True,
    metavar="TOKEN",
    callback=_short_text,
    help="Shared secret the bus requires, if it was started with one.",
)
def cli(
    size: int, timeout: float, debug: bool, bus: str, name: str | None, token: str | None
) -> None:
    """Run jobs from the schedbus bus: the built-in sleep task, SIZE at a time.

    Each job runs in its own process; one INFO line is logged per start, end, eviction
    and timeout. SIGINT or SIGTERM stops every running job and exits 0.
    """
    configure_logging(logging.DEBUG if debug else logging.INFO)
    config = SchedulerConfig(bus_url=bus, name=name, size=size, timeout=timeout, token=token)
    run_until_signalled(_serve(config))


if __name__ == "__main__":
    cli()
