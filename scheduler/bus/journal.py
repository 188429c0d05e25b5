"""The bus's durable job journal: the latest state of every job, in SQLite or PostgreSQL.

:meth:`Journal.save` and :meth:`Journal.delete` only queue writes in memory;
:meth:`Journal.flush` makes them durable with a group commit: every flush made while a
commit is pending shares one transaction and one fsync. A file or PostgreSQL journal
commits on a writer thread that owns the connection for writes
(:mod:`scheduler.bus.journal_writer`), so the event loop never waits for an fsync; reads
run on the loop's thread on a second connection and see the writes queued or in flight
on top of what is committed. An in-memory journal writes inline.

Where the rows live is a :class:`~scheduler.bus.store.Store`: SQLite
(:mod:`scheduler.bus.store_sqlite`; its tables and upgrades in
:mod:`scheduler.bus.journal_schema`, its lock in :mod:`scheduler.bus.journal_lock`) or
PostgreSQL (:mod:`scheduler.bus.pg_store`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, Final, TypeVar

import msgspec

from scheduler.bus.journal_commit import Outcome
from scheduler.bus.journal_lock import lock_path as lock_path
from scheduler.bus.journal_schema import MEMORY as MEMORY
from scheduler.bus.journal_schema import SCHEMA_VERSION as SCHEMA_VERSION
from scheduler.bus.journal_schema import JournalError as JournalError
from scheduler.bus.journal_schema import (
    PayloadReader,
    Row,
    ScheduleRow,
    job_of,
    row_of,
    schedule_of,
    schedule_row,
)
from scheduler.bus.journal_writer import InlineWriter, JournalWriter, ThreadWriter, wait_for
from scheduler.bus.store import Store
from scheduler.bus.store_sqlite import SqliteStore
from scheduler.policy.job import Job
from scheduler.policy.listing import JobQuery, submit_order
from scheduler.policy.schedules import ScheduleState
from scheduler.protocol_types import FINAL_EVENTS

T = TypeVar("T")


class _Flight:
    """A commit handed to the writer: the flushes waiting for it, and once it is done
    (set on the writer thread), its outcome."""

    __slots__ = ("batch", "outcome")

    def __init__(self, batch: asyncio.Future[None] | None) -> None:
        self.batch = batch
        self.outcome: Outcome = (None, 0.0)


class Journal:
    """Every job the bus knows, saved in a store so that an accepted job survives a crash.

    Writes queued by :meth:`save` and :meth:`delete` are visible to :meth:`get` and
    :meth:`load` at once, and durable once a :meth:`flush` returns. A commit that fails
    (a full disk, say) raises in each of its flushes and keeps its writes queued for the
    next commit, so the journal catches up with the bus once the cause is gone;
    :attr:`failure` says why meanwhile. Database failures raise :class:`JournalError`.
    A journal file is locked (``PATH.lock``) while open: one bus per journal.
    """

    def __init__(self, store: Store) -> None:
        """Front an open ``store``, which :meth:`close` closes; use :meth:`open` (SQLite)
        or :meth:`open_store` (PostgreSQL) instead. A threaded store
        belongs to a writer thread from now on for its writes."""
        self.path: Final = store.name
        """How messages name the journal: its file, or its DSN without password."""
        self.failure: JournalError | None = None
        """Why the latest commit failed; None once one succeeds."""
        self._store = store
        self._writer: JournalWriter = (
            ThreadWriter(f"journal-writer {store.name}") if store.threaded else InlineWriter()
        )
        self._high_seq = store.high_seq
        self._pending: dict[str, Row | None] = {}
        self._pending_secrets: dict[str, str | None] = {}
        self._pending_schedules: dict[str, ScheduleRow | None] = {}
        # The writes the writer thread is committing, seen by reads until it is done.
        self._flying: _Flight | None = None
        self._flying_jobs: dict[str, Row | None] = {}
        self._flying_secrets: dict[str, str | None] = {}
        self._flying_schedules: dict[str, ScheduleRow | None] = {}
        self._read_ahead: dict[str, Sequence[Any] | None] = {}
        """Committed rows read in one query for the requests of one frame (None: no row),
        which :meth:`get` answers from while :meth:`reading_ahead` lasts."""
        self._store_changes = 0
        """How many times the committed rows changed under a read-ahead (a commit landed, a
        write was made at once): each drops what was read ahead."""
        self._batch: asyncio.Future[None] | None = None
        self._handle: asyncio.Handle | None = None
        self._commits = 0
        self._closed = False
        self.on_commit: Callable[[float], None] | None = None
        """Called with the seconds each committed write transaction took (metrics)."""

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Open the SQLite journal at ``path`` (see :meth:`SqliteStore.open`)."""
        return cls(SqliteStore.open(path))

    @classmethod
    def open_store(cls, dsn: str, *, epoch: int | None = None) -> Journal:
        """Open the PostgreSQL journal at ``dsn``, fenced by leader ``epoch`` if given
        (see :class:`~scheduler.bus.pg_store.PgStore`)."""
        # Imported here: psycopg takes a tenth of a second to import; SQLite buses skip it.
        from scheduler.bus.pg_store import PgStore

        return cls(PgStore(dsn, epoch=epoch))

    @property
    def commits(self) -> int:
        """How many write transactions this journal has committed (flush batches, vacuums)."""
        return self._commits

    def load(self) -> list[Job]:
        """Every job that is not final, queued writes included, in ``seq`` order."""
        # Row by row: holding every row at once (a million of them after a restart) would
        # leave the bus's heap that much larger for good.
        with self._store.failing("load"):
            overlay = self._overlay()
            read_payload = PayloadReader()
            jobs = [
                job_of(row, read_payload)
                for row in self._store.load_rows()
                if row[0] not in overlay
            ]
            jobs += [
                job_of(row, read_payload)
                for row in overlay.values()
                if row is not None and row[4] not in FINAL_EVENTS
            ]
            jobs.sort(key=lambda job: job.seq)
            return jobs

    def next_seq(self) -> int:
        """One more than the highest ``seq`` ever saved (0 for a new journal), so arrival
        order continues across restarts even when that job has been deleted."""
        return self._high_seq + 1

    def get(self, job_id: str) -> Job | None:
        """A fresh copy of job ``job_id`` (final or not) as last saved, queued writes
        included; None if it was never saved or has been deleted."""
        for overlay in (self._pending, self._flying_jobs, self._read_ahead):
            if job_id in overlay:
                pending = overlay[job_id]
                return None if pending is None else job_of(pending)
        with self._store.failing("get"):
            row = self._store.get_row(job_id)
            return None if row is None else job_of(row)

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """Fresh copies of those of ``job_ids`` saved and not deleted, as :meth:`get` gives
        them: several read in one query, one (a lone submit) asked alone."""
        with self.reading_ahead(job_ids) if len(job_ids) > 1 else nullcontext():
            return {i: job for i in job_ids if (job := self.get(i)) is not None}

    @contextmanager
    def reading_ahead(self, job_ids: Iterable[str]) -> Iterator[None]:
        """Inside, :meth:`get` answers for ``job_ids`` from their committed rows read now
        in one query (:meth:`get` asks the store once per id otherwise), queued writes
        still first: for the requests of one frame, each of which looks its job up.

        A commit's rows are read from the queued writes until it has landed; its landing,
        or a write made at once (:meth:`vacuum`, say), drops what was read ahead, so an
        ``await`` inside is safe. Nested (a ``submit_many`` in a batch frame), the inner
        one adds to the outer one's rows. A read that fails reads nothing ahead."""
        outer, changes = self._read_ahead, self._store_changes
        wanted = [
            job_id
            for job_id in dict.fromkeys(job_ids)
            if job_id not in self._pending
            and job_id not in self._flying_jobs
            and job_id not in self._read_ahead
        ]
        if len(wanted) > 1:
            try:
                with self._store.failing("get"):
                    rows = {row[0]: row for row in self._store.get_rows(wanted)}
            except JournalError:
                pass  # each get then asks, and fails, as it would have
            else:
                self._read_ahead = outer | {job_id: rows.get(job_id) for job_id in wanted}
        try:
            yield
        finally:
            self._read_ahead = outer if self._store_changes == changes else {}

    def find(self, query: JobQuery, limit: int, *, newest_first: bool = False) -> list[Job]:
        """Fresh copies of the first ``limit`` jobs ``query`` wants, as last saved (queued
        writes included), in submit order or ``newest_first`` (see
        :func:`~scheduler.policy.listing.submit_order`). One indexed query: the
        queued writes can only take rows out of its page, so it reads that many more."""
        overlay = self._overlay()
        with self._store.failing("find"):
            rows: dict[str, Sequence[Any]] = {
                row[0]: row
                for row in self._store.find_rows(query, limit + len(overlay), newest_first)
            }
            jobs = [job_of(row) for job_id, row in rows.items() if job_id not in overlay]
            pending = (job_of(row) for row in overlay.values() if row is not None)
        jobs.extend(job for job in pending if query.matches(job))
        jobs.sort(key=submit_order, reverse=newest_first)
        return jobs[:limit]

    def save(self, jobs: Iterable[Job]) -> None:
        """Queue an upsert of each job's current state, copied now (later changes to the
        objects are not saved). All or nothing: raise :class:`JournalError` and queue none
        if one job cannot be encoded or has an integer SQLite cannot store."""
        self._check_open()
        rows: list[Row] = []
        for job in jobs:
            try:
                rows.append(row_of(job))
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
        with self._store.failing("read schedulers"):
            known = self._store.secrets()
        for name, secret in (self._flying_secrets | self._pending_secrets).items():
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

    def schedules(self) -> list[ScheduleState]:
        """Every saved schedule, queued writes included."""
        with self._store.failing("read schedules"):
            rows: dict[str, Sequence[Any]] = {row[0]: row for row in self._store.schedule_rows()}
            for name, pending in (self._flying_schedules | self._pending_schedules).items():
                if pending is None:
                    rows.pop(name, None)
                else:
                    rows[name] = pending
            return [schedule_of(rows[name]) for name in sorted(rows)]

    def save_schedules(self, states: Iterable[ScheduleState], removed: Iterable[str]) -> None:
        """Queue saving each schedule's current state and deleting the ``removed`` names."""
        self._check_open()
        for state in states:
            self._pending_schedules[state.spec.name] = schedule_row(state)
        self._pending_schedules.update(dict.fromkeys(removed))

    async def flush(self) -> None:
        """Return once every write queued before the call is committed and fsync'd.

        Every flush called while a commit is pending joins that commit: the first one of a
        batch schedules it with ``call_soon``, so every handler running in the same loop
        iteration shares one transaction; while the writer thread commits one batch, the
        next one gathers. Raise :class:`JournalError` if the commit fails; its writes then
        stay queued (visible to :meth:`get`) for the next flush.
        """
        self._check_open()
        if self._batch is None:
            if not self._pending and not self._pending_secrets and not self._pending_schedules:
                if self._flying is not None and self._flying.batch is not None:
                    await asyncio.shield(self._flying.batch)
                return
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            if self._flying is None:
                self._handle = loop.call_soon(self._start)
        # A cancelled waiter must not cancel the commit the others are waiting for.
        await asyncio.shield(self._batch)

    def vacuum(
        self, now: float, retention: Mapping[str, float], default_retention: float
    ) -> dict[str, int]:
        """Delete, in one commit, each committed final job that finished before
        ``now - retention.get(state, default_retention)``; return how many were deleted
        by state (states with none are left out). Queued writes are not touched."""

        cutoffs = {
            state: now - retention.get(state, default_retention) for state in sorted(FINAL_EVENTS)
        }
        return self._written(partial(self._store.vacuum, cutoffs))

    def promise_restart(self, deadline: float | None) -> None:
        """Record, committed at once, that the bus shutting down promised its schedulers
        their jobs until ``deadline`` (epoch seconds); None forgets the promise."""
        deadline_ms = None if deadline is None else round(deadline * 1000)
        self._written(partial(self._store.record_promise, deadline_ms))

    def restart_promise(self) -> float | None:
        """The deadline (epoch seconds) recorded by :meth:`promise_restart`, or None."""
        with self._store.failing("reading the restart promise"):
            ms = self._store.promise_ms()
        return None if ms is None else ms / 1000

    def counts(self) -> dict[str, int]:
        """How many committed jobs there are in each state (states with none left out)."""
        with self._store.failing("counts"):
            return self._store.counts()

    def close(self) -> None:
        """Commit the queued writes (answering pending flushes), stop the writer thread,
        then close the database.

        Closing twice is harmless. Raise :class:`JournalError` if that last commit fails;
        the database is closed anyway.
        """
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._flying is not None:
            wait_for(self._writer, _nothing)
            self._landed(self._flying)
        error: JournalError | None = None
        if self._pending or self._pending_secrets or self._pending_schedules or self._batch:
            flight = self._launch(_ignore)
            wait_for(self._writer, _nothing)
            error = self._landed(flight)
        self._closed = True
        self._writer.close()
        self._store.close()
        if error is not None:
            raise error

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    def _overlay(self) -> dict[str, Row | None]:
        """The job writes not yet committed: in flight, and queued over them."""
        return self._flying_jobs | self._pending if self._flying_jobs else self._pending

    def _start(self) -> None:
        """Hand the queued writes to the writer thread; settle their batch when it is done."""
        self._handle = None
        self._launch(partial(self._land_threadsafe, asyncio.get_running_loop()))

    def _launch(self, done: Callable[[_Flight], None]) -> _Flight:
        """Move every queued write (and the batch waiting for it) in flight; the writer
        calls ``done`` on its thread once the commit is over."""
        flight = self._flying = _Flight(self._batch)
        self._batch = None
        self._flying_jobs, self._pending = self._pending, {}
        self._flying_secrets, self._pending_secrets = self._pending_secrets, {}
        self._flying_schedules, self._pending_schedules = self._pending_schedules, {}
        write = partial(
            self._store.commit, self._flying_jobs, self._flying_secrets, self._flying_schedules
        )

        def finished(outcome: Outcome) -> None:
            flight.outcome = outcome
            done(flight)

        self._writer.post(write, finished)
        return flight

    def _land_threadsafe(self, loop: asyncio.AbstractEventLoop, flight: _Flight) -> None:
        """On the writer thread: have the loop take the outcome of ``flight``."""
        try:
            loop.call_soon_threadsafe(self._land_later, flight)
        except RuntimeError:
            pass  # the loop is closed: close() took the outcome itself

    def _land_later(self, flight: _Flight) -> None:
        """Take the outcome of ``flight`` (unless close() took it), then start the next
        batch if one gathered meanwhile."""
        if flight is not self._flying:
            return
        self._landed(flight)
        if self._batch is not None and self._handle is None:
            self._start()

    def _landed(self, flight: _Flight) -> JournalError | None:
        """Settle the commit in flight: count it or keep its writes queued again, answer
        its flushes; return its error."""
        error, seconds = flight.outcome
        jobs, self._flying_jobs = self._flying_jobs, {}
        secrets, self._flying_secrets = self._flying_secrets, {}
        schedules, self._flying_schedules = self._flying_schedules, {}
        self._flying = None
        if jobs:
            self._drop_read_ahead()
        if error is not None:
            # Kept for the next commit, under whatever was queued since: what the bus
            # holds in memory reaches the disk once a commit succeeds.
            self._pending = jobs | self._pending
            self._pending_secrets = secrets | self._pending_secrets
            self._pending_schedules = schedules | self._pending_schedules
        elif jobs or secrets or schedules:
            self._counted(seconds)
        self.failure = error
        batch = flight.batch
        if batch is not None and not batch.done():
            if error is None:
                batch.set_result(None)
            else:
                batch.set_exception(error)
        return error

    def _drop_read_ahead(self) -> None:
        """The committed rows are changing: what was read ahead may be out of date."""
        self._read_ahead = {}
        self._store_changes += 1

    def _counted(self, seconds: float) -> None:
        """Count one committed write transaction that took ``seconds``."""
        self._commits += 1
        if self.on_commit is not None:
            self.on_commit(seconds)

    def _written(self, body: Callable[[], T]) -> T:
        """Run ``body`` (one transaction of the store) on the writer, waiting for it
        (behind any commit in flight); count the commit and return what it returned."""

        def transaction() -> tuple[T, float]:
            began = time.perf_counter()
            result = body()
            return result, time.perf_counter() - began

        self._check_open()
        self._drop_read_ahead()
        result, seconds = wait_for(self._writer, transaction)
        self._counted(seconds)
        return result


def _nothing() -> None:
    """A write that writes nothing: waiting for it waits for every write before it."""


def _ignore(_: _Flight) -> None:
    """A ``done`` for a commit whose outcome the caller takes itself."""
