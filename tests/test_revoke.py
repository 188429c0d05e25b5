"""The scheduler side of a steal: a ``stolen`` stop gives up only an attempt that has not
started (``revoked``); a started one stays. The executor with real job processes, then
two scheduler clients in this loop against a real bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import unit, wait_until

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import Assignment, JobPayload, Report
from scheduler.tasks import TaskRegistry
from scheduler.worker.client import SchedulerClient, SchedulerConfig
from scheduler.worker.executor import Executor

pytestmark = pytest.mark.timeout(60)


def sleep_job(job_id: str, runtime: float, attempt: int = 1) -> Assignment:
    return Assignment(id=job_id, attempt=attempt, priority=5, runtime=runtime * unit())


async def test_only_an_attempt_that_has_not_started_is_given_up() -> None:
    seen: list[Report] = []
    executor = Executor(1, 30 * unit(), TaskRegistry(), lambda r, a: seen.append(r))
    try:
        executor.submit(sleep_job("running", 30))
        waiting = sleep_job("waiting", 30, attempt=2)
        executor.submit(waiting)
        assert (executor.running, executor.queued) == (1, 1)
        assert executor.revoke("waiting", 1) is None  # another attempt
        assert executor.revoke("nobody", 1) is None
        assert executor.revoke("running", 1) is None  # it started: it stays
        assert executor.revoke("waiting", 2) is waiting
        assert (executor.running, executor.queued) == (1, 0)
        assert [h.id for h in executor.held()] == ["running"]
        assert [(r.event, r.id) for r in seen] == [("started", "running")]
    finally:
        await executor.shutdown()


Starter = Callable[[str], Awaitable[SchedulerClient]]


@pytest.fixture
async def start_client(bus: BusServer) -> AsyncIterator[Starter]:
    """Starts scheduler clients (size 1) in this loop; each is stopped (its job processes
    with it) and awaited at the end."""
    running: list[tuple[SchedulerClient, asyncio.Task[None]]] = []

    async def start(name: str) -> SchedulerClient:
        client = SchedulerClient(SchedulerConfig(bus_url=bus.url, name=name, size=1, timeout=60))
        running.append((client, asyncio.create_task(client.run())))
        await wait_until(lambda: name in bus.scheduler_names(), 10 * unit(), f"{name} registers")
        return client

    try:
        yield start
    finally:
        for client, _ in running:
            client.stop()
        await asyncio.gather(*(task for _, task in running))


async def test_an_idle_scheduler_gets_the_job_waiting_at_a_busy_one(
    bus: BusServer, start_client: Starter
) -> None:
    await start_client("busy")
    async with ProducerClient(bus.url) as producer:
        long = await producer.submit(JobPayload(priority=0, runtime=30 * unit()))
        short = await producer.submit(JobPayload(priority=5, runtime=0.1 * unit()))
        started: dict[str, list[str | None]] = {long: [], short: []}
        async with asyncio.timeout(20 * unit()):
            async for event in producer.events():
                if event.event == "started":
                    started[event.id].append(event.scheduler)
                    if event.id == long:
                        await start_client("idle")
                if event.event == "succeeded":
                    assert event.id == short
                    break
        stats = await producer.stats()
    assert started == {long: ["busy"], short: ["idle"]}
    assert (stats.bus.stolen, stats.bus.steal_attempts) == (1, 1)
