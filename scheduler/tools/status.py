"""``python -m scheduler.status``: the bus's and every scheduler's figures as tables,
laid out for the terminal's width (:mod:`.status_view`).

``--json`` prints the snapshot for machines; ``--watch N`` redraws it every N seconds on
the whole terminal, cut to its height with a line saying how much is hidden.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click
import msgspec
from rich.console import Console
from rich.live import Live

from scheduler.cli_support import (
    client_options,
    configure_logging,
    pick_token,
    run_until_signalled,
)
from scheduler.connect import RegistrationRefused
from scheduler.producer.client import BusConnectionLost, ProducerClient, SubmitError
from scheduler.protocol_schedules import Schedules
from scheduler.protocol_stats import StatsReply
from scheduler.tools.status_view import StatusView


def render(reply: StatsReply, schedules: Schedules | None = None) -> StatusView:
    """Every table of a snapshot (with the schedules, if given), laid out for the width it
    is drawn at (see :mod:`.status_view`)."""
    return StatusView(reply, schedules)


async def show(
    url: str,
    token: str | None,
    connect_timeout: float,
    as_json: bool,
    watch: float | None,
    cafile: str | None = None,
) -> None:
    """Fetch the snapshot once, or every ``watch`` seconds, and print it."""
    async with ProducerClient(
        url, token=token, connect_timeout=connect_timeout, cafile=cafile
    ) as client:
        reply = await client.stats()
        schedules = await client.schedule_query("list")
        if as_json:
            snapshot = msgspec.to_builtins(reply) | {
                "schedules": msgspec.to_builtins(schedules.schedules)
            }
            click.echo(msgspec.json.encode(snapshot).decode())
            return
        console = Console()
        if watch is None:
            console.print(render(reply, schedules))
            return
        await _watch(client, console, StatusView(reply, schedules, fit_height=True), watch)


async def _watch(client: ProducerClient, console: Console, view: StatusView, every: float) -> None:
    """Redraw the snapshot every ``every`` seconds on the whole terminal (its alternate
    screen, as ``watch`` and ``top`` do), cut to the terminal's height: never cropped
    silently, and a resize is followed at the next redraw."""
    with Live(view, console=console, auto_refresh=False, screen=True) as live:
        while True:
            await asyncio.sleep(every)
            reply, schedules = await client.stats(), await client.schedule_query("list")
            live.update(StatusView(reply, schedules, fit_height=True), refresh=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as one JSON object.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Refresh every N seconds until interrupted.",
)
def cli(
    url: str,
    token: str | None,
    token_file: Path | None,
    cafile: str | None,
    connect_timeout: float,
    as_json: bool,
    watch: float | None,
) -> None:
    """Print the bus's and every scheduler's figures and the periodic schedules (with the
    monitor token)."""
    configure_logging(logging.WARNING)
    if as_json and watch is not None:
        raise click.UsageError("--json prints one snapshot; it does not go with --watch")
    token = pick_token("monitor", token, token_file)
    try:
        run_until_signalled(show(url, token, connect_timeout, as_json, watch, cafile))
    except (OSError, BusConnectionLost, SubmitError, RegistrationRefused) as exc:
        raise click.ClickException(f"{url}: {exc}") from None
