"""The bus's counters and their frozen snapshots."""

from __future__ import annotations

import msgspec
import pytest

from scheduler.policy.stats import BUS_COUNTERS, BusCounters, SchedulerCounters
from scheduler.protocol_stats import BusStats, Percentiles, SchedulerStats


def test_job_events_count_under_their_bus_names() -> None:
    counters = BusCounters()
    for kind in ("accepted", "accepted", "assigned", "started", "retrying", "dead", "evicted"):
        counters.event(kind)
    counters.add("steal_attempts")
    counters.add("steal_attempts")
    counters.add("stolen")
    counters.waited(3, 0.5)
    counters.waited(3, -0.1)  # clocks never make a negative wait
    stats = counters.snapshot(9.0, queued=4, running=2, unserved={"z": 1, "render": 2})
    assert stats == BusStats(
        uptime_s=9.0,
        submitted=2,
        started=1,
        evicted=1,
        retried=1,
        dead=1,
        stolen=1,
        steal_attempts=2,
        queued=4,
        running=2,
        unserved={"render": 2, "z": 1},
        wait_s={"3": Percentiles(count=2, p50=0.0, p90=0.5, p99=0.5, max=0.5)},
    )
    assert list(stats.unserved) == ["render", "z"]
    with pytest.raises(AttributeError):
        stats.submitted = 3  # type: ignore[misc]


def test_every_bus_counter_is_a_field_of_the_snapshot() -> None:
    fields = set(BusStats.__struct_fields__)
    assert set(BUS_COUNTERS) <= fields
    every = BusCounters()
    for name in BUS_COUNTERS:
        every.add(name)
    snapshot = msgspec.structs.asdict(every.snapshot(0.0, 0, 0, {}))
    assert all(snapshot[name] == 1 for name in BUS_COUNTERS)


def test_a_scheduler_counts_its_reports_and_steals() -> None:
    counters = SchedulerCounters()
    for event in ("started", "started", "succeeded", "failed", "timed_out", "evicted"):
        counters.reported(event)
    counters.reported("cancelled")
    counters.reported("revoked")
    counters.add("stole")
    stats = counters.snapshot(
        "s1",
        protocol=2,
        size=4,
        busy=2,
        queued=1,
        tasks=["sleep", "render"],
        running_priorities=[8, 3],
        heartbeat_age_s=0.5,
    )
    assert stats == SchedulerStats(
        name="s1",
        protocol=2,
        size=4,
        busy=2,
        queued=1,
        tasks=["render", "sleep"],
        running_priorities=[3, 8],
        started=2,
        succeeded=1,
        failed=1,
        timed_out=1,
        evicted=1,
        stole=1,
        heartbeat_age_s=0.5,
    )
