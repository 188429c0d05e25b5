"""``python -m scheduler.jobs logs ID [--follow]``: a job's output.

Without ``--follow`` it prints what the bus holds of the job's stdout and stderr: for a
final job the tail (at most 4 KiB) journaled with its final event, for a running one the
latest (at most 4 KiB) of what the scheduler has sent so far. With ``--follow`` it then
prints the output of a job not yet final as it comes, until its final event. The whole
output is in the job's log file on its scheduler's machine
(``$XDG_STATE_HOME/schedbus/logs/<scheduler>/<job id>.<attempt>.log``).
"""

from __future__ import annotations

import sys

import click

from scheduler.ids import short_id
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS
from scheduler.tools.job_ids import resolve_ids
from scheduler.tools.operator import call_bus


@click.command("logs")
@click.argument("job_id", metavar="ID")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Then print the job's output as it comes, until the job is final.",
)
@click.pass_context
def logs(ctx: click.Context, job_id: str, follow: bool) -> None:
    """Print a job's output (its stdout and stderr): the last 4 KiB the bus keeps, then
    with --follow what it writes until it ends. ID may be a unique prefix of a job id (at
    least 4 characters). Exits 1 if the bus does not know the job."""

    async def show(client: ProducerClient) -> bool:
        (whole_id,) = await resolve_ids(client, [job_id])
        watching = await client.watch([whole_id])
        if not watching.jobs:
            return False
        (status,) = watching.jobs
        _write(status.output)
        if follow and status.event not in FINAL_EVENTS:
            await _follow(client, whole_id)
        return True

    if not call_bus(ctx, show):
        click.echo(f"{job_id} unknown to the bus", err=True)
        raise click.exceptions.Exit(1)


async def _follow(client: ProducerClient, job_id: str) -> None:
    """Print the output events of ``job_id`` until its final event; say on stderr when a
    new attempt starts (its output follows)."""
    async for event in client.events():
        if event.id != job_id:
            continue
        if event.event == "output":
            _write(event.output)
        elif event.event == "started":
            _note(event, f"attempt {event.attempt} started on {event.scheduler or '?'}")
        elif event.event in FINAL_EVENTS:
            _note(event, f"{event.state}")
            return


def _write(text: str | None) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def _note(event: JobEvent, what: str) -> None:
    click.echo(f"--- {short_id(event.id)} {what}", err=True)
