"""The journal's side of a group commit: its queued writes in one transaction, on the
connection the writer thread owns; and the helpers every journal access shares.

Every commit is fsync'd (``synchronous=FULL``) but one that only moves jobs from
``assigned`` to ``running`` (a scheduler's ``started`` report), or keeps them there, for
attempts whose ``assigned`` row an earlier commit already fsync'd: that commit is written
to the WAL and visible at once, and survives the bus being killed (the operating system
has it), but waits for the next fsync'd commit to be on disk. Only a power loss could take
such a job back to ``assigned`` on that scheduler, which its reconcile after the restart
corrects; nothing acknowledged and no change of holder ever waits for a later fsync.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import msgspec

from scheduler.bus.journal_schema import (
    DELETE,
    DELETE_SCHEDULE,
    FORGET_SECRET,
    RAISE_HIGH_SEQ,
    SAVE_SCHEDULE,
    SAVE_SECRET,
    UPSERT,
    JournalError,
    Row,
    ScheduleRow,
    is_full,
)

Outcome = tuple[JournalError | None, float]
"""What a commit on the writer thread comes back with: its error, and its seconds."""

_STATE: Final = 4
_ATTEMPT: Final = 5
_HOLDER: Final = 6
"""Where a job row (``journal_schema.Row``) holds its state, attempt and holder."""
_RUN_STATES: Final = ("assigned", "running")
"""The states of an attempt that a scheduler holds."""


class Committer:
    """Writes a journal's queued changes on ``conn`` (the writer thread's connection), one
    transaction per commit, and keeps the highest ``seq`` it has written."""

    def __init__(self, conn: sqlite3.Connection, path: str, high_seq: int) -> None:
        self._conn = conn
        self._path = path
        self._written_high = high_seq
        """The highest ``seq`` committed (read and set on the writer thread only)."""
        self._held: dict[str, tuple[int, str | None]] = {}
        """Jobs whose current attempt is on disk as ``assigned`` or ``running``: their
        attempt and holder (writer thread only; only jobs a scheduler holds)."""
        self._synced: bool | None = None
        self.synced_commits = 0
        """How many commits waited for an fsync (the others only moved jobs to running)."""

    def write(
        self,
        pending: Mapping[str, Row | None],
        secrets: Mapping[str, str | None],
        schedules: Mapping[str, ScheduleRow | None],
    ) -> Outcome:
        """Commit the given writes in one transaction; never raises."""
        if not pending and not secrets and not schedules:
            return None, 0.0
        upserts = [row for row in pending.values() if row is not None]
        deletes = [(job_id,) for job_id, row in pending.items() if row is None]
        high = max((row[1] for row in upserts), default=-1)
        sync = bool(deletes or secrets or schedules) or not all(map(self._only_runs, upserts))
        began = time.perf_counter()
        try:
            with self.transaction(sync):
                self._rows(UPSERT, upserts)
                self._rows(DELETE, deletes)
                self._rows(SAVE_SECRET, [(n, h) for n, h in secrets.items() if h is not None])
                self._rows(FORGET_SECRET, [(n,) for n, h in secrets.items() if h is None])
                self._rows(SAVE_SCHEDULE, [row for row in schedules.values() if row is not None])
                self._rows(DELETE_SCHEDULE, [(n,) for n, row in schedules.items() if row is None])
                if high > self._written_high:
                    self._conn.execute(RAISE_HIGH_SEQ, (high,))
            self._written_high = max(self._written_high, high)
            self._committed(upserts, deletes, sync)
        # Binding a value SQLite cannot store raises outside sqlite3.Error (OverflowError
        # for a huge int, UnicodeEncodeError for a lone surrogate); all go to the waiters.
        except Exception as exc:
            error = JournalError(f"journal {self._path}: commit failed: {exc}", full=is_full(exc))
            error.__cause__ = exc
            return error, 0.0
        return None, time.perf_counter() - began

    def _only_runs(self, row: Row) -> bool:
        """Whether ``row`` only says that an attempt already on disk as held by its
        scheduler runs (no fsync needed: see the module)."""
        return row[_STATE] == "running" and self._held.get(row[0]) == (row[_ATTEMPT], row[_HOLDER])

    def _synchronous(self, sync: bool) -> None:
        """Set whether the next commit waits for an fsync (a no-op when it is set so)."""
        if sync is not self._synced:
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if sync else 'NORMAL'}")
            self._synced = sync

    def _committed(self, upserts: list[Row], deletes: list[tuple[str]], sync: bool) -> None:
        """Note which attempts are now on disk as held (an fsync'd commit makes every
        earlier one durable too)."""
        if sync:
            self.synced_commits += 1
        for row in upserts:
            if row[_STATE] in _RUN_STATES:
                if sync:
                    self._held[row[0]] = (row[_ATTEMPT], row[_HOLDER])
            else:
                self._held.pop(row[0], None)
        for (job_id,) in deletes:
            self._held.pop(job_id, None)

    @contextmanager
    def transaction(self, sync: bool = True) -> Iterator[None]:
        """One write transaction, rolled back if the body raises; its commit waits for an
        fsync unless ``sync`` is False."""
        self._synchronous(sync)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _rows(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``statement`` for each row, skipping the statement when there are none."""
        if rows:
            self._conn.executemany(statement, rows)


@contextmanager
def failing(path: str, what: str) -> Iterator[None]:
    """Turn a database or decoding error inside into a :class:`JournalError` naming
    ``what`` failed on journal ``path``."""
    try:
        yield
    except (sqlite3.Error, msgspec.DecodeError) as exc:
        raise JournalError(f"journal {path}: {what} failed: {exc}") from exc
