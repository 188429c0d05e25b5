"""Handles on jobs: :class:`Job`, what :meth:`ProducerClient.submit` and
:meth:`ProducerClient.job` return, and :class:`JobFailed`, what :meth:`Job.result` raises
for a job that did not succeed.

    job = await client.submit(JobPayload(task="add", args=[2, 3]))
    print(await job.result(timeout=60))        # 5, or JobFailed

A :class:`Job` *is* its id (a ``str`` subclass), so code that keeps, compares, prints or
sends job ids keeps working with handles. Every handle on a job of one client shares that
client's :class:`JobWatch` of it: the job's events in the order they came, from the moment
the first handle existed. Each waiter reads that list at its own pace, so any number of
waiters (handles, :meth:`Job.events` iterators) each see every event.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from scheduler.producer.errors import BusConnectionLost
from scheduler.protocol import CancelReply, JobEvent
from scheduler.protocol_types import FINAL_EVENTS

if TYPE_CHECKING:
    from scheduler.producer.client import ProducerClient

_RAISED: Final = re.compile(r"(?P<type>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?", re.DOTALL)
_ENDINGS: Final = {
    "cancelled": "the job was cancelled",
    "expired": "the job's time passed beyond its misfire grace",
    "skipped": "a job it depends on did not succeed",
}


class JobFailed(Exception):
    """A job ended in a state other than ``succeeded``: ``failed``, ``dead``,
    ``timed_out``, ``cancelled``, ``expired`` or ``skipped``.

    ``state`` is that final state, ``error_type`` the qualified name of the exception the
    task raised (None when it did not end on an exception: a timeout, an exit status, a
    cancel), ``message`` the exception's message or what ended the job, ``traceback`` the
    task's formatted traceback (also added as a note, so an uncaught JobFailed prints it)
    and ``event`` the whole final :class:`~scheduler.protocol.JobEvent`.
    """

    def __init__(self, event: JobEvent) -> None:
        super().__init__(event)
        self.event = event
        self.job_id = event.id
        self.state: str = event.event
        self.error = event.error
        self.error_type, self.message = _split_error(event)
        self.traceback = event.traceback
        if event.traceback:
            self.add_note(f"The job's traceback:\n{event.traceback.rstrip()}")

    def __str__(self) -> str:
        return f"job {self.job_id} {self.state}: {self.error or self.message}"


class UnknownJob(LookupError):
    """The bus does not know a job id (never submitted, or vacuumed)."""


def _split_error(event: JobEvent) -> tuple[str | None, str]:
    """The exception type and message of a final event (``Type: message`` when the task
    raised, which the traceback shows), else no type and what ended the job."""
    if event.error is None:
        return None, _ENDINGS.get(event.event, f"the job ended {event.event}")
    raised = _RAISED.fullmatch(event.error) if event.traceback else None
    if raised is None:
        return None, event.error
    return raised["type"], raised["message"] or ""


class JobWatch:
    """What one client knows of one job: its events in order, shared by its handles.

    Fed by the client (:meth:`add`); ended by :meth:`close` when the client closes.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.events: list[JobEvent] = []
        self.closed: str | None = None
        self._changed: asyncio.Event | None = None
        """What the waiters for the next event wait on; made only when one waits (most
        jobs' events come with nobody waiting on their handle)."""

    @property
    def latest(self) -> JobEvent | None:
        """The newest event known, None before the first."""
        return self.events[-1] if self.events else None

    def add(self, event: JobEvent, *, snapshot: bool = False) -> None:
        """Append ``event`` and wake the waiters. A ``snapshot`` (a job's state in a watch
        reply) older than the newest event, or the same as it, is dropped: the live
        events it would repeat or put out of order came already."""
        latest = self.latest
        if latest is not None and (event == latest or snapshot and event.time <= latest.time):
            return
        self.events.append(event)
        self._wake()

    def close(self, reason: str) -> None:
        """No more events will come: waiters for more raise BusConnectionLost(reason)."""
        self.closed = reason
        self._wake()

    async def next_after(self, seen: int) -> JobEvent:
        """The event after the first ``seen``, once it has come. Raises
        :class:`BusConnectionLost` if the client closes first."""
        while len(self.events) <= seen:
            if self.closed is not None:
                raise BusConnectionLost(self.closed)
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()
        return self.events[seen]

    async def final(self) -> JobEvent:
        """The job's final event, once it has come (at once if it has)."""
        while True:
            latest = self.latest
            if latest is not None and latest.event in FINAL_EVENTS:
                return latest
            await self.next_after(len(self.events))

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


class IdHandle(str):
    """A handle that is its job's id: it prints as ``Kind('id')``, and pickles and copies
    as the plain id (the client it holds cannot travel)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str.__repr__(self)})"

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (str(self),)

    @property
    def id(self) -> str:
        """The job's id, as a plain ``str``."""
        return str(self)


class Job(IdHandle):
    """A handle on one job of a :class:`~scheduler.producer.client.ProducerClient`.

    It is the job's id (a ``str``: compare it, print it, put it in ``depends_on``); its
    methods wait for the job, read its result, cancel it, or ask the bus about it.
    """

    _watch: JobWatch
    _client: ProducerClient

    def __new__(cls, watch: JobWatch, client: ProducerClient) -> Job:
        """A handle on ``watch``'s job, reached through ``client``."""
        job = super().__new__(cls, watch.job_id)
        job._watch = watch
        job._client = client
        return job

    @property
    def latest(self) -> JobEvent | None:
        """The newest event this client has heard about the job (no request is made)."""
        return self._watch.latest

    @property
    def done(self) -> bool:
        """Whether the newest event heard is a final one."""
        latest = self._watch.latest
        return latest is not None and latest.event in FINAL_EVENTS

    async def wait(self, timeout: float | None = None) -> JobEvent:
        """The job's final event, once it comes. Raises ``TimeoutError`` after ``timeout``
        seconds (None: no limit) and :class:`BusConnectionLost` if the client closes."""
        async with asyncio.timeout(timeout):
            return await self._watch.final()

    async def result(self, timeout: float | None = None) -> object:
        """What the task returned, once the job succeeded. Raises :class:`JobFailed` if it
        ended otherwise, and what :meth:`wait` raises."""
        event = await self.wait(timeout)
        if event.event != "succeeded":
            raise JobFailed(event)
        return event.result

    async def cancel(self) -> CancelReply:
        """Ask the bus to cancel the job; the reply says what it did."""
        return await self._client.cancel(self.id)

    async def info(self) -> JobEvent:
        """The job's current state, asked of the bus now. Raises :class:`UnknownJob` if the
        bus no longer knows it."""
        return await self._client.job_status(self.id)

    async def events(self) -> AsyncIterator[JobEvent]:
        """Every event of the job since its first handle on this client was made, up to
        and including the final one; then the iteration ends. Each call reads on its
        own. Raises :class:`BusConnectionLost` if the client closes before the end."""
        seen = 0
        while True:
            event = await self._watch.next_after(seen)
            seen += 1
            yield event
            if event.event in FINAL_EVENTS:
                return
