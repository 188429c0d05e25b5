"""The bus loses nothing: real bus processes killed and restarted on the same journal,
real schedulers killed or frozen, real job processes that log every attempt."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
import pytest
from conftest import ROOT, BusProcess, Commands, family_of, jobs_of, unit, wait_until

from scheduler import protocol_types
from scheduler.bus.config import BusConfig, bus_rules
from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient, SubmitError
from scheduler.protocol import JobEvent, JobPayload

pytestmark = pytest.mark.timeout(180)

TASKS = str(ROOT / "tests" / "attempt_log_tasks.py")


@dataclass
class Attempt:
    """One run of one job, as its process logged it."""

    pid: int
    start: float
    end: float | None = None


@dataclass
class AttemptLog:
    """Parses the lines ``attempt_log_tasks.recorded_sleep`` appends."""

    path: Path
    runs: dict[str, list[Attempt]] = field(default_factory=lambda: defaultdict(list))

    def read(self) -> AttemptLog:
        """Parse the whole file into per-job runs."""
        self.runs.clear()
        open_runs: dict[int, Attempt] = {}
        for line in self.path.read_text().splitlines():
            kind, job_id, _attempt, stamp, pid = line.split()
            if kind == "start":
                run = Attempt(int(pid), float(stamp))
                self.runs[job_id].append(run)
                open_runs[int(pid)] = run
            elif int(pid) in open_runs:
                open_runs.pop(int(pid)).end = float(stamp)
        return self

    def pids(self) -> set[int]:
        """Every job process that ever started."""
        return {run.pid for runs in self.runs.values() for run in runs}

    def overlaps(self) -> list[tuple[str, list[Attempt]]]:
        """Each job with two runs that overlapped, and its runs in start order.

        A run whose process was killed logged no end: it ended by the time it was seen
        dead, which is no later than the next run's start if runs never overlap.
        """
        found = []
        for job_id, runs in self.runs.items():
            ordered = sorted(runs, key=lambda run: run.start)
            for before, after in zip(ordered, ordered[1:], strict=False):
                ended = before.end <= after.start if before.end is not None else None
                if ended is False or (ended is None and alive(before.pid)):
                    found.append((job_id, ordered))
                    break
        return found


async def start_worker(commands: Commands, url: str, name: str, log: Path) -> int:
    """Start ``python -m scheduler.worker`` serving ``recorded_sleep``; return its pid."""
    os.environ["SCHEDBUS_ATTEMPT_LOG"] = str(log)
    proc = await commands.start(
        "scheduler.worker", "--tasks", TASKS, "-s", "3", "-t", "30", "--bus", url, "--name", name
    )
    return proc.pid


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def collect_finals(
    client: ProducerClient, finals: dict[str, list[JobEvent]], want: int
) -> None:
    """Gather final events (every one, duplicates included) until ``want`` jobs are final."""
    async for event in client.events():
        if event.event in protocol_types.FINAL_EVENTS:
            finals[event.id].append(event)
            if len(finals) >= want:
                return


async def test_300_jobs_survive_a_killed_scheduler_and_a_killed_bus(
    commands: Commands, tmp_path: Path
) -> None:
    log = tmp_path / "attempts.log"
    log.touch()
    bus = BusProcess(commands, tmp_path / "bus.db", "--lease", str(2 * unit()))
    await bus.start()
    workers = [await start_worker(commands, bus.url, f"w{i}", log) for i in range(3)]
    rng = random.Random(4)
    payloads = [
        JobPayload(
            priority=rng.randint(0, 10), runtime=rng.uniform(0.02, 0.2), task="recorded_sleep"
        )
        for _ in range(300)
    ]
    finals: dict[str, list[JobEvent]] = defaultdict(list)
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        results = await client.submit_many(payloads)
        ids = [result.id for result in results]
        assert None not in ids
        collecting = asyncio.create_task(collect_finals(client, finals, 300))
        await wait_until(lambda: len(finals) >= 60, 60 * unit(), "60 jobs finish")
        victims = family_of(workers[0])
        os.kill(workers[0], signal.SIGKILL)
        await wait_until(
            lambda: not any(alive(p.pid) for p in victims), 10 * unit(), "w0's jobs die"
        )
        await wait_until(lambda: len(finals) >= 150, 60 * unit(), "150 jobs finish")
        await bus.kill()
        await bus.start()
        await asyncio.wait_for(collecting, 120 * unit())
        watching = await client.watch([i for i in ids if i is not None])
    assert watching.unknown == []
    assert {event.state for event in watching.jobs} == {"succeeded"}
    assert len(watching.jobs) == 300
    assert {job_id for job_id in finals} == set(ids)
    attempts = AttemptLog(log).read()
    assert set(attempts.runs) == set(ids)
    assert attempts.overlaps() == []
    await wait_until(
        lambda: not any(alive(pid) for pid in attempts.pids() if pid not in set(workers)),
        10 * unit(),
        "no job process left",
    )


async def test_jobs_submitted_with_no_scheduler_run_once_one_connects(
    commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    code, _ = await commands.run(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--v1",
        "--count",
        "4",
        "-p",
        "0",
        "--runtime",
        "0.05-0.1",
        timeout=30 * unit(),
    )
    assert code == 0
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        ids = [await client.submit(JobPayload(priority=5, runtime=0.05)) for _ in range(4)]
        monitor = await commands.start(
            "scheduler.monitor", "--bus", bus.url, "--json", stdout=asyncio.subprocess.PIPE
        )
        await wait_until(
            lambda: "watching" in commands.log_of(monitor), 20 * unit(), "the monitor connects"
        )
        await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "2")
        succeeded: set[str] = set()
        assert monitor.stdout is not None
        async with asyncio.timeout(30 * unit()):
            while len(succeeded) < 8:
                event = json.loads(await monitor.stdout.readline())
                if event["event"] == "succeeded":
                    succeeded.add(event["id"])
        assert set(ids) < succeeded


async def test_a_frozen_scheduler_loses_its_jobs_and_its_stale_attempts_are_stopped(
    commands: Commands,
) -> None:
    lease = 1.0 * unit()
    async with BusServer(
        BusConfig(host="127.0.0.1", port=0, db=":memory:", rules=bus_rules(lease=lease))
    ) as bus:
        frozen = await commands.start(
            "scheduler.test_scheduler", "--bus", bus.url, "--name", "frozen", "-s", "2", "-t", "60"
        )
        async with ProducerClient(bus.url) as client:
            ids = [await client.submit(JobPayload(priority=1, runtime=30)) for _ in range(2)]
            await wait_for_events(client, ids, "started")
            stale = jobs_of(frozen.pid)
            assert len(stale) == 2
            await commands.start(
                "scheduler.test_scheduler",
                "--bus",
                bus.url,
                "--name",
                "thawed",
                "-s",
                "2",
                "-t",
                "60",
            )
            frozen.send_signal(signal.SIGSTOP)
            started = await wait_for_events(client, ids, "started")
            assert {event.scheduler for event in started} == {"thawed"}
            assert {event.attempt for event in started} == {2}
            frozen.send_signal(signal.SIGCONT)
            await wait_until(
                lambda: not any(alive(p.pid) for p in stale), 20 * unit(), "stale attempts stop"
            )
            assert frozen.returncode is None
            for job_id in ids:
                reply = await client.cancel(job_id)
                assert reply.state in {"running", "cancelled"}
            cancelled = await wait_for_events(client, ids, "cancelled")
            assert {event.scheduler for event in cancelled} <= {"thawed", None}


async def wait_for_events(
    client: ProducerClient, ids: Collection[str], kind: str
) -> list[JobEvent]:
    """The next ``kind`` event of every job in ``ids``."""
    seen: dict[str, JobEvent] = {}
    async with asyncio.timeout(30 * unit()):
        async for event in client.events():
            if event.event == kind and event.id in ids:
                seen[event.id] = event
                if len(seen) == len(ids):
                    return list(seen.values())
    raise AssertionError(f"no {kind} for every job")


async def test_one_job_id_resent_by_its_producer_and_after_a_restart_runs_once(
    commands: Commands, tmp_path: Path
) -> None:
    log = tmp_path / "attempts.log"
    log.touch()
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    payload = JobPayload(priority=3, runtime=0.3, task="recorded_sleep", job_id="report-2026-11")
    # Three producers with the same token: one owner re-sending one submission.
    clients = [ProducerClient(bus.url, token=bus.token("producer")) for _ in range(3)]
    for client in clients:
        await client.connect()
    try:
        outcomes = await asyncio.gather(*(client.submit(payload) for client in clients))
    finally:
        for client in clients:
            await client.close()
    assert outcomes == ["report-2026-11"] * 3
    await start_worker(commands, bus.url, "w0", log)
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        await client.watch(["report-2026-11"])
        await wait_for_events(client, ["report-2026-11"], "succeeded")
    await bus.kill()
    await bus.start()
    async with ProducerClient(bus.url, token=bus.token("producer")) as client:
        assert await client.submit(payload) == "report-2026-11"  # a re-send: its job
        other = msgspec.structs.replace(payload, runtime=0.4)
        with pytest.raises(SubmitError, match="already exists"):
            await client.submit(other)
        ignored = msgspec.structs.replace(other, on_conflict="ignore")
        assert await client.submit(ignored) == "report-2026-11"
    async with ProducerClient(bus.url, token=bus.token("admin")) as stranger:
        with pytest.raises(SubmitError, match="taken by another submitter"):
            await stranger.submit(ignored)
    assert len(AttemptLog(log).read().runs["report-2026-11"]) == 1


async def test_producer_wait_survives_a_bus_restart(commands: Commands, tmp_path: Path) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    await commands.start("scheduler.test_scheduler", "--bus", bus.url, "-s", "4")
    producer = await commands.start(
        "scheduler.producer",
        "--bus",
        bus.url,
        "--count",
        "16",
        "-p",
        "0",
        "--runtime",
        "0.3-0.8",
        "--wait",
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    assert producer.stdout is not None
    first = await asyncio.wait_for(producer.stdout.readline(), 30 * unit())
    await bus.kill()
    await bus.start()
    rest, _ = await asyncio.wait_for(producer.communicate(), 60 * unit())
    assert producer.returncode == 0
    jobs = [json.loads(line) for line in [first.decode(), *rest.decode().splitlines()]]
    assert len({job["id"] for job in jobs}) == 16
    assert {job["state"] for job in jobs} == {"succeeded"}
