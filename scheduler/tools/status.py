"""``python -m scheduler.status``: the bus's and every scheduler's figures as tables.

``--json`` prints the snapshot for machines; ``--watch N`` refreshes every N seconds.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click
import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from scheduler.cli_support import (
    client_options,
    configure_logging,
    pick_token,
    run_until_signalled,
)
from scheduler.connect import RegistrationRefused
from scheduler.policy.schedules import iso_utc
from scheduler.producer.client import BusConnectionLost, ProducerClient, SubmitError
from scheduler.protocol_schedules import Schedules
from scheduler.protocol_stats import BusStats, SchedulerStats, StatsReply

BUS_COUNTERS = (
    "submitted", "started", "succeeded", "failed", "timed_out", "evicted", "requeued",
    "retried", "cancelled", "dead", "stolen", "steal_attempts", "not_started", "queued",
    "running", "scheduled", "expired",
)  # fmt: skip


def bus_table(stats: BusStats) -> Table:
    """The bus's counters, one row each."""
    table = Table(title=f"bus (up {stats.uptime_s:.0f} s)", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in BUS_COUNTERS:
        table.add_row(name.replace("_", " "), str(getattr(stats, name)))
    for task, count in sorted(stats.unserved.items()):
        table.add_row(f"waiting: no scheduler serves {task!r}", str(count), style="yellow")
    return table


def schedulers_table(schedulers: list[SchedulerStats]) -> Table:
    """One row per scheduler: load, what it runs, its counts."""
    table = Table(title=f"{len(schedulers)} schedulers")
    for column in ("name", "busy/size", "queued", "running priorities", "started",
                   "succeeded", "failed", "timed out", "evicted", "stole", "stolen from",
                   "heartbeat"):  # fmt: skip
        table.add_column(column, justify="left" if column == "name" else "right")
    for s in schedulers:
        heartbeat = "-" if s.heartbeat_age_s is None else f"{s.heartbeat_age_s:.1f} s ago"
        table.add_row(
            s.name, f"{s.busy}/{s.size}", str(s.queued),
            " ".join(map(str, sorted(s.running_priorities))) or "-",
            *(str(n) for n in (s.started, s.succeeded, s.failed, s.timed_out, s.evicted,
                               s.stole, s.stolen_from)),
            heartbeat,
        )  # fmt: skip
    return table


def waits_table(stats: BusStats) -> Table:
    """Submit-to-start waits per priority."""
    table = Table(title="wait before start, by priority (s)")
    for column in ("priority", "jobs", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for priority, p in stats.wait_s.items():
        table.add_row(priority, str(p.count), *(f"{v:.3f}" for v in (p.p50, p.p90, p.p99, p.max)))
    return table


def schedules_table(schedules: Schedules) -> Table:
    """One row per periodic schedule: its timing, next fire time and latest outcome."""
    table = Table(title=f"{len(schedules.schedules)} schedules")
    for column in ("name", "when", "task", "next", "last firing", "outcome"):
        table.add_column(column)
    for info in schedules.schedules:
        spec = info.spec
        when = f"every {spec.every:g} s" if spec.every is not None else f"{spec.cron} ({spec.tz})"
        table.add_row(
            spec.name,
            when,
            spec.task,
            "paused" if info.paused else _iso(info.next_fire),
            _iso(info.last_fire),
            info.last_outcome or "-",
        )
    return table


def _iso(moment: float | None) -> str:
    return "-" if moment is None else iso_utc(round(moment, 3))


def render(reply: StatsReply, schedules: Schedules | None = None) -> Group:
    """Every table of a snapshot (with the schedules, if given)."""
    tables = [bus_table(reply.bus), schedulers_table(reply.schedulers), waits_table(reply.bus)]
    if schedules is not None:
        tables.append(schedules_table(schedules))
    return Group(*tables)


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
        with Live(render(reply, schedules), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(watch)
                fresh = await client.stats(), await client.schedule_query("list")
                live.update(render(*fresh), refresh=True)


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
