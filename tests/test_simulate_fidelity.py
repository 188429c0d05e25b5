"""Fidelity: a real run (a real bus, three real ``test_scheduler`` processes, real job
processes) recorded as its events, replayed through the simulator (``--replay``'s
reader), gives the same placement, eviction and steal decisions in the same order.

The jobs are spaced (0.3 units apart, runtimes of units) so that the live system's
timing noise (message latency, fork time) stays far below the gaps between decisions:
which scheduler gets a job, which job an urgent one evicts, where the evicted job waits
and who steals it are then decided by the rules alone, which both runs share.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from conftest import Commands, unit, wait_until
from test_cluster import producer, start

from scheduler.bus.server import BusServer
from scheduler.protocol import JobEvent, JobPayload
from scheduler.simulate.costs import calibrate
from scheduler.simulate.engine import Simulation
from scheduler.simulate.fleet import uniform
from scheduler.simulate.workload import Workload, recorded_jobs
from scheduler.simulate.world import SIM_RULES, Settings

pytestmark = pytest.mark.timeout(90)

RULES = SIM_RULES
"""The live bus's rules (steal urgent, lease 5 s, start deadline 30 s)."""

DECISIONS = ("assigned", "evicted", "started", "requeued")
"""The events compared: where each attempt went, and which were evicted."""


def decisions(events: list[JobEvent], order: list[str]) -> list[tuple[str, int, str | None]]:
    """``(event, job's index in acceptance order, scheduler)`` of the decision events,
    in the order they happened (their bus time stamps)."""
    index = {job_id: i for i, job_id in enumerate(order)}
    ordered = sorted(events, key=lambda e: e.time)
    return [(e.event, index[e.id], e.scheduler) for e in ordered if e.event in DECISIONS]


async def test_a_replayed_live_run_makes_the_same_decisions(
    bus: BusServer, commands: Commands
) -> None:
    for name in ("A", "B", "C"):
        await start(commands, bus, "scheduler.test_scheduler", name, "-s", "1", "-t", "30")
    u = unit()
    # Three jobs fill the three slots; an urgent one evicts the latest started (C's);
    # the evicted job waits in the queue picked least recently (A's), and C, free again
    # once the urgent job ends, steals it.
    script = [(5, 2.0), (5, 2.0), (5, 2.0), (1, 0.5)]
    async with producer(bus) as (client, journey):
        order = []
        for i, (priority, runtime) in enumerate(script):
            if i:
                await asyncio.sleep(0.3 * u)
            job = await client.submit(JobPayload(priority=priority, runtime=runtime * u))
            order.append(job.id)
        await wait_until(
            lambda: all(journey.final(i) is not None for i in order), 30 * u, "every job ends"
        )
    live = [e for i in order for e in journey.events[i]]
    assert all(journey.final(i).event == "succeeded" for i in order)  # type: ignore[union-attr]
    records = [msgspec.structs.asdict(e) for e in sorted(live, key=lambda e: e.time)]
    replayed = recorded_jobs(records)
    workload = Workload(lambda: iter(replayed), frozenset({"sleep"}), len(replayed))
    sim = Simulation(workload, uniform(3, 1, 30.0), RULES, Settings(latency=0.001), check=True)
    outcome = sim.run()
    assert sim.trace is not None
    simulated = [entry[2] for entry in sim.trace if entry[0] == "event"]
    sim_order = [e.id for e in simulated if isinstance(e, JobEvent) and e.event == "accepted"]
    expected = decisions(live, order)
    got = decisions([e for e in simulated if isinstance(e, JobEvent)], sim_order)
    assert got == expected, (got, expected)
    # The live run did what the script meant: evicted from C, queued at A, stolen by C.
    job2 = [(kind, where) for kind, job, where in expected if job == 2]
    assert job2 == [
        ("assigned", "C"), ("started", "C"), ("evicted", "C"), ("assigned", "A"),
        ("assigned", "C"), ("started", "C"),
    ]  # fmt: skip
    assert outcome.steals == 1 and outcome.counts["succeeded"] == len(order)
    # The same recording calibrates the costs: an exit sample per attempt that ran out
    # (all but the evicted one), a dispatch sample per attempt that started at once and
    # evicted none (the first three, and the steal), an eviction sample for the urgent
    # job, no fork sample (no job waited in a scheduler's queue for a slot there);
    # replayed with those costs, the decisions stay the same.
    found = calibrate(records, latency=0.001)
    assert len(found.exit_samples) == len(order) and len(found.dispatch_samples) == 4
    assert len(found.evict_samples) == 1 and found.start_samples == ()
    assert 0 < found.dispatch_cost < u and 0 < found.exit_cost < u
    costed = Simulation(
        workload, uniform(3, 1, 30.0, found.costs()), RULES, Settings(latency=0.001), check=True
    )
    costed.run()
    assert costed.trace is not None
    again = [e[2] for e in costed.trace if e[0] == "event" and isinstance(e[2], JobEvent)]
    assert decisions(again, sim_order) == expected
