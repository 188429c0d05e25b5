"""One store test suite that the SQLite and the PostgreSQL journal both pass: round trips,
schema creation and refusal, vacuum, secrets, schedules, the restart promise, and a frame's
job lookups read ahead in one query."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from conftest import count_reads
from test_journal import make_job
from test_journal_schedules import state

from scheduler.bus.journal import Journal, JournalError
from scheduler.policy.job import Job
from scheduler.policy.listing import JobQuery
from scheduler.protocol import JobPayload


class Place:
    """Where one backend's journal lives: it opens the same journal again and again."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where

    def open(self) -> Journal:
        """Open (creating or migrating) the journal here."""
        if self.kind == "sqlite":
            return Journal.open(self.where)
        return Journal.open_store(self.where)

    def set_newer_schema(self) -> None:
        """Make the stored schema version newer than this code knows."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.where, isolation_level=None)) as conn:
                conn.execute("UPDATE meta SET value = 999 WHERE key = 'schema_version'")
        else:
            with psycopg.connect(self.where, autocommit=True) as conn:
                conn.execute("INSERT INTO schedbus_schema_version (version) VALUES (999)")


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """A fresh journal location: a SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return Place("sqlite", str(tmp_path / "journal.db"))
    dsn: str = request.getfixturevalue("postgres_dsn")
    return Place("postgresql", dsn)


def full_job() -> Job:
    """A job with every column set, NUL-free raw text included."""
    payload = JobPayload(priority=2, runtime=2.5, task="compute", job_id="full", max_retries=3)
    return Job(
        id="full",
        payload=payload,
        seq=7,
        submitted_at=1700000000.125,
        state="running",
        attempt=2,
        holder="sched-1",
        deliveries=3,
        evictions=1,
        retries=1,
        errors=("exit code 1", 'quote " and \u00e9'),
        not_before=1700000001.5,
        updated_at=1700000002.0,
        owner="alice",
        result={"rows": [1, 2.5, None], "n": 2**40},
        traceback="Traceback...\nValueError: q\n",
    )


async def test_save_get_find_delete_load_and_reopen(place: Place) -> None:
    with closing(place.open()) as journal:
        assert journal.next_seq() == 0
        jobs = [make_job(n) for n in range(5)] + [full_job()]
        journal.save(jobs)
        assert journal.get("job-1") == jobs[1]  # queued: visible before the commit
        await journal.flush()
        journal.delete(["job-0"])
        journal.save([make_job(2, "succeeded", finished_at=1500.0)])
        await journal.flush()
        assert journal.get("job-0") is None
        assert journal.counts() == {"queued": 3, "running": 1, "succeeded": 1}
    with closing(place.open()) as again:
        assert again.get("full") == full_job()
        assert [job.id for job in again.load()] == ["job-1", "job-3", "job-4", "full"]
        assert again.next_seq() == 8
        found = again.find(JobQuery(states=frozenset({"queued"})), 2, newest_first=True)
        assert [job.id for job in found] == ["job-4", "job-3"]
        assert [job.id for job in again.find(JobQuery(task="compute"), 10)] == ["full"]
        assert [job.id for job in again.find(JobQuery(prefix="job-"), 10)] == [
            "job-1",
            "job-2",
            "job-3",
            "job-4",
        ]
        assert [job.id for job in again.find(JobQuery(owner="alice"), 10)] == ["full"]


async def test_flushes_made_together_share_one_commit(place: Place) -> None:
    with closing(place.open()) as journal:
        before = journal.commits

        async def submit(n: int) -> None:
            journal.save([make_job(n)])
            await journal.flush()

        await asyncio.gather(*(submit(n) for n in range(20)))
        assert journal.commits == before + 1
        assert journal.counts() == {"queued": 20}


async def test_a_nul_in_output_is_stored(place: Place) -> None:
    job = make_job(1, "failed", finished_at=2.0, output="a\0b", traceback="t\0")
    with closing(place.open()) as journal:
        journal.save([job])
        await journal.flush()
    with closing(place.open()) as again:
        stored = again.get("job-1")
        assert stored is not None and stored.output is not None
        assert stored.output.replace("\ufffd", "\0") == "a\0b"


def test_the_schema_is_created_once_and_a_newer_one_is_refused(place: Place) -> None:
    place.open().close()
    place.open().close()  # a second start finds the schema and changes nothing
    place.set_newer_schema()
    with pytest.raises(JournalError, match="schema version 999"):
        place.open()


async def test_vacuum_deletes_old_final_jobs(place: Place) -> None:
    with closing(place.open()) as journal:
        journal.save(
            [
                make_job(1, "succeeded", finished_at=100.0),
                make_job(2, "failed", finished_at=100.0),
                make_job(3, "succeeded", finished_at=990.0),
                make_job(4, "queued"),
            ]
        )
        await journal.flush()
        before = journal.commits
        assert journal.vacuum(1000.0, {"failed": 5000.0}, 50.0) == {"succeeded": 1}
        assert journal.commits == before + 1
        assert journal.counts() == {"succeeded": 1, "failed": 1, "queued": 1}


async def test_reading_ahead_answers_as_get_does_in_one_query(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    with closing(place.open()) as journal:
        journal.save(
            [
                make_job(1, "succeeded", finished_at=100.0),
                make_job(2),
                make_job(3, "failed", finished_at=100.0),
                make_job(4, "succeeded", finished_at=100.0),
            ]
        )
        await journal.flush()
        journal.save([make_job(2, "running")])  # queued: it comes before the committed row
        ids = ["job-1", "job-2", "job-3", "never"]
        expected = {job_id: journal.get(job_id) for job_id in ids}
        reads = count_reads(journal, monkeypatch)
        assert journal.get_many(ids) == {i: job for i, job in expected.items() if job}
        assert journal.get_many(["job-3"]) == {"job-3": expected["job-3"]}
        assert reads == ["get_rows", "get_row"], "several in one query, one alone"
        reads.clear()
        with journal.reading_ahead([*ids, "job-1"]):
            assert {job_id: journal.get(job_id) for job_id in ids} == expected
            assert reads == ["get_rows"], "one query; the queued job-2 is not asked for"
            with journal.reading_ahead(["job-4", "job-3", "never-2"]):
                assert journal.get("job-4") == make_job(4, "succeeded", finished_at=100.0)
                assert journal.get("job-3") == expected["job-3"]
            assert reads == ["get_rows", "get_rows"], "the inner one asks only for what is new"
            assert journal.get("job-1") == expected["job-1"], "the outer one still answers"
            assert journal.vacuum(1000.0, {}, 50.0) == {"succeeded": 2, "failed": 1}
            assert journal.get("job-1") is None, "a write made at once drops what was read"
        assert reads == ["get_rows", "get_rows", "get_row"]
        assert journal.get("job-3") is None and reads[-1] == "get_row"


async def test_secrets_schedules_and_the_restart_promise_survive_a_reopen(place: Place) -> None:
    with closing(place.open()) as journal:
        journal.save_secret("s1", "hash-1")
        journal.save_secret("s2", "hash-2")
        journal.save_schedules([state("a"), state("b", paused=True)], [])
        await journal.flush()
        journal.forget_secrets(["s2"])
        journal.save_secret("s1", "hash-1b")
        journal.save_schedules([], ["a"])
        await journal.flush()
        journal.promise_restart(1700000123.456)
    with closing(place.open()) as again:
        assert again.scheduler_secrets() == {"s1": "hash-1b"}
        assert again.schedules() == [state("b", paused=True)]
        assert again.restart_promise() == 1700000123.456
        again.promise_restart(None)
        assert again.restart_promise() is None
