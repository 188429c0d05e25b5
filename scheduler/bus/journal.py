"""The bus's durable job journal: the latest state of every job, in one SQLite file.

:meth:`Journal.save` and :meth:`Journal.delete` only queue writes in memory;
:meth:`Journal.flush` makes them durable with a group commit: every flush made while a
commit is pending shares one transaction and one fsync. Everything runs on the event
loop's thread: a commit takes well under a millisecond, too little to be worth a thread.

Schema (version :data:`SCHEMA_VERSION`)::

    meta(key TEXT PRIMARY KEY, value INTEGER)   'schema_version', 'high_seq', and while a
        planned restart is under way 'restart_deadline_ms' (epoch ms until which the
        bus that shut down promised its schedulers their jobs)
    jobs(id TEXT PRIMARY KEY, seq, payload JSON, submitted_at, state, attempt, holder,
         deliveries, evictions, retries, errors JSON list, not_before, updated_at,
         finished_at, result JSON, traceback, owner)
    INDEX jobs_state_finished ON jobs(state, finished_at)    load and vacuum
    schedulers(name TEXT PRIMARY KEY, secret_hash TEXT)      who may reattach under a name
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, cast, get_args

import msgspec

from scheduler.policy.job import Job
from scheduler.protocol import FINAL_EVENTS, JobPayload, JobState

SCHEMA_VERSION: Final = 3
"""The schema this code writes. A version 1 journal (no ``result`` and ``traceback``) or
version 2 journal (no ``owner``, no ``schedulers``) is upgraded when opened; a journal with
a newer version is refused."""

MEMORY: Final = ":memory:"
"""The path of a journal kept in memory: nothing survives :meth:`Journal.close`."""

BUSY_TIMEOUT_S: Final = 0.1
"""How long a write waits for a lock held by another connection before failing.

The bus is the journal's only writer, so waiting longer would only stall its event loop
behind a stranger (say, someone editing the file with the sqlite3 shell).
"""

LIVE_STATES: Final[tuple[str, ...]] = tuple(
    state for state in get_args(JobState) if state not in FINAL_EVENTS
)
"""The states :meth:`Journal.load` returns: every job state that is not final."""

_COLUMNS: Final = (
    "id",
    "seq",
    "payload",
    "submitted_at",
    "state",
    "attempt",
    "holder",
    "deliveries",
    "evictions",
    "retries",
    "errors",
    "not_before",
    "updated_at",
    "finished_at",
    "result",
    "traceback",
    "owner",
)
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS jobs (
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
        finished_at REAL,
        result TEXT,
        traceback TEXT,
        owner TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state_finished ON jobs (state, finished_at)",
    """CREATE TABLE IF NOT EXISTS schedulers (
        name TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL
    ) WITHOUT ROWID""",
    f"INSERT OR IGNORE INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('high_seq', -1)",
)
_UPGRADES: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "ALTER TABLE jobs ADD COLUMN result TEXT",
        "ALTER TABLE jobs ADD COLUMN traceback TEXT",
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        f"UPDATE meta SET value = {SCHEMA_VERSION} WHERE key = 'schema_version'",
    ),
    2: (
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        f"UPDATE meta SET value = {SCHEMA_VERSION} WHERE key = 'schema_version'",
    ),
}
"""The statements that bring a journal of an older schema version up to this one."""
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
_GET: Final = f"{_SELECT} WHERE id = ?"
_LOAD: Final = f"{_SELECT} WHERE state IN ({', '.join('?' * len(LIVE_STATES))})"
_UPSERT: Final = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}"
)
_DELETE: Final = "DELETE FROM jobs WHERE id = ?"
_VACUUM: Final = "DELETE FROM jobs WHERE state = ? AND finished_at < ?"
_COUNTS: Final = "SELECT state, count(*) FROM jobs GROUP BY state"
_META: Final = "SELECT value FROM meta WHERE key = ?"
_RAISE_HIGH_SEQ: Final = "UPDATE meta SET value = max(value, ?) WHERE key = 'high_seq'"
_SECRETS: Final = "SELECT name, secret_hash FROM schedulers"
_SAVE_SECRET: Final = (
    "INSERT INTO schedulers VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
    " secret_hash = excluded.secret_hash"
)
_FORGET_SECRET: Final = "DELETE FROM schedulers WHERE name = ?"
_PROMISE: Final = "INSERT OR REPLACE INTO meta VALUES ('restart_deadline_ms', ?)"
_FORGET_PROMISE: Final = "DELETE FROM meta WHERE key = 'restart_deadline_ms'"
_GET_PROMISE: Final = "SELECT value FROM meta WHERE key = 'restart_deadline_ms'"

_Row = tuple[
    str,
    int,
    str,
    float,
    str,
    int,
    str | None,
    int,
    int,
    int,
    str,
    float | None,
    float,
    float | None,
    str | None,
    str | None,
    str | None,
]
"""One job as bound to ``_UPSERT``, in ``_COLUMNS`` order."""

_encoder = msgspec.json.Encoder()
_payload_decoder = msgspec.json.Decoder(JobPayload)
_errors_decoder = msgspec.json.Decoder(list[str])


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message names its file.

    ``full`` is True when SQLite said the database or the disk is full.
    """

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


_INT64: Final = range(-(2**63), 2**63)


def _row_of(job: Job) -> _Row:
    row = _encode_row(job)
    for column, value in zip(_COLUMNS, row, strict=True):
        if isinstance(value, int) and value not in _INT64:
            raise ValueError(f"{column} {value} does not fit a signed 64-bit SQLite INTEGER")
    return row


def _encode_row(job: Job) -> _Row:
    return (
        job.id,
        job.seq,
        _encoder.encode(job.payload).decode(),
        job.submitted_at,
        job.state,
        job.attempt,
        job.holder,
        job.deliveries,
        job.evictions,
        job.retries,
        _encoder.encode(job.errors).decode(),
        job.not_before,
        job.updated_at,
        job.finished_at,
        None if job.result is None else _encoder.encode(job.result).decode(),
        job.traceback,
        job.owner,
    )


def _job_of(row: Sequence[Any]) -> Job:
    try:
        payload = _payload_decoder.decode(row[2])
        errors = _errors_decoder.decode(row[10])
        result = None if row[14] is None else msgspec.json.decode(row[14])
    except msgspec.DecodeError as exc:
        raise msgspec.DecodeError(f"job {row[0]!r} cannot be read: {exc}") from exc
    return Job(
        id=row[0],
        seq=row[1],
        payload=payload,
        submitted_at=row[3],
        state=cast(JobState, row[4]),
        attempt=row[5],
        holder=row[6],
        deliveries=row[7],
        evictions=row[8],
        retries=row[9],
        errors=errors,
        not_before=row[11],
        updated_at=row[12],
        finished_at=row[13],
        result=result,
        traceback=row[15],
        owner=row[16],
    )


def lock_path(path: str) -> str:
    """The lock file that keeps a second bus off journal ``path``: ``PATH.lock``."""
    return f"{path}.lock"


def _lock(name: str) -> int:
    """Take the journal's lock (an exclusive ``flock`` on ``NAME.lock`` holding our pid)
    and return its descriptor; raise :class:`JournalError` naming the holder's pid."""
    path = lock_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(f"cannot create the lock file {path} of journal {name}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JournalError(
            f"journal {name} is in use by another bus (pid {holder}, lock {path});"
            " stop it or give this bus another --db"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _is_full(exc: BaseException) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _meta(conn: sqlite3.Connection, key: str) -> int:
    value = conn.execute(_META, (key,)).fetchone()
    if value is None:
        raise sqlite3.DatabaseError(f"meta has no {key!r}")
    return int(value[0])


def _connect(name: str) -> sqlite3.Connection:
    try:
        return sqlite3.connect(name, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {name}: {exc}") from exc


def _prepared(conn: sqlite3.Connection, name: str) -> int:
    """:func:`_prepare` ``conn``; close it if that fails."""
    try:
        return _prepare(conn, name)
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(f"cannot open journal {name}: {exc}", full=_is_full(exc)) from exc
    except BaseException:
        conn.close()
        raise


def _prepare(conn: sqlite3.Connection, name: str) -> int:
    """Check or create the schema and set up durability; return the highest stored seq.

    The file is checked before anything is written to it, so a foreign database or a
    newer journal is left untouched.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        raise JournalError(f"{name} is an SQLite database but not a schedbus journal")
    version = _meta(conn, "schema_version") if tables else SCHEMA_VERSION
    if version not in _UPGRADES and version != SCHEMA_VERSION:
        raise JournalError(
            f"journal {name} has schema version {version}; this schedbus reads versions"
            f" 1 to {SCHEMA_VERSION} only (a newer schedbus wrote it?)"
        )
    if name != MEMORY:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"journal {name}: WAL mode is unavailable here ({mode})")
    # WAL with synchronous=NORMAL may lose the last commits on power loss; an
    # acknowledged job must not be lost.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    if tables:
        # Again under the write lock: another process may have upgraded it meanwhile.
        version = _meta(conn, "schema_version")
    for statement in _UPGRADES.get(version, ()):
        conn.execute(statement)
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("COMMIT")
    return _meta(conn, "high_seq")


class Journal:
    """Every job the bus knows, saved in SQLite so that an accepted job survives a crash.

    Writes queued by :meth:`save` and :meth:`delete` are visible to :meth:`get` and
    :meth:`load` at once, and durable once a :meth:`flush` returns. A commit that fails
    (a full disk, say) raises in each of its flushes and keeps its writes queued for the
    next commit, so the journal catches up with the bus once the cause is gone;
    :attr:`failure` says why meanwhile. Database failures raise :class:`JournalError`.
    A journal file is locked (``PATH.lock``) while open: one bus per journal.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: str, high_seq: int, lock: int | None = None
    ) -> None:
        """Wrap an open, prepared connection (and the descriptor holding its lock, which
        :meth:`close` releases); use :meth:`open` instead."""
        self.path: Final = path
        self.failure: JournalError | None = None
        """Why the latest commit failed; None once one succeeds."""
        self._conn = conn
        self._lock = lock
        self._high_seq = high_seq
        self._pending: dict[str, _Row | None] = {}
        self._pending_secrets: dict[str, str | None] = {}
        self._batch: asyncio.Future[None] | None = None
        self._handle: asyncio.Handle | None = None
        self._commits = 0
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Open the journal at ``path``, creating it and its directories if missing.

        ``":memory:"`` keeps it in memory, without durability. A file is put in WAL mode
        with ``synchronous=FULL`` and locked until :meth:`close` (``PATH.lock`` holds the
        pid of its bus). Raise :class:`JournalError` naming the path if it cannot be
        opened or created, another process holds its lock (naming that pid), it is not a
        journal, or it has another schema version.
        """
        name = os.fspath(path)
        if name == MEMORY:
            conn = _connect(name)
            return cls(conn, name, _prepared(conn, name))
        if os.path.isdir(name):
            raise JournalError(f"journal {name} is a directory, not a file")
        try:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the directory of journal {name}: {exc}") from exc
        lock = _lock(name)
        try:
            conn = _connect(name)
            high_seq = _prepared(conn, name)
        except BaseException:
            os.close(lock)
            raise
        return cls(conn, name, high_seq, lock)

    @property
    def commits(self) -> int:
        """How many write transactions this journal has committed (flush batches, vacuums)."""
        return self._commits

    def load(self) -> list[Job]:
        """Every job that is not final, queued writes included, in ``seq`` order."""
        with self._failing("load"):
            rows: dict[str, Sequence[Any]] = {
                row[0]: row for row in self._conn.execute(_LOAD, LIVE_STATES)
            }
            for job_id, pending in self._pending.items():
                if pending is None or pending[4] in FINAL_EVENTS:
                    rows.pop(job_id, None)
                else:
                    rows[job_id] = pending
            return [_job_of(row) for row in sorted(rows.values(), key=lambda row: row[1])]

    def next_seq(self) -> int:
        """One more than the highest ``seq`` ever saved (0 for a new journal), so arrival
        order continues across restarts even when that job has been deleted."""
        return self._high_seq + 1

    def get(self, job_id: str) -> Job | None:
        """A fresh copy of job ``job_id`` (final or not) as last saved, queued writes
        included; None if it was never saved or has been deleted."""
        if job_id in self._pending:
            pending = self._pending[job_id]
            return None if pending is None else _job_of(pending)
        with self._failing("get"):
            row = self._conn.execute(_GET, (job_id,)).fetchone()
            return None if row is None else _job_of(row)

    def save(self, jobs: Iterable[Job]) -> None:
        """Queue an upsert of each job's current state, copied now (later changes to the
        objects are not saved). All or nothing: raise :class:`JournalError` and queue none
        if one job cannot be encoded or has an integer SQLite cannot store."""
        self._check_open()
        rows: list[_Row] = []
        for job in jobs:
            try:
                rows.append(_row_of(job))
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                raise JournalError(
                    f"journal {self.path}: cannot store job {job.id!r}: {exc}"
                ) from exc
        for row in rows:
            self._pending[row[0]] = row
        self._high_seq = max(self._high_seq, max((row[1] for row in rows), default=-1))

    def delete(self, job_ids: Iterable[str]) -> None:
        """Queue the deletion of each job; an unknown id is not an error."""
        self._check_open()
        self._pending.update(dict.fromkeys(job_ids))

    def scheduler_secrets(self) -> dict[str, str]:
        """The secret hash of every scheduler name saved, queued writes included."""
        with self._failing("read schedulers"):
            known: dict[str, str] = dict(self._conn.execute(_SECRETS).fetchall())
        for name, secret in self._pending_secrets.items():
            if secret is None:
                known.pop(name, None)
            else:
                known[name] = secret
        return known

    def save_secret(self, name: str, secret_hash: str) -> None:
        """Queue saving ``secret_hash`` as the proof of scheduler ``name``'s identity
        (replacing any earlier one); durable with the next :meth:`flush`."""
        self._check_open()
        self._pending_secrets[name] = secret_hash

    def forget_secrets(self, names: Iterable[str]) -> None:
        """Queue the deletion of the secret hashes of scheduler ``names``."""
        self._check_open()
        self._pending_secrets.update(dict.fromkeys(names))

    async def flush(self) -> None:
        """Return once every write queued before the call is committed and fsync'd.

        Every flush called while a commit is pending joins that commit: the first one of a
        batch schedules it with ``call_soon``, so every handler running in the same loop
        iteration shares one transaction. Raise :class:`JournalError` if the commit fails;
        its writes then stay queued (visible to :meth:`get`) for the next flush.
        """
        self._check_open()
        if self._batch is None:
            if not self._pending and not self._pending_secrets:
                return
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            self._handle = loop.call_soon(self._commit)
        # A cancelled waiter must not cancel the commit the others are waiting for.
        await asyncio.shield(self._batch)

    def vacuum(
        self, now: float, retention: Mapping[str, float], default_retention: float
    ) -> dict[str, int]:
        """Delete, in one commit, each committed final job that finished before
        ``now - retention.get(state, default_retention)``; return how many were deleted
        by state (states with none are left out). Queued writes are not touched."""
        deleted: dict[str, int] = {}
        with self._failing("vacuum"), self._transaction():
            for state in sorted(FINAL_EVENTS):
                cutoff = now - retention.get(state, default_retention)
                count = self._conn.execute(_VACUUM, (state, cutoff)).rowcount
                if count > 0:
                    deleted[state] = count
        return deleted

    def promise_restart(self, deadline: float | None) -> None:
        """Record, committed at once, that the bus shutting down promised its schedulers
        their jobs until ``deadline`` (epoch seconds); None forgets the promise."""
        with self._failing("recording the restart promise"), self._transaction():
            if deadline is None:
                self._conn.execute(_FORGET_PROMISE)
            else:
                self._conn.execute(_PROMISE, (round(deadline * 1000),))

    def restart_promise(self) -> float | None:
        """The deadline (epoch seconds) recorded by :meth:`promise_restart`, or None."""
        with self._failing("reading the restart promise"):
            row = self._conn.execute(_GET_PROMISE).fetchone()
        return None if row is None else int(row[0]) / 1000

    def counts(self) -> dict[str, int]:
        """How many committed jobs there are in each state (states with none left out)."""
        with self._failing("counts"):
            return dict(self._conn.execute(_COUNTS).fetchall())

    def close(self) -> None:
        """Commit the queued writes (answering pending flushes), then close the database.

        Closing twice is harmless. Raise :class:`JournalError` if that last commit fails;
        the database is closed anyway.
        """
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
        error = self._commit()
        self._closed = True
        self._conn.close()
        if self._lock is not None:
            os.close(self._lock)
        if error is not None:
            raise error

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    def _commit(self) -> JournalError | None:
        """Write every queued change in one transaction and answer the batch's flushes."""
        self._handle = None
        batch, self._batch = self._batch, None
        pending, self._pending = self._pending, {}
        secrets, self._pending_secrets = self._pending_secrets, {}
        error = self._write(pending, secrets) if pending or secrets else None
        if error is not None:
            # Kept for the next commit, under whatever was queued since: what the bus
            # holds in memory reaches the disk once a commit succeeds.
            self._pending = pending | self._pending
            self._pending_secrets = secrets | self._pending_secrets
        self.failure = error
        if batch is not None and not batch.done():
            if error is None:
                batch.set_result(None)
            else:
                batch.set_exception(error)
        return error

    def _write(
        self, pending: Mapping[str, _Row | None], secrets: Mapping[str, str | None]
    ) -> JournalError | None:
        upserts = [row for row in pending.values() if row is not None]
        deletes = [(job_id,) for job_id, row in pending.items() if row is None]
        try:
            with self._transaction():
                self._conn.executemany(_UPSERT, upserts)
                self._conn.executemany(_DELETE, deletes)
                self._write_secrets(secrets)
                if upserts:
                    self._conn.execute(_RAISE_HIGH_SEQ, (max(row[1] for row in upserts),))
        # Binding a value SQLite cannot store raises outside sqlite3.Error (OverflowError
        # for a huge int, UnicodeEncodeError for a lone surrogate); all go to the waiters.
        except Exception as exc:
            error = JournalError(f"journal {self.path}: commit failed: {exc}", full=_is_full(exc))
            error.__cause__ = exc
            return error
        return None

    def _write_secrets(self, secrets: Mapping[str, str | None]) -> None:
        saved = [(name, h) for name, h in secrets.items() if h is not None]
        forgotten = [(name,) for name, h in secrets.items() if h is None]
        self._conn.executemany(_SAVE_SECRET, saved)
        self._conn.executemany(_FORGET_SECRET, forgotten)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._commits += 1

    @contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, msgspec.DecodeError) as exc:
            raise JournalError(f"journal {self.path}: {what} failed: {exc}") from exc
