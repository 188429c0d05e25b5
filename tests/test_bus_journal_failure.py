"""A bus whose journal cannot commit keeps serving: huge numbers, failing commits, a full disk."""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from attempt_log_tasks import LOG_ENV
from conftest import ROOT, Commands, sqlite_store, unit, wait_until
from test_bus import bus_with, client, next_event, recv, register, report, request, submit

from scheduler.bus.journal import Journal
from scheduler.bus.server import BusServer
from scheduler.producer.client import ProducerClient
from scheduler.producer.errors import SubmitError
from scheduler.protocol import JobPayload

ATTEMPT_TASKS = str(ROOT / "tests" / "attempt_log_tasks.py")


def timeout() -> float:
    return 5 * unit()


async def test_a_report_with_a_huge_number_is_refused_and_the_bus_keeps_serving(
    bus: BusServer,
) -> None:
    async with client(bus) as scheduler, client(bus) as producer:
        await register(scheduler, "scheduler", name="s1", size=1, tasks=["sleep"])
        await register(producer, "producer")
        job_id = await submit(producer)
        assert (await recv(scheduler))["job"]["id"] == job_id
        await report(scheduler, "started", job_id, 1, evictions=2**70)
        assert await recv(scheduler) == {
            "type": "error",
            "message": "evictions: Expected `int` <= 2147483647",
            "field": "evictions",
        }
        await report(scheduler, "succeeded", job_id, 1, evictions=2)
        final = await next_event(producer, "succeeded")
        assert (final["id"], final["evictions"]) == (job_id, 2)
        assert await submit(producer)


POISON = {"priority": 1, "runtime": 1, "task": "poison"}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bus.db"


def poison_trigger(db: Path, marker: str = '"poison"') -> sqlite3.Connection:
    """A trigger in the journal that makes SQLite refuse to store any job whose payload
    has ``marker`` (by default: any job of task ``poison``)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        f"CREATE TRIGGER poison BEFORE INSERT ON jobs WHEN NEW.payload LIKE '%{marker}%'"
        " BEGIN SELECT RAISE(ABORT, 'poison refused by the test'); END"
    )
    return conn


async def test_a_refused_job_never_starts_on_a_real_scheduler(
    db: Path, commands: Commands, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its assignment, made in the same loop turn as the refused acknowledgment, is never
    sent: the job's process is never started, not even to be stopped at once."""
    log = tmp_path / "attempts.log"
    log.touch()
    monkeypatch.setenv(LOG_ENV, str(log))
    async with bus_with(db=str(db)) as bus, ProducerClient(bus.url) as producer:
        await commands.start(
            "scheduler.worker", "--tasks", ATTEMPT_TASKS, "-s", "2", "--bus", bus.url
        )
        await wait_until(lambda: bus.scheduler_names() != [], 20 * unit(), "it registers")
        recorded = JobPayload(priority=5, runtime=0.01, task="recorded_sleep")
        with closing(poison_trigger(db, '"recorded_sleep"')) as trigger:
            with pytest.raises(SubmitError, match="submit refused"):
                await producer.submit(recorded)
            trigger.execute("DROP TRIGGER poison")
        await wait_until(lambda: bus.journal.failure is None, timeout(), "journal recovered")
        after = await producer.submit(recorded)
        assert (await after.result(timeout=20 * unit())) is None
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [
        ["start", after.id],
        ["end", after.id],
    ]


@pytest.mark.parametrize("hold", [False, True], ids=["plain", "held"])
async def test_a_refused_broadcast_sends_none_of_its_runs(db: Path, hold: bool) -> None:
    """A scheduler that takes held assignments hears of its run only as a hold, then a
    stop (``drop``), never a release; one that does not, not at all."""
    async with bus_with(db=str(db)) as bus:
        async with client(bus) as producer, client(bus) as monitor, client(bus) as s1:
            async with client(bus) as s2:
                await register(producer, "producer")
                await register(monitor, "monitor")
                for ws, name in ((s1, "s1"), (s2, "s2")):
                    await register(
                        ws, "scheduler", name=name, size=2, tasks=["sleep", "poison"], hold=hold
                    )
                with closing(poison_trigger(db)) as trigger:
                    frame = {
                        "cmd": "job_request",
                        "ref": 1,
                        "payload": POISON | {"broadcast": True},
                    }
                    refused = await request(producer, frame)
                    assert refused["type"] == "error" and "submit refused" in refused["message"]
                    trigger.execute("DROP TRIGGER poison")
                cancelled = [await next_event(monitor, "cancelled") for _ in range(3)]
                assert sorted(e["id"].partition("/")[2] for e in cancelled) == ["", "s1", "s2"]
                for ws in (s1, s2) if hold else ():
                    first = await recv(ws)
                    assert first["type"] == "assign" and first["hold"] is True, first
                    second = await recv(ws)
                    assert (second["type"], second.get("kind")) == ("stop", "drop"), second
                    assert second["id"] == first["job"]["id"]
                await wait_until(lambda: bus.journal.failure is None, timeout(), "recovered")
                sleep = {"priority": 1, "runtime": 1, "broadcast": True}
                await request(producer, {"cmd": "job_request", "ref": 2, "payload": sleep})
                for ws in (s1, s2):  # what each hears of next is the second broadcast
                    first = await recv(ws)
                    assert first["type"] == "assign" and "task" not in first["job"]  # sleep


async def test_a_v1_scheduler_never_gets_a_refused_job(db: Path) -> None:
    """A v1 scheduler cannot be told to stop a job: it must never be sent one that was
    refused."""
    async with bus_with(db=str(db)) as bus:
        async with client(bus) as producer, client(bus) as v1:
            await register(producer, "producer")
            await v1.send(json.dumps({"cmd": "register", "type": "scheduler"}))
            await wait_until(lambda: bus.scheduler_names() != [], timeout(), "v1 registers")
            with closing(poison_trigger(db, "13.37")) as trigger:
                frame = {"cmd": "job_request", "ref": 1, "payload": {"runtime": 13.37}}
                assert (await request(producer, frame))["type"] == "error"
                trigger.execute("DROP TRIGGER poison")
            await wait_until(lambda: bus.journal.failure is None, timeout(), "recovered")
            await request(producer, {"cmd": "job_request", "ref": 2, "payload": {"runtime": 1}})
            assert await recv(v1) == {"runtime": 1.0, "priority": 5}


async def test_a_failed_commit_refuses_only_its_submits_and_the_bus_recovers(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with bus_with(db=str(db)) as bus:
        async with client(bus) as producer, client(bus) as monitor, client(bus) as scheduler:
            await register(producer, "producer")
            await register(monitor, "monitor")
            await register(scheduler, "scheduler", name="s1", size=4, tasks=["sleep", "poison"])
            before = await submit(producer, task="sleep")
            assert (await recv(scheduler))["job"]["id"] == before
            with closing(poison_trigger(db)) as trigger:
                refused = await request(
                    producer, {"cmd": "job_request", "ref": 1, "payload": POISON}
                )
                why = "journal failing: poison refused by the test; submit refused"
                assert refused == {"type": "error", "message": why, "ref": 1}
                # While the journal fails, submits are refused at once and nothing is assigned.
                again = await request(producer, {"cmd": "job_request", "ref": 2, "payload": {}})
                assert again == {"type": "error", "message": why, "ref": 2}
                await report(scheduler, "succeeded", before, 1)
                trigger.execute("DROP TRIGGER poison")
            # The journal commits again by itself and what was held goes out in order.
            # The poison job had been assigned: its assignment was withdrawn with the
            # refusal, so the scheduler never hears of it, and it ended cancelled.
            cancelled = await next_event(monitor, "cancelled")
            assert (cancelled["task"], cancelled["scheduler"]) == ("poison", "s1")
            assert cancelled["error"] == why
            # The producer hears nothing of the job it was told was refused.
            heard = [await recv(producer)]
            while heard[-1].get("event") != "succeeded":
                heard.append(await recv(producer))
            assert {frame["id"] for frame in heard} == {before}, heard
            after = await submit(producer, task="sleep")
            assert (await recv(scheduler))["job"]["id"] == after  # nothing of the poison job
        await wait_until(lambda: bus.journal.failure is None, timeout(), "journal recovered")
        # The scheduler left cleanly: the job it held waits again (once that commit lands).
        expected = {"succeeded": 1, "cancelled": 1, "queued": 1}
        await wait_until(lambda: bus.journal.counts() == expected, timeout(), "committed")
    assert "the journal commits again after" in caplog.text
    assert "Traceback" not in caplog.text


class Disk:
    """A small disk for the journal: a real tmpfs where mounting is allowed (we are root),
    else SQLite's ``max_page_count`` on the bus's own connection (the same SQLITE_FULL)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        self._filler = where / "filler"
        self._bus: BusServer | None = None

    def fill(self, bus: BusServer) -> None:
        """Leave the journal no room to grow."""
        self._bus = bus
        if not self.mounted:
            conn = sqlite_store(bus.journal).conn
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
            return
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back."""
        if self.mounted:
            self._filler.unlink()
        else:
            assert self._bus is not None
            sqlite_store(self._bus.journal).conn.execute("PRAGMA max_page_count = 1073741823")

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Disk]:
    where = tmp_path / "disk"
    where.mkdir()
    disk = Disk(where)
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.fixture
async def full_bus(small_disk: Disk) -> AsyncIterator[BusServer]:
    async with bus_with(db=str(small_disk.where / "bus.db")) as bus:
        yield bus


async def test_a_full_disk_refuses_submits_and_the_bus_recovers_when_space_returns(
    small_disk: Disk, full_bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.bus")
    bus = full_bus
    async with client(bus) as producer, client(bus) as scheduler, client(bus) as monitor:
        await register(producer, "producer")
        await register(monitor, "monitor")
        await register(scheduler, "scheduler", name="s1", size=100, tasks=["sleep"])
        held = await submit(producer)
        assert (await recv(scheduler))["job"]["id"] == held
        small_disk.fill(bus)
        big = {"priority": 5, "runtime": 1, "args": {"blob": "x" * 100_000}}
        for ref in range(200):
            reply = await request(producer, {"cmd": "job_request", "ref": ref, "payload": big})
            if reply["type"] == "error":
                break
        assert reply == {
            "type": "error",
            "message": "journal full: database or disk is full; submit refused",
            "ref": ref,
        }
        many = await request(producer, {"cmd": "submit_many", "ref": "m", "jobs": [big]})
        assert many["type"] == "error" and "journal full" in many["message"]
        await report(scheduler, "succeeded", held, 1)
        small_disk.free()
        # No restart: the held report's event goes out once it is on disk, and submits
        # are accepted again.
        assert (await next_event(producer, "succeeded"))["id"] == held
        await wait_until(lambda: bus.journal.failure is None, timeout(), "journal recovered")
        after = await submit(producer)
        assert await request(producer, {"cmd": "cancel", "id": after, "ref": 9}) == {
            "type": "cancel_reply",
            "id": after,
            "state": "running",
            "message": "stopping",
            "ref": 9,
        }
        stats = await request(monitor, {"cmd": "stats"})
        assert stats["type"] == "stats"
    assert "database or disk is full" in caplog.text and "Traceback" not in caplog.text
    print(f"full disk: {'real tmpfs' if small_disk.mounted else 'SQLite max_page_count'}")


async def test_closing_while_the_journal_fails_does_not_hang(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with closing(Journal.open(db)):
        pass
    with closing(poison_trigger(db)):
        async with bus_with(db=str(db)) as bus, client(bus) as producer:
            await register(producer, "producer")
            refused = await request(producer, {"cmd": "job_request", "payload": POISON})
            assert "submit refused" in refused["message"]
            assert bus.journal.failure is not None
    assert "closing the journal failed; unsaved changes are lost" in caplog.text
    assert "Traceback" not in caplog.text
