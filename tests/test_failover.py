"""Several buses on one PostgreSQL journal, as real processes: the leader SIGKILLed
mid-run, its lock session killed, and the clients following whoever leads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from conftest import ROOT, Commands, free_port, unit, wait_until
from test_durability import AttemptLog, alive

from scheduler.policy.leadership import EXIT_FENCED

pytestmark = pytest.mark.timeout(120)

TASKS = str(ROOT / "tests" / "attempt_log_tasks.py")


class ElectedBus:
    """``python -m scheduler.bus --store DSN`` on a port of its own."""

    def __init__(self, commands: Commands, dsn: str, *options: str) -> None:
        self.commands = commands
        self.dsn = dsn
        self.options = options
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it and wait until it stands by or leads."""
        await self.spawn()
        await self.up()

    async def spawn(self) -> None:
        """Start it (see :meth:`up`)."""
        self.proc = await self.commands.start(
            "scheduler.bus", "--port", str(self.port), "--store", self.dsn, *self.options
        )

    async def up(self) -> None:
        """Wait until it stands by or leads."""
        await wait_until(lambda: "bus standing by" in self.log(), 20 * unit(), f"{self.url} is up")

    def log(self) -> str:
        assert self.proc is not None
        return self.commands.log_of(self.proc)

    def leads(self) -> bool:
        """Whether it is alive and has started serving as the leader."""
        return (
            self.proc is not None and self.proc.returncode is None and "bus listening" in self.log()
        )

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def leader_of(buses: list[ElectedBus]) -> ElectedBus:
    """The one bus that leads, once one does."""
    await wait_until(lambda: any(bus.leads() for bus in buses), 20 * unit(), "a bus leads")
    (leader,) = [bus for bus in buses if bus.leads()]
    return leader


async def test_1000_jobs_survive_two_leaders_killed(
    commands: Commands, postgres_dsn: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    log = tmp_path / "attempts.log"
    log.touch()
    os.environ["SCHEDBUS_ATTEMPT_LOG"] = str(log)
    # The buses are SIGKILLed, the PostgreSQL server never is: its commits need not wait
    # for the disk for this test to mean what it says (and it runs several times faster).
    dsn = postgres_dsn + "?options=-c%20synchronous_commit%3Doff"
    buses = [ElectedBus(commands, dsn) for _ in range(3)]
    urls = ",".join(bus.url for bus in buses)
    for bus in buses:
        await bus.spawn()
    await asyncio.gather(*(bus.up() for bus in buses))
    workers = [
        await commands.start(
            "scheduler.worker", *f"--tasks {TASKS} -s 8 -t 30 --bus {urls} --name w{i}".split()
        )
        for i in range(3)
    ]
    leader = await leader_of(buses)
    producer = await commands.start(
        "scheduler.producer",
        *f"--bus {urls} --count 1000 -p 0 --id-prefix acc --task recorded_sleep".split(),
        *"--runtime 0.005-0.02 --priority 0-10 --wait --json".split(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert producer.stdout is not None
    finals: list[dict[str, object]] = []

    async def read_finals(until: int) -> None:
        assert producer.stdout is not None
        while len(finals) < until:
            line = await producer.stdout.readline()
            assert line, "the producer ended early"
            finals.append(json.loads(line))

    for cut in (250, 550):
        await asyncio.wait_for(read_finals(cut), 60 * unit())
        await leader.kill()
        leader = await leader_of([bus for bus in buses if bus.proc and bus.proc.returncode is None])
    await asyncio.wait_for(read_finals(1000), 60 * unit())
    assert await asyncio.wait_for(producer.wait(), 10 * unit()) == 0
    ids = Counter(str(job["id"]) for job in finals)
    assert len(ids) == 1000 and set(ids.values()) == {1}
    assert {job["state"] for job in finals} == {"succeeded"}
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        cursor = await conn.execute("SELECT state, count(*) FROM schedbus_jobs GROUP BY state")
        assert dict(await cursor.fetchall()) == {"succeeded": 1000}
    attempts = AttemptLog(log).read()
    assert set(attempts.runs) == set(ids)
    assert attempts.overlaps() == []
    assert all(worker.returncode is None for worker in workers), "a scheduler restarted"
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for bus in buses:
        if bus.proc is not None and bus.proc.returncode is None:
            bus.proc.send_signal(signal.SIGTERM)
    procs = [*workers, *(bus.proc for bus in buses if bus.proc is not None)]
    await asyncio.wait_for(asyncio.gather(*(proc.wait() for proc in procs)), 20 * unit())
    await wait_until(
        lambda: not any(alive(pid) for pid in attempts.pids()), 10 * unit(), "no job left"
    )
    print(f"acceptance run: {time.monotonic() - started:.1f} s")


async def attempts_in(dsn: str) -> dict[str, int]:
    """Every job's attempt number as the journal has it (each assignment adds one)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT id, attempt FROM schedbus_jobs")
        return {str(job_id): int(attempt) for job_id, attempt in await cursor.fetchall()}


async def test_a_leader_whose_lock_session_is_killed_assigns_nothing_more(
    commands: Commands, postgres_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "attempts.log"
    log.touch()
    os.environ["SCHEDBUS_ATTEMPT_LOG"] = str(log)
    bus = ElectedBus(commands, postgres_dsn)
    await bus.start()
    await leader_of([bus])
    await commands.start(
        "scheduler.worker", *f"--tasks {TASKS} -s 1 -t 30 --bus {bus.url} --name w0".split()
    )
    submit = f"--bus {bus.url} -p 0 --task recorded_sleep --priority 0".split()
    await commands.run(
        "scheduler.producer", *submit, "--id-prefix", "now", "--count", "1",
        "--runtime", str(3 * unit()), timeout=20 * unit(),
    )  # fmt: skip
    await wait_until(lambda: "now-0" in AttemptLog(log).read().runs, 20 * unit(), "a job runs")
    await commands.run(
        "scheduler.producer", *submit, "--id-prefix", "later", "--count", "3",
        "--runtime", "0.01", "--delay", str(2 * unit()), timeout=20 * unit(),
    )  # fmt: skip
    before = await attempts_in(postgres_dsn)
    assert before == {"now-0": 1, "later-0": 0, "later-1": 0, "later-2": 0}
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'schedbus-leader-lock'"
        )
    assert bus.proc is not None
    # A bus that went on dispatching would assign the delayed jobs when they fall due
    # (the database would show it: an attempt is journaled before it is sent); this one
    # is gone before then.
    assert await asyncio.wait_for(bus.proc.wait(), unit()) == EXIT_FENCED
    # Whichever notices first: the lock session's socket, or the lease renewal on it.
    assert any(
        f"stops leading: {why}" in bus.log()
        for why in (
            "its database session holding the leader lock ended",
            "a check of its leader lock failed or did not answer in time",
        )
    ), bus.log()
    assert await attempts_in(postgres_dsn) == before
