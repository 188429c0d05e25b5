"""Dependencies end to end: a real bus, a real ``worker`` serving ``tests/sample_tasks.py``,
real job processes. A diamond runs in order with results passed; a failed dependency
skips its dependents (down the line); ``producer --after`` waits for a job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit
from test_user_tasks import SAMPLE_TASKS, final_events, start_worker

from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.producer.workflows import chain, group
from scheduler.protocol import JobPayload

pytestmark = pytest.mark.timeout(90)


def gather(tag: str) -> JobPayload:
    return JobPayload(task="gather", args={"tag": tag}, job_id=tag)


async def test_a_diamond_runs_in_order_with_results_passed(
    bus: BusServer, commands: Commands
) -> None:
    await start_worker(commands, bus)
    flow = chain(gather("a"), group(gather("b"), gather("c")), gather("d"), pass_results=True)
    async with ProducerClient(bus.url) as client:
        results = await client.submit_many(flow.jobs)
        assert [r.id for r in results] == ["a", "b", "c", "d"]
        finals = await final_events(client, flow.ids)
    assert {e.event for e in finals.values()} == {"succeeded"}
    a = {"tag": "a", "results": {}}
    b, c = ({"tag": t, "results": {"a": a}} for t in "bc")
    assert finals["d"].result == {"tag": "d", "results": {"b": b, "c": c}}
    assert finals["d"].time >= max(finals["b"].time, finals["c"].time)


async def test_a_failed_dependency_skips_its_dependents(bus: BusServer, commands: Commands) -> None:
    await start_worker(commands, bus)
    boom = JobPayload(task="explode", args={"message": "no"}, job_id="boom")
    flow = chain(boom, gather("next"), gather("last"))
    async with ProducerClient(bus.url) as client:
        await client.submit_many(flow.jobs)
        run = await client.submit(
            JobPayload(
                task="gather",
                args={"tag": "anyway"},
                depends_on=["boom"],
                on_dependency_failure="run",
            )
        )
        finals = await final_events(client, [*flow.ids, run])
    assert finals["boom"].event == "failed"
    assert finals["next"].event == "skipped"
    assert finals["next"].error == "dependency boom ended failed"
    assert finals["last"].error == "dependency next ended skipped"
    assert finals[run].event == "succeeded"


async def test_producer_after_waits_for_a_job(bus: BusServer, commands: Commands) -> None:
    await start_worker(commands, bus)
    async with ProducerClient(bus.url) as client:
        first = await client.submit(gather("first"))
        code, stdout = await commands.run(
            "scheduler.producer",
            "--bus",
            bus.url,
            "--task",
            "gather",
            "--args",
            '{"tag": "second"}',
            "--after",
            first,
            "--pass-results",
            "--count",
            "1",
            "--wait",
            "--json",
            timeout=60 * unit(),
        )
    assert code == 0, stdout
    (line,) = [json.loads(text) for text in stdout.splitlines()]
    assert line["state"] == "succeeded"
    assert line["result"] == {
        "tag": "second",
        "results": {"first": {"tag": "first", "results": {}}},
    }


async def test_an_unknown_dependency_is_refused_naming_it(bus: BusServer) -> None:
    async with ProducerClient(bus.url) as client:
        results = await client.submit_many([JobPayload(task="gather", depends_on=["x", "nope"])])
    assert results[0].field == "jobs.0.depends_on[0]"
    assert results[0].error == "jobs.0.depends_on[0]: no job x"


async def test_blocked_jobs_survive_a_bus_kill_and_run_after_restart(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    flow = chain(gather("a"), gather("b"), pass_results=True)
    doomed = chain(JobPayload(task="explode", args={"message": "no"}, job_id="x"), gather("y"))
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        results = await client.submit_many([*flow.jobs, *doomed.jobs])
        assert [r.id for r in results] == ["a", "b", "x", "y"]
    await bus.kill()
    await bus.start()
    await commands.start("scheduler.worker", "--bus", bus.url, "--tasks", SAMPLE_TASKS)
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        watching = await client.watch(["a", "b", "x", "y"])
        assert {e.id: e.state for e in watching.jobs}["b"] in ("blocked", "queued", "assigned")
        finals = await final_events(client, ["a", "b", "x", "y"])
    assert finals["b"].result == {"tag": "b", "results": {"a": {"tag": "a", "results": {}}}}
    assert (finals["x"].event, finals["y"].event) == ("failed", "skipped")
