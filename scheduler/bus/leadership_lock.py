"""The leader lock: a PostgreSQL advisory lock held by one dedicated session per bus.

Every bus sharing a journal opens a :class:`LockSession` on the journal's database and
tries :data:`LOCK_KEY` with ``pg_try_advisory_lock``. The lock belongs to the session:
it is released by the server the moment that session ends (the bus killed, its
connection killed with ``pg_terminate_backend``, the server restarted) or, for a bus
cut off from the network, once the server's TCP keepalives give up on it (a few seconds,
set per session below). The winner bumps the epoch in ``schedbus_leader``; the journal
checks that epoch in every write transaction, so a bus that lost the lock without
noticing yet cannot write, and so cannot hand out an attempt, once another leads.

The leader renews a lease on this session (:meth:`LockSession.renew`, on the database's
clock, in ``schedbus_lease``); a standby that cannot get the lock reads the lease's age
(:meth:`LockSession.lease_age`) and, once it ran out, ends the holder's sessions
(:meth:`LockSession.depose`): a frozen leader keeps its session open (its kernel still
answers), so the lock would otherwise never be released.

The session is watched for loss without a query (:meth:`LockSession.watch`): the socket
of an idle session becomes readable only when the server says something, which for the
lock session means it is going away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

log = logging.getLogger(__name__)

LOCK_KEY: Final = 0x5C4EDB05
"""The advisory lock every bus of one database tries: one leader per database."""

KEEPALIVES: Final[dict[str, str | int]] = {
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "options": "-c tcp_keepalives_idle=1 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3",
}
"""Both ends of the session give up on a silent peer after about 4 s: the server then
releases the lock of a bus cut off from it, and that bus's own checks have fenced it by
then (they fail within ``check_s + check_timeout_s``)."""


BUMP: Final = (
    "WITH bumped AS (UPDATE schedbus_leader SET epoch = epoch + 1, holder = %s, since = now()"
    " WHERE id = 1 RETURNING epoch)"
    " UPDATE schedbus_lease SET epoch = bumped.epoch, renewed_at = clock_timestamp()"
    " FROM bumped WHERE id = 1 RETURNING bumped.epoch"
)
"""Take the lead and its lease in one statement: a standby never sees the new leader
under the old leader's stale lease."""

RENEW: Final = (
    "UPDATE schedbus_lease SET renewed_at = clock_timestamp() WHERE id = 1"
    " AND epoch = %(epoch)s"
    " AND epoch = (SELECT epoch FROM schedbus_leader WHERE id = 1) RETURNING 1"
)

PROMISE: Final = (
    "INSERT INTO schedbus_meta VALUES ('restart_deadline_ms', %(ms)s) ON CONFLICT (key)"
    " DO UPDATE SET value = greatest(schedbus_meta.value, EXCLUDED.value) RETURNING value"
)

LEASE_AGE: Final = (
    "SELECT extract(epoch FROM clock_timestamp() - renewed_at) FROM schedbus_lease WHERE id = 1"
)

DEPOSE: Final = (
    "SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) FROM ("
    " SELECT DISTINCT pid FROM pg_locks WHERE granted AND pid <> pg_backend_pid()"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((locktype = 'advisory' AND objsubid = 1"
    " AND (classid::bigint << 32 | objid::bigint) = %(key)s)"
    " OR (locktype = 'relation' AND relation = 'schedbus_leader'::regclass"
    " AND mode = 'RowShareLock'))) AS holders"
)
"""Terminate the lock's holder and any session holding the leader row ``FOR SHARE``
(the same database user may end its own sessions); returns their pids."""


class LockSession:
    """One bus's session for the leader lock (psycopg 3, autocommit)."""

    def __init__(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Wrap an open autocommit ``connection``; see :meth:`open`."""
        self._conn = connection
        self._watched: int | None = None

    @classmethod
    async def open(cls, dsn: str, connect_timeout: float = 5.0) -> LockSession:
        """Connect to ``dsn`` for the lock. Raises ``psycopg.OperationalError``."""
        conninfo = make_conninfo(
            dsn,
            connect_timeout=max(1, round(connect_timeout)),
            application_name="schedbus-leader-lock",
            **KEEPALIVES,
        )
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        return cls(conn)

    @property
    def pid(self) -> int:
        """The server process of this session (what ``pg_terminate_backend`` takes)."""
        return self._conn.info.backend_pid

    async def try_lock(self) -> bool:
        """Try the leader lock once, without waiting; return whether this session holds it."""
        row = await self._one("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        return bool(row and row[0])

    async def holder(self) -> tuple[int, str] | None:
        """The epoch and the URL of the bus that last took the lead (None before any did
        or without the leader row)."""
        row = await self._one(
            "SELECT epoch, holder FROM schedbus_leader WHERE id = 1 AND epoch > 0"
        )
        return None if row is None else (int(str(row[0])), str(row[1]))

    async def bump(self, advertise: str) -> int:
        """Take the lead under a new epoch: bump it, name ``advertise`` as the holder and
        return the new epoch. Call only while holding the lock. Raises
        ``psycopg.Error`` (also when the leader row is missing: LookupError)."""
        row = await self._one(
            BUMP,
            (advertise,),
        )
        if row is None:
            raise LookupError("the journal has no schedbus_leader row: is its schema current?")
        return int(str(row[0]))

    async def lead(self) -> None:
        """Make this session's commits from now on (the lease renewals) not wait for the
        disk: a renewal is worth nothing after a server crash, which ends every session,
        and a slow flush must not make the leader miss its check and step down. Call
        after :meth:`bump`, whose commit must be durable."""
        await self._one("SELECT set_config('synchronous_commit', 'off', false)")

    async def renew(self, epoch: int) -> bool:
        """Renew the lease of the leader of ``epoch`` (now, by the database's clock);
        False if the epoch has moved on (another bus leads). Raises ``psycopg.Error``
        if the session is gone."""
        return await self._one(RENEW, {"epoch": epoch}) is not None

    async def lease_age(self) -> float | None:
        """Seconds since the leader last renewed its lease, by the database's clock
        (None without a lease row)."""
        row = await self._one(LEASE_AGE)
        return None if row is None else float(str(row[0]))

    async def promise(self, deadline: float) -> None:
        """Record a restart promise until ``deadline`` (epoch seconds, this machine's
        clock, which is the one that reads it back) in the journal, keeping any later one:
        the bus then keeps the jobs schedulers held for them until then."""
        await self._one(PROMISE, {"ms": round(deadline * 1000)})

    async def depose(self) -> list[int]:
        """End every session of the bus that holds the lock: the lock's session and any
        session holding the leader row in a transaction (a frozen leader's journal
        write, which would block the epoch bump). Returns their server pids."""
        row = await self._one(DEPOSE, {"key": LOCK_KEY})
        pids = None if row is None else row[0]
        return [int(str(pid)) for pid in pids] if isinstance(pids, list) else []

    async def _one(
        self, sql: str, params: tuple[object, ...] | dict[str, object] = ()
    ) -> tuple[object, ...] | None:
        """Run ``sql`` (not watching meanwhile) and return its first row."""
        self.unwatch()
        cursor = await self._conn.execute(sql, params)
        return await cursor.fetchone()

    def alive(self) -> bool:
        """Read what the server sent, without blocking; return whether the session is
        still up (False once the server has closed it or said it is terminating it)."""
        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return False
        return pgconn.status == pq.ConnStatus.OK and not self._conn.broken

    def watch(self, lost: Callable[[], None]) -> None:
        """Call ``lost`` (from the event loop, at once) when the idle session ends. Stops
        with :meth:`unwatch`, which every query here calls first (psycopg waits on the
        same socket)."""
        self.unwatch()
        fd = self._conn.fileno()

        def readable() -> None:
            if not self.alive():
                self.unwatch()
                lost()

        asyncio.get_running_loop().add_reader(fd, readable)
        self._watched = fd

    def unwatch(self) -> None:
        """Stop watching the session (see :meth:`watch`)."""
        if self._watched is not None:
            asyncio.get_running_loop().remove_reader(self._watched)
            self._watched = None

    async def close(self) -> None:
        """Close the session (which releases the lock if held)."""
        self.unwatch()
        await self._conn.close()
