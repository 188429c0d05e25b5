"""The journal's SQLite store: one file in WAL mode, locked while open.

A file has two connections: the writer thread's, which commits, and the event loop's,
which reads (WAL lets it read while the writer commits). ``:memory:`` has one
connection, written inline. The schema is :mod:`scheduler.bus.journal_schema`, the
commit :mod:`scheduler.bus.journal_commit`, the lock :mod:`scheduler.bus.journal_lock`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from scheduler.bus.journal_commit import Committer, Outcome, failing
from scheduler.bus.journal_lock import take_lock
from scheduler.bus.journal_schema import (
    COUNTS,
    FORGET_PROMISE,
    GET,
    GET_MANY_IDS,
    GET_PROMISE,
    LIVE_STATES,
    LOAD,
    MEMORY,
    PROMISE,
    SCHEDULES,
    SECRETS,
    VACUUM,
    JournalError,
    Row,
    ScheduleRow,
    connect,
    find_statement,
    get_many,
    prepared,
)
from scheduler.policy.listing import JobQuery


class SqliteStore:
    """A journal's rows in one SQLite file (or in memory): a :class:`~scheduler.bus.store.Store`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        high_seq: int,
        lock: int | None = None,
        reader: sqlite3.Connection | None = None,
    ) -> None:
        """Wrap an open, prepared connection (and the descriptor holding its lock, which
        :meth:`close` releases); use :meth:`open` instead. With a ``reader`` connection,
        ``conn`` belongs to a writer thread from now on; without, writes run inline."""
        self.conn = conn
        """The connection that writes."""
        self.reader = conn if reader is None else reader
        """The connection that reads (the writing one in memory)."""
        self._path = path
        self._high_seq = high_seq
        self._lock = lock
        self._committer = Committer(conn, path, high_seq)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteStore:
        """Open the journal at ``path``, creating it and its directories if missing.

        ``":memory:"`` keeps it in memory, without durability. A file is put in WAL mode
        with ``synchronous=FULL`` and locked until :meth:`close` (``PATH.lock`` holds the
        pid of its bus). Raise :class:`JournalError` naming the path if it cannot be
        opened or created, another process holds its lock (naming that pid), it is not a
        journal, or it has another schema version.
        """
        name = os.fspath(path)
        if name == MEMORY:
            conn = connect(name)
            return cls(conn, name, prepared(conn, name))
        if os.path.isdir(name):
            raise JournalError(f"journal {name} is a directory, not a file")
        try:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the directory of journal {name}: {exc}") from exc
        lock = take_lock(name)
        try:
            conn = connect(name, shared=True)
            high_seq = prepared(conn, name)
        except BaseException:
            os.close(lock)
            raise
        try:
            reader = connect(name)
        except BaseException:
            conn.close()
            os.close(lock)
            raise
        return cls(conn, name, high_seq, lock, reader)

    @property
    def name(self) -> str:
        """The journal's path (``:memory:`` in memory)."""
        return self._path

    @property
    def high_seq(self) -> int:
        """The highest ``seq`` stored when the journal was opened."""
        return self._high_seq

    @property
    def threaded(self) -> bool:
        """A file commits on a writer thread; memory inline."""
        return self.reader is not self.conn

    def failing(self, what: str) -> AbstractContextManager[None]:
        """See :func:`~scheduler.bus.journal_commit.failing`."""
        return failing(self._path, what)

    def load_rows(self) -> Iterable[Sequence[Any]]:
        """Every committed job row that is not final, read row by row."""
        return self.reader.execute(LOAD, LIVE_STATES)

    def get_row(self, job_id: str) -> Sequence[Any] | None:
        """The committed row of job ``job_id``, or None."""
        row: Sequence[Any] | None = self.reader.execute(GET, (job_id,)).fetchone()
        return row

    def get_rows(self, job_ids: Sequence[str]) -> list[Sequence[Any]]:
        """The committed rows of those of ``job_ids`` that have one: one statement per
        :data:`~scheduler.bus.journal_schema.GET_MANY_IDS` ids."""
        rows: list[Sequence[Any]] = []
        for start in range(0, len(job_ids), GET_MANY_IDS):
            part = job_ids[start : start + GET_MANY_IDS]
            rows += self.reader.execute(get_many(len(part)), part).fetchall()
        return rows

    def find_rows(self, query: JobQuery, limit: int, newest_first: bool) -> Iterable[Sequence[Any]]:
        """One indexed query (:func:`~scheduler.bus.journal_schema.find_statement`)."""
        statement, params = find_statement(query, limit, newest_first)
        return self.reader.execute(statement, params)

    def secrets(self) -> dict[str, str]:
        """The committed secret hash of every scheduler name."""
        return dict(self.reader.execute(SECRETS).fetchall())

    def schedule_rows(self) -> list[Sequence[Any]]:
        """Every committed schedule row."""
        return list(self.reader.execute(SCHEDULES).fetchall())

    def promise_ms(self) -> int | None:
        """The committed restart promise (epoch ms), or None."""
        row = self.reader.execute(GET_PROMISE).fetchone()
        return None if row is None else int(row[0])

    def counts(self) -> dict[str, int]:
        """How many committed jobs are in each state."""
        return dict(self.reader.execute(COUNTS).fetchall())

    def commit(
        self,
        jobs: Mapping[str, Row | None],
        secrets: Mapping[str, str | None],
        schedules: Mapping[str, ScheduleRow | None],
    ) -> Outcome:
        """One ``BEGIN IMMEDIATE`` transaction (see :class:`Committer`)."""
        return self._committer.write(jobs, secrets, schedules)

    def vacuum(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        """Delete the jobs past their cutoff in one transaction."""
        deleted: dict[str, int] = {}
        with self._transaction("vacuum"):
            for state, cutoff in cutoffs.items():
                count = self.conn.execute(VACUUM, (state, cutoff)).rowcount
                if count > 0:
                    deleted[state] = count
        return deleted

    def record_promise(self, deadline_ms: int | None) -> None:
        """Record or forget the restart promise in one transaction."""
        with self._transaction("recording the restart promise"):
            if deadline_ms is None:
                self.conn.execute(FORGET_PROMISE)
            else:
                self.conn.execute(PROMISE, (deadline_ms,))

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        with failing(self._path, what), self._committer.transaction():
            yield

    def close(self) -> None:
        """Close both connections, then release the lock."""
        self.conn.close()
        if self.reader is not self.conn:
            self.reader.close()
        if self._lock is not None:
            os.close(self._lock)
