"""The seam between the journal and where it keeps its rows: the :class:`Store` protocol.

:class:`~scheduler.bus.journal.Journal` is the front the bus uses: it queues writes,
overlays them on reads, and group-commits them on its writer. A store is the back end
it commits to and reads from: SQLite (:mod:`scheduler.bus.store_sqlite`, the embedded
default) or PostgreSQL (:mod:`scheduler.bus.pg_store`). Rows are the tuples of
:mod:`scheduler.bus.journal_schema` in both (a job's :data:`Row`, a schedule's
:data:`ScheduleRow`), so decoding them is shared.

Reads run on the event loop's thread; :meth:`Store.commit`, :meth:`Store.vacuum` and
:meth:`Store.record_promise` run on the journal's writer (a thread when
:attr:`Store.threaded`, else inline).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

from scheduler.bus.journal_commit import Outcome
from scheduler.bus.journal_schema import Row, ScheduleRow
from scheduler.policy.listing import JobQuery


class Store(Protocol):
    """Where a journal keeps its jobs, scheduler secrets, schedules and restart promise.

    Every method that touches the database raises
    :class:`~scheduler.bus.journal_schema.JournalError` naming :attr:`name`, except
    :meth:`commit`, which returns its error.
    """

    @property
    def name(self) -> str:
        """How messages name this store: the journal's path, or its DSN without password."""
        ...

    @property
    def high_seq(self) -> int:
        """The highest ``seq`` stored when the store was opened (-1 if none)."""
        ...

    @property
    def threaded(self) -> bool:
        """Whether writes run on a writer thread (else inline on the caller's)."""
        ...

    def failing(self, what: str) -> AbstractContextManager[None]:
        """Turn this store's database or decoding errors inside into a JournalError
        naming ``what`` failed."""
        ...

    def load_rows(self) -> Iterable[Sequence[Any]]:
        """Every committed job row that is not final, in no particular order."""
        ...

    def get_row(self, job_id: str) -> Sequence[Any] | None:
        """The committed row of job ``job_id``, or None."""
        ...

    def get_rows(self, job_ids: Sequence[str]) -> list[Sequence[Any]]:
        """The committed rows of those of ``job_ids`` that have one, in no given order."""
        ...

    def find_rows(self, query: JobQuery, limit: int, newest_first: bool) -> Iterable[Sequence[Any]]:
        """The first ``limit`` committed rows ``query`` wants, in submit order."""
        ...

    def secrets(self) -> dict[str, str]:
        """The committed secret hash of every scheduler name."""
        ...

    def schedule_rows(self) -> list[Sequence[Any]]:
        """Every committed schedule row."""
        ...

    def promise_ms(self) -> int | None:
        """The committed restart promise (epoch ms), or None."""
        ...

    def counts(self) -> dict[str, int]:
        """How many committed jobs are in each state."""
        ...

    def commit(
        self,
        jobs: Mapping[str, Row | None],
        secrets: Mapping[str, str | None],
        schedules: Mapping[str, ScheduleRow | None],
    ) -> Outcome:
        """Write the given upserts (a row) and deletions (None) in one durable
        transaction; return its error (or None) and seconds. Never raises."""
        ...

    def vacuum(self, cutoffs: Mapping[str, float]) -> dict[str, int]:
        """In one transaction, delete each job in a state of ``cutoffs`` that finished
        before that state's cutoff; return how many per state (leaving out zeros)."""
        ...

    def record_promise(self, deadline_ms: int | None) -> None:
        """In one transaction, record the restart promise (None: forget it)."""
        ...

    def close(self) -> None:
        """Close the connections and release what the store holds."""
        ...


SCHEMES: Final = ("postgresql", "postgres")
"""The URL schemes of a PostgreSQL store (``--store``)."""


def redact(dsn: str) -> str:
    """``dsn`` with its password (in the URL, a ``password=`` query parameter, or a libpq
    ``key=value`` string's ``password``) as ``***``; a string that is not even a URL
    keeps nothing after a ``password`` key."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:  # "Invalid IPv6 URL", a port that is not a number
        return re.sub(r"(?i)(password\s*=\s*).*", r"\1***", _URL_PASSWORD.sub(r"\1***@", dsn))
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    redacted = urlunsplit(parts._replace(netloc=netloc, query=query))
    if not parts.scheme:
        redacted = _KEY_PASSWORD.sub(r"\1***", redacted)
    return redacted


_URL_PASSWORD: Final = re.compile(r"(//[^/:@]*:)[^@]*@")
"""The password of a ``scheme://user:password@`` prefix, for a URL ``urlsplit`` refuses."""

_KEY_PASSWORD: Final = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)")
"""A libpq ``key=value`` string's password, quoted or not."""


def check_store(dsn: str | None) -> None:
    """Raise ValueError naming the rule and the DSN (password redacted) unless ``dsn`` is
    None (no store) or a ``postgresql://`` URL; the server checks the rest when the store
    opens."""
    if dsn is None:
        return
    try:
        scheme = urlsplit(dsn).scheme
    except ValueError as exc:
        raise ValueError(f"store {redact(dsn)!r} is not a URL: {exc}") from None
    if scheme not in SCHEMES:
        raise ValueError(
            "store must be a postgresql:// URL (postgresql://user:password@host:port/dbname),"
            f" not {redact(dsn)!r}"
        )
