"""``python -m scheduler.jobs``: list, look at, retry, cancel and clean up jobs on a bus.

python -m scheduler.jobs list [--state S ...] [--task T] [--since 2h] [--limit N] [--json]
python -m scheduler.jobs show ID [ID ...]      # the whole story of jobs, traceback included
python -m scheduler.jobs retry ID [ID ...]     # run failed (dead, cancelled...) jobs again
python -m scheduler.jobs retry --state failed [--task T]
python -m scheduler.jobs cancel ID [ID ...]    # cancel: queued at once, running once stopped
python -m scheduler.jobs vacuum                # delete final jobs past their retention now

Every ID may be a unique prefix of a job id (at least 4 characters), as git takes a
commit: the ids logs and ``monitor`` print are such prefixes.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Final, cast, get_args

import click
from rich.console import Console

from scheduler.policy.dispatch.rerun import RETRYABLE
from scheduler.producer.client import ProducerClient, SubmitError
from scheduler.protocol import Retried, Watching
from scheduler.protocol_types import MAX_BULK, MAX_EPOCH_S, JobState
from scheduler.tools import job_logs
from scheduler.tools.job_ids import resolve_ids
from scheduler.tools.job_views import echo_jobs, event_json, jobs_table
from scheduler.tools.operator import call_bus, operator_group

STATES: Final = get_args(JobState)
RETRYABLE_STATES: Final = tuple(sorted(RETRYABLE))
RETRY_PAGE: Final = 200
"""How many jobs ``retry --state`` lists and retries per request."""
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO: Final = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])")


class Since(click.ParamType[float]):
    """A time in the past: an age (``90s``, ``10m``, ``2h``, ``1d``, ``1w``) or an ISO 8601
    time (local when it has no zone); converted to epoch seconds."""

    name = "WHEN"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """Epoch seconds of ``value``; a usage error naming the option if it is neither."""
        if isinstance(value, float):
            return value
        text = str(value).strip()
        age = _AGO.fullmatch(text)
        try:
            if age is not None:
                when = time.time() - float(age.group("n")) * _UNITS[age.group("unit")]
            else:
                when = datetime.fromisoformat(text).timestamp()
            return min(max(0.0, when), MAX_EPOCH_S)
        except (ValueError, OverflowError, OSError):
            self.fail(
                f"{text!r} is neither an age such as 10m, 2h or 1d nor an ISO 8601 time"
                " such as 2026-01-31T08:00",
                param,
                ctx,
            )


@operator_group
def cli() -> None:
    """List, look at, retry, cancel and clean up jobs on a schedbus bus.

    An operator's tool: it uses the admin token (which may act on any job). Every ID
    may be a unique prefix of a job id, at least 4 characters long, such as the ids
    logs and monitor print.
    """


@cli.command("list", short_help="List jobs, newest first, final ones too.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    metavar="STATE",
    help=f"Only jobs in this state (repeat for several): {', '.join(STATES)}. Default: all.",
)
@click.option("--task", default=None, metavar="NAME", help="Only jobs of this task.")
@click.option(
    "--since",
    type=Since(),
    default=None,
    help="Only jobs submitted since WHEN: an age (90s, 10m, 2h, 1d, 1w) or an ISO 8601 "
    "time (local unless it names a zone).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_BULK),
    metavar="N",
    default=50,
    show_default=True,
    help="At most this many jobs (the newest).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job, per line.")
@click.pass_context
def list_jobs(
    ctx: click.Context,
    states: tuple[str, ...],
    task: str | None,
    since: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first: those still to run and the final ones the bus keeps."""
    wanted = [cast(JobState, s) for s in states] or None
    listing = call_bus(
        ctx,
        lambda client: client.list_jobs(
            wanted, limit, final=True, newest_first=True, task=task, since=since
        ),
    )
    if as_json:
        for event in listing.jobs:
            click.echo(event_json(event))
    elif listing.jobs:
        jobs_table(listing.jobs, Console(highlight=False, soft_wrap=False))
    else:
        click.echo("no jobs", err=True)
    if listing.more:
        click.echo(f"(more than {limit} jobs; raise --limit)", err=True)


@cli.command(short_help="Print all about jobs, traceback included.")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job, per line.")
@click.pass_context
def show(ctx: click.Context, ids: tuple[str, ...], as_json: bool) -> None:
    """Print all the bus knows of jobs: task, args, priority, times, attempts,
    scheduler, result or error and traceback (final jobs too, until vacuumed).

    Each ID may be a unique prefix of a job id (at least 4 characters).
    """

    async def look(client: ProducerClient) -> Watching:
        return await client.watch(await resolve_ids(client, ids))

    watching = call_bus(ctx, look)
    echo_jobs(watching.jobs, as_json)
    for job_id in watching.unknown:  # vacuumed since its id was looked up
        click.echo(f"{job_id} unknown to the bus", err=True)
    if watching.unknown:
        raise click.exceptions.Exit(1)


@cli.command(short_help="Run failed, dead, cancelled... jobs again.")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(RETRYABLE_STATES),
    metavar="STATE",
    help="Retry every job in this state (repeat for several) instead of naming IDs: "
    f"{', '.join(RETRYABLE_STATES)}.",
)
@click.option("--task", default=None, metavar="NAME", help="With --state: only jobs of this task.")
@click.pass_context
def retry(
    ctx: click.Context, ids: tuple[str, ...], states: tuple[str, ...], task: str | None
) -> None:
    """Run jobs that ended without succeeding again: same id, task, args and priority,
    next attempt. Give their IDs, or --state (with --task) to retry every such job.

    Each ID may be a unique prefix of a job id (at least 4 characters). A job that
    succeeded, or that has not ended, is not retried; the command then says why and
    exits 1.
    """
    if bool(ids) == bool(states):
        raise click.UsageError("give job IDs or --state, not both nor neither")
    if task is not None and not states:
        raise click.UsageError("--task goes with --state")

    async def by_ids(client: ProducerClient) -> list[Retried]:
        return [await client.retry(await resolve_ids(client, ids))]

    async def by_state(client: ProducerClient) -> list[Retried]:
        wanted = [cast(JobState, s) for s in states]
        replies: list[Retried] = []
        seen: set[str] = set()
        while True:
            page = await client.list_jobs(wanted, RETRY_PAGE, final=True, task=task)
            fresh = [event.id for event in page.jobs if event.id not in seen]
            if not fresh:
                return replies
            seen.update(fresh)
            replies.append(await client.retry(fresh))

    replies = call_bus(ctx, by_ids if ids else by_state)
    _report_retries(replies)


def _report_retries(replies: list[Retried]) -> None:
    """One line per job retried (stdout) or refused (stderr); exit 1 if one was refused."""
    refused = False
    for reply in replies:
        for event in reply.jobs:
            click.echo(f"{event.id} retried: {event.state}, attempt {event.attempt + 1} next")
        for job_id, why in reply.errors.items():
            click.echo(f"{job_id} not retried: {why}", err=True)
            refused = True
    if not any(reply.jobs or reply.errors for reply in replies):
        click.echo("no job to retry", err=True)
    if refused:
        raise click.exceptions.Exit(1)


@cli.command(short_help="Cancel jobs.")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.pass_context
def cancel(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Cancel jobs: a queued job at once, a running one once its processes are stopped.

    Each ID may be a unique prefix of a job id (at least 4 characters).
    """

    async def cancel_all(client: ProducerClient) -> list[str]:
        lines = []
        for job_id in await resolve_ids(client, ids):
            try:
                reply = await client.cancel(job_id)
                lines.append(f"{reply.id} {reply.state}: {reply.message}")
            except SubmitError as exc:
                lines.append(f"{job_id} not cancelled: {exc}")
        return lines

    for line in call_bus(ctx, cancel_all):
        click.echo(line)


@cli.command(short_help="Delete final jobs past their retention now.")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    help="Delete final jobs older than this many seconds (default: the bus's retention).",
)
@click.pass_context
def vacuum(ctx: click.Context, older_than: float | None) -> None:
    """Delete final jobs past their retention now; print how many, by state."""
    deleted = call_bus(ctx, lambda client: client.vacuum(older_than))
    total = sum(deleted.values())
    parts = ", ".join(f"{n} {state}" for state, n in sorted(deleted.items()))
    click.echo(f"deleted {total} final jobs" + (f": {parts}" if parts else ""))


cli.add_command(job_logs.logs)
