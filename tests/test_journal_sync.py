"""Which journal commits wait for an fsync: all but those that only start attempts whose
assignment is already on disk (``scheduler.bus.journal_commit``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.bus.journal import Journal
from scheduler.bus.journal_commit import Committer
from scheduler.bus.journal_schema import connect, prepared, row_of
from scheduler.policy.job import Job
from scheduler.protocol import JobPayload
from scheduler.protocol_types import JobState

FULL = 2
"""``PRAGMA synchronous``'s answer for FULL."""


def row(n: int, state: JobState, attempt: int = 1, holder: str | None = "s1", **fields: Any) -> Any:
    job = Job(
        id=f"job-{n}",
        payload=JobPayload(runtime=1.0),
        seq=n,
        submitted_at=1000.0 + n,
        state=state,
        attempt=attempt,
        holder=holder,
        **fields,
    )
    return row_of(job)


@pytest.fixture
def committer(tmp_path: Path) -> Iterator[tuple[Committer, sqlite3.Connection]]:
    path = str(tmp_path / "journal.db")
    conn = connect(path, shared=True)
    try:
        yield Committer(conn, path, prepared(conn, path)), conn
    finally:
        conn.close()


def commit(committer: Committer, *rows: Any) -> None:
    error, _ = committer.write({r[0]: r for r in rows}, {}, {})
    assert error is None


def state_of(conn: sqlite3.Connection, n: int) -> str:
    found: str = conn.execute("SELECT state FROM jobs WHERE id = ?", (f"job-{n}",)).fetchone()[0]
    return found


def test_a_start_after_a_durable_assignment_waits_for_no_fsync(
    committer: tuple[Committer, sqlite3.Connection],
) -> None:
    c, conn = committer
    commit(c, row(1, "queued", attempt=0, holder=None))
    commit(c, row(1, "assigned"))
    commit(c, row(1, "running"))
    assert (c.synced_commits, state_of(conn, 1)) == (2, "running")
    commit(c, row(1, "running", exit_code=None))  # progress of the same attempt
    commit(c, row(1, "succeeded"))
    assert (c.synced_commits, state_of(conn, 1)) == (3, "succeeded")


@pytest.mark.parametrize(
    "running",
    [
        row(1, "running", attempt=2),  # another attempt
        row(1, "running", holder="s2"),  # another holder
        row(2, "running"),  # never assigned on disk
    ],
    ids=["attempt", "holder", "unassigned"],
)
def test_a_start_not_matching_a_durable_assignment_is_fsynced(
    committer: tuple[Committer, sqlite3.Connection], running: Any
) -> None:
    c, _ = committer
    commit(c, row(1, "assigned"))
    commit(c, running)
    assert c.synced_commits == 2


def test_a_start_committed_with_anything_else_is_fsynced(
    committer: tuple[Committer, sqlite3.Connection],
) -> None:
    c, _ = committer
    commit(c, row(1, "assigned"))
    commit(c, row(1, "running"), row(2, "queued", attempt=0, holder=None))
    error, _ = c.write({}, {"s1": "hash"}, {})
    assert error is None
    assert c.synced_commits == 3


def test_an_assignment_that_ended_is_forgotten(
    committer: tuple[Committer, sqlite3.Connection],
) -> None:
    c, _ = committer
    commit(c, row(1, "assigned"))
    commit(c, row(1, "queued", attempt=1, holder=None))  # requeued: lease lost
    commit(c, row(1, "running"))
    commit(c, row(3, "assigned"))
    c.write({"job-3": None}, {}, {})
    commit(c, row(3, "running"))
    assert c.synced_commits == 6


def test_other_transactions_are_fsynced_after_a_start(
    committer: tuple[Committer, sqlite3.Connection],
) -> None:
    c, conn = committer
    commit(c, row(1, "assigned"))
    commit(c, row(1, "running"))
    with c.transaction():
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == FULL


async def test_a_start_is_back_after_the_journal_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal.open(path)
    for state in ("assigned", "running"):
        journal.save([Job(id="j", payload=JobPayload(), seq=1, submitted_at=1.0, state=state)])
        await journal.flush()
    journal.close()
    reopened = Journal.open(path)
    try:
        assert [job.state for job in reopened.load()] == ["running"]
    finally:
        reopened.close()
