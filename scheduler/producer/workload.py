"""The jobs ``python -m scheduler.producer`` makes: runtime and priority spans drawn at
random (seeded), and the waits between submits, constant or gaussian."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import click

from scheduler import protocol_types
from scheduler.protocol import JobPayload
from scheduler.protocol_types import Args, OnConflict

FC = TypeVar("FC", bound=Callable[..., object])


@dataclass(frozen=True)
class Span:
    """An inclusive range of numbers, parsed from ``LO-HI`` (or a single ``X``)."""

    low: float
    high: float

    @property
    def integral(self) -> bool:
        """True when both ends are whole numbers (draw integers, as the original did)."""
        return float(self.low).is_integer() and float(self.high).is_integer()

    def draw(self, rng: random.Random) -> float:
        """A random value within the span."""
        if self.integral:
            return rng.randint(int(self.low), int(self.high))
        return rng.uniform(self.low, self.high)


def parse_span(text: str) -> Span:
    """Parse ``LO-HI`` or ``X`` into a :class:`Span`; raise ValueError saying what is wrong."""
    low_text, sep, high_text = text.strip().partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise ValueError(f"{text!r} is not LO-HI, e.g. 3-15 or 0.1-0.5") from None
    if low > high:
        raise ValueError(f"{text!r}: LO must not exceed HI")
    return Span(low, high)


class SpanType(click.ParamType[Span, object]):
    """click parameter type for ``LO-HI`` ranges."""

    name = "LO-HI"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Span:
        if isinstance(value, Span):
            return value
        try:
            return parse_span(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass(frozen=True)
class JobMaker:
    """Draws random job payloads within the configured ranges."""

    runtime: Span | None
    """None: send no runtime (a task other than sleep needs none)."""
    priority: Span | None
    """None: send no priority (the task's default applies)."""
    timeout: float | None
    rng: random.Random
    max_retries: int = 0
    retry_backoff: float = 1.0
    id_prefix: str | None = None
    on_conflict: OnConflict = "raise"
    task: str = "sleep"
    args: Args | None = None
    # delayed jobs (issue 11 item 1)
    delay: float | None = None
    run_at: str | None = None
    misfire_grace: float | None = None
    depends_on: tuple[str, ...] = ()
    """Ids every job waits for (``--after``): it runs once all of them succeeded."""
    pass_results: bool = False
    broadcast: bool = False
    """Every job runs once on each scheduler serving its task (``--broadcast``)."""

    def next(self, index: int) -> JobPayload:
        """A new random payload; the ``index``-th job is ``{id_prefix}-{index}`` if set."""
        return JobPayload(
            priority=None if self.priority is None else int(self.priority.draw(self.rng)),
            runtime=None if self.runtime is None else float(self.runtime.draw(self.rng)),
            task=self.task,
            args=self.args,
            timeout=self.timeout,
            max_retries=self.max_retries,
            retry_backoff=self.retry_backoff,
            job_id=None if self.id_prefix is None else f"{self.id_prefix}-{index}",
            on_conflict=self.on_conflict,
            delay=self.delay,
            run_at=self.run_at,
            misfire_grace=self.misfire_grace,
            depends_on=list(self.depends_on) or None,
            pass_results=self.pass_results,
            broadcast=self.broadcast,
        )


def periods(period: float, gauss: bool, sigma: float, rng: random.Random) -> Iterator[float]:
    """Seconds to wait between submits: constant, or gaussian around ``period`` (min 5 ms)."""
    while True:
        yield max(rng.gauss(period, sigma), 0.005) if gauss else period


def arrival_options(sigma_flags: tuple[str, ...] = ("-s", "--sigma")) -> Callable[[FC], FC]:
    """``-p/--period``, ``-g/--gauss`` and the gaussian deviation (``sigma_flags``): when
    generated jobs arrive, as the producer and the simulator take it, passed to the command
    as ``period``, ``gauss`` and ``sigma`` (see :func:`periods`)."""
    short = " ".join(flag for flag in sigma_flags if not flag.startswith("--")) or sigma_flags[0]

    def add(command: FC) -> FC:
        for option in reversed(
            (
                click.option(
                    "-p",
                    "--period",
                    type=click.FloatRange(min=0),
                    default=5.0,
                    show_default=True,
                    help="Seconds between submits (the mean with -g).",
                ),
                click.option(
                    "-g",
                    "--gauss",
                    is_flag=True,
                    help="Wait a random time between submits: gaussian, mean -p, deviation "
                    f"{short}.",
                ),
                click.option(
                    *sigma_flags,
                    "sigma",
                    type=click.FloatRange(min=0),
                    default=2.0,
                    show_default=True,
                    help="Standard deviation for -g, in seconds.",
                ),
            )
        ):
            command = option(command)
        return command

    return add


def retry_options(command: FC) -> FC:
    """``--max-retries`` and ``--retry-backoff`` within the wire's limits, passed to the
    command as ``max_retries`` and ``retry_backoff`` (a job's retry rule)."""
    command = click.option(
        "--retry-backoff",
        type=click.FloatRange(0, protocol_types.MAX_BACKOFF_S),
        default=1.0,
        show_default=True,
        help="Seconds before the first retry; doubles for each next one (with jitter).",
    )(command)
    return click.option(
        "--max-retries",
        type=click.IntRange(0, protocol_types.MAX_RETRIES),
        default=0,
        show_default=True,
        help="Retry a failed or timed-out job up to N times; after the last it is dead.",
    )(command)
