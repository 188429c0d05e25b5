"""The journal against real SQLite files: round trips, group commit, failures, durability."""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from conftest import ROOT, sqlite_store, unit
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.bus.journal import MEMORY, SCHEMA_VERSION, Journal, JournalError
from scheduler.bus.journal_schema import UPGRADES, job_of, row_of
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload
from scheduler.protocol_types import JobState


def make_job(n: int, state: JobState = "queued", **fields: Any) -> Job:
    """Job ``job-N`` with ``seq`` N and a payload left at its defaults."""
    payload = JobPayload(priority=n % 11, runtime=1.0)
    return Job(
        id=f"job-{n}", payload=payload, seq=n, submitted_at=1000.0 + n, state=state, **fields
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    opened = Journal.open(path)
    try:
        yield opened
    finally:
        opened.close()


async def test_round_trip_keeps_every_field(path: Path) -> None:
    full = Job(
        id="full",
        payload=JobPayload(
            priority=0,
            runtime=2.5,
            task="compute",
            timeout=9.0,
            job_id="full",
            on_conflict="replace",
            max_retries=3,
            retry_backoff=0.25,
        ),
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
        finished_at=None,
    )
    bare = make_job(8, "failed", finished_at=1700000003.0)
    journal = Journal.open(path)
    journal.save([full, bare])
    await journal.flush()
    journal.close()

    with closing(Journal.open(path)) as again:
        assert again.get("full") == full
        assert again.get("job-8") == bare
        stored = again.get("job-8")
        assert stored is not None and stored.payload.task == "sleep"
        assert stored.payload.max_retries == 0 and stored.payload.timeout is None


async def test_result_and_traceback_survive_a_reopen(path: Path) -> None:
    result = {"rows": [{"x": 1, "y": [2.5, None, True]}], "note": "caf\u00e9", "n": 2**40}
    traceback = 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: "q"\n'
    succeeded = make_job(1, "succeeded", finished_at=1700000003.0, result=result)
    failed = make_job(2, "failed", finished_at=1700000004.0, traceback=traceback)
    scalar = make_job(3, "succeeded", finished_at=1700000005.0, result="done")
    retrying = make_job(4, "queued", attempt=1, errors=("ValueError: q",), traceback=traceback)
    journal = Journal.open(path)
    journal.save([succeeded, failed, scalar, retrying])
    await journal.flush()
    journal.close()

    with closing(Journal.open(path)) as again:
        assert again.get("job-1") == succeeded
        assert again.get("job-2") == failed
        assert again.get("job-3") == scalar
        assert again.load() == [retrying]
        stored = again.get("job-2")
        assert stored is not None and stored.result is None


# The version 1 schema, as schedbus before results and tracebacks wrote it.
V1_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        payload TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        holder TEXT,
        deliveries INTEGER NOT NULL,
        evictions INTEGER NOT NULL,
        retries INTEGER NOT NULL,
        errors TEXT NOT NULL,
        not_before REAL,
        updated_at REAL NOT NULL,
        finished_at REAL
    )""",
    "CREATE INDEX jobs_state_finished ON jobs (state, finished_at)",
    "INSERT INTO meta VALUES ('schema_version', 1), ('high_seq', 3)",
)


def write_v1_journal(path: Path) -> None:
    """A version 1 journal holding a queued ``job-3`` and a failed ``job-1``."""
    payload = msgspec.json.encode(JobPayload(priority=3, runtime=1.0)).decode()
    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, 0, NULL, 0, 0, 0, ?, NULL, ?, ?)",
            [
                ("job-3", 3, payload, 1003.0, "queued", "[]", 1003.0, None),
                ("job-1", 1, payload, 1001.0, "failed", '["exit code 1"]', 1002.0, 1002.0),
            ],
        )


def schema_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(version)


async def test_a_version_1_journal_is_upgraded_in_place(path: Path) -> None:
    write_v1_journal(path)
    with closing(Journal.open(path)) as journal:
        (queued,) = journal.load()
        assert queued == make_job(3, updated_at=1003.0)
        assert (queued.result, queued.traceback) == (None, None)
        failed = journal.get("job-1")
        assert failed is not None and failed.errors == ("exit code 1",)
        assert (failed.result, failed.traceback) == (None, None)
        assert journal.next_seq() == 4
        queued.state, queued.result = "succeeded", [1, 2]
        journal.save([queued])
        await journal.flush()
    assert schema_version(path) == SCHEMA_VERSION == 5

    with closing(Journal.open(path)) as again:
        stored = again.get("job-3")
        assert stored is not None and stored.result == [1, 2]


async def test_a_version_2_journal_gets_owners_and_scheduler_secrets(path: Path) -> None:
    write_v1_journal(path)
    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in UPGRADES[1]:
            if not any(
                word in statement
                for word in ("owner", "output", "started_at", "exit_code", "schema_version")
            ):
                conn.execute(statement)
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    with closing(Journal.open(path)) as journal:
        (queued,) = journal.load()
        assert queued.owner is None
        queued.owner = "alice"
        journal.save([queued])
        journal.save_secret("worker-1", "ab" * 32)
        await journal.flush()
    assert schema_version(path) == 5
    with closing(Journal.open(path)) as again:
        stored = again.get("job-3")
        assert stored is not None and stored.owner == "alice"
        assert again.scheduler_secrets() == {"worker-1": "ab" * 32}


async def test_scheduler_secrets_are_queued_then_committed(path: Path) -> None:
    with closing(Journal.open(path)) as journal:
        journal.save_secret("a", "1" * 64)
        journal.save_secret("b", "2" * 64)
        assert journal.scheduler_secrets() == {"a": "1" * 64, "b": "2" * 64}
        await journal.flush()
        journal.save_secret("a", "3" * 64)
        journal.forget_secrets(["b"])
        assert journal.scheduler_secrets() == {"a": "3" * 64}
    with closing(Journal.open(path)) as again:
        assert again.scheduler_secrets() == {"a": "3" * 64}


def test_a_version_6_journal_is_refused_naming_the_file_and_the_version(path: Path) -> None:
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 6 WHERE key = 'schema_version'")
    with pytest.raises(
        JournalError,
        match=re.escape(
            f"journal {path} has schema version 6; this schedbus reads versions 1 to 5"
        ),
    ):
        Journal.open(path)
    assert schema_version(path) == 6, "a refused journal is left alone"


async def test_a_version_4_journal_gets_the_output_start_and_exit_code_columns(
    path: Path,
) -> None:
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        for column in ("output", "started_at", "exit_code"):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")
    with closing(Journal.open(path)) as journal:
        journal.save([make_job(1, "failed", finished_at=1.0)])
        done = journal.get("job-1")
        assert done is not None
        done.output, done.started_at, done.exit_code = "the last lines\n", 0.5, 3
        journal.save([done])
        await journal.flush()
    assert schema_version(path) == 5
    with closing(Journal.open(path)) as again:
        stored = again.get("job-1")
        assert stored is not None
        assert (stored.output, stored.started_at, stored.exit_code) == ("the last lines\n", 0.5, 3)


async def test_load_returns_live_jobs_in_seq_order(journal: Journal) -> None:
    states: list[JobState] = ["running", "succeeded", "queued", "dead", "assigned", "queued"]
    journal.save(make_job(n, state) for n, state in zip([5, 1, 3, 0, 4, 2], states, strict=True))
    await journal.flush()
    assert [job.id for job in journal.load()] == ["job-2", "job-3", "job-4", "job-5"]

    journal.save([make_job(3, "cancelled"), make_job(1, "queued"), make_job(9)])
    journal.delete(["job-4"])
    assert [job.id for job in journal.load()] == ["job-1", "job-2", "job-5", "job-9"]


async def test_next_seq_continues_across_reopen(path: Path) -> None:
    journal = Journal.open(path)
    assert journal.next_seq() == 0
    journal.save([make_job(5), make_job(9)])
    assert journal.next_seq() == 10
    await journal.flush()
    journal.delete(["job-9"])
    await journal.flush()
    journal.close()

    with closing(Journal.open(path)) as again:
        assert again.next_seq() == 10


async def test_get_sees_queued_writes_as_they_were_saved(journal: Journal) -> None:
    job = make_job(1)
    journal.save([job])
    job.state = "running"
    job.errors += ("changed after the save",)
    stored = journal.get("job-1")
    assert stored is not None
    assert stored.state == "queued" and stored.errors == ()
    assert journal.counts() == {}

    await journal.flush()
    journal.delete(["job-1"])
    assert journal.get("job-1") is None
    await journal.flush()
    assert journal.get("job-1") is None
    assert journal.get("never") is None


async def test_flushes_in_one_loop_iteration_share_one_commit(journal: Journal) -> None:
    async def submit(n: int) -> None:
        journal.save([make_job(n)])
        await journal.flush()

    before = journal.commits
    await asyncio.gather(*(submit(n) for n in range(50)))
    assert journal.commits == before + 1
    assert journal.counts() == {"queued": 50}

    await journal.flush()
    assert journal.commits == before + 1, "nothing queued: nothing to commit"
    journal.save([make_job(50)])
    await journal.flush()
    assert journal.commits == before + 2


async def test_a_cancelled_flush_does_not_cancel_the_commit(journal: Journal) -> None:
    journal.save([make_job(1)])
    first = asyncio.create_task(journal.flush())
    second = asyncio.create_task(journal.flush())
    await asyncio.sleep(0)
    first.cancel()
    await second
    assert first.cancelled()
    assert journal.counts() == {"queued": 1}


async def flush_all(journal: Journal, waiters: int) -> list[BaseException | None]:
    """``waiters`` concurrent flushes; what each one raised."""
    return await asyncio.gather(*(journal.flush() for _ in range(waiters)), return_exceptions=True)


def test_save_refuses_an_integer_sqlite_cannot_store(journal: Journal) -> None:
    with pytest.raises(JournalError, match="evictions 1180591620717411303424 does not fit"):
        journal.save([make_job(1), make_job(2, evictions=2**70)])
    assert journal.get("job-1") is None, "nothing of the batch is queued"


@pytest.mark.parametrize(
    "column", ["attempt", "deliveries", "retries", "not_before", "finished_at", "exit_code"]
)
def test_every_numeric_column_is_checked_for_an_integer_too_large(
    journal: Journal, column: str
) -> None:
    with pytest.raises(JournalError, match=f"{column} {-(2**64)} does not fit"):
        journal.save([make_job(1, "queued", **{column: -(2**64)})])


@pytest.fixture
def refuse_job_2(path: Path) -> Iterator[sqlite3.Connection]:
    """A trigger in the journal file that makes SQLite refuse any write of ``job-2``."""
    if not path.exists():
        Journal.open(path).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_job_2 BEFORE INSERT ON jobs WHEN NEW.id = 'job-2'"
            " BEGIN SELECT RAISE(ABORT, 'job-2 refused by the test'); END"
        )
        yield conn


async def test_a_failed_commit_fails_every_waiter_and_keeps_its_writes_queued(
    journal: Journal, refuse_job_2: sqlite3.Connection
) -> None:
    journal.save([make_job(1)])
    await journal.flush()
    journal.save([make_job(2), make_job(3)])

    outcomes = await flush_all(journal, 3)
    assert all(isinstance(outcome, JournalError) for outcome in outcomes), outcomes
    assert "commit failed: job-2 refused by the test" in str(outcomes[0])
    assert str(journal.path) in str(outcomes[0])
    assert journal.failure is not None and journal.failure is outcomes[0]
    assert not journal.failure.full
    assert journal.counts() == {"queued": 1}, "nothing of the batch is committed"
    assert [job.id for job in journal.load()] == ["job-1", "job-2", "job-3"], "still queued"

    journal.save([make_job(3, "running")])
    refuse_job_2.execute("DROP TRIGGER refuse_job_2")
    await journal.flush()
    assert journal.failure is None
    assert journal.counts() == {"queued": 2, "running": 1}, "the kept writes, newest wins"


async def test_a_full_database_says_so(journal: Journal) -> None:
    journal.save([make_job(1)])
    await journal.flush()
    pages = sqlite_store(journal).conn.execute("PRAGMA page_count").fetchone()[0]
    sqlite_store(journal).conn.execute(f"PRAGMA max_page_count = {pages}")
    journal.save([make_job(n, errors=("x" * 4000,)) for n in range(2, 50)])
    with pytest.raises(JournalError, match="database or disk is full") as caught:
        await journal.flush()
    assert caught.value.full and journal.failure is caught.value

    sqlite_store(journal).conn.execute("PRAGMA max_page_count = 1073741823")
    await journal.flush()
    assert journal.counts() == {"queued": 49} and journal.failure is None


async def test_a_locked_database_fails_every_waiter_and_the_journal_recovers(
    journal: Journal, path: Path
) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as intruder:
        intruder.execute("BEGIN IMMEDIATE")
        journal.save([make_job(1)])
        outcomes = await flush_all(journal, 2)
        assert all(isinstance(outcome, JournalError) for outcome in outcomes), outcomes
        assert "locked" in str(outcomes[0])
        intruder.execute("ROLLBACK")

    await journal.flush()
    assert journal.counts() == {"queued": 1}, "the failed write was kept and retried"


def test_save_refuses_a_job_it_cannot_encode_and_queues_nothing(journal: Journal) -> None:
    broken = make_job(2)
    broken.payload = JobPayload(priority=cast(Any, object()), runtime=1.0)
    with pytest.raises(JournalError, match="job-2"):
        journal.save([make_job(1), broken])
    assert journal.get("job-1") is None


async def test_vacuum_deletes_old_final_jobs_by_state(journal: Journal) -> None:
    journal.save(
        [
            make_job(1, "succeeded", finished_at=100.0),
            make_job(2, "succeeded", finished_at=900.0),
            make_job(3, "failed", finished_at=100.0),
            make_job(4, "dead", finished_at=100.0),
            make_job(5, "cancelled", finished_at=100.0),
            make_job(6, "timed_out", finished_at=990.0),
            make_job(7, "queued"),
            make_job(8, "running", finished_at=1.0),
        ]
    )
    await journal.flush()
    retention = {"succeeded": 500.0, "cancelled": 10_000.0, "running": 0.0}

    deleted = journal.vacuum(1000.0, retention, default_retention=50.0)

    assert deleted == {"succeeded": 1, "failed": 1, "dead": 1}
    assert journal.get("job-1") is None and journal.get("job-2") is not None
    kept = {"succeeded": 1, "cancelled": 1, "timed_out": 1, "queued": 1, "running": 1}
    assert journal.counts() == kept
    assert journal.vacuum(1000.0, retention, default_retention=50.0) == {}


async def test_a_file_journal_is_wal_with_full_sync(journal: Journal, path: Path) -> None:
    conn = sqlite_store(journal).conn
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,), "2 is FULL"
    with closing(sqlite3.connect(path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert other.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            SCHEMA_VERSION,
        )


async def test_a_memory_journal_works_without_a_file(tmp_path: Path) -> None:
    with closing(Journal.open(MEMORY)) as journal:
        journal.save([make_job(1), make_job(2, "succeeded", finished_at=1.0)])
        await journal.flush()
        assert [job.id for job in journal.load()] == ["job-1"]
        assert journal.vacuum(10.0, {}, 1.0) == {"succeeded": 1}
        assert journal.next_seq() == 3
    assert list(tmp_path.iterdir()) == []


async def test_missing_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "journal.db"
    with closing(Journal.open(path)) as journal:
        journal.save([make_job(1)])
        await journal.flush()
    assert path.is_file()


def test_a_directory_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=re.escape(f"{tmp_path} is a directory")):
        Journal.open(tmp_path)


def test_a_path_below_a_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "journal.db"
    with pytest.raises(JournalError, match=re.escape(f"journal {path}")):
        Journal.open(path)


def test_a_file_that_is_not_a_database_is_refused_by_name(path: Path) -> None:
    path.write_text("not a database " * 100)
    with pytest.raises(
        JournalError, match=re.escape(f"cannot open journal {path}: file is not a database")
    ):
        Journal.open(path)


def test_a_foreign_database_is_refused_and_left_alone(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(
        JournalError, match=re.escape(f"{path} is an SQLite database but not a schedbus")
    ):
        Journal.open(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_a_newer_schema_is_refused(path: Path) -> None:
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match=re.escape(f"journal {path} has schema version 99")):
        Journal.open(path)


async def test_close_commits_queued_writes_and_answers_waiters(path: Path) -> None:
    journal = Journal.open(path)
    journal.save([make_job(1)])
    waiter = asyncio.create_task(journal.flush())
    await asyncio.sleep(0)
    journal.save([make_job(2)])
    journal.close()
    await waiter
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.save([make_job(3)])
    with pytest.raises(JournalError, match="closed"):
        await journal.flush()
    with pytest.raises(JournalError, match="get failed"):
        journal.get("job-1")

    with closing(Journal.open(path)) as again:
        assert [job.id for job in again.load()] == ["job-1", "job-2"]


async def test_close_raises_when_its_last_commit_fails(
    path: Path, refuse_job_2: sqlite3.Connection
) -> None:
    journal = Journal.open(path)
    journal.save([make_job(2)])
    with pytest.raises(JournalError, match="commit failed"):
        journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.delete(["job-1"])


async def test_a_damaged_row_is_reported_with_its_job(path: Path) -> None:
    with closing(Journal.open(path)) as journal:
        journal.save([make_job(1)])
        await journal.flush()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE jobs SET payload = '{\"priority\": 11}'")
    with closing(Journal.open(path)) as journal:
        with pytest.raises(
            JournalError, match=re.escape(f"journal {path}: load failed: job 'job-1'")
        ):
            journal.load()


def test_a_journal_without_a_schema_version_is_refused(path: Path) -> None:
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="meta has no 'schema_version'"):
        Journal.open(path)


CHILD = """
import asyncio, sys
from scheduler.bus.journal import Journal
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload

async def main() -> None:
    journal = Journal.open(sys.argv[1])
    journal.save(
        Job(id=f"job-{n}", payload=JobPayload(priority=n % 11, runtime=1.0), seq=n,
            submitted_at=0.0)
        for n in range(100)
    )
    await journal.flush()
    print("ok", flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


def test_flushed_jobs_survive_sigkill(path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        child.kill()
        child.wait(timeout=10 * unit())
        assert line == "ok\n", child.stderr.read()
    assert Path(f"{path}-wal").stat().st_size > 0, "the commits are still in the WAL only"

    with closing(Journal.open(path)) as journal:
        jobs = journal.load()
        assert [job.id for job in jobs] == [f"job-{n}" for n in range(100)]
        assert journal.next_seq() == 100


def test_a_restart_promise_is_kept_across_a_reopen_until_replaced(path: Path) -> None:
    with closing(Journal.open(path)) as journal:
        assert journal.restart_promise() is None
        journal.promise_restart(1_700_000_060.25)
    with closing(Journal.open(path)) as journal:
        assert journal.restart_promise() == 1_700_000_060.25
        journal.promise_restart(None)
        assert journal.restart_promise() is None


def test_every_stored_field_reads_back_into_its_own_place() -> None:
    """The record is rebuilt from a row by position: no two fields may trade places."""
    job = Job(
        "every-field",
        JobPayload(priority=3, runtime=2.0, task="t"),
        7,
        1700000000.0,
        "failed",
        attempt=2,
        holder="sched-1",
        deliveries=3,
        evictions=4,
        retries=5,
        errors=("boom",),
        not_before=1700000001.0,
        updated_at=1700000002.0,
        finished_at=1700000003.0,
        result={"r": 1},
        traceback="Traceback ...",
        owner="alice",
        output="the tail",
        started_at=1700000004.0,
        exit_code=6,
    )
    assert job_of(row_of(job)) == job


async def test_jobs_spelled_alike_share_one_payload_after_a_reload(path: Path) -> None:
    alike = JobPayload(priority=5, runtime=1.0, task="t")
    other = JobPayload(priority=6, runtime=1.0, task="t")
    journal = Journal.open(path)
    journal.save([Job(f"j{n}", p, n, 1.0) for n, p in enumerate([alike, alike, other, alike])])
    await journal.flush()
    journal.close()
    with closing(Journal.open(path)) as again:
        jobs = again.load()
    assert [job.payload for job in jobs] == [alike, alike, other, alike]
    assert jobs[0].payload is jobs[1].payload and jobs[2].payload is not jobs[3].payload


IDS = ("job-1", "job-2", "job-3", "job-4")
_SAVE_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed")

Step = tuple[str, int, int]
"""What a step of :func:`test_reading_ahead_never_changes_what_get_answers` does: ``save``
(the id's index, a state's index), ``delete`` (the id's index) or ``flush``."""

steps = st.lists(
    st.one_of(
        st.tuples(st.just("save"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
    ),
    max_size=12,
)


@settings(max_examples=40)
@given(before=steps, inside=steps, ahead=st.lists(st.sampled_from(IDS), max_size=6))
def test_reading_ahead_never_changes_what_get_answers(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[Step],
    inside: list[Step],
    ahead: list[str],
) -> None:
    """Whatever was saved, deleted and committed before and while the rows of ``ahead``
    were read ahead, ``get`` answers what was saved last (a commit landing meanwhile
    included: the flushes inside await it)."""

    async def run() -> None:
        journal = Journal.open(tmp_path_factory.mktemp("ahead") / "journal.db")
        saved: dict[str, Job | None] = dict.fromkeys(IDS)
        seq = itertools.count()

        async def apply(step: Step) -> None:
            kind, which, state = step
            job_id = IDS[which]
            if kind == "save":
                job = make_job(next(seq), _SAVE_STATES[state])
                job.id = job_id
                journal.save([job])
                saved[job_id] = job
            elif kind == "delete":
                journal.delete([job_id])
                saved[job_id] = None
            else:
                await journal.flush()

        try:
            for step in before:
                await apply(step)
            with journal.reading_ahead(ahead):
                assert {i: journal.get(i) for i in IDS} == saved
                for step in inside:
                    await apply(step)
                    assert {i: journal.get(i) for i in IDS} == saved, step
            assert {i: journal.get(i) for i in IDS} == saved
        finally:
            journal.close()

    asyncio.run(run())
