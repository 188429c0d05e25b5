"""Who hears a producer client's job events: every ``events()`` iterator, each through a
queue of its own, and the :class:`~scheduler.producer.handle.JobWatch` its handles on the
job share. No waiter takes an event from another."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncGenerator

from scheduler.producer.handle import JobWatch
from scheduler.protocol import JobEvent


class EventWaiters:
    """The waiters on one client's events. Events that come while no iterator is open
    wait for the next one in a backlog of at most ``backlog`` (the oldest go first)."""

    def __init__(self, backlog: int) -> None:
        self._streams: set[asyncio.Queue[JobEvent | None]] = set()
        self._backlog: deque[JobEvent] = deque(maxlen=backlog)
        self._watches: weakref.WeakValueDictionary[str, JobWatch] = weakref.WeakValueDictionary()
        self._ended: str | None = None

    def watch_of(self, job_id: str) -> JobWatch:
        """The watch every handle on ``job_id`` shares; made if no handle holds one (it
        lives as long as a handle does)."""
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = JobWatch(job_id)
        return watch

    def deliver(self, event: JobEvent, *, snapshot: bool = False) -> None:
        """Give ``event`` to every open iterator (or the backlog) and to the job's watch;
        a ``snapshot`` is a job's state from a watch reply (see :meth:`JobWatch.add`)."""
        for queue in self._streams:
            queue.put_nowait(event)
        if not self._streams:
            self._backlog.append(event)
        watch = self._watches.get(event.id)
        if watch is not None:
            watch.add(event, snapshot=snapshot)

    def note(self, event: JobEvent) -> None:
        """Give ``event``, a job's state from a reply, to the job's watch only: the same
        event then coming live is not repeated, and iterators get it only then."""
        watch = self._watches.get(event.id)
        if watch is not None:
            watch.add(event, snapshot=True)

    def give_up(self, job_id: str, reason: str) -> None:
        """No more events will come for ``job_id``: waiters on it fail with ``reason``."""
        watch = self._watches.get(job_id)
        if watch is not None:
            watch.close(reason)

    def end(self, reason: str) -> None:
        """No more events: iterators end, and waiters on jobs not final fail with
        ``reason``."""
        self._ended = reason
        for queue in self._streams:
            queue.put_nowait(None)
        for watch in list(self._watches.values()):
            watch.close(reason)

    async def stream(self) -> AsyncGenerator[JobEvent, None]:
        """Every event delivered from now on, through a queue of this iterator's own; the
        first iterator opened while none is starts with the backlog, and gives back the
        events it had not yielded when it ends. Ends after :meth:`end`."""
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        if not self._streams:
            for kept in self._backlog:
                queue.put_nowait(kept)
            self._backlog.clear()
        if self._ended is not None:
            queue.put_nowait(None)
        self._streams.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._streams.discard(queue)
            if not self._streams:
                self._put_back(queue)

    def _put_back(self, queue: asyncio.Queue[JobEvent | None]) -> None:
        """Return the events an ended iterator had not yielded to the backlog, first."""
        unread: list[JobEvent] = []
        while not queue.empty():
            event = queue.get_nowait()
            if event is not None:
                unread.append(event)
        self._backlog.extendleft(reversed(unread))
