"""The whole path through the commands people run: a real bus on an ephemeral port, real
``test_scheduler`` / ``producer`` / ``monitor`` processes, real job processes."""

from __future__ import annotations

import asyncio
import json
import signal

import psutil
import pytest
from conftest import Commands, family_of, unit, wait_until
from websockets.asyncio.client import connect

from scheduler import codec, protocol, protocol_types
from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.producer.tally import EXIT_NOT_ALL_SUCCEEDED
from scheduler.protocol import JobEvent, JobPayload

pytestmark = pytest.mark.timeout(120)

# With this seed the producer's first two jobs are priority 9 and 7 and the third is
# priority 0, so the third must evict; two of the twelve run longer than the 2 s limit.
EVICTING_SEED = "6"


async def start_scheduler(
    commands: Commands, bus: BusServer, *options: str, name: str = "s1"
) -> asyncio.subprocess.Process:
    """Start ``python -m scheduler.test_scheduler`` and wait until it has registered."""
    proc = await commands.start(
        "scheduler.test_scheduler", "--bus", bus.url, "--name", name, *options
    )
    await wait_until(
        lambda: name in bus.scheduler_names(), 20 * unit(), f"{name} registers with the bus"
    )
    return proc


async def test_acceptance_mix_of_timeouts_and_evictions_all_reach_a_final_state(
    bus: BusServer, commands: Commands
) -> None:
    scheduler = await start_scheduler(commands, bus, "-s", "2", "-t", "2")
    code, stdout = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--count",
        "12",
        "-p",
        "0.05",
        "--runtime",
        "0.3-3",
        "--priority",
        "0-10",
        "--wait",
        "--json",
        "--seed",
        EVICTING_SEED,
        timeout=90 * unit(),
    )
    jobs = [json.loads(line) for line in stdout.splitlines()]
    assert len(jobs) == 12
    assert {job["state"] for job in jobs} == {"succeeded", "timed_out"}
    assert code == EXIT_NOT_ALL_SUCCEEDED  # the timed-out jobs did not succeed
    for job in jobs:
        assert {
            "id",
            "priority",
            "runtime",
            "state",
            "scheduler",
            "evictions",
            "wait_s",
            "run_s",
        } <= job.keys()
        if job["runtime"] > 2:
            assert job["state"] == "timed_out", job
            assert job["wall_s"] < 2 + 0.5, job
        else:
            assert job["state"] == "succeeded", job
    assert sum(job["evictions"] for job in jobs) >= 1
    assert scheduler.returncode is None


async def test_a_v1_producer_gets_its_jobs_run_and_a_monitor_sees_them_succeed(
    bus: BusServer, commands: Commands
) -> None:
    monitor = await commands.start(
        "scheduler.monitor", "--bus", bus.url, "--json", stdout=asyncio.subprocess.PIPE
    )
    await start_scheduler(commands, bus, "-s", "3")
    await wait_until(lambda: bus.monitor_count() == 1, 20 * unit(), "the monitor registers")
    code, _ = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--v1",
        "--count",
        "3",
        "-p",
        "0",
        "--runtime",
        "0.1-0.2",
        timeout=30 * unit(),
    )
    assert code == 0
    succeeded: set[str] = set()
    assert monitor.stdout is not None
    async with asyncio.timeout(30 * unit()):
        while len(succeeded) < 3:
            line = json.loads(await monitor.stdout.readline())
            assert {"event", "id", "priority", "state", "scheduler", "time"} <= line.keys()
            if line["event"] == "succeeded":
                assert line["scheduler"] == "s1"
                succeeded.add(line["id"])


GARBAGE = [
    "this is not json",
    '{"cmd": "job_request", "payload": {"priority": "high", "runtime": 1}}',
    '{"cmd": "job_request", "payload": {"priority": 11, "runtime": 1}}',
    '{"cmd": "job_request", "payload": {"priority": 1, "runtime": -1}}',
    '{"cmd": "make_coffee"}',
]


async def test_garbage_frames_get_clear_errors_and_the_bus_still_runs_jobs(
    bus: BusServer, commands: Commands
) -> None:
    await start_scheduler(commands, bus, "-s", "2")
    async with connect(bus.url) as ws:
        await ws.send(codec.encode(protocol.Register(type="producer", protocol=2)))
        assert isinstance(codec.decode_bus(await ws.recv()), protocol.Registered)
        errors = []
        for frame in GARBAGE:
            await ws.send(frame)
            reply = codec.decode_bus(await asyncio.wait_for(ws.recv(), 5 * unit()))
            assert isinstance(reply, protocol.Error)
            errors.append(reply)
    assert errors[0].message.startswith("not valid JSON")
    assert [e.field for e in errors[1:]] == [
        "payload.priority",
        "payload.priority",
        "payload.runtime",
        "cmd",
    ]
    async with connect(bus.url, max_size=None) as big:
        await big.send(codec.encode_v1_register("producer"))
        await big.send("x" * (2 * 1024 * 1024))
        await asyncio.wait_for(big.wait_closed(), 5 * unit())
        assert big.close_code == 1009
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(JobPayload(priority=1, runtime=0.1))
        final = await next_final(client, job_id)
    assert final.event == "succeeded"


async def next_final(client: ProducerClient, job_id: str) -> JobEvent:
    """The final event of ``job_id``."""
    async with asyncio.timeout(20 * unit()):
        async for event in client.events():
            if event.id == job_id and event.event in protocol_types.FINAL_EVENTS:
                return event
    raise AssertionError(f"no final event for {job_id}")


@pytest.mark.parametrize("mode", [(), ("--warm", "3")], ids=["process", "warm"])
async def test_killing_a_scheduler_leaves_none_of_its_job_processes_alive(
    bus: BusServer, commands: Commands, mode: tuple[str, ...]
) -> None:
    scheduler = await start_scheduler(commands, bus, "-s", "3", "-t", "60", *mode)
    async with ProducerClient(bus.url) as client:
        for priority in (1, 2, 3):
            await client.submit(JobPayload(priority=priority, runtime=30))
        started = 0
        async with asyncio.timeout(20 * unit()):
            async for event in client.events():
                started += event.event == "started"
                if started == 3:
                    break
        jobs = family_of(scheduler.pid)[1:]
        assert len(jobs) >= 3
        scheduler.send_signal(signal.SIGKILL)
        await scheduler.wait()
        await wait_until(
            lambda: not any(alive(job) for job in jobs), 10 * unit(), "job processes die"
        )


def alive(process: psutil.Process) -> bool:
    """True while ``process`` runs (a zombie waiting to be reaped does not count)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
