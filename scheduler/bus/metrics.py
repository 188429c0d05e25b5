"""The bus's Prometheus metrics, in a registry of its own (never the process-global one).

:class:`BusMetrics` is fed as things happen, each in O(1): :meth:`BusMetrics.event` for
every job event the hub publishes (event counts by task, wait and run-time histograms by
priority, evictions) and :meth:`BusMetrics.journal_committed` for every journal commit.
What the bus already knows at any moment (jobs by state and task, schedulers connected,
steals) is read when ``/metrics`` is scraped, from the :class:`LiveFigures` the bus
passes in, so those figures are right after a restart too.

Metric names (all prefixed ``schedbus_``) are listed in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
        jobs = GaugeMetricFamily(
            "schedbus_jobs", "Jobs the bus tracks (not final), by state and task.",
            labels=["state", "task"],
        )  # fmt: skip
        for (state, task), count in sorted(now.jobs.items()):
            jobs.add_metric([state, task], count)
        yield jobs
        yield GaugeMetricFamily(
            "schedbus_schedulers", "Schedulers connected to the bus.", value=now.schedulers
        )
        yield CounterMetricFamily(
            "schedbus_steals", "Jobs stolen from one scheduler's queue by another.",
            value=now.steals,
        )  # fmt: skip


class BusMetrics:
    """One bus's metrics and the registry that exposes them."""

    def __init__(self, figures: Callable[[], LiveFigures], tracks: Callable[[str], bool]) -> None:
        """Create every metric in a new registry; ``figures`` is called at each scrape, and
        ``tracks`` (whether the bus still tracks a job id) forgets at each scrape the queue
        times of jobs that left without a final event (a v1 scheduler's)."""
        self.registry = CollectorRegistry()
        self._events = Counter(
            "schedbus_job_events", "Job events published, by event and task.",
            ["event", "task"], registry=self.registry,
        )  # fmt: skip
        self._waits = Histogram(
            "schedbus_job_wait_seconds", "Seconds from queued to started, by priority.",
            ["priority"], buckets=WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._runs = Histogram(
            "schedbus_job_run_seconds", "Run time of each finished attempt, by priority.",
            ["priority"], buckets=RUN_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._evictions = Counter(
            "schedbus_evictions", "Running jobs evicted by a more urgent one.",
            registry=self.registry,
        )  # fmt: skip
        self._commits = Histogram(
            "schedbus_journal_commit_seconds", "Seconds one journal commit took.",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_LiveCollector(figures))
        self._queued_at: dict[str, float] = {}
        self._tracks = tracks
        # Each labelled child once: ``labels()`` takes a lock and checks its arguments at
        # every call, and the bus counts several events per job.
        self._event_counters: dict[tuple[str, str], Counter] = {}
        self._wait_series: dict[int, Histogram] = {}
        self._run_series: dict[int, Histogram] = {}

    def event(self, event: JobEvent, now: float) -> None:
        """Count ``event`` (published at monotonic ``now``): by event and task; a job
        entering the queue starts its wait, ``started`` observes it, an attempt's end
        observes its run time, and a final event forgets the job."""
        key = (event.event, event.task)
        counter = self._event_counters.get(key)
        if counter is None:
            counter = self._event_counters[key] = self._events.labels(*key)
        counter.inc()
        if event.state == "queued":
            self._queued_at[event.id] = now
            if len(self._queued_at) > MAX_WAITING:
                del self._queued_at[next(iter(self._queued_at))]
        elif event.event == "started":
            since = self._queued_at.pop(event.id, None)
            if since is not None:
                _series(self._waits, self._wait_series, event.priority).observe(
                    max(0.0, now - since)
                )
        if event.event in RUN_ENDINGS and event.wall_s is not None:
            _series(self._runs, self._run_series, event.priority).observe(event.wall_s)
        if event.event == "evicted":
            self._evictions.inc()
        if event.event in FINAL_EVENTS:
            self._queued_at.pop(event.id, None)

    def journal_committed(self, seconds: float) -> None:
        """Observe one journal commit that took ``seconds``."""
        self._commits.observe(seconds)

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


def _series(histogram: Histogram, series: dict[int, Histogram], priority: int) -> Histogram:
    """``histogram``'s child for ``priority``, kept in ``series`` once made."""
    child = series.get(priority)
    if child is None:
        child = series[priority] = histogram.labels(str(priority))
    return child
