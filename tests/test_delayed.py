"""Delayed jobs through a real bus: scheduled, queued at their time, cancelled while
scheduled, shown and counted; with real processes, a delayed job starts on time and a
job whose grace passed while the bus was SIGKILLed ends ``expired`` after restart; the
producer's --delay, --at and --scatter."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BusProcess, Commands, unit, wait_until
from test_bus import client, recv, register, submit

from scheduler.bus.server import BusServer
from scheduler.producer.cli import cli as producer_cli
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS

pytestmark = pytest.mark.timeout(120)


async def gather(client: ProducerClient, seen: dict[str, list[JobEvent]]) -> None:
    """Record every event the producer gets, by job."""
    async for event in client.events():
        seen.setdefault(event.id, []).append(event)


def finals(seen: dict[str, list[JobEvent]]) -> dict[str, JobEvent]:
    """The final event of every job that has one."""
    return {e.id: e for events in seen.values() for e in events if e.event in FINAL_EVENTS}


def kinds(seen: dict[str, list[JobEvent]], job_id: str) -> list[str]:
    return [e.event for e in seen.get(job_id, [])]


async def test_a_scheduled_job_is_shown_counted_and_cancelled(bus: BusServer) -> None:
    seen: dict[str, list[JobEvent]] = {}
    async with ProducerClient(bus.url) as client:
        following = asyncio.create_task(gather(client, seen))
        job_id = await client.submit(JobPayload(runtime=0.1), delay=3600.0)
        await wait_until(lambda: "scheduled" in kinds(seen, job_id), 5 * unit(), "scheduled")
        assert kinds(seen, job_id) == ["accepted", "scheduled"]
        watching = await client.watch([job_id])
        assert [(e.id, e.state) for e in watching.jobs] == [(job_id, "scheduled")]
        assert (await client.stats()).bus.scheduled == 1
        listed = await client.list_jobs(["scheduled"])
        assert [(e.id, e.event) for e in listed.jobs] == [(job_id, "scheduled")]
        assert listed.jobs[0].run_at is not None and listed.jobs[0].run_at > time.time()
        assert (await client.list_jobs(["queued"])).jobs == []
        reply = await client.cancel(job_id)
        assert reply.state == "cancelled"
        await wait_until(lambda: "cancelled" in kinds(seen, job_id), 5 * unit(), "cancelled")
        assert (await client.stats()).bus.scheduled == 0
        following.cancel()


async def test_a_naive_run_at_is_refused_naming_the_field(bus: BusServer) -> None:
    with pytest.raises(ValueError, match="has no zone"):
        JobPayload(run_at="2030-01-01T00:00")
    async with client(bus) as ws:
        await register(ws, "producer")
        frame = {"cmd": "job_request", "payload": {"runtime": 1, "run_at": "2030-01-01T00:00"}}
        await ws.send(json.dumps(frame))
        reply = await recv(ws)
        assert reply["field"] == "payload.run_at", reply
        assert "has no zone; an ISO 8601 time must carry one" in reply["message"]
        assert await submit(ws, run_at="2030-01-01T00:00:00Z")  # the bus keeps serving


async def test_a_delayed_job_starts_on_time(commands: Commands, tmp_path: Path) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "2")
    seen: dict[str, list[JobEvent]] = {}
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        following = asyncio.create_task(gather(client, seen))
        # A scheduler is connected once a plain job runs.
        warm = await client.submit(JobPayload(runtime=0.01))
        await wait_until(lambda: "succeeded" in kinds(seen, warm), 20 * unit(), "warm-up")
        run_at = time.time() + 1.0 * unit()
        job_id = await client.submit(JobPayload(runtime=0.01), run_at=run_at)
        await wait_until(lambda: "succeeded" in kinds(seen, job_id), 20 * unit(), "it runs")
        following.cancel()
    assert kinds(seen, job_id)[:4] == ["accepted", "scheduled", "queued", "assigned"]
    started = next(e for e in seen[job_id] if e.event == "started")
    queued = next(e for e in seen[job_id] if e.event == "queued")
    assert queued.time >= run_at  # never early
    assert started.time - run_at < 0.5 * unit()  # on time, within the test's tolerance


async def test_a_grace_that_passed_while_the_bus_was_killed_expires_the_job(
    commands: Commands, tmp_path: Path
) -> None:
    """Two jobs due while the bus is down: the one with a grace ends ``expired`` after
    the restart; the one without runs late, as the default says."""
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "2")
    due = time.time() + 1.0 * unit()
    graced = JobPayload(runtime=0.01, run_at=due, misfire_grace=0.5 * unit())
    anyway = JobPayload(runtime=0.01, run_at=due)
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        results = await client.submit_many([graced, anyway])
    ids = [r.id for r in results]
    assert None not in ids
    await bus.kill()
    await wait_until(lambda: time.time() > due + 1.0 * unit(), 10 * unit(), "the grace passes")
    await bus.start()
    seen: dict[str, list[JobEvent]] = {}
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        following = asyncio.create_task(gather(client, seen))
        watching = await client.watch([i for i in ids if i is not None])
        for event in watching.jobs:
            seen.setdefault(event.id, []).append(event)
        await wait_until(lambda: len(finals(seen)) == 2, 30 * unit(), "both jobs end")
        following.cancel()
    ended = finals(seen)
    assert ended[ids[0] or ""].event == "expired"
    assert "misfire grace" in " ".join(ended[ids[0] or ""].errors or [])
    assert ended[ids[1] or ""].event == "succeeded"


async def test_producer_scatters_its_jobs_over_the_window(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "4")
    before = time.time()
    window = 2.0 * unit()
    code, out = await commands.run(
        "scheduler.producer", "--bus", bus.url, "--count", "4", "--runtime", "0.01",
        "--scatter", str(window), "--jitter", "0.01", "--wait", "--json", "--seed", "3",
        timeout=30 * unit(),
    )  # fmt: skip
    assert code == 0
    jobs = [json.loads(line) for line in out.splitlines()]
    assert [j["state"] for j in jobs] == ["succeeded"] * 4
    assert time.time() - before >= window * 7 / 8 - 0.01  # the last one waited its slice


async def test_the_bus_misfire_grace_expires_a_job_nobody_serves(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db", "--misfire-grace", str(0.2 * unit()))
    await bus.start()
    seen: dict[str, list[JobEvent]] = {}
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        following = asyncio.create_task(gather(client, seen))
        job_id = await client.submit(JobPayload(task="nobody"), delay=0.2 * unit())
        await wait_until(lambda: job_id in finals(seen), 10 * unit(), "the job ends")
        following.cancel()
    assert kinds(seen, job_id) == ["accepted", "scheduled", "queued", "expired"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--delay", "1", "--at", "2030-01-01T00:00:00Z"], "--delay and --at do not go"),
        (["--at", "2030-01-01T00:00:00"], "has no zone"),
        (["--at", "soon"], "not an ISO 8601 time"),
        (["--scatter", "5"], "--scatter needs --count"),
        (["--count", "2", "--jitter", "1"], "--jitter needs --scatter"),
        (["--v1", "--delay", "1"], "--v1 jobs run now"),
    ],
)
def test_bad_timing_options_get_clear_errors(args: list[str], words: str) -> None:
    result = CliRunner().invoke(producer_cli, args)
    assert result.exit_code == 2
    assert words in result.output


async def test_jobs_list_show_and_status_tell_a_scheduled_job(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        later = await client.submit(JobPayload(runtime=0.1), run_at=4102444800.0)  # 2100
        await client.submit(JobPayload(runtime=0.1, task="nobody"))
    code, out = await commands.run(
        "scheduler.jobs", "--bus", bus.url, "list", "--state", "scheduled", "--json",
        timeout=20 * unit(),
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["state"], r["run_at"]) for r in rows] == [
        (later, "scheduled", 4102444800.0)
    ]
    code, out = await commands.run("scheduler.jobs", "--bus", bus.url, "list", timeout=20 * unit())
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["queued", "scheduled"]
    code, out = await commands.run(
        "scheduler.jobs", "--bus", bus.url, "show", later, timeout=20 * unit()
    )
    assert f"job {later}" in out and "state      scheduled" in out
    assert "run at     2100-01-01" in out
    code, out = await commands.run("scheduler.status", "--bus", bus.url, timeout=20 * unit())
    assert code == 0
    assert re.search(r"│ scheduled +│ +1 │", out), out  # one figure/value pair of the bus's
