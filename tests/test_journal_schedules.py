"""The journal's schedules table: saved with the group commit, upgraded from version 3."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from scheduler.bus.journal import SCHEMA_VERSION, Journal, JournalError
from scheduler.policy.schedules import ScheduleState
from scheduler.protocol_schedules import ScheduleSpec


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


def state(name: str = "tick", **changes: object) -> ScheduleState:
    spec = ScheduleSpec(name=name, task="noop", every=2.0, args={"a": 1})
    made = ScheduleState(spec, next_fire=100.0, due=100.5, instances=[f"{name}@x"])
    for key, value in changes.items():
        setattr(made, key, value)
    return made


async def test_schedules_are_queued_then_committed_and_survive_a_reopen(path: Path) -> None:
    with closing(Journal.open(path)) as journal:
        journal.save_schedules([state("a"), state("b", paused=True)], [])
        assert [s.spec.name for s in journal.schedules()] == ["a", "b"]
        await journal.flush()
        journal.save_schedules([], ["a"])
        assert [s.spec.name for s in journal.schedules()] == ["b"]
        await journal.flush()
    with closing(Journal.open(path)) as again:
        (b,) = again.schedules()
        assert b == state("b", paused=True)


async def test_a_version_3_journal_gets_a_schedules_table(path: Path) -> None:
    with closing(Journal.open(path)) as journal:
        await journal.flush()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP TABLE schedules")
        for column in ("output", "started_at", "exit_code"):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
    with closing(Journal.open(path)) as journal:
        assert journal.schedules() == []
        journal.save_schedules([state()], [])
        await journal.flush()
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == SCHEMA_VERSION == 5


async def test_an_unreadable_schedule_row_is_an_error_naming_it(path: Path) -> None:
    with closing(Journal.open(path)) as journal:
        journal.save_schedules([state()], [])
        await journal.flush()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE schedules SET spec = '{' WHERE name = 'tick'")
    with closing(Journal.open(path)) as journal, pytest.raises(JournalError, match="'tick'"):
        journal.schedules()


async def test_a_schedules_origin_survives_a_reopen_and_an_old_row_counts_as_added(
    path: Path,
) -> None:
    """The origin rides in the ``spec`` column (no schema change): left out when
    ``added``, so a row written before origins were kept reads as an admin's."""
    with closing(Journal.open(path)) as journal:
        journal.save_schedules([state("a", origin="declared"), state("b")], [])
        await journal.flush()
    with closing(sqlite3.connect(path)) as conn, conn:
        specs = dict(conn.execute("SELECT name, spec FROM schedules"))
        assert '"origin":"declared"' in specs["a"] and "origin" not in specs["b"]
        conn.execute("UPDATE schedules SET spec = json_remove(spec, '$.origin')")
    with closing(Journal.open(path)) as journal:
        a, b = journal.schedules()
    assert b == state("b") and b.origin == "added"
    assert a == state("a"), "a row without an origin (an older bus's) is an admin's"
    with closing(Journal.open(path)) as journal:
        journal.save_schedules([state("a", origin="declared")], [])
        await journal.flush()
    with closing(Journal.open(path)) as journal:
        assert {s.spec.name: s.origin for s in journal.schedules()}["a"] == "declared"
