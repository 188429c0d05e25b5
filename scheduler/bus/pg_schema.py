"""The journal's PostgreSQL schema: its tables, its versioned migrations, its statements.

Every table is prefixed ``schedbus_`` (the database may be one its users already run for
other things)::

    schedbus_schema_version(version PRIMARY KEY, applied_at)  one row per migration applied
    schedbus_meta(key PRIMARY KEY, value bigint)   'high_seq', 'restart_deadline_ms'
    schedbus_jobs(id PRIMARY KEY, ...)             the columns of the SQLite journal's jobs
    schedbus_schedulers(name PRIMARY KEY, secret_hash)
    schedbus_schedules(name PRIMARY KEY, spec, paused, next_fire, due, last_fire,
                       last_job, last_outcome, instances)
    schedbus_leader(id = 1, epoch, holder, since)  the leader epoch writes are fenced by
    schedbus_lease(id = 1, epoch, renewed_at)     the leader's lease, renewed by its lock
                                                  session (a table of its own: renewing
                                                  never waits on the journal's FOR SHARE)

:data:`MIGRATIONS` are applied in order at start, each in the transaction that records
it, under a transaction-level advisory lock, so buses starting together on one database
migrate it once. A database with a version newer than this code knows is refused.
Job ids and schedule names use the ``"C"`` collation: code point order, as in SQLite,
which the id-prefix ranges of a listing rely on.
"""

from __future__ import annotations

from typing import Final

from scheduler.bus import listing_sql

# The SQLite schema's column order and id ranges are the PostgreSQL one's too.
from scheduler.bus.journal_schema import _COLUMNS as JOB_COLUMNS
from scheduler.bus.listing_sql import Dialect
from scheduler.policy.listing import JobQuery

MIGRATION_LOCK: Final = 0x5C4EDB01
"""The advisory lock key (``pg_advisory_xact_lock``) that serializes migrations."""

VERSION_TABLE: Final = "schedbus_schema_version"

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE schedbus_meta (key text COLLATE "C" PRIMARY KEY, value bigint NOT NULL)""",
        """CREATE TABLE schedbus_jobs (
            id text COLLATE "C" PRIMARY KEY,
            seq bigint NOT NULL,
            payload text NOT NULL,
            submitted_at double precision NOT NULL,
            state text NOT NULL,
            attempt bigint NOT NULL,
            holder text,
            deliveries bigint NOT NULL,
            evictions bigint NOT NULL,
            retries bigint NOT NULL,
            errors text NOT NULL,
            not_before double precision,
            updated_at double precision NOT NULL,
            finished_at double precision,
            result text,
            traceback text,
            owner text,
            output text,
            started_at double precision,
            exit_code bigint
        )""",
        "CREATE INDEX schedbus_jobs_state_finished ON schedbus_jobs (state, finished_at)",
        "CREATE INDEX schedbus_jobs_submitted ON schedbus_jobs (submitted_at, seq)",
        """CREATE TABLE schedbus_schedulers (
            name text COLLATE "C" PRIMARY KEY,
            secret_hash text NOT NULL
        )""",
        """CREATE TABLE schedbus_schedules (
            name text COLLATE "C" PRIMARY KEY,
            spec text NOT NULL,
            paused integer NOT NULL,
            next_fire double precision,
            due double precision,
            last_fire double precision,
            last_job text,
            last_outcome text,
            instances text NOT NULL
        )""",
        """CREATE TABLE schedbus_leader (
            id smallint PRIMARY KEY CHECK (id = 1),
            epoch bigint NOT NULL,
            holder text NOT NULL,
            since timestamptz NOT NULL DEFAULT now()
        )""",
        "INSERT INTO schedbus_leader (id, epoch, holder) VALUES (1, 0, '')",
        "INSERT INTO schedbus_meta VALUES ('high_seq', -1)",
    ),
    (
        """CREATE TABLE schedbus_lease (
            id smallint PRIMARY KEY CHECK (id = 1),
            epoch bigint NOT NULL,
            renewed_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
        "INSERT INTO schedbus_lease (id, epoch) SELECT 1, epoch FROM schedbus_leader",
    ),
)
"""Migration ``n`` (1-based) brings a database from version ``n - 1`` to ``n``."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this code writes."""

CREATE_VERSION_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE}"
    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)
CURRENT_VERSION: Final = f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}"
RECORD_VERSION: Final = f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)"

LEADER_EPOCH: Final = "SELECT epoch FROM schedbus_leader WHERE id = 1 FOR SHARE"
"""The fencing read at the start of every write transaction of a fenced store."""

_SELECT: Final = f"SELECT {', '.join(JOB_COLUMNS)} FROM schedbus_jobs"
GET: Final = f"{_SELECT} WHERE id = %s"
GET_MANY: Final = f"{_SELECT} WHERE id = ANY(%s)"
LOAD: Final = f"{_SELECT} WHERE state = ANY(%s)"
UPSERT: Final = (
    f"INSERT INTO schedbus_jobs ({', '.join(JOB_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(JOB_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET"
    f" {', '.join(f'{c} = EXCLUDED.{c}' for c in JOB_COLUMNS[1:])}"
)
DELETE: Final = "DELETE FROM schedbus_jobs WHERE id = %s"
VACUUM: Final = "DELETE FROM schedbus_jobs WHERE state = %s AND finished_at < %s"
COUNTS: Final = "SELECT state, count(*) FROM schedbus_jobs GROUP BY state"
HIGH_SEQ: Final = "SELECT value FROM schedbus_meta WHERE key = 'high_seq'"
RAISE_HIGH_SEQ: Final = (
    "UPDATE schedbus_meta SET value = greatest(value, %s) WHERE key = 'high_seq'"
)
SECRETS: Final = "SELECT name, secret_hash FROM schedbus_schedulers"
SAVE_SECRET: Final = (
    "INSERT INTO schedbus_schedulers VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET"
    " secret_hash = EXCLUDED.secret_hash"
)
FORGET_SECRET: Final = "DELETE FROM schedbus_schedulers WHERE name = %s"
PROMISE: Final = (
    "INSERT INTO schedbus_meta VALUES ('restart_deadline_ms', %s)"
    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)
FORGET_PROMISE: Final = "DELETE FROM schedbus_meta WHERE key = 'restart_deadline_ms'"
GET_PROMISE: Final = "SELECT value FROM schedbus_meta WHERE key = 'restart_deadline_ms'"
SCHEDULES: Final = (
    "SELECT name, spec, paused, next_fire, due, last_fire, last_job, last_outcome, instances"
    " FROM schedbus_schedules"
)
SAVE_SCHEDULE: Final = (
    "INSERT INTO schedbus_schedules VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, paused = EXCLUDED.paused,"
    " next_fire = EXCLUDED.next_fire, due = EXCLUDED.due, last_fire = EXCLUDED.last_fire,"
    " last_job = EXCLUDED.last_job, last_outcome = EXCLUDED.last_outcome,"
    " instances = EXCLUDED.instances"
)
DELETE_SCHEDULE: Final = "DELETE FROM schedbus_schedules WHERE name = %s"

_TASK: Final = "coalesce(payload::json ->> 'task', 'sleep')"
"""A job's task in SQL: a payload leaves out the default, ``sleep``."""


def _states(states: list[str]) -> tuple[str, list[object]]:
    return "state = ANY(%s)", [states]


LISTING: Final = Dialect(_SELECT, _TASK, "%s", _states)
"""PostgreSQL's dialect of a job listing."""


def find_statement(query: JobQuery, limit: int, newest_first: bool) -> tuple[str, list[object]]:
    """The SELECT of the first ``limit`` jobs ``query`` wants, and its parameters
    (:func:`scheduler.bus.listing_sql.find_statement` in PostgreSQL's dialect)."""
    return listing_sql.find_statement(LISTING, query, limit, newest_first)
