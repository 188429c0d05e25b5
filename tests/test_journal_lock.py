"""One bus per journal file: the journal's lock, in process and between real buses."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from conftest import BusProcess, Commands, unit

from scheduler.bus.journal import MEMORY, Journal, JournalError, lock_path


def test_a_second_open_is_refused_naming_the_pid_that_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    with closing(Journal.open(path)):
        assert Path(lock_path(str(path))).read_text() == f"{os.getpid()}\n"
        with pytest.raises(JournalError, match=f"in use by another bus \\(pid {os.getpid()},"):
            Journal.open(path)
    with closing(Journal.open(path)):
        pass  # closing released the lock


def test_a_symlink_to_a_journal_in_use_leads_to_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    link = tmp_path / "link.db"
    with closing(Journal.open(path)):
        link.symlink_to(path)
        with pytest.raises(JournalError, match="in use by another bus"):
            Journal.open(link).close()


def test_a_journal_with_another_hard_link_is_refused_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    Journal.open(path).close()
    os.link(path, tmp_path / "hard.db")
    for name in (path, tmp_path / "hard.db"):
        with pytest.raises(JournalError, match=f"journal {name} has 2 hard links"):
            Journal.open(name)


def test_memory_journals_take_no_lock(tmp_path: Path) -> None:
    with closing(Journal.open(MEMORY)), closing(Journal.open(MEMORY)):
        pass


def test_a_journal_that_fails_to_open_releases_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    with closing(sqlite3.connect(path)) as foreign:
        foreign.execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="not a schedbus journal"):
        Journal.open(path)
    with closing(sqlite3.connect(path)) as foreign:
        foreign.execute("DROP TABLE t")
    with closing(Journal.open(path)):
        pass


async def test_a_second_bus_on_the_same_journal_refuses_to_start(
    commands: Commands, tmp_path: Path
) -> None:
    first = BusProcess(commands, tmp_path / "bus.db")
    await first.start()
    assert first.proc is not None
    code, _ = await commands.run(
        "scheduler.bus", "--port", "0", "--db", str(first.db), timeout=20 * unit()
    )
    second = commands.started[-1]
    log = commands.log_of(second)
    assert code == 1
    lines = log.strip().splitlines()
    assert lines == [
        f"Error: journal {first.db} is in use by another bus (pid {first.proc.pid},"
        f" lock {first.db}.lock); stop it or give this bus another --db"
    ], log
    assert first.proc.returncode is None, "the first bus keeps serving"
    await first.kill()
    await asyncio.wait_for(first.proc.wait(), 10 * unit())


async def test_a_second_bus_on_a_hard_link_to_the_journal_refuses_to_start(
    commands: Commands, tmp_path: Path
) -> None:
    first = BusProcess(commands, tmp_path / "bus.db")
    await first.start()
    link = tmp_path / "hard.db"
    os.link(first.db, link)
    code, _ = await commands.run(
        "scheduler.bus", "--port", "0", "--db", str(link), timeout=20 * unit()
    )
    log = commands.log_of(commands.started[-1])
    assert code == 1
    assert log.strip().splitlines() == [
        f"Error: journal {link} has 2 hard links: a second bus could open it under another"
        " name; remove the other links (or copy the file)"
    ], log
