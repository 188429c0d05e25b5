"""The journal's SQLite schema: its tables, statements, rows and upgrades.

Schema (version :data:`SCHEMA_VERSION`)::

    meta(key TEXT PRIMARY KEY, value INTEGER)   'schema_version', 'high_seq', and while a
        planned restart is under way 'restart_deadline_ms' (epoch ms until which the
        bus that shut down promised its schedulers their jobs)
    jobs(id TEXT PRIMARY KEY, seq, payload JSON, submitted_at, state, attempt, holder,
         deliveries, evictions, retries, errors JSON list, not_before, updated_at,
         finished_at, result JSON, traceback, owner, output, started_at, exit_code)
    INDEX jobs_state_finished ON jobs(state, finished_at)    load and vacuum
    INDEX jobs_submitted ON jobs(submitted_at, seq)          listing (newest first), since
    schedulers(name TEXT PRIMARY KEY, secret_hash TEXT)      who may reattach under a name
    schedules(name TEXT PRIMARY KEY, spec JSON, paused, next_fire, due, last_fire,
              last_job, last_outcome, instances JSON list)   periodic jobs (version 4)

``jobs.output`` (version 5) is the tail of a final job's stdout and stderr;
``jobs.started_at`` (version 5) when its latest attempt started, ``jobs.exit_code`` how
the attempt that ended it exited.

:func:`prepared` checks a database, creates or upgrades the schema and sets up
durability; :func:`row_of` and :func:`job_of` turn a job into a row and back.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, cast, get_args

import msgspec

from scheduler.bus import listing_sql
from scheduler.bus.listing_sql import Dialect
from scheduler.policy.job import Job
from scheduler.policy.listing import JobQuery
from scheduler.policy.schedules import ScheduleState
from scheduler.protocol import JobPayload
from scheduler.protocol_schedules import ScheduleOrigin, ScheduleSpec
from scheduler.protocol_types import FINAL_EVENTS, JobState

SCHEMA_VERSION: Final = 5
"""The schema this code writes. A version 1 journal (no ``result`` and ``traceback``),
version 2 journal (no ``owner``, no ``schedulers``), version 3 journal (no
``schedules``) or version 4 journal (no ``output``, ``started_at``, ``exit_code``) is
upgraded when opened; a journal with a newer version is refused."""

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
    "output",
    "started_at",
    "exit_code",
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
        owner TEXT,
        output TEXT,
        started_at REAL,
        exit_code INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state_finished ON jobs (state, finished_at)",
    "CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs (submitted_at, seq)",
    """CREATE TABLE IF NOT EXISTS schedulers (
        name TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS schedules (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        paused INTEGER NOT NULL,
        next_fire REAL,
        due REAL,
        last_fire REAL,
        last_job TEXT,
        last_outcome TEXT,
        instances TEXT NOT NULL
    ) WITHOUT ROWID""",
    f"INSERT OR IGNORE INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('high_seq', -1)",
)
_ADD_V5: Final = (
    "ALTER TABLE jobs ADD COLUMN output TEXT",
    "ALTER TABLE jobs ADD COLUMN started_at REAL",
    "ALTER TABLE jobs ADD COLUMN exit_code INTEGER",
)
_SET_VERSION: Final = f"UPDATE meta SET value = {SCHEMA_VERSION} WHERE key = 'schema_version'"
UPGRADES: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "ALTER TABLE jobs ADD COLUMN result TEXT",
        "ALTER TABLE jobs ADD COLUMN traceback TEXT",
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        *_ADD_V5,
        _SET_VERSION,
    ),
    2: ("ALTER TABLE jobs ADD COLUMN owner TEXT", *_ADD_V5, _SET_VERSION),
    3: (*_ADD_V5, _SET_VERSION),
    4: (*_ADD_V5, _SET_VERSION),
}
"""The statements that bring a journal of an older schema version up to this one."""
SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
GET: Final = f"{SELECT} WHERE id = ?"
GET_MANY_IDS: Final = 500
"""Most ids one :func:`get_many` statement names (SQLite before 3.32 takes 999 parameters)."""


def get_many(count: int) -> str:
    """The statement reading the rows of ``count`` ids (at most :data:`GET_MANY_IDS`)."""
    return f"{SELECT} WHERE id IN ({', '.join('?' * count)})"


LOAD: Final = f"{SELECT} WHERE state IN ({', '.join('?' * len(LIVE_STATES))})"
UPSERT: Final = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    f" ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}"
)
DELETE: Final = "DELETE FROM jobs WHERE id = ?"
_TASK: Final = "coalesce(json_extract(payload, '$.task'), 'sleep')"
"""A job's task in SQL: a payload leaves out the default, ``sleep``."""
VACUUM: Final = "DELETE FROM jobs WHERE state = ? AND finished_at < ?"
COUNTS: Final = "SELECT state, count(*) FROM jobs GROUP BY state"
_META: Final = "SELECT value FROM meta WHERE key = ?"
RAISE_HIGH_SEQ: Final = "UPDATE meta SET value = max(value, ?) WHERE key = 'high_seq'"
SECRETS: Final = "SELECT name, secret_hash FROM schedulers"
SAVE_SECRET: Final = (
    "INSERT INTO schedulers VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
    " secret_hash = excluded.secret_hash"
)
FORGET_SECRET: Final = "DELETE FROM schedulers WHERE name = ?"
PROMISE: Final = "INSERT OR REPLACE INTO meta VALUES ('restart_deadline_ms', ?)"
FORGET_PROMISE: Final = "DELETE FROM meta WHERE key = 'restart_deadline_ms'"
GET_PROMISE: Final = "SELECT value FROM meta WHERE key = 'restart_deadline_ms'"
SCHEDULES: Final = (
    "SELECT name, spec, paused, next_fire, due, last_fire, last_job, last_outcome, instances"
    " FROM schedules"
)
SAVE_SCHEDULE: Final = "INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
DELETE_SCHEDULE: Final = "DELETE FROM schedules WHERE name = ?"

Row = tuple[
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
    str | None,
    float | None,
    int | None,
]
"""One job as bound to ``UPSERT``, in ``_COLUMNS`` order."""

_encoder = msgspec.json.Encoder()
_payload_decoder = msgspec.json.Decoder(JobPayload)
_errors_decoder = msgspec.json.Decoder(list[str])
_error_tuple_decoder = msgspec.json.Decoder(tuple[str, ...])


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message names its file.

    ``full`` is True when SQLite said the database or the disk is full.
    """

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


def _states(states: list[str]) -> tuple[str, list[object]]:
    # The unary + keeps SQLite from reading by state: the page comes in submit order
    # (or an id range), and a state index would sort every final job first.
    return f"+state IN ({', '.join('?' * len(states))})", list(states)


LISTING: Final = Dialect(SELECT, _TASK, "?", _states)
"""SQLite's dialect of a job listing."""


def find_statement(query: JobQuery, limit: int, newest_first: bool) -> tuple[str, list[object]]:
    """The SELECT of the first ``limit`` jobs ``query`` wants, and its parameters
    (:func:`scheduler.bus.listing_sql.find_statement` in SQLite's dialect)."""
    return listing_sql.find_statement(LISTING, query, limit, newest_first)


_INT64: Final = range(-(2**63), 2**63)

_NUMBERS: Final = tuple(
    (i, column)
    for i, (column, kind) in enumerate(zip(_COLUMNS, get_args(Row), strict=True))
    if not set(get_args(kind) or (kind,)) <= {str, type(None)}
)
"""The columns of a :data:`Row` that hold numbers (and may hold a Python int too large)."""


def row_of(job: Job) -> Row:
    """``job`` as bound to ``UPSERT``; raise ValueError for an int SQLite cannot
    store, naming the column."""
    row = _encode_row(job)
    for i, column in _NUMBERS:
        value = row[i]
        if isinstance(value, int) and value not in _INT64:
            raise ValueError(f"{column} {value} does not fit a signed 64-bit SQLite INTEGER")
    return row


def _encode_row(job: Job) -> Row:
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
        job.output if job.final else None,
        job.started_at,
        job.exit_code,
    )


_STATES: Final[dict[str, JobState]] = {state: state for state in get_args(JobState)}
"""Each state's one string: a reloaded job shares it rather than holding its own copy."""


def _shared(text: str | None) -> str | None:
    """``text`` as the interpreter's one copy (scheduler and owner names repeat across
    many jobs; a million reloaded jobs would each hold their own copy otherwise)."""
    return None if text is None else sys.intern(text)


class PayloadReader:
    """Decodes the payload texts of rows read one after another; a text equal to the one
    before shares its decoded payload (frozen): jobs submitted together in one batch lie
    side by side in the table, and a million of them then hold one payload, not one each."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._payload: JobPayload | None = None

    def __call__(self, text: str) -> JobPayload:
        """The payload ``text`` spells; raise msgspec.DecodeError if it is not one."""
        if text != self._text or self._payload is None:
            self._payload, self._text = _payload_decoder.decode(text), text
        return self._payload


def job_of(row: Sequence[Any], read_payload: Callable[[str], JobPayload] | None = None) -> Job:
    """The job row read back from the jobs table holds; raise msgspec.DecodeError naming it if
    it cannot be read. Its state, holder and owner strings are shared with the other jobs';
    its payload is decoded by ``read_payload`` (a :class:`PayloadReader` to share it with
    the row before), else on its own."""
    # A million of these run at a restart: the fields go by position (in Job's order,
    # which a test checks against the keywords), and the usual empty values skip decoding.
    try:
        payload = (read_payload or _payload_decoder.decode)(row[2])
        errors = () if row[10] == "[]" else _error_tuple_decoder.decode(row[10])
        result = None if row[14] is None else msgspec.json.decode(row[14])
    except msgspec.DecodeError as exc:
        raise msgspec.DecodeError(f"job {row[0]!r} cannot be read: {exc}") from exc
    return Job(
        row[0],
        payload,
        row[1],
        row[3],
        _STATES.get(row[4], cast(JobState, row[4])),
        row[5],
        _shared(row[6]),
        row[7],
        row[8],
        row[9],
        errors,
        row[11],
        row[12],
        row[13],
        result,
        row[15],
        _shared(row[16]),
        None,
        None,
        row[17],
        row[18],
        row[19],
    )


ScheduleRow = tuple[
    str, str, int, float | None, float | None, float | None, str | None, str | None, str
]
"""One schedule as bound to ``SAVE_SCHEDULE``."""


class _SavedSpec(ScheduleSpec, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A schedule's spec as the ``spec`` column holds it: with its ``origin``, left out
    when ``added``. A row from before origins were kept has none, so it counts as an
    admin's: no declaration changes it."""

    origin: ScheduleOrigin = "added"


_spec_decoder = msgspec.json.Decoder(_SavedSpec)


def schedule_row(state: ScheduleState) -> ScheduleRow:
    """``state`` as bound to ``SAVE_SCHEDULE``."""
    return (
        state.spec.name,
        _encoder.encode(
            _SavedSpec(**msgspec.structs.asdict(state.spec), origin=state.origin)
        ).decode(),
        int(state.paused),
        state.next_fire,
        state.due,
        state.last_fire,
        state.last_job,
        state.last_outcome,
        _encoder.encode(state.instances).decode(),
    )


def schedule_of(row: Sequence[Any]) -> ScheduleState:
    """The schedule a row of the schedules table holds; raise msgspec.DecodeError naming it
    if it cannot be read."""
    try:
        saved = _spec_decoder.decode(row[1])
        instances = _errors_decoder.decode(row[8])
    except msgspec.DecodeError as exc:
        raise msgspec.DecodeError(f"schedule {row[0]!r} cannot be read: {exc}") from exc
    fields = {name: getattr(saved, name) for name in ScheduleSpec.__struct_fields__}
    return ScheduleState(
        spec=ScheduleSpec(**fields),
        origin=saved.origin,
        paused=bool(row[2]),
        next_fire=row[3],
        due=row[4],
        last_fire=row[5],
        last_job=row[6],
        last_outcome=row[7],
        instances=instances,
    )


def is_full(exc: BaseException) -> bool:
    """Whether SQLite raised ``exc`` because the database or the disk is full."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _meta(conn: sqlite3.Connection, key: str) -> int:
    value = conn.execute(_META, (key,)).fetchone()
    if value is None:
        raise sqlite3.DatabaseError(f"meta has no {key!r}")
    return int(value[0])


def connect(name: str, *, shared: bool = False) -> sqlite3.Connection:
    """Open journal ``name`` in autocommit mode (``shared``: usable from the writer
    thread too); raise :class:`JournalError` naming it."""
    try:
        return sqlite3.connect(
            name, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=not shared
        )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {name}: {exc}") from exc


def prepared(conn: sqlite3.Connection, name: str) -> int:
    """:func:`_prepare` ``conn``; close it if that fails."""
    try:
        return _prepare(conn, name)
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(f"cannot open journal {name}: {exc}", full=is_full(exc)) from exc
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
    if version not in UPGRADES and version != SCHEMA_VERSION:
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
    for statement in UPGRADES.get(version, ()):
        conn.execute(statement)
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("COMMIT")
    return _meta(conn, "high_seq")
