"""Broadcast end to end: a real bus, three real ``test_scheduler`` processes, real job
processes. A broadcast runs once on each scheduler and its parent ends succeeded;
``producer --broadcast --wait`` counts the runs; a broadcast whose runs run while the
bus process is killed and restarted ends when they do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit, wait_until
from test_cluster import start
from test_user_tasks import final_events

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload

pytestmark = pytest.mark.timeout(90)

NAMES = ("s1", "s2", "s3")


async def three_schedulers(commands: Commands, bus: BusServer) -> None:
    await asyncio.gather(
        *(start(commands, bus, "scheduler.test_scheduler", n, "-s", "1") for n in NAMES)
    )


async def test_a_broadcast_runs_on_each_of_three_schedulers(
    bus: BusServer, commands: Commands
) -> None:
    await three_schedulers(commands, bus)
    async with ProducerClient(bus.url) as client:
        accepted = await client.submit_accepted(
            JobPayload(runtime=0.05, job_id="flush", broadcast=True)
        )
        assert accepted.runs == ["flush/s1", "flush/s2", "flush/s3"]
        finals = await final_events(client, ["flush", *accepted.runs])
    for name in NAMES:
        run = finals[f"flush/{name}"]
        assert (run.event, run.scheduler) == ("succeeded", name)
    assert finals["flush"].event == "succeeded"


async def test_producer_broadcast_wait_counts_the_runs(bus: BusServer, commands: Commands) -> None:
    await three_schedulers(commands, bus)
    code, stdout = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--broadcast",
        "--runtime",
        "0.05",
        "--count",
        "1",
        "--wait",
        "--json",
        timeout=60 * unit(),
    )
    assert code == 0
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 4
    assert {line["state"] for line in lines} == {"succeeded"}
    assert sorted(line["scheduler"] for line in lines if "/" in line["id"]) == list(NAMES)


async def test_a_broadcast_with_no_scheduler_is_refused(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        results = await client.submit_many([JobPayload(runtime=1.0, broadcast=True)])
    assert results[0].field == "jobs.0.broadcast"


async def test_a_broadcast_ends_across_a_bus_kill_and_restart(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    procs = [
        await commands.start("scheduler.test_scheduler", "--bus", bus.url, "--name", n, "-s", "1")
        for n in NAMES[:2]
    ]

    def registered(times: int) -> bool:
        return all(commands.log_of(p).count("registered with") >= times for p in procs)

    await wait_until(lambda: registered(1), 20 * unit(), "both schedulers register")
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        accepted = await client.submit_accepted(
            JobPayload(runtime=2 * unit(), job_id="sync", broadcast=True)
        )
        assert accepted.runs == ["sync/s1", "sync/s2"]
        started: set[str] = set()
        async with asyncio.timeout(20 * unit()):
            async for event in client.events():
                if event.event == "started":
                    started.add(event.id)
                if started == set(accepted.runs):
                    break
        await bus.kill()
        await bus.start()
        await wait_until(lambda: registered(2), 20 * unit(), "both schedulers come back")
        parent = (await final_events(client, ["sync"]))["sync"]
        runs = await client.watch(accepted.runs)
    assert parent.event == "succeeded", parent.error
    assert isinstance(parent.result, dict) and sorted(parent.result) == accepted.runs
    assert {(e.id, e.event) for e in runs.jobs} == {(r, "succeeded") for r in accepted.runs}
