"""The ``producer`` command's checks of its options: values out of range and options
that do not go together get a usage error naming them (exit 2)."""

from __future__ import annotations

import click

from scheduler import protocol_types
from scheduler.producer.workload import Span


def check_options(
    runtime: Span | None,
    priority: Span | None,
    count: int | None,
    wait: bool,
    as_json: bool,
    v1: bool,
) -> None:
    """Refuse option values and combinations the command cannot run, naming the options."""
    if runtime is not None and runtime.low <= 0:
        raise click.BadParameter("runtimes must be > 0", param_hint="--runtime")
    if priority is not None and (priority.low < 0 or priority.high > 10 or not priority.integral):
        raise click.BadParameter(
            "priorities are whole numbers within 0-10", param_hint="--priority"
        )
    if wait and count is None:
        raise click.UsageError("--wait needs --count: it waits for a known number of jobs")
    if as_json and not wait:
        raise click.UsageError("--json needs --wait")
    if v1 and wait:
        raise click.UsageError("--v1 producers never read replies, so they cannot --wait")


def check_timing(
    delay: float | None,
    run_at: str | None,
    misfire_grace: float | None,
    scatter: float | None,
    jitter: float,
    count: int | None,
    v1: bool,
) -> None:
    """Refuse timing options that do not go together, naming them."""
    options = (("--delay", delay), ("--at", run_at), ("--scatter", scatter))
    given = [name for name, value in options if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} do not go together: give one")
    if run_at is not None:
        try:
            protocol_types.parse_run_at(run_at)
        except ValueError as exc:
            why = str(exc).removeprefix("run_at: ")
            raise click.BadParameter(why, param_hint="--at") from None
    if v1 and (given or misfire_grace is not None):
        raise click.UsageError("--v1 jobs run now: no --delay, --at, --scatter or --misfire-grace")
    if scatter is not None and count is None:
        raise click.UsageError("--scatter needs --count: it spreads a known number of jobs")
    if jitter and scatter is None:
        raise click.UsageError("--jitter needs --scatter")
