"""Held assignments under faults: real buses, real scheduler processes, real job
processes. No task runs before the assignment that runs it is journaled, and no job runs
twice or is lost: whether the job is refused before its commit, or the scheduler or the
bus dies while a job is held.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import psutil
import pytest
from attempt_log_tasks import LOG_ENV
from conftest import ROOT, BusProcess, Commands, is_fork_server, unit, wait_until
from test_bus import (
    bus_with,
    client,
    hold_commits,
    recv,
    register,
)
from test_bus_journal_failure import poison_trigger

from scheduler.bus.config import bus_rules
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload

ATTEMPT_TASKS = str(ROOT / "tests" / "attempt_log_tasks.py")


def timeout() -> float:
    return 20 * unit()


def attempts(log: Path) -> list[list[str]]:
    """``[what, job id, attempt]`` of every line of the attempt log."""
    return [line.split()[:3] for line in log.read_text().splitlines()]


def held_job_pids(scheduler_pid: int) -> list[int]:
    """The job processes under the scheduler ``scheduler_pid`` (children of its fork
    server, or its own children that are not the fork server)."""
    found: list[int] = []
    for child in psutil.Process(scheduler_pid).children():
        if is_fork_server(child):
            found.extend(p.pid for p in child.children())
        else:
            found.append(child.pid)
    return found


def attempt_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The attempt log the scheduler's ``recorded_sleep`` jobs write to (empty)."""
    log = tmp_path / "attempts.log"
    log.touch()
    monkeypatch.setenv(LOG_ENV, str(log))
    return log


async def test_a_bus_killed_while_jobs_are_held_runs_each_once(
    tmp_path: Path, commands: Commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real bus whose journal is locked by the test (its commits fail and are retried,
    so the releases of jobs already journaled wait) sends s1 (``-s 1``) held
    assignments: one forked, the others in its local queue. Then the bus is SIGKILLed
    and restarted. Each job runs exactly once, and no held process is left behind."""
    jobs = 3

    log = attempt_log(tmp_path, monkeypatch)
    db = tmp_path / "bus.db"
    bus = BusProcess(commands, db, "--lease", "3")
    await bus.start()
    worker = ("scheduler.worker", "--tasks", ATTEMPT_TASKS, "--bus", bus.url)
    s1 = await commands.start(*worker, "-s", "1", "--name", "s1")
    async with ProducerClient(bus.url, token=bus.token("producer")) as producer:
        await wait_until(lambda: "registered" in commands.log_of(s1), timeout(), "s1 registers")
        # Journaled now, as scheduled; dispatched (held) once their delay is over.
        payload = JobPayload(priority=5, runtime=0.1, task="recorded_sleep")
        ids = [str(await producer.submit(payload, delay=1.0)) for _ in range(jobs)]
        lock = sqlite3.connect(db, isolation_level=None, timeout=0)
        lock.execute("BEGIN EXCLUSIVE")
        assert bus.proc is not None
        proc = bus.proc
        await wait_until(
            lambda: "commit failed" in commands.log_of(proc), timeout(), "the journal fails"
        )
        await wait_until(lambda: len(held_job_pids(s1.pid)) == 1, timeout(), "one waits held")
        [held] = held_job_pids(s1.pid)
        await bus.kill()
        await wait_until(lambda: _zombie(held), timeout(), "dropped")
        lock.execute("ROLLBACK")
        lock.close()
        await bus.start()
        await wait_until(
            lambda: sum(line[0] == "end" for line in attempts(log)) >= jobs,
            timeout(),
            "every job runs",
        )
        await asyncio.sleep(0.5)  # room for a second run to show (not a synchronisation)
    for job_id in ids:
        runs = [line[0] for line in attempts(log) if line[1] == job_id]
        assert runs == ["start", "end"], attempts(log)
    assert attempts(log)[0][2] != "0"


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork_server", "no_fork_server"])
async def test_a_scheduler_killed_while_a_job_is_held_leaves_no_process(
    tmp_path: Path, commands: Commands, monkeypatch: pytest.MonkeyPatch, fork_server: bool
) -> None:
    """SIGKILL of the scheduler while a job waits held: the job's
    process (and the fork server) die with it, and the job never runs there."""

    log = attempt_log(tmp_path, monkeypatch)
    called, go_on = hold_commits(monkeypatch)
    go_on.set()
    async with bus_with(db=str(tmp_path / "bus.db")) as bus, client(bus) as producer:
        await register(producer, "producer")
        worker = ("scheduler.worker", "--tasks", ATTEMPT_TASKS, "--bus", bus.url)
        extra = () if fork_server else ("--no-fork-server",)
        s1 = await commands.start(*worker, "-s", "1", "--name", "s1", *extra)
        # Its registration is answered only once committed: wait for the answer itself.
        await wait_until(
            lambda: "registered with" in commands.log_of(s1), timeout(), "s1 registers"
        )
        go_on.clear()
        called.clear()
        job = {"priority": 5, "runtime": 0.3, "task": "recorded_sleep"}
        await producer.send(json.dumps({"cmd": "job_request", "ref": 1, "payload": job}))
        await asyncio.wait_for(called.wait(), timeout())
        await wait_until(lambda: held_job_pids(s1.pid) != [], timeout(), "s1 forks it held")
        family = [p.pid for p in psutil.Process(s1.pid).children(recursive=True)]
        s1.send_signal(signal.SIGKILL)
        await s1.wait()
        await wait_until(lambda: all(_zombie(pid) for pid in family), timeout(), "all gone")
        go_on.set()
        assert (await recv(producer))["type"] == "accepted"
    assert attempts(log) == []


@pytest.mark.parametrize("max_deliveries", [None, 1], ids=["defaults", "one_delivery"])
async def test_a_refused_job_s_hold_evicts_nothing(
    tmp_path: Path, commands: Commands, monkeypatch: pytest.MonkeyPatch, max_deliveries: int | None
) -> None:
    """s1 (one slot) runs r. An urgent job u comes, held, before its commit; the journal
    refuses u (a trigger refuses its row), so u never existed for the producer. A held
    attempt waits for a free slot until its release: r is not evicted for it, and runs
    once, and succeeds (with ``max_deliveries=1`` an eviction would have made it
    ``dead``)."""

    log = attempt_log(tmp_path, monkeypatch)
    db = tmp_path / "bus.db"
    rules = bus_rules() if max_deliveries is None else bus_rules(max_deliveries=max_deliveries)
    async with bus_with(db=str(db), rules=rules) as bus, client(bus) as producer:
        await register(producer, "producer")
        worker = ("scheduler.worker", "--tasks", ATTEMPT_TASKS, "--bus", bus.url)
        await commands.start(*worker, "-s", "1", "--name", "s1")
        await wait_until(lambda: bus.scheduler_names() == ["s1"], timeout(), "s1 registers")
        r = {"priority": 5, "runtime": 1.0, "task": "recorded_sleep"}
        await producer.send(json.dumps({"cmd": "job_request", "ref": 1, "payload": r}))
        r_id = (await recv(producer))["id"]
        await wait_until(lambda: ["start", r_id, "1"] in attempts(log), timeout(), "r starts")
        with closing(poison_trigger(db, "13.37")) as trigger:
            u = {"priority": 0, "runtime": 13.37, "task": "recorded_sleep"}
            await producer.send(json.dumps({"cmd": "job_request", "ref": 2, "payload": u}))
            while (refused := await recv(producer)).get("ref") != 2:
                pass
            assert refused["type"] == "error", refused
            trigger.execute("DROP TRIGGER poison")
        while (frame := await recv(producer)).get("event") not in ("succeeded", "failed", "dead"):
            pass
        assert (frame["id"], frame["event"]) == (r_id, "succeeded"), frame
    assert [line[0] for line in attempts(log) if line[1] == r_id] == ["start", "end"], attempts(log)
