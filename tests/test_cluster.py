"""Several schedulers behaving as one: a real bus on an ephemeral port, real
``test_scheduler`` and ``worker`` processes, real job processes. Stealing, eviction
across schedulers, task routing, and the stats ``status`` prints."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from conftest import ROOT, Commands, unit, wait_until

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS

pytestmark = pytest.mark.timeout(90)

SAMPLE_TASKS = str(ROOT / "tests" / "sample_tasks.py")


async def start(
    commands: Commands, bus: BusServer, module: str, name: str, *options: str
) -> asyncio.subprocess.Process:
    """Start ``python -m MODULE`` as scheduler ``name``; wait until it has registered."""
    proc = await commands.start(module, "--bus", bus.url, "--name", name, *options)
    await wait_until(lambda: name in bus.scheduler_names(), 20 * unit(), f"{name} registers")
    return proc


@dataclass
class Journey:
    """Every event each submitted job went through, as its producer heard them."""

    events: dict[str, list[JobEvent]] = field(default_factory=lambda: defaultdict(list))

    def of(self, job_id: str, kind: str) -> list[JobEvent]:
        return [e for e in self.events[job_id] if e.event == kind]

    def final(self, job_id: str) -> JobEvent | None:
        return next((e for e in self.events[job_id] if e.event in FINAL_EVENTS), None)

    def count(self, predicate: Callable[[JobEvent], bool]) -> int:
        return sum(predicate(e) for events in self.events.values() for e in events)


@asynccontextmanager
async def producer(bus: BusServer) -> AsyncIterator[tuple[ProducerClient, Journey]]:
    """A producer whose jobs' events are recorded while the block runs."""
    journey = Journey()
    async with ProducerClient(bus.url) as client:

        async def record() -> None:
            async for event in client.events():
                journey.events[event.id].append(event)

        recorder = asyncio.create_task(record())
        try:
            yield client, journey
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)


def scheduler_of(journey: Journey, job_id: str, kind: str = "started") -> list[str | None]:
    return [e.scheduler for e in journey.of(job_id, kind)]


async def test_a_skewed_burst_is_spread_by_stealing_and_every_job_finishes(
    bus: BusServer, commands: Commands
) -> None:
    await start(commands, bus, "scheduler.test_scheduler", "s1", "-s", "2", "-t", "30")
    # Most urgent first, so that none evicts another on s1: every move is a steal.
    payloads = [JobPayload(priority=i // 2, runtime=(0.5 + 0.05 * i) * unit()) for i in range(12)]
    async with producer(bus) as (client, journey):
        ids = [result.id for result in await client.submit_many(payloads)]
        assert None not in ids
        await wait_until(
            lambda: (
                journey.count(lambda e: e.event == "assigned") == 12
                and journey.count(lambda e: e.event == "started") == 2
            ),
            20 * unit(),
            "2 jobs run on s1 and 10 wait in its queue",
        )
        await asyncio.gather(
            start(commands, bus, "scheduler.test_scheduler", "s2", "-s", "2", "-t", "30"),
            start(commands, bus, "scheduler.test_scheduler", "s3", "-s", "2", "-t", "30"),
        )
        await wait_until(
            lambda: all(journey.final(i) is not None for i in ids if i), 40 * unit(), "all end"
        )
        stats = await client.stats()
    for job_id in ids:
        assert job_id is not None
        final = journey.final(job_id)
        assert final is not None and final.event == "succeeded", journey.events[job_id]
        # Never started twice: a stolen job left s1's queue before the thief got it.
        assert len(journey.of(job_id, "started")) == 1, journey.events[job_id]
    stolen = [i for i in ids if i and scheduler_of(journey, i) != ["s1"]]
    assert stolen, "some jobs ran elsewhere than s1"
    assert stats.bus.stolen >= len(stolen) > 0
    assert stats.bus.steal_attempts >= stats.bus.stolen
    by_name = {s.name: s for s in stats.schedulers}
    assert by_name["s1"].stolen_from == stats.bus.stolen
    assert by_name["s2"].stole + by_name["s3"].stole == stats.bus.stolen


async def test_an_urgent_job_evicts_the_least_urgent_job_of_the_whole_cluster(
    bus: BusServer, commands: Commands
) -> None:
    for name in ("s1", "s2", "s3"):
        await start(commands, bus, "scheduler.test_scheduler", name, "-s", "2", "-t", "60")
    async with producer(bus) as (client, journey):
        long_ids = [
            await client.submit(JobPayload(priority=8, runtime=30 * unit())) for _ in range(5)
        ]
        await wait_until(
            lambda: all(journey.of(i, "started") for i in long_ids), 20 * unit(), "5 start"
        )
        # Started last, so of the six priority-8 jobs it is the one any runner evicts first.
        latest = await client.submit(JobPayload(priority=8, runtime=3 * unit()))
        await wait_until(lambda: bool(journey.of(latest, "started")), 20 * unit(), "6th starts")
        (where,) = scheduler_of(journey, latest)
        urgent = await client.submit(JobPayload(priority=0, runtime=0.5 * unit()))
        await wait_until(lambda: bool(journey.of(urgent, "started")), 20 * unit(), "p0 starts")
        assert scheduler_of(journey, urgent) == [where]
        # It started while every long job still ran: none had ended, it took a slot.
        assert not any(journey.final(i) for i in [*long_ids, latest])
        await wait_until(lambda: bool(journey.of(latest, "evicted")), 10 * unit(), "evicted")
        await wait_until(lambda: journey.final(latest) is not None, 30 * unit(), "6th ends")
        final = journey.final(latest)
        assert final is not None and final.event == "succeeded"
        assert (len(journey.of(latest, "started")), final.evictions) == (2, 1)
        urgent_final = journey.final(urgent)
        assert urgent_final is not None and urgent_final.event == "succeeded"
        for job_id in long_ids:
            await client.cancel(job_id)
        await wait_until(
            lambda: all(journey.final(i) for i in long_ids), 20 * unit(), "long jobs cancelled"
        )
        stats = await client.stats()
    assert all(journey.final(i).event == "cancelled" for i in long_ids)  # type: ignore[union-attr]
    assert stats.bus.evicted == 1 and stats.bus.cancelled == 5


async def test_a_task_only_one_scheduler_serves_goes_nowhere_else(
    bus: BusServer, commands: Commands
) -> None:
    await start(commands, bus, "scheduler.test_scheduler", "s1", "-s", "2")
    await start(commands, bus, "scheduler.test_scheduler", "s2", "-s", "2")
    doubles = [JobPayload(priority=3, runtime=0.1 * unit(), task="double") for _ in range(6)]
    sleeps = [JobPayload(priority=3, runtime=0.1 * unit()) for _ in range(6)]
    async with producer(bus) as (client, journey):
        early = [r.id for r in await client.submit_many(doubles[:3])]
        code, stdout = await commands.run(
            "scheduler.status", "--bus", bus.url, "--json", timeout=20 * unit()
        )
        assert code == 0
        snapshot = json.loads(stdout)
        assert snapshot["type"] == "stats"
        assert snapshot["bus"]["unserved"] == {"double": 3}
        assert sorted(s["name"] for s in snapshot["schedulers"]) == ["s1", "s2"]
        await start(commands, bus, "scheduler.worker", "w", "--tasks", SAMPLE_TASKS, "-s", "2")
        later = [r.id for r in await client.submit_many([*doubles[3:], *sleeps])]
        ids = [i for i in [*early, *later] if i is not None]
        assert len(ids) == 12
        await wait_until(lambda: all(journey.final(i) for i in ids), 30 * unit(), "all end")
        stats = await client.stats()
    for job_id in ids:
        final = journey.final(job_id)
        assert final is not None and final.event == "succeeded", journey.events[job_id]
    # The first six are the double jobs: only the worker serves that task.
    for double in [*ids[:3], *ids[3:6]]:
        assert set(scheduler_of(journey, double, "assigned")) == {"w"}, journey.events[double]
    assert stats.bus.unserved == {}
