"""``python -m scheduler.jobs``: look at, cancel and clean up jobs on a bus.

python -m scheduler.jobs show ID [ID ...]      # current state of jobs, final ones too
python -m scheduler.jobs list [--state S ...]  # the jobs not final yet, by state
python -m scheduler.jobs cancel ID [ID ...]    # cancel: queued at once, running once stopped
python -m scheduler.jobs vacuum                # delete final jobs past their retention now
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Final, cast, get_args

import click
import msgspec

from scheduler.cli_support import (
    shorten,
)
from scheduler.producer.client import ProducerClient, SubmitError
from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS, MAX_BULK, JobState
from scheduler.tools import job_logs
from scheduler.tools.operator import call_bus, operator_group


@operator_group
def cli() -> None:
    """Look at, cancel and clean up jobs on a schedbus bus (an operator's tool: it uses
    the admin token, which may cancel any job and vacuum)."""


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_context
def show(ctx: click.Context, ids: tuple[str, ...], as_json: bool) -> None:
    """Print the current state of jobs by id (final ones too, until vacuumed)."""
    watching = call_bus(ctx, lambda client: client.watch(list(ids)))
    _print_jobs(watching.jobs, as_json)
    for job_id in watching.unknown:
        click.echo(f"{job_id} unknown to the bus", err=True)
    if watching.unknown:
        raise click.exceptions.Exit(1)


def _print_jobs(jobs: list[JobEvent], as_json: bool) -> None:
    """One line (or JSON object) per job."""
    for event in jobs:
        if as_json:
            click.echo(json.dumps(msgspec.structs.asdict(event)))
            continue
        errors = f" errors={event.errors}" if event.errors else ""
        result = "" if event.result is None else f" result={shorten(json.dumps(event.result))}"
        due = "" if event.run_at is None else f" run_at={_iso(event.run_at)}"
        click.echo(
            f"{event.id} {event.state} priority={event.priority} attempt={event.attempt} "
            f"evictions={event.evictions} scheduler={event.scheduler or '-'}{due}{errors}{result}"
            + job_logs.progress_text(event)
        )


def _iso(epoch: float) -> str:
    """``epoch`` as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


LIVE_STATES: Final = tuple(s for s in get_args(JobState) if s not in FINAL_EVENTS)


@cli.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(LIVE_STATES),
    help="Only jobs in this state (repeat for several). Default: every state.",
)
@click.option("--limit", type=click.IntRange(1, MAX_BULK), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_context
def list_jobs(ctx: click.Context, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List the jobs the bus tracks (not final yet), in arrival order."""
    wanted = [cast(JobState, s) for s in states] or None
    listing = call_bus(ctx, lambda client: client.list_jobs(wanted, limit))
    _print_jobs(listing.jobs, as_json)
    if listing.more:
        click.echo(f"(more than {limit} jobs; raise --limit)", err=True)


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def cancel(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Cancel jobs: a queued job at once, a running one once its processes are stopped."""

    async def cancel_all(client: ProducerClient) -> list[str]:
        lines = []
        for job_id in ids:
            try:
                reply = await client.cancel(job_id)
                lines.append(f"{reply.id} {reply.state}: {reply.message}")
            except SubmitError as exc:
                lines.append(f"{job_id} not cancelled: {exc}")
        return lines

    for line in call_bus(ctx, cancel_all):
        click.echo(line)


@cli.command()
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
