"""The journal commits on its writer thread: the event loop runs while a commit waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from conftest import sqlite_store, unit, wait_until
from test_journal import make_job

from scheduler.bus.journal import Journal
from scheduler.bus.journal_writer import InlineWriter, ThreadWriter, wait_for


@dataclass
class HeldCommit:
    """A trigger on the journal's writer connection that holds every job insert until
    :attr:`release` is set (at most ten units), saying :attr:`entered` when one waits."""

    entered: threading.Event
    release: threading.Event


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "journal.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def held(journal: Journal) -> Iterator[HeldCommit]:
    hold = HeldCommit(threading.Event(), threading.Event())

    def wait() -> int:
        hold.entered.set()
        hold.release.wait(10 * unit())
        return 0

    sqlite_store(journal).conn.create_function("hold_commit", 0, wait)
    sqlite_store(journal).conn.execute(
        "CREATE TEMP TRIGGER hold_commit BEFORE INSERT ON main.jobs BEGIN SELECT hold_commit(); END"
    )
    yield hold
    hold.release.set()


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("journal-writer")]


async def test_the_loop_runs_and_reads_while_a_commit_waits(
    journal: Journal, held: HeldCommit
) -> None:
    journal.save([make_job(1)])
    flushing = asyncio.create_task(journal.flush())
    await wait_until(held.entered.is_set, 5 * unit(), "the writer thread is in the commit")

    assert not flushing.done(), "the commit runs off the event loop"
    stored = journal.get("job-1")
    assert stored is not None and stored.state == "queued", "a write in flight is seen"
    assert [job.id for job in journal.load()] == ["job-1"]
    assert journal.counts() == {}, "reads do not wait for the writer: nothing committed yet"

    journal.save([make_job(2)])
    second = asyncio.create_task(journal.flush())
    held.release.set()
    await asyncio.gather(flushing, second)
    assert journal.counts() == {"queued": 2}
    assert journal.commits == 2, "the write queued during the commit had the next one"


async def test_a_flush_with_nothing_queued_waits_for_the_commit_in_flight(
    journal: Journal, held: HeldCommit
) -> None:
    journal.save([make_job(1)])
    first = asyncio.create_task(journal.flush())
    await wait_until(held.entered.is_set, 5 * unit(), "the writer thread is in the commit")
    second = asyncio.create_task(journal.flush())
    await asyncio.sleep(0)
    assert not second.done(), "job-1 is not durable yet"
    held.release.set()
    await asyncio.gather(first, second)
    assert journal.counts() == {"queued": 1}


async def test_close_commits_the_write_in_flight_and_what_is_queued_then_joins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    assert len(writer_threads()) == 1
    journal.save([make_job(1)])
    flushing = asyncio.create_task(journal.flush())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    journal.save([make_job(2)])
    queued = asyncio.create_task(journal.flush())
    await asyncio.sleep(0)
    journal.close()
    await asyncio.gather(flushing, queued)
    assert writer_threads() == [], "the writer thread is joined"
    with closing(Journal.open(path)) as again:
        assert [job.id for job in again.load()] == ["job-1", "job-2"]


def test_a_memory_journal_writes_inline() -> None:
    with closing(Journal.open(":memory:")) as journal:
        assert isinstance(journal._writer, InlineWriter)
        assert sqlite_store(journal).reader is sqlite_store(journal).conn


def test_the_thread_writer_runs_writes_in_order_and_survives_a_broken_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = ThreadWriter("journal-writer test")
    done: list[int] = []
    for n in range(10):
        writer.post(partial(int, n), done.append)

    def broken() -> int:
        raise ValueError("nope")

    writer.post(broken, done.append)
    for n in range(10, 20):
        writer.post(partial(int, n), done.append)
    with pytest.raises(ValueError, match="nope"):
        wait_for(writer, broken)
    writer.close()
    assert done == list(range(20)), "in order, and the thread kept serving"
    assert "journal writer: a write failed" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        writer.post(partial(int, 1), done.append)
    writer.close()
