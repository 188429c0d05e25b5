"""A burst of jobs far larger than a scheduler's slots: a real bus process with its
default lease, a real ``test_scheduler`` process, real job processes.

The bus assigns every job of the burst at once, so the scheduler's connection brings it
thousands of assignments and releases before the pong of its next heartbeat. A scheduler
that handled one of them per loop turn (a turn also reaps and forks jobs) read that pong
seconds late, took its lease for lost at its fence, gave its whole queue back (``not
starting ...: the lease may have expired``) and left the connection: each job it had
queued ran on a second attempt, after a reconnect.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit, wait_until

from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS

pytestmark = pytest.mark.timeout(180)

JOBS = 6000
"""Enough that the messages ahead of a pong took longer than the default fence (3 s) to
handle one per loop turn (about 1 ms a turn with five no-op jobs starting and ending)."""


async def test_a_burst_of_queued_jobs_keeps_the_schedulers_lease(
    commands: Commands, tmp_path: Path
) -> None:
    """6,000 no-op jobs submitted at once to one scheduler of 5 slots all run once, on
    their first attempt, over its first connection."""
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    scheduler = await commands.start(
        "scheduler.test_scheduler", "--bus", bus.url, "--name", "s1", "-s", "5", "-t", "30",
        "--quiet",
    )  # fmt: skip
    await wait_until(
        lambda: "registered with" in commands.log_of(scheduler), 20 * unit(), "s1 registers"
    )
    started: Counter[str] = Counter()
    finals: dict[str, JobEvent] = {}
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:

        async def record() -> None:
            async for event in client.events():
                if event.event == "started":
                    started[event.id] += 1
                elif event.event in FINAL_EVENTS:
                    finals[event.id] = event

        recorder = asyncio.create_task(record())
        payloads = [JobPayload(runtime=1e-6)] * JOBS
        ids: list[str | None] = []
        for chunk in range(0, JOBS, 1000):
            ids += [r.id for r in await client.submit_many(payloads[chunk : chunk + 1000])]
        assert None not in ids
        await wait_until(lambda: len(finals) == JOBS, 120 * unit(), f"the {JOBS} jobs end")
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
    log = commands.log_of(scheduler)
    assert "no answer from the bus" not in log, log[-2000:]
    assert "lease may have expired" not in log, log[-2000:]
    assert log.count("registered with") == 1, log[-2000:]
    assert set(finals) == set(ids)
    assert {(e.event, e.attempt) for e in finals.values()} == {("succeeded", 1)}
    assert set(started.values()) == {1}
