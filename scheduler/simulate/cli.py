"""``python -m scheduler.simulate``: run a workload on a simulated fleet, print the figures.

The workload is the producer's random jobs (``--count``, ``--period``, ``-g``/``--gauss``,
``--sigma``, ``--runtime``, ``--priority``, ``--seed``: the same flags, and the same jobs
for the same seed), a JSON-lines file (``--jobs``) or a recorded live run (``--replay``,
``monitor --json`` output). The fleet is ``--schedulers N -s SIZE -t TIMEOUT`` or
``--fleet FILE``, with ``--event`` for what happens to it. ``--compare`` runs the same
workload again with other options (rules, fleet, events) and prints the runs side by
side.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from scheduler.policy.dispatch.config import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_EVICTIONS,
    DEFAULT_START_DEADLINE_S,
    DispatchConfig,
)
from scheduler.policy.stealing import STEAL_STRATEGIES
from scheduler.producer.workload import Span, SpanType, arrival_options, retry_options
from scheduler.simulate.costs import (
    DEFAULT_DISPATCH_COST_S,
    DEFAULT_EVICT_COST_S,
    DEFAULT_EXIT_COST_S,
    DEFAULT_START_COST_S,
    Calibration,
    CalibrationError,
    calibrate,
)
from scheduler.simulate.engine import Simulation
from scheduler.simulate.fleet import Fleet, JobCosts, parse_event, read_fleet, uniform
from scheduler.simulate.report import show, show_compare, summary
from scheduler.simulate.workload import (
    Generated,
    Workload,
    WorkloadError,
    read_events,
    read_jsonl,
    read_monitor,
)
from scheduler.simulate.world import Outcome, Settings

F = TypeVar("F", bound=Callable[..., Any])

_VARIANT_OPTIONS = [
    click.option("--schedulers", type=click.IntRange(min=1), default=3, show_default=True,
                 help="How many schedulers (named A, B, C, ...)."),
    click.option("-s", "--size", type=click.IntRange(min=1), default=5, show_default=True,
                 help="Slots per scheduler."),
    click.option("-t", "--timeout", "default_timeout", type=click.FloatRange(min=0, min_open=True),
                 default=10.0, show_default=True,
                 help="Seconds a job that gives no timeout may run (the scheduler's -t)."),
    click.option("--fleet", "fleet_file",
                 type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="A JSON file of schedulers (mixed sizes and tasks) and events; "
                 "replaces --schedulers and -s."),
    click.option("--event", "events", multiple=True,
                 help="What happens during the run: 'kill B at 180', 'stop B at 180', "
                 "'join D [size N] at 60', 'bus-restart [for D] at 60'. Repeatable."),
    click.option("--steal", type=click.Choice(STEAL_STRATEGIES), default="urgent",
                 show_default=True, help="The bus's work-stealing strategy."),
    click.option("--age-every", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Seconds of waiting that make a job one level more urgent."),
    click.option("--max-evictions", type=click.IntRange(min=0), default=DEFAULT_MAX_EVICTIONS,
                 show_default=True, help="Evictions after which a job is not evictable."),
    click.option("--max-deliveries", type=click.IntRange(min=1), default=DEFAULT_MAX_DELIVERIES,
                 show_default=True, help="Deliveries after which a job is dead."),
    click.option("--lease", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_LEASE_S,
                 show_default=True, help="Seconds a lost scheduler keeps its jobs."),
    click.option("--start-deadline", type=click.FloatRange(min=0),
                 default=DEFAULT_START_DEADLINE_S, show_default=True,
                 help="Seconds a scheduler with room may hold jobs without starting any "
                 "(0: no deadline)."),
    click.option("--latency", type=click.FloatRange(min=0), default=0.0005, show_default=True,
                 help="Seconds a message takes between the bus and a scheduler, each way."),
    click.option("--stop-time", "stop_s", type=click.FloatRange(min=0), default=0.002,
                 show_default=True, help="Seconds a stopped (evicted) job process takes to go."),
    click.option("--start-cost", type=click.FloatRange(min=0), default=DEFAULT_START_COST_S,
                 show_default=True, help="Seconds a scheduler takes to start a job (its fork, "
                 "one at a time) before reporting it started; measured on a live run."),
    click.option("--exit-cost", type=click.FloatRange(min=0), default=DEFAULT_EXIT_COST_S,
                 show_default=True, help="Seconds from the end of a job's runtime to its "
                 "report and its slot freed (exit, reap); measured on a live run."),
    click.option("--dispatch-cost", type=click.FloatRange(min=0),
                 default=DEFAULT_DISPATCH_COST_S, show_default=True,
                 help="Seconds a message from the bus takes to reach a scheduler beyond "
                 "--latency (the bus's journal commit, wake-ups); measured on a live run."),
    click.option("--evict-cost", type=click.FloatRange(min=0), default=DEFAULT_EVICT_COST_S,
                 show_default=True, help="Seconds an eviction keeps a scheduler busy before "
                 "it starts the job that evicted; measured on a live run."),
]  # fmt: skip


def variant_options(command: F) -> F:
    """The options ``--compare`` may change: the fleet, the rules, the simulated world."""
    for option in reversed(_VARIANT_OPTIONS):
        command = option(command)
    return command


@click.command()
@variant_options
def _variant(**_: Any) -> None:
    """The options of one ``--compare`` variant (parsed, never run)."""


def build(
    values: Mapping[str, Any], sample_s: float | None, drawn: Calibration | None = None
) -> tuple[Fleet, DispatchConfig, Settings]:
    """The fleet, rules and settings the variant options ``values`` ask for; a
    :class:`click.UsageError` names the option a bad value came from. Costs that are
    ``drawn``'s medians are drawn from its samples instead, job by job."""
    size, timeout = values["size"], values["default_timeout"]
    try:
        costs = JobCosts(
            values["start_cost"],
            values["exit_cost"],
            dispatch=values["dispatch_cost"],
            evict=values["evict_cost"],
        )
        if drawn is not None and drawn.costs() == costs:
            costs = drawn.costs(spread=True)
        if values["fleet_file"] is not None:
            fleet = read_fleet(values["fleet_file"], timeout, costs)
        else:
            fleet = uniform(values["schedulers"], size, timeout, costs)
        joins = (parse_event(e, size, timeout, costs) for e in values["events"])
        fleet = fleet.with_events(joins)
        rules = DispatchConfig(
            lease=values["lease"],
            max_evictions=values["max_evictions"],
            max_deliveries=values["max_deliveries"],
            steal=values["steal"],
            age_every=values["age_every"],
            start_deadline=values["start_deadline"] or None,
        )
        settings = Settings(latency=values["latency"], stop_s=values["stop_s"], sample_s=sample_s)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return fleet, rules, settings


def read_workload(
    jobs_file: Path | None, replay: Path | None, generated: Callable[[], Generated]
) -> Workload:
    """The workload the options name: a jobs file, a recorded run, or generated jobs."""
    if jobs_file is not None and replay is not None:
        raise click.UsageError("--jobs and --replay are two workloads: give one")
    try:
        if jobs_file is not None:
            return read_jsonl(jobs_file)
        if replay is not None:
            return read_monitor(replay)
        return generated().workload()
    except (WorkloadError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def variants(base: Mapping[str, Any], texts: Sequence[str]) -> list[dict[str, Any]]:
    """The variant options of each ``--compare`` text: ``base`` with what it changes."""
    found = []
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}
    for text in texts:
        try:
            ctx = _variant.make_context("--compare", shlex.split(text), default_map=defaults)
        except click.ClickException as exc:
            raise click.UsageError(f"--compare {text!r}: {exc.format_message()}") from None
        found.append(dict(ctx.params))
    return found


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Jobs to generate."
)
@arrival_options(("--sigma",))
@click.option(
    "--runtime",
    type=SpanType(),
    default=Span(3, 15),
    show_default="3-15",
    help="Job runtime in seconds, LO-HI.",
)
@click.option(
    "--priority",
    type=SpanType(),
    default=Span(0, 10),
    show_default="0-10",
    help="Job priority LO-HI within 0-10; 0 is the most urgent.",
)
@click.option(
    "--job-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Per-job timeout in seconds (default: the scheduler's -t).",
)
@click.option("--task", default="sleep", show_default=True, help="The generated jobs' task.")
@retry_options
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of generated jobs whose every attempt fails (exit code 1).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed of the jobs (the producer's --seed gives the same ones).",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Also fire a schedule 'periodic' of --task every this many seconds, until the "
    "last job is submitted (as 'schedules add periodic --every').",
)
@click.option("--cron", default=None, help="Fire that schedule at this cron expression's times.")
@click.option("--tz", default="UTC", show_default=True, help="The cron expression's time zone.")
@click.option(
    "--jobs",
    "jobs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A JSON-lines file of jobs instead of generated ones.",
)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Replay a recorded live run (monitor --json output).",
)
@click.option(
    "--costs-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Set --start-cost, --exit-cost, --dispatch-cost and --evict-cost to the medians "
    "of a recorded "
    "live run (monitor --json output), each job drawing its own costs from the recorded "
    "ones (a --compare variant that sets a cost fixes it); print them.",
)
@variant_options
@click.option(
    "--compare",
    "compare",
    multiple=True,
    metavar="OPTIONS",
    help="Also run the workload with these options changed, e.g. "
    "--compare '--steal tail'; the runs are shown side by side. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Draw the queue, the slots and the waits into this PNG (needs matplotlib).",
)
def cli(
    count: int,
    period: float,
    gauss: bool,
    sigma: float,
    runtime: Span,
    priority: Span,
    job_timeout: float | None,
    task: str,
    max_retries: int,
    retry_backoff: float,
    fail_rate: float,
    seed: int,
    every: float | None,
    cron: str | None,
    tz: str,
    jobs_file: Path | None,
    replay: Path | None,
    costs_from: Path | None,
    compare: tuple[str, ...],
    as_json: bool,
    plot: Path | None,
    **variant: Any,
) -> None:
    """Simulate the bus's dispatch and each scheduler's runner (the live code) on a
    virtual clock: no sockets, no processes; print wait percentiles by priority,
    evictions, steals, timeouts, retries, makespan and utilisation."""

    def generated() -> Generated:
        return Generated(
            count, period, gauss, sigma, runtime, priority, job_timeout, seed, task,
            max_retries, retry_backoff, fail_rate, every, cron, tz,
        )  # fmt: skip

    workload = read_workload(jobs_file, replay, generated)
    drawn = None if costs_from is None else calibrated(costs_from, variant["latency"])
    if drawn is not None:
        variant.update(
            start_cost=drawn.start_cost,
            exit_cost=drawn.exit_cost,
            dispatch_cost=drawn.dispatch_cost,
            evict_cost=drawn.evict_cost,
        )
    runs = [variant, *variants(variant, compare)]
    if plot is not None:
        from scheduler.simulate.plot import require_matplotlib

        require_matplotlib()
    outcomes = []
    for values in runs:
        fleet, rules, settings = build(values, 1.0 if plot is not None else None, drawn)
        outcomes.append(Simulation(workload, fleet, rules, settings).run())
    names = ["", *compare]
    _print(outcomes, names, as_json)
    if plot is not None:
        from scheduler.simulate.plot import draw

        draw(plot, outcomes, names)


def calibrated(path: Path, latency: float) -> Calibration:
    """The costs read off the recorded run at ``path`` (told on stderr); a
    :class:`click.UsageError` says why a recording cannot give them."""
    try:
        found = calibrate(read_events(path), latency)
    except (WorkloadError, CalibrationError) as exc:
        raise click.UsageError(f"--costs-from {path}: {exc}") from None
    told = ", ".join(
        f"{name} {cost * 1000:.2f} ms ({len(samples)} samples)"
        for name, cost, samples in (
            ("start", found.start_cost, found.start_samples),
            ("exit", found.exit_cost, found.exit_samples),
            ("dispatch", found.dispatch_cost, found.dispatch_samples),
            ("evict", found.evict_cost, found.evict_samples),
        )
    )
    click.echo(f"costs from {path} (medians; each job draws its own): {told}", err=True)
    return found


def _print(outcomes: Sequence[Outcome], names: Sequence[str], as_json: bool) -> None:
    if as_json:
        runs = [
            {"variant": name or None, **summary(o)} for name, o in zip(names, outcomes, strict=True)
        ]
        click.echo(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2))
        return
    console = Console()
    if len(outcomes) == 1:
        show(console, outcomes[0])
    else:
        show_compare(console, names, outcomes)
