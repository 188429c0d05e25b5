"""``python -m scheduler.jobs``: look at, cancel and clean up jobs on a bus.

python -m scheduler.jobs show ID [ID ...]      # current state of jobs, final ones too
python -m scheduler.jobs cancel ID [ID ...]    # cancel: queued at once, running once stopped
python -m scheduler.jobs vacuum                # delete final jobs past their retention now
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import msgspec

from scheduler.cli_support import (
    client_options,
    configure_logging,
    pick_token,
    run_until_signalled,
    shorten,
)
from scheduler.connect import RegistrationRefused
from scheduler.producer.client import BusConnectionLost, ProducerClient, SubmitError

T = TypeVar("T")


def _run(ctx: click.Context, action: Callable[[ProducerClient], Awaitable[T]]) -> T:
    """Connect with the group's options, run ``action``, turn failures into clear errors."""

    async def main() -> T:
        async with ProducerClient(
            ctx.obj["url"],
            token=ctx.obj["token"],
            connect_timeout=ctx.obj["connect_timeout"],
            cafile=ctx.obj["cafile"],
        ) as client:
            return await action(client)

    try:
        result = run_until_signalled(main())
    except (OSError, BusConnectionLost, SubmitError, RegistrationRefused) as exc:
        raise click.ClickException(f"{ctx.obj['url']}: {exc}") from None
    if result is None:
        raise click.exceptions.Exit(130)
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@client_options
@click.option("-d", "--debug", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str,
    token: str | None,
    token_file: Path | None,
    cafile: str | None,
    connect_timeout: float,
    debug: bool,
) -> None:
    """Look at, cancel and clean up jobs on a schedbus bus (an operator's tool: it uses
    the admin token, which may cancel any job and vacuum)."""
    configure_logging(logging.DEBUG if debug else logging.WARNING)
    ctx.obj = {
        "url": url,
        "token": pick_token("admin", token, token_file),
        "cafile": cafile,
        "connect_timeout": connect_timeout,
    }


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_context
def show(ctx: click.Context, ids: tuple[str, ...], as_json: bool) -> None:
    """Print the current state of jobs by id (final ones too, until vacuumed)."""
    watching = _run(ctx, lambda client: client.watch(list(ids)))
    for event in watching.jobs:
        if as_json:
            click.echo(json.dumps(msgspec.structs.asdict(event)))
        else:
            errors = f" errors={event.errors}" if event.errors else ""
            result = "" if event.result is None else f" result={shorten(json.dumps(event.result))}"
            click.echo(
                f"{event.id} {event.state} priority={event.priority} attempt={event.attempt} "
                f"evictions={event.evictions} scheduler={event.scheduler or '-'}{errors}{result}"
            )
    for job_id in watching.unknown:
        click.echo(f"{job_id} unknown to the bus", err=True)
    if watching.unknown:
        raise click.exceptions.Exit(1)


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

    for line in _run(ctx, cancel_all):
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
    deleted = _run(ctx, lambda client: client.vacuum(older_than))
    total = sum(deleted.values())
    parts = ", ".join(f"{n} {state}" for state, n in sorted(deleted.items()))
    click.echo(f"deleted {total} final jobs" + (f": {parts}" if parts else ""))
