"""User tasks end to end: a real bus, a real ``worker`` serving ``tests/sample_tasks.py``,
real job processes. JSON arguments in, a JSON result out in the final event; an exception
fails the job with its type, message and traceback; grandchildren end with the job."""

from __future__ import annotations

import asyncio
import json

import psutil
import pytest
from conftest import ROOT, Commands, unit, wait_until

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS

pytestmark = pytest.mark.timeout(90)

SAMPLE_TASKS = str(ROOT / "tests" / "sample_tasks.py")


async def start_worker(commands: Commands, bus: BusServer) -> None:
    """Start a worker serving the sample tasks; wait until it has registered."""
    await commands.start(
        "scheduler.worker", "--bus", bus.url, "--name", "w", "--tasks", SAMPLE_TASKS, "-s", "2"
    )
    await wait_until(lambda: "w" in bus.scheduler_names(), 20 * unit(), "the worker registers")


async def final_events(client: ProducerClient, ids: list[str]) -> dict[str, JobEvent]:
    """Wait for the final event of every job in ``ids``."""
    finals: dict[str, JobEvent] = {}
    async with asyncio.timeout(30 * unit()):
        async for event in client.events():
            if event.id in ids and event.event in FINAL_EVENTS:
                finals[event.id] = event
                if finals.keys() == set(ids):
                    return finals
    raise AssertionError(f"the events ended with only {sorted(finals)} final")


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie counts: this sandbox's pid 1 does not reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_producer_task_args_come_back_as_results_in_its_json_lines(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    code, stdout = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--task",
        "add",
        "--args",
        '{"a": 2, "b": 3}',
        "--count",
        "3",
        "-p",
        "0.01",
        "--wait",
        "--json",
        timeout=60 * unit(),
    )
    assert code == 0
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert (line["task"], line["state"], line["result"], line["error"]) == (
            "add",
            "succeeded",
            5,
            None,
        )


async def test_a_raising_task_fails_with_its_exception_and_traceback_kept_by_the_bus(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        boom = await client.submit(
            JobPayload(priority=3, task="explode", args={"message": "no such file: x.csv"})
        )
        fine = await client.submit(JobPayload(priority=3, task="describe", args=[1, "two"]))
        finals = await final_events(client, [boom, fine])
        watched = await client.watch([boom, fine])
    failed = finals[boom]
    assert failed.event == "failed" and failed.exit_code == 1 and failed.result is None
    assert failed.error == "sample_tasks.TaskFailure: no such file: x.csv"
    assert failed.errors == [failed.error]
    assert failed.traceback is not None and "raise TaskFailure(message)" in failed.traceback
    assert finals[fine].result == {"items": [1, "two"], "options": {}}
    # Asked again later, the bus still has both (what `jobs show` prints).
    later = {event.id: event for event in watched.jobs}
    assert later[boom].traceback == failed.traceback
    assert later[fine].result == finals[fine].result
    code, stdout = await commands.run(
        "scheduler.jobs", "--bus", bus.url, "show", fine, timeout=20 * unit()
    )
    assert code == 0 and '\n  result     {"items": [1, "two"], "options": {}}\n' in stdout


async def test_grandchildren_of_a_task_end_with_it_and_its_result_arrives(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(
            JobPayload(priority=3, task="spawn_grandchildren", args={"linger": 600})
        )
        done = (await final_events(client, [job_id]))[job_id]
    assert done.event == "succeeded", done
    assert isinstance(done.result, dict) and set(done.result) == {"program", "forked"}
    pids = list(done.result.values())
    assert all(isinstance(pid, int) for pid in pids)
    await wait_until(lambda: all(gone(pid) for pid in pids), 10 * unit(), "grandchildren end")


async def test_a_task_the_worker_does_not_take_arguments_for_fails_saying_why(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(JobPayload(priority=3, task="add", args={"a": 1, "c": 2}))
        failed = (await final_events(client, [job_id]))[job_id]
    assert failed.event == "failed"
    assert failed.error == "TypeError: add() got an unexpected keyword argument 'c'"


async def test_a_tasks_declared_priority_and_timeout_are_its_jobs_defaults(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(JobPayload(task="nap", args=[30]))
        done = (await final_events(client, [job_id]))[job_id]
    # sample_tasks.nap is declared with priority=1, timeout=1.0.
    assert (done.event, done.priority, done.error) == ("timed_out", 1, "timed out after 1 s")
