"""``python -m scheduler.producer``: submits random ``sleep`` jobs, as the original did,
or jobs of any ``--task`` with the same ``--args``.

By default it submits one job every ``--period`` seconds forever. ``--count`` stops after
N jobs; ``--wait`` then waits until every job it submitted is final and prints a summary
(``--json``: one JSON object per job on stdout as it becomes final). On a terminal,
``--wait`` draws a progress bar (:mod:`.progress_view`); otherwise one log line per job.
With ``--wait`` the exit status says whether every job succeeded (:mod:`.tally`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec
from rich.console import Console

from scheduler import codec, protocol_types
from scheduler.cli_support import (
    configure_logging,
    connection_options,
    pick_token,
    run_until_signalled_by,
)
from scheduler.connect import RegistrationRefused, open_connection, parse_bus_urls
from scheduler.ids import short_id
from scheduler.producer.agenda import Agenda
from scheduler.producer.client import BusConnectionLost, ProducerClient, SubmitError
from scheduler.producer.follower import (
    FollowView,
    JobFollower,
    PlainView,
    print_interrupted,
    print_summary,
)
from scheduler.producer.options import check_options, check_timing
from scheduler.producer.progress_view import ProgressView
from scheduler.producer.tally import EXIT_NOT_ALL_SUCCEEDED
from scheduler.producer.workload import (
    JobMaker,
    Span,
    SpanType,
    arrival_options,
    periods,
    retry_options,
)
from scheduler.protocol import JobPayload
from scheduler.protocol_types import Args, OnConflict

log = logging.getLogger("scheduler.producer")


@dataclass(frozen=True)
class Plan:
    """Everything one producer run does."""

    url: str
    count: int | None
    maker: JobMaker
    waits: Iterator[float]
    name: str | None
    token: str | None
    wait: bool
    as_json: bool
    bulk: bool = False
    cafile: str | None = None
    remind_every: float = 10.0
    """With ``wait``: seconds between reminders of jobs waiting for an unserved task."""
    scatter: float | None = None
    """Seconds over which the jobs are spread as one batch (see :mod:`.agenda`)."""
    jitter: float = 0.0
    progress_bar: bool = False
    """With ``wait``: draw a progress bar instead of one log line per job (a terminal)."""

    @property
    def job_log_level(self) -> int:
        """The level of the one-line-per-submit log records: hidden under a progress bar."""
        return logging.DEBUG if self.progress_bar else logging.INFO


async def submit_v1(plan: Plan) -> int:
    """Speak the original protocol: register, then send jobs; never read a reply. Of a
    list of buses, the first (a v1 producer reads nothing, so cannot follow a standby)."""
    submitted = 0
    async with await open_connection(parse_bus_urls(plan.url)[0], plan.cafile) as ws:
        await ws.send(codec.encode_v1_register("producer"))
        try:
            for index in _indices(plan.count):
                if index:
                    await asyncio.sleep(next(plan.waits))
                frame = codec.encode_v1_job_request(plan.maker.next(index))
                await ws.send(frame)
                submitted += 1
                log.info("submitted %s", frame)
        except asyncio.CancelledError:
            await ws.close()  # 1000: leaving `async with` on an exception sends 1011
            raise
    log.info("done: %d jobs submitted", submitted)
    return 0


async def submit_v2(plan: Plan) -> int:
    """Submit over v2; with ``plan.wait``, follow every job to its final state."""
    async with ProducerClient(
        plan.url, name=plan.name, token=plan.token, cafile=plan.cafile
    ) as client:
        log.info("connected to %s as %s", plan.url, client.name)
        with _follow_view(plan) as view:
            follower = JobFollower(view, planned=plan.count or 0)
            try:
                done = await _submit_and_follow(client, plan, follower)
            except asyncio.CancelledError:
                if plan.wait:
                    print_interrupted(follower)
                raise
    if not done:
        return 0
    print_summary(list(follower.finished.values()), follower.tally.refused)
    return follower.tally.exit_code()


def _follow_view(plan: Plan) -> AbstractContextManager[FollowView]:
    if plan.progress_bar:
        return ProgressView(Console())
    return nullcontext(PlainView(plan.as_json))


async def _submit_and_follow(client: ProducerClient, plan: Plan, follower: JobFollower) -> bool:
    """Submit the plan's jobs; with ``plan.wait``, follow them until all are final and
    return True (False without ``wait``)."""
    watching = asyncio.create_task(follower.follow(client)) if plan.wait else None
    reminding = asyncio.create_task(follower.remind(plan.remind_every)) if plan.wait else None
    try:
        if plan.scatter is not None:
            await _submit_scattered(client, plan, follower)
        elif plan.bulk:
            await _submit_bulk(client, plan, follower)
        else:
            await _submit_one_by_one(client, plan, follower)
        if watching is None:
            return False
        follower.all_submitted()
        if not follower.complete:  # else no event is coming to end the watch
            await watching
        return True
    finally:
        for task in (watching, reminding):
            if task is not None and not task.done():
                task.cancel()


async def _submit_one_by_one(client: ProducerClient, plan: Plan, follower: JobFollower) -> None:
    for index in _indices(plan.count):
        if index:
            await asyncio.sleep(next(plan.waits))
        payload = plan.maker.next(index)
        accepted = await client.submit_accepted(payload)
        job_id = accepted.id
        follower.expect(job_id, payload.task, accepted.warning)
        follower.expect_runs(job_id, payload.task, accepted.runs)
        log.log(plan.job_log_level, "submitted %s %s", short_id(job_id), _job_text(payload))


def _job_text(payload: JobPayload) -> str:
    """``task add priority 3 runtime 1.5s`` for a log line; what the bus fills in is left out."""
    text = f"task {payload.task}"
    if payload.priority is not None:
        text += f" priority {payload.priority}"
    if payload.runtime is not None:
        text += f" runtime {payload.runtime:.3g}s"
    return text


async def _submit_bulk(client: ProducerClient, plan: Plan, follower: JobFollower) -> None:
    assert plan.count is not None
    payloads = [plan.maker.next(i) for i in range(plan.count)]
    results = await client.submit_many(payloads)
    for index, result in enumerate(results):
        if result.id is None:
            log.error("job %d refused: %s", index, result.error)
            follower.refuse()
        else:
            follower.expect(result.id, payloads[index].task, result.warning)
            follower.expect_runs(result.id, payloads[index].task, result.runs)
    log.info("submitted %d jobs in one batch", sum(r.id is not None for r in results))


async def _submit_scattered(client: ProducerClient, plan: Plan, follower: JobFollower) -> None:
    assert plan.count is not None and plan.scatter is not None
    agenda = Agenda([plan.maker.next(i) for i in range(plan.count)])
    payloads = agenda.planned(over=plan.scatter, jitter=plan.jitter, rng=plan.maker.rng)
    results = await client.submit_many(payloads)
    for index, result in enumerate(results):
        if result.id is None:
            log.error("job %d refused: %s", index, result.error)
            follower.refuse()
        else:
            follower.expect(result.id, payloads[index].task, result.warning)
    accepted = sum(r.id is not None for r in results)
    log.info("scattered %d jobs over %g s in one message", accepted, plan.scatter)


def _indices(count: int | None) -> Iterator[int]:
    return iter(range(count)) if count is not None else itertools.count()


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="By default (no -g) jobs are submitted periodically, forever.\n\n"
    f"Exit status: 0 when done (with --wait: every job succeeded); 1 on an error (the bus "
    f"unreachable, a submit refused); 2 on bad usage; {EXIT_NOT_ALL_SUCCEEDED} with --wait "
    "when any job ended failed, dead, timed_out, cancelled, expired or skipped, or a --bulk "
    "or --scatter submit refused some jobs; 130 (143) when Ctrl-C (SIGTERM) stopped --wait "
    "before every job was final (they go on without it). Without --wait, Ctrl-C stops "
    "submitting and exits 0.",
)
@arrival_options()
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N jobs (default: run until interrupted).",
)
@click.option(
    "--runtime",
    type=SpanType(),
    default=None,
    help="Job runtime in seconds, LO-HI; whole numbers draw integers, e.g. 0.1-0.5.  "
    "[default: 3-15 for sleep jobs; for other tasks none is sent]",
)
@click.option(
    "--priority",
    type=SpanType(),
    default=None,
    help="Job priority LO-HI within 0-10; 0 is the most urgent.  [default: 0-10 for sleep "
    "jobs; for other tasks none is sent, so the task's declared default applies]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Per-job timeout in seconds (default: the scheduler's -t).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="After submitting, wait until every job is final, then print how many ended in "
    "each state. On a terminal a progress bar shows them (done, failed, running, rate, "
    "ETA); otherwise, one log line per job.",
)
@click.option(
    "--remind-every",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    hidden=True,
    help="With --wait: seconds between reminders of jobs waiting for an unserved task.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="With --wait: one JSON object per job on stdout as it becomes final (no progress bar).",
)
@click.option("--v1", is_flag=True, help="Speak the original protocol: no ids, no replies.")
@click.option("--name", default=None, help="Name to register under (v2).")
@retry_options
@click.option(
    "--id-prefix",
    default=None,
    help="Name the jobs PREFIX-0, PREFIX-1, ... (client-chosen ids: idempotent submits).",
)
@click.option(
    "--on-conflict",
    type=click.Choice(["raise", "ignore", "replace"]),
    default="raise",
    show_default=True,
    help="With --id-prefix, what a submit whose id exists does.",
)
@click.option(
    "--task",
    default="sleep",
    show_default=True,
    help="The task every job runs; a scheduler must serve it (worker --tasks).",
)
@click.option(
    "--args",
    "args_json",
    default=None,
    metavar="JSON",
    help="The task's arguments for every job: a JSON object (keyword arguments) or array "
    "(positional). Without it the task is called with the job's runtime.",
)
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="ID",
    help="Every job waits until job ID succeeded (repeatable); if ID fails it is skipped.",
)
@click.option(
    "--pass-results",
    is_flag=True,
    help="With --after, the task gets results={id: result} of the jobs it waited for.",
)
@click.option(
    "--broadcast",
    is_flag=True,
    help="Run every job once on each scheduler serving its task now (refused if none does).",
)
@click.option(
    "--bulk",
    is_flag=True,
    help="Submit all --count jobs in one batch (one message, or several past 1 MiB).",
)
@click.option(
    "--delay",
    type=click.FloatRange(0, protocol_types.MAX_DELAY_S, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Run each job this many seconds after it is accepted (it is 'scheduled' till then).",
)
@click.option(
    "--at",
    "run_at",
    default=None,
    metavar="ISO",
    help="Run each job at this time: ISO 8601 with a zone, e.g. 2030-01-01T09:00:00+01:00.",
)
@click.option(
    "--misfire-grace",
    type=click.FloatRange(0, protocol_types.MAX_DELAY_S),
    default=None,
    metavar="SECONDS",
    help="A delayed job not started within this many seconds of its time ends 'expired' "
    "(default: the bus's --misfire-grace).",
)
@click.option(
    "--scatter",
    type=click.FloatRange(0, protocol_types.MAX_DELAY_S, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Spread the --count jobs evenly over the next SECONDS (one in the middle of each "
    "equal slice), submitted at once as delayed jobs.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="With --scatter: move each job's time by up to this much either way, at random.",
)
@click.option("--seed", type=int, default=None, help="Random seed, for repeatable job sequences.")
@click.option("-d", "--debug", is_flag=True, help="Debug logging.")
@connection_options
def cli(
    period: float,
    gauss: bool,
    sigma: float,
    url: str,
    count: int | None,
    runtime: Span | None,
    priority: Span | None,
    timeout: float | None,
    wait: bool,
    remind_every: float,
    as_json: bool,
    v1: bool,
    name: str | None,
    token: str | None,
    max_retries: int,
    retry_backoff: float,
    id_prefix: str | None,
    on_conflict: OnConflict,
    task: str,
    args_json: str | None,
    after: tuple[str, ...],
    pass_results: bool,
    broadcast: bool,
    bulk: bool,
    delay: float | None,
    run_at: str | None,
    misfire_grace: float | None,
    scatter: float | None,
    jitter: float,
    seed: int | None,
    debug: bool,
    token_file: Path | None,
    cafile: str | None,
) -> None:
    """Submit random jobs to a schedbus bus: sleep jobs by default, or any --task."""
    if task == "sleep" or v1:
        runtime = runtime or Span(3, 15)
        priority = priority or Span(0, 10)
    check_options(runtime, priority, count, wait, as_json, v1)
    args = _parse_args(args_json)
    if v1 and (task != "sleep" or args is not None):
        raise click.UsageError("--v1 jobs are sleep jobs: no --task or --args")
    if v1 and (after or broadcast):
        raise click.UsageError("--v1 jobs are plain jobs: no --after or --broadcast")
    if pass_results and not after:
        raise click.UsageError("--pass-results needs --after")
    if broadcast and after:
        raise click.UsageError(
            "--broadcast and --after do not go together: a broadcast job has no dependencies"
        )
    if bulk and (count is None or v1):
        raise click.UsageError("--bulk needs --count and the v2 protocol")
    check_timing(delay, run_at, misfire_grace, scatter, jitter, count, v1)
    configure_logging(logging.DEBUG if debug else logging.INFO)
    rng = random.Random(seed)
    maker = JobMaker(
        runtime,
        priority,
        timeout,
        rng,
        max_retries,
        retry_backoff,
        id_prefix,
        on_conflict,
        task,
        args,
        delay,
        run_at,
        misfire_grace,
        after,
        pass_results,
        broadcast,
    )
    plan = Plan(
        url=url,
        count=count,
        maker=maker,
        waits=periods(period, gauss, sigma, rng),
        name=name,
        token=None if v1 else pick_token("producer", token, token_file),
        wait=wait,
        as_json=as_json,
        bulk=bulk,
        cafile=cafile,
        remind_every=remind_every,
        scatter=scatter,
        jitter=jitter,
        progress_bar=wait and not as_json and sys.stdout.isatty(),
    )
    try:
        code, signum = run_until_signalled_by(submit_v1(plan) if v1 else submit_v2(plan))
    except (OSError, BusConnectionLost, SubmitError, RegistrationRefused) as exc:
        raise click.ClickException(f"{url}: {exc}") from None
    if signum is not None and wait:
        # The jobs' outcome is unknown: the status a shell gives a command a signal
        # stopped, so a script running `producer --wait && next` stops too.
        sys.exit(128 + signum)
    sys.exit(code or 0)


def _parse_args(text: str | None) -> Args | None:
    """The ``--args`` JSON as a task's arguments; a usage error unless an object or array."""
    if text is None:
        return None
    try:
        args: Args = msgspec.json.decode(text, type=Args)
        return args
    except msgspec.DecodeError as exc:
        raise click.BadParameter(
            f"must be a JSON object or array: {exc}", param_hint="--args"
        ) from None
