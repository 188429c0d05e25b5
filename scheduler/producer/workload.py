"""The jobs ``python -m scheduler.producer`` makes: runtime and priority spans drawn at
random (seeded), and the waits between submits, constant or gaussian."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import click

from scheduler.protocol import JobPayload
from scheduler.protocol_types import Args, OnConflict


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
