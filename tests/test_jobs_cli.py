"""``python -m scheduler.jobs`` against a real bus: list, show, retry, cancel and vacuum,
with ids and unique prefixes of them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import ROOT, BusProcess, Commands, unit

from scheduler.bus.server import BusServer
from scheduler.ids import short_id
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS


async def test_show_cancel_and_vacuum_a_queued_job(bus: BusServer, commands: Commands) -> None:
    async with ProducerClient(bus.url) as client:
        job_id = await client.submit(JobPayload(priority=4, runtime=5))
    jobs = ("scheduler.jobs", "--bus", bus.url)
    code, out = await commands.run(*jobs, "show", job_id, timeout=20 * unit())
    assert code == 0 and out.startswith(f"job {job_id}\n  state      queued (accepted)\n")
    assert "\n  priority   4\n" in out
    code, out = await commands.run(*jobs, "cancel", job_id, timeout=20 * unit())
    assert code == 0 and out.startswith(f"{job_id} cancelled")
    code, out = await commands.run(*jobs, "cancel", job_id, timeout=20 * unit())
    assert code == 0 and f"{job_id} cancelled" in out
    code, out = await commands.run(*jobs, "vacuum", "--older-than", "0", timeout=20 * unit())
    assert (code, out.strip()) == (0, "deleted 1 final jobs: 1 cancelled")
    code, _ = await commands.run(*jobs, "show", job_id, timeout=20 * unit())
    assert code == 1


TASKS = str(ROOT / "tests" / "flaky_tasks.py")


async def finals_of(client: ProducerClient, ids: set[str]) -> dict[str, JobEvent]:
    """The final event of every job in ``ids``, as ``client`` hears them."""
    finals: dict[str, JobEvent] = {}
    async with asyncio.timeout(30 * unit()):
        async for event in client.events():
            if event.id in ids and event.event in FINAL_EVENTS:
                finals[event.id] = event
                if finals.keys() == ids:
                    return finals
    raise AssertionError("the client closed")


async def test_list_show_and_retry_a_failed_job_journaled_across_a_bus_restart(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    worker = ("scheduler.worker", "--tasks", TASKS, "-s", "2", "--bus", bus.url, "--name", "w")
    first = await commands.start(*worker)
    jobs = ("scheduler.jobs", "--bus", bus.url)
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        failing = await client.submit(JobPayload(task="flaky", args={"value": 7}, priority=3))
        fine = await client.submit(JobPayload(task="flaky", args={"value": 1, "failures": 0}))
        finals = await finals_of(client, {failing, fine})
    assert {i: e.event for i, e in finals.items()} == {failing: "failed", fine: "succeeded"}

    code, out = await commands.run(*jobs, "list", timeout=20 * unit())
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows[0][:3] == ["ID", "STATE", "TASK"]
    assert [row[:3] for row in rows[1:]] == [
        [short_id(fine), "succeeded", "flaky"],
        [short_id(failing), "failed", "flaky"],
    ]
    code, out = await commands.run(
        *jobs, "list", "--state", "failed", "--json", timeout=20 * unit()
    )
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(e["id"], e["error"]) for e in listed] == [
        (failing, "RuntimeError: attempt 1 fails on purpose")
    ]
    code, out = await commands.run(*jobs, "show", failing[:6], timeout=20 * unit())
    assert code == 0 and out.startswith(f"job {failing}\n")
    facts = ("state      failed", "task       flaky", 'args       {"value": 7}', "attempts   1")
    for line in facts:
        assert f"\n  {line}\n" in out, out
    assert "\n  started    " in out and "\n  finished   " in out, out
    assert "\n  exit code  1\n" in out, out
    assert "  traceback:\n    Traceback (most recent call last):" in out
    assert out.rstrip().endswith("RuntimeError: attempt 1 fails on purpose")

    code, out = await commands.run(*jobs, "retry", short_id(fine), timeout=20 * unit())
    assert (code, out) == (1, "")
    assert f"{fine} not retried: job {fine} succeeded" in commands.log_of(commands.started[-1])

    first.terminate()
    await first.wait()
    code, out = await commands.run(*jobs, "retry", short_id(failing), timeout=20 * unit())
    assert (code, out) == (0, f"{failing} retried: queued, attempt 2 next\n")
    await bus.kill()  # the retry was journaled before the command heard of it
    await bus.start()
    code, out = await commands.run(*jobs, "show", failing, timeout=20 * unit())
    assert "\n  state      queued (requeued)\n" in out, out
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        assert [e.state for e in (await client.watch([failing])).jobs] == ["queued"]
        await commands.start(*worker)
        final = (await finals_of(client, {failing}))[failing]
    assert (final.event, final.attempt, final.result) == ("succeeded", 2, 7)


async def test_an_ambiguous_unknown_or_too_short_prefix_is_an_error_naming_it(
    bus: BusServer, commands: Commands
) -> None:
    async with ProducerClient(bus.url) as client:
        for job_id in ("dup-aaaa-1", "dup-aaaa-2", "solo-1234"):
            await client.submit(JobPayload(runtime=5, job_id=job_id))
    jobs = ("scheduler.jobs", "--bus", bus.url)
    code, out = await commands.run(*jobs, "show", "dup-aaaa", "nope-00", "du", timeout=20 * unit())
    assert (code, out) == (1, "")
    assert commands.log_of(commands.started[-1]).splitlines()[-3:] == [
        "Error: dup-aaaa is ambiguous: 2 jobs match (dup-aaaa-1, dup-aaaa-2); give more characters",
        "no job id starts with nope-00 (never submitted, or vacuumed)",
        "du is too short: give at least 4 characters of a job id, or the whole id",
    ]
    code, out = await commands.run(*jobs, "cancel", "solo", timeout=20 * unit())
    assert (code, out) == (0, "solo-1234 cancelled: cancelled\n")
