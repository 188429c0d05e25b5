"""The bus's Prometheus metrics, in a registry of its own (never the process-global one).

:class:`BusMetrics` is fed as things happen, each in O(1): :meth:`BusMetrics.event` for
every job event the hub publishes (event counts by task, wait and run-time histograms by
priority, evictions) and :meth:`BusMetrics.journal_committed` for every journal commit.
It counts in plain numbers, turned into metric families only when ``/metrics`` is
scraped: the bus counts several events per job on its event loop's thread, the only
thread that feeds or reads them, so it needs none of the locks that ``prometheus_client``'s
own counters and histograms take at every increment. What the bus already knows at any
moment (jobs by state and task, schedulers connected, steals) is read at the scrape from
the :class:`LiveFigures` the bus passes in, so those figures are right after a restart too.

Metric names (all prefixed ``schedbus_``) are listed in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS

WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Bucket bounds (seconds) of the wait from queued to started."""

RUN_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Bucket bounds (seconds) of a finished attempt's run time."""

COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
"""Bucket bounds (seconds) of one journal commit (write and fsync)."""

RUN_ENDINGS: Final = frozenset({"succeeded", "failed", "timed_out", "retrying", "dead"})
"""Events that end an attempt that ran, and carry its ``wall_s``."""

MAX_WAITING: Final = 200_000
"""Queued jobs whose queue time is kept for their wait sample; past it the oldest entry
goes (that job then gets no wait sample), so memory stays bounded."""

METRIC_NAMES: Final = (
    "schedbus_jobs",
    "schedbus_job_events_total",
    "schedbus_job_wait_seconds",
    "schedbus_job_run_seconds",
    "schedbus_evictions_total",
    "schedbus_steals_total",
    "schedbus_schedulers",
    "schedbus_journal_commit_seconds",
)
"""Every metric family the bus exposes."""


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """What the bus knows now, read at scrape time: tracked jobs by (state, task), the
    schedulers connected, and the steals since the bus started."""

    jobs: Mapping[tuple[str, str], int]
    schedulers: int
    steals: int


class _LiveCollector(Collector):
    """Turns :class:`LiveFigures` into metric families when the registry is collected."""

    def __init__(self, figures: Callable[[], LiveFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        """Yield the jobs-by-state gauge, the schedulers gauge and the steals counter."""
        now = self._figures()
        yield _filled(
            GaugeMetricFamily(
                "schedbus_jobs", "Jobs the bus tracks (not final), by state and task.",
                labels=["state", "task"],
            ),
            now.jobs,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "schedbus_schedulers", "Schedulers connected to the bus.", value=now.schedulers
        )
        yield CounterMetricFamily(
            "schedbus_steals", "Jobs stolen from one scheduler's queue by another.",
            value=now.steals,
        )  # fmt: skip


@dataclass(slots=True)
class _Buckets:
    """One histogram series: how many observations fell in each bucket (the last one past
    every bound), and their sum."""

    counts: list[int]
    total: float = 0.0


@dataclass(slots=True)
class _Histogram:
    """A histogram's series by label value (none: the one series ``""``), as numbers."""

    bounds: Sequence[float]
    series: dict[str, _Buckets] = field(default_factory=dict)

    def observe(self, label: str, value: float) -> None:
        """Count ``value`` in the series of ``label``."""
        buckets = self.series.get(label)
        if buckets is None:
            buckets = self.series[label] = _Buckets([0] * (len(self.bounds) + 1))
        buckets.counts[bisect_left(self.bounds, value)] += 1
        buckets.total += value

    def family(self, name: str, documentation: str, label: str | None) -> HistogramMetricFamily:
        """The series as a metric family: cumulative buckets, ``le`` as Prometheus writes it."""
        family = HistogramMetricFamily(name, documentation, labels=[] if label is None else [label])
        edges = [*map(floatToGoString, self.bounds), "+Inf"]
        for value, buckets in sorted(self.series.items()):
            cumulative = list(zip(edges, accumulate(buckets.counts), strict=True))
            family.add_metric([] if label is None else [value], cumulative, buckets.total)
        return family


class BusMetrics(Collector):
    """One bus's metrics and the registry that exposes them (collecting its own counts)."""

    def __init__(self, figures: Callable[[], LiveFigures], tracks: Callable[[str], bool]) -> None:
        """Start every count at zero, in a new registry; ``figures`` is called at each
        scrape, and ``tracks`` (whether the bus still tracks a job id) forgets at each
        scrape the queue times of jobs that left without a final event (a v1 scheduler's)."""
        self.registry = CollectorRegistry()
        self._events: dict[tuple[str, str], int] = {}
        self._waits = _Histogram(WAIT_BUCKETS)
        self._runs = _Histogram(RUN_BUCKETS)
        self._evictions = 0
        self._commits = _Histogram(COMMIT_BUCKETS)
        self.registry.register(self)
        self.registry.register(_LiveCollector(figures))
        self._queued_at: dict[str, float] = {}
        self._tracks = tracks

    def event(self, event: JobEvent, now: float) -> None:
        """Count ``event`` (published at monotonic ``now``): by event and task; a job
        entering the queue starts its wait, ``started`` observes it, an attempt's end
        observes its run time, and a final event forgets the job."""
        key = (event.event, event.task)
        self._events[key] = self._events.get(key, 0) + 1
        if event.state == "queued":
            self._queued_at[event.id] = now
            if len(self._queued_at) > MAX_WAITING:
                del self._queued_at[next(iter(self._queued_at))]
        elif event.event == "started":
            since = self._queued_at.pop(event.id, None)
            if since is not None:
                self._waits.observe(str(event.priority), max(0.0, now - since))
        if event.event in RUN_ENDINGS and event.wall_s is not None:
            self._runs.observe(str(event.priority), event.wall_s)
        if event.event == "evicted":
            self._evictions += 1
        if event.event in FINAL_EVENTS:
            self._queued_at.pop(event.id, None)

    def journal_committed(self, seconds: float) -> None:
        """Observe one journal commit that took ``seconds``."""
        self._commits.observe("", seconds)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text exposition format (first forgetting the queue
        times of jobs the bus no longer tracks)."""
        for job_id in [i for i in self._queued_at if not self._tracks(i)]:
            del self._queued_at[job_id]
        return generate_latest(self.registry)

    @property
    def waiting(self) -> int:
        """How many queue times are kept (jobs queued and not yet started)."""
        return len(self._queued_at)

    def collect(self) -> Iterator[Metric]:
        """The counts kept so far, as metric families (the registry asks at each scrape)."""
        yield _filled(
            CounterMetricFamily(
                "schedbus_job_events", "Job events published, by event and task.",
                labels=["event", "task"],
            ),
            self._events,
        )  # fmt: skip
        yield self._waits.family(
            "schedbus_job_wait_seconds", "Seconds from queued to started, by priority.",
            "priority",
        )  # fmt: skip
        yield self._runs.family(
            "schedbus_job_run_seconds", "Run time of each finished attempt, by priority.",
            "priority",
        )  # fmt: skip
        yield CounterMetricFamily(
            "schedbus_evictions", "Running jobs evicted by a more urgent one.",
            value=self._evictions,
        )  # fmt: skip
        yield self._commits.family(
            "schedbus_journal_commit_seconds", "Seconds one journal commit took.", None
        )


def _filled(
    family: GaugeMetricFamily | CounterMetricFamily, counts: Mapping[tuple[str, str], int]
) -> Metric:
    """``family`` with one sample per pair of label values in ``counts``, in their order."""
    for labels, count in sorted(counts.items()):
        family.add_metric(list(labels), count)
    return family
