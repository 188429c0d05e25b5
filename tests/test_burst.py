"""A burst of jobs far larger than a scheduler's slots: a real bus on an ephemeral port, a
real ``test_scheduler`` process, real job processes.

The bus assigns every job of the burst at once, so the scheduler's connection brings it
thousands of assignments and releases before the pong of its next heartbeat. A scheduler
that handled one of them per loop turn (a turn also reaps and forks jobs) read that pong
seconds late, took its lease for lost at its fence, gave its whole queue back (``not
starting ...: the lease may have expired``) and left the connection: each job it had
queued ran on a second attempt, after a reconnect.
"""

from __future__ import annotations

import pytest
from conftest import Commands, unit, wait_until
from test_bus import bus_with
from test_cluster import producer, start

from scheduler.bus.config import bus_rules
from scheduler.protocol import JobPayload

pytestmark = pytest.mark.timeout(120)

JOBS = 3000
"""Enough that the messages before a pong took longer than the fence to handle one per
loop turn (about 2 ms per turn with five no-op jobs starting and ending)."""


async def test_a_burst_of_queued_jobs_keeps_the_schedulers_lease(commands: Commands) -> None:
    """Under a 1.5 s lease (the scheduler fences itself once no heartbeat sent in the
    last second has been answered), 1,500 no-op jobs submitted at once to one scheduler
    of 5 slots all run once, on their first attempt, over its first connection."""
    async with bus_with(rules=bus_rules(lease=1.0 * unit())) as bus:
        scheduler = await start(
            commands, bus, "scheduler.test_scheduler", "s1", "-s", "5", "-t", "30", "--quiet"
        )
        async with producer(bus) as (client, journey):
            payloads = [JobPayload(runtime=1e-6)] * JOBS
            ids: list[str | None] = []
            for chunk in range(0, JOBS, 500):
                ids += [r.id for r in await client.submit_many(payloads[chunk : chunk + 500])]
            assert None not in ids
            await wait_until(
                lambda: all(journey.final(i) is not None for i in ids if i),
                60 * unit(),
                f"the {JOBS} jobs end",
            )
        log = commands.log_of(scheduler)
        assert "no answer from the bus" not in log, log[-2000:]
        assert "lease may have expired" not in log, log[-2000:]
        assert log.count("registered with") == 1, log[-2000:]
        for job_id in ids:
            assert job_id is not None
            final = journey.final(job_id)
            assert final is not None and final.event == "succeeded", journey.events[job_id]
            assert final.attempt == 1, journey.events[job_id]
            assert len(journey.of(job_id, "started")) == 1, journey.events[job_id]
