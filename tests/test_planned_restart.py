"""A planned bus restart does not restart running jobs: a real bus process stopped with
SIGINT tells its schedulers how long to keep their jobs, journals the promise, and the
bus restarted on the same journal honours it."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

from conftest import BusProcess, Commands, unit, wait_until

from scheduler.bus.journal import Journal
from scheduler.ids import short_id
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS


async def test_a_planned_restart_longer_than_the_lease_leaves_running_jobs_alone(
    commands: Commands, tmp_path: Path
) -> None:
    lease = 1.0 * unit()
    bus = BusProcess(
        commands, tmp_path / "bus.db", "--lease", str(lease), "--restart-grace", str(30 * unit())
    )
    await bus.start()
    scheduler = await commands.start(
        "scheduler.test_scheduler", "--bus", bus.url, "-s", "2", "-t", "60", "--name", "keeper"
    )
    events: list[JobEvent] = []
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:

        async def collect() -> None:
            async for event in client.events():
                events.append(event)

        collecting = asyncio.create_task(collect())
        ids = [await client.submit(JobPayload(priority=5, runtime=6 * unit())) for _ in range(2)]
        await wait_until(
            lambda: {e.id for e in events if e.event == "started"} == set(ids),
            20 * unit(),
            "both jobs start",
        )
        assert bus.proc is not None
        bus.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(bus.proc.wait(), 20 * unit()) == 0
        bus_log = commands.log_of(bus.proc)
        assert "schedulers keep their jobs for" in bus_log
        assert "jobs requeued" not in bus_log or "0 jobs requeued" in bus_log
        journal = Journal.open(bus.db)
        try:
            promise = journal.restart_promise()
        finally:
            journal.close()
        assert promise is not None and promise > time.time()
        # The outage must outlast the lease (and the scheduler's own fence margin).
        down_until = time.monotonic() + 3 * lease
        await wait_until(lambda: time.monotonic() >= down_until, 10 * unit(), "the outage")
        await bus.start()
        await wait_until(
            lambda: {e.id for e in events if e.event in FINAL_EVENTS} == set(ids),
            30 * unit(),
            "both jobs end",
        )
        collecting.cancel()
    finals = [e for e in events if e.event in FINAL_EVENTS]
    assert [(e.event, e.attempt) for e in finals] == [("succeeded", 1)] * 2
    log = commands.log_of(scheduler)
    for job_id in ids:
        assert len(re.findall(rf"job {short_id(job_id)} \S+ started", log)) == 1, log
    assert "no answer from the bus" not in log
