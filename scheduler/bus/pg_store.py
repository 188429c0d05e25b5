"""The journal's PostgreSQL store: ``python -m scheduler.bus --store postgresql://...``.

Two connections, as with SQLite: the writer thread's, which commits each group commit
in one transaction (PostgreSQL's ``COMMIT`` returns once its WAL is flushed, so an
acknowledged submit is durable), and the event loop's, which reads (autocommit: each
read sees the latest commit). A connection the server dropped is opened again on the
next read or commit; until it can be, they fail with a :class:`JournalError` naming the
database, and the bus keeps serving as it does when a SQLite commit fails.

Unless the bus runs under a leader ``epoch`` (several buses on one database, one
leading), the store holds a session advisory lock: one bus per database, as the file
lock does for SQLite. Under an epoch, every write transaction first reads the leader
row ``FOR SHARE`` and is refused (:class:`StoreFenced`, nothing written) if another
leader has bumped the epoch since; the row lock makes a bump wait for the commits in
flight, so none lands after it. The schema is :mod:`scheduler.bus.pg_schema`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import msgspec
import psycopg

from scheduler.bus import pg_schema as schema
from scheduler.bus.journal_commit import Outcome
from scheduler.bus.journal_schema import LIVE_STATES, JournalError, Row, ScheduleRow
from scheduler.bus.store import redact
from scheduler.policy.listing import JobQuery

T = TypeVar("T")

BUS_LOCK: Final = 0x5C4EDB02
"""The session advisory lock key an unfenced bus holds: one bus per database."""

CONNECT_TIMEOUT_S: Final = 10
"""Seconds to wait for the server when connecting."""

_KEEPALIVE: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    # A commit to a server that went silent (its machine cut off) fails after this many
    # ms instead of TCP's retransmission timeout (minutes).
    "tcp_user_timeout": 15_000,
}

_RAW_TEXT: Final = (6, 15, 16, 17)
"""The columns of a job :data:`Row` that hold raw text (holder, traceback, owner, output),
not JSON, and so may hold a NUL, which PostgreSQL's text cannot."""


class StoreFenced(JournalError):
    """A write was refused because another leader took over: the database's leader epoch
    is not the one this store writes under. Nothing of the transaction was written."""

    def __init__(self, name: str, mine: int, theirs: int) -> None:
        """Name the journal, this store's epoch and the database's."""
        super().__init__(
            f"journal {name}: fenced: this bus writes as leader epoch {mine} but the"
            f" database is at epoch {theirs}; nothing was written"
        )
        self.mine = mine
        self.theirs = theirs


def _scrubbed(exc: BaseException, dsn: str) -> str:
    """The message of ``exc`` without the password of ``dsn`` (libpq may quote it)."""
    message = " ".join(str(exc).split())
    password = urlsplit(dsn).password
    return message.replace(password, "***") if password else message


def _pg_row(row: Row) -> Sequence[Any]:
    """``row`` as PostgreSQL can store it: a NUL in raw text becomes U+FFFD."""
    cells: list[Any] = list(row)
    texts = {i: text for i in _RAW_TEXT if isinstance(text := cells[i], str) and "\0" in text}
    if not texts:
        return row
    for i, text in texts.items():
        cells[i] = text.replace("\0", "\ufffd")
    return cells


class PgStore:
    """A journal's rows in a PostgreSQL database: a :class:`~scheduler.bus.store.Store`."""

    def __init__(self, dsn: str, *, epoch: int | None = None) -> None:
        """Connect to ``dsn``, migrate its schema and (without ``epoch``) take the bus
        lock; raise :class:`JournalError` naming the database (password redacted) if the
        DSN is bad, the server unreachable, the schema newer than this code, or another
        bus holds the database."""
        self._dsn = dsn
        self._name = redact(dsn)
        self.epoch: Final = epoch
        """The leader epoch every write is fenced by (None: no fencing, the bus lock)."""
        self._writer: psycopg.Connection[Any] | None = None
        self._reader: psycopg.Connection[Any] | None = None
        try:
            writer = self._writer = self._connect()
            self._high_seq = self._migrate(writer)
            self._lock(writer)
            self._reader = self._connect()
        except BaseException:
            self.close()
            raise
        self._written_high = self._high_seq

    @property
    def name(self) -> str:
        """The DSN without its password."""
        return self._name

    @property
    def high_seq(self) -> int:
        """The highest ``seq`` stored when the store was opened."""
        return self._high_seq

    @property
    def threaded(self) -> bool:
        """Commits wait for the server: always on the writer thread."""
        return True

    def _connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection; raise JournalError naming the database."""
        try:
            conninfo = psycopg.conninfo.make_conninfo(
                self._dsn,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"schedbus bus pid {os.getpid()}",
                **_KEEPALIVE,
            )
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise JournalError(
                f"journal {self._name}: cannot connect to PostgreSQL: {_scrubbed(exc, self._dsn)}"
            ) from None

    def _migrate(self, conn: psycopg.Connection[Any]) -> int:
        """Apply the migrations the database lacks; return its highest ``seq``."""
        with self.failing("migrating the schema"), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
            conn.execute(schema.CREATE_VERSION_TABLE)
            version = _one(conn.execute(schema.CURRENT_VERSION).fetchone())
            if version > schema.SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self._name} has schema version {version}; this schedbus"
                    f" reads versions up to {schema.SCHEMA_VERSION} (a newer one wrote it?)"
                )
            for number in range(version + 1, schema.SCHEMA_VERSION + 1):
                for statement in schema.MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute(schema.RECORD_VERSION, (number,))
            return _one(conn.execute(schema.HIGH_SEQ).fetchone())

    def _lock(self, conn: psycopg.Connection[Any]) -> None:
        """Without an epoch, take the bus lock or raise JournalError naming its holder."""
        if self.epoch is not None:
            return
        with self.failing("locking"):
            if conn.execute("SELECT pg_try_advisory_lock(%s)", (BUS_LOCK,)).fetchone() == (True,):
                return
            holder = conn.execute(_LOCK_HOLDER, (BUS_LOCK,)).fetchone()
        who = "unknown" if holder is None else f"{holder[0]!r} from {holder[1] or 'local'}"
        raise JournalError(
            f"journal {self._name} is in use by another bus ({who}); stop it or give this"
            " bus another --store"
        )

    def failing(self, what: str) -> AbstractContextManager[None]:
        """Turn a database or decoding error inside into a JournalError naming ``what``."""
        return self._failing(what)

    @contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.Error, msgspec.DecodeError) as exc:
            raise JournalError(
                f"journal {self._name}: {what} failed: {_scrubbed(exc, self._dsn)}",
                full=getattr(exc, "sqlstate", None) == "53100",
            ) from exc

    def _live(self, conn: psycopg.Connection[Any] | None, writer: bool) -> psycopg.Connection[Any]:
        """``conn`` if it is usable, else a new connection (the bus lock taken again)."""
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        fresh = self._connect()
        try:
            if writer:
                self._lock(fresh)
        except BaseException:
            fresh.close()
            raise
        return fresh

    def _read(self) -> psycopg.Connection[Any]:
        """The reading connection, opened again if the server dropped it."""
        self._reader = self._live(self._reader, writer=False)
        return self._reader

    def _write(self) -> psycopg.Connection[Any]:
        """The writing connection, opened again if the server dropped it."""
        self._writer = self._live(self._writer, writer=True)
        return self._writer

    def _fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row ``statement`` reads; run once more on a new connection if the server
        had dropped the reading one (reads are idempotent)."""
        try:
            return self._read().execute(statement, params).fetchall()
        except psycopg.OperationalError:
            if self._reader is None or not self._reader.broken:
                raise
        return self._read().execute(statement, params).fetchall()

    def load_rows(self) -> Iterable[Sequence[Any]]:
        """Every committed non-final job row, through a server-side cursor (a restart
        with a million jobs does not hold every row at once)."""
        conn = self._read()
        with conn.transaction(), conn.cursor(name="schedbus_load") as cursor:
            cursor.itersize = 10_000
            cursor.execute(schema.LOAD, (list(LIVE_STATES),))
            yield from cursor

    def get_row(self, job_id: str) -> Sequence[Any] | None:
        """The committed row of job ``job_id``, or None."""
        rows = self._fetch(schema.GET, (job_id,))
        return rows[0] if rows else None

    def get_rows(self, job_ids: Sequence[str]) -> list[Sequence[Any]]:
        """The committed rows of those of ``job_ids`` that have one, in one query."""
        return list(self._fetch(schema.GET_MANY, (list(job_ids),)))

    def find_rows(self, query: JobQuery, limit: int, newest_first: bool) -> Iterable[Sequence[Any]]:
        """One query (:func:`~scheduler.bus.pg_schema.find_statement`)."""
        statement, params = schema.find_statement(query, limit, newest_first)
        return self._fetch(statement, params)

    def secrets(self) -> dict[str, str]:
        """The committed secret hash of every scheduler name."""
        return dict(self._fetch(schema.SECRETS))

    def schedule_rows(self) -> list[Sequence[Any]]:
        """Every committed schedule row."""
        return list(self._fetch(schema.SCHEDULES))

    def promise_ms(self) -> int | None:
        """The committed restart promise (epoch ms), or None."""
        rows = self._fetch(schema.GET_PROMISE)
        return int(rows[0][0]) if rows else None

    def counts(self) -> dict[str, int]:
        """How many committed jobs are in each state."""
        return dict(self._fetch(schema.COUNTS))

    def commit(
        self,
        jobs: Mapping[str, Row | None],
        secrets: Mapping[str, str | None],
        schedules: Mapping[str, ScheduleRow | None],
    ) -> Outcome:
        """One transaction (fenced), its statements pipelined; never raises."""
        if not jobs and not secrets and not schedules:
            return None, 0.0
        upserts = [_pg_row(row) for row in jobs.values() if row is not None]
        high = max((row[1] for row in jobs.values() if row is not None), default=-1)

        def write(cursor: psycopg.Cursor[Any]) -> None:
            _many(cursor, schema.UPSERT, upserts)
            _many(cursor, schema.DELETE, [(i,) for i, row in jobs.items() if row is None])
            _many(cursor, schema.SAVE_SECRET, [(n, h) for n, h in secrets.items() if h])
            _many(cursor, schema.FORGET_SECRET, [(n,) for n, h in secrets.items() if h is None])
            _many(cursor, schema.SAVE_SCHEDULE, [r for r in schedules.values() if r is not None])
            gone = [(n,) for n, r in schedules.items() if r is None]
            _many(cursor, schema.DELETE_SCHEDULE, gone)
            if high > self._written_high:
                cursor.execute(schema.RAISE_HIGH_SEQ, (high,))

        began = time.perf_counter()
        try:
            self._transaction("commit", write)
        except JournalError as error:
            return error, 0.0
        self._written_high = max(self._written_high, high)
        return None, time.perf_counter() - began

    def vacuum(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        """Delete the jobs past their cutoff in one (fenced) transaction."""

        def delete_old(cursor: psycopg.Cursor[Any]) -> dict[str, int]:
            deleted: dict[str, int] = {}
            for state, cutoff in cutoffs.items():
                cursor.execute(schema.VACUUM, (state, cutoff))
                if cursor.rowcount > 0:
                    deleted[state] = cursor.rowcount
            return deleted

        return self._transaction("vacuum", delete_old)

    def record_promise(self, deadline_ms: int | None) -> None:
        """Record or forget the restart promise in one (fenced) transaction."""

        def record(cursor: psycopg.Cursor[Any]) -> None:
            if deadline_ms is None:
                cursor.execute(schema.FORGET_PROMISE)
            else:
                cursor.execute(schema.PROMISE, (deadline_ms,))

        self._transaction("recording the restart promise", record)

    def _transaction(self, what: str, body: Callable[[psycopg.Cursor[Any]], T]) -> T:
        """Run ``body`` in one write transaction, fenced by the epoch; raise
        JournalError (StoreFenced if fenced, nothing written) if it fails."""
        with self.failing(what):
            try:
                return self._attempt(body)
            except psycopg.OperationalError:
                if self._writer is None or not self._writer.broken:
                    raise
            # The server dropped the connection (it restarted, or our backend was ended):
            # the transaction was all or nothing and its writes are upserts and deletes,
            # so it runs once more on a new connection before the bus hears of a failure.
            return self._attempt(body)

    def _attempt(self, body: Callable[[psycopg.Cursor[Any]], T]) -> T:
        """Run ``body`` in one fenced write transaction on the writing connection."""
        conn = self._write()
        with conn.transaction(), conn.cursor() as cursor:
            self._fence(cursor)
            return body(cursor)

    def _fence(self, cursor: psycopg.Cursor[Any]) -> None:
        """With an epoch, raise StoreFenced unless the database is still at it."""
        if self.epoch is None:
            return
        theirs = _one(cursor.execute(schema.LEADER_EPOCH).fetchone())
        if theirs != self.epoch:
            raise StoreFenced(self._name, self.epoch, theirs)

    def close(self) -> None:
        """Release the bus lock, then close both connections. Idempotent. The release is
        explicit: closing alone frees the lock only once the server's process of that
        session has ended, after this returns, so a bus started again at once could
        find it still held."""
        writer = self._writer
        if writer is not None and not writer.closed:
            try:
                writer.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                pass  # a broken session: its end frees the lock
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()


_LOCK_HOLDER: Final = (
    "SELECT a.application_name, host(a.client_addr) FROM pg_locks l"
    " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
    " AND l.granted AND l.objid = %s AND l.pid <> pg_backend_pid() LIMIT 1"
)


def _one(row: tuple[Any, ...] | None) -> int:
    """The integer a one-value query returned."""
    assert row is not None
    return int(row[0])


def _many(cursor: psycopg.Cursor[Any], statement: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run ``statement`` for each row (pipelined by psycopg), skipping it when there are none."""
    if rows:
        cursor.executemany(statement, rows)
