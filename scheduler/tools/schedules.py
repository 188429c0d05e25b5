"""``python -m scheduler.schedules``: periodic jobs on a bus.

python -m scheduler.schedules add NAME --task T --every 60   # or --cron '0 3 * * *' --tz ZONE
python -m scheduler.schedules list                  # every schedule, next time, last outcome
python -m scheduler.schedules show NAME
python -m scheduler.schedules pause|resume|remove|trigger NAME
python -m scheduler.schedules next NAME --count 5   # a dry run: the next fire times
"""

from __future__ import annotations

import json
from typing import Any

import click
import msgspec

from scheduler.policy.schedules import iso_utc
from scheduler.protocol_schedules import ScheduleAction, ScheduleInfo, Schedules, ScheduleSpec
from scheduler.tools.operator import call_bus, operator_group


def describe(info: ScheduleInfo) -> str:
    """One line about a schedule: name, timing, task, next time, latest firing."""
    spec = info.spec
    timing = f"every {spec.every:g}s" if spec.every is not None else f"cron '{spec.cron}' {spec.tz}"
    upcoming = "paused" if info.paused else f"next {_when(info.next_fire)}"
    last = f"last {info.last_job} {info.last_outcome}" if info.last_job else "never fired"
    if info.last_outcome and info.last_outcome.startswith("skipped"):
        last = f"last firing at {_when(info.last_fire)} {info.last_outcome}"
    return f"{spec.name} {timing} task={spec.task} {upcoming} {last}"


def _when(moment: float | None) -> str:
    return "-" if moment is None else iso_utc(round(moment, 3))


def _print(reply: Schedules, as_json: bool) -> None:
    if reply.message:
        click.echo(reply.message)
    for info in reply.schedules:
        if as_json:
            click.echo(json.dumps(msgspec.to_builtins(info)))
        else:
            click.echo(describe(info))


@operator_group
def cli() -> None:
    """Add, look at and control the periodic jobs of a schedbus bus (an operator's tool:
    it uses the admin token; a monitor token may list, show and next)."""


@cli.command()
@click.argument("name")
@click.option("--task", "task_name", required=True, help="The task each firing runs.")
@click.option("--every", type=float, default=None, help="Fire every this many seconds.")
@click.option("--cron", default=None, help="Fire at the times of this cron expression.")
@click.option("--tz", default="UTC", show_default=True, help="The cron expression's time zone.")
@click.option("--args", "args_json", default=None, help="The task's arguments, as JSON.")
@click.option("--runtime", type=float, default=None, help="Runtime (the sleep task needs it).")
@click.option("--priority", type=int, default=None, help="Priority of each firing's job.")
@click.option("--timeout", type=float, default=None, help="Timeout of each firing's job (s).")
@click.option(
    "--misfire-grace", type=float, default=None, help="Skip a firing later than this (s)."
)
@click.option("--jitter", type=float, default=0.0, help="Delay each firing by 0..this (s).")
@click.option("--max-instances", type=int, default=1, show_default=True)
@click.option(
    "--coalesce/--no-coalesce",
    default=True,
    show_default=True,
    help="After downtime run one late firing, not each missed one.",
)
@click.pass_context
def add(
    ctx: click.Context, /, name: str, task_name: str, args_json: str | None, **rest: Any
) -> None:
    """Add schedule NAME, or replace the one of that name."""
    fields: dict[str, Any] = {"name": name, "task": task_name} | {
        key: value for key, value in rest.items() if value is not None
    }
    if args_json is not None:
        try:
            fields["args"] = json.loads(args_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    try:
        spec = msgspec.convert(fields, ScheduleSpec)
    except msgspec.ValidationError as exc:
        raise click.ClickException(f"schedule: {exc}") from None
    _print(call_bus(ctx, lambda client: client.schedule_add(spec)), False)


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Print every schedule with its next fire time and latest firing."""
    reply = call_bus(ctx, lambda client: client.schedule_query("list"))
    if not reply.schedules and not as_json:
        click.echo("no schedules")
    _print(reply, as_json)


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The schedule as a JSON object.")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Print schedule NAME."""
    _print(call_bus(ctx, lambda client: client.schedule_query("show", name)), as_json)


@cli.command(name="next")
@click.argument("name")
@click.option("--count", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.pass_context
def next_(ctx: click.Context, name: str, count: int) -> None:
    """Print the next fire times of NAME (ISO 8601 UTC) without running anything."""
    reply = call_bus(ctx, lambda client: client.schedule_query("next", name, count))
    for moment in reply.times:
        click.echo(iso_utc(moment))


def _change(action: ScheduleAction, help_text: str) -> None:
    @cli.command(name=action, help=help_text)
    @click.argument("name")
    @click.pass_context
    def change(ctx: click.Context, name: str) -> None:
        _print(call_bus(ctx, lambda client: client.schedule_change(action, name)), False)


_change("pause", "Stop NAME firing until resumed.")
_change("resume", "Let NAME fire again from its next time after now.")
_change("remove", "Delete NAME (the jobs it ran stay).")
_change("trigger", "Fire NAME once now (max_instances permitting).")
