"""Records every event a :class:`ProducerClient` hears, with the time it arrived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS


@dataclass(frozen=True, slots=True)
class Seen:
    """One event: the bus's stamp (``time.time()`` on the bus) and our receipt times."""

    event: JobEvent
    recv_wall: float
    """``time.time()`` in the producer when the frame was handled."""
    recv_perf: float
    """``time.perf_counter()`` at the same moment."""


class Tracker:
    """Consumes ``client.events()`` in a task; waiters wait for a predicate to hold."""

    def __init__(self, client: ProducerClient) -> None:
        self._client = client
        self.first: dict[tuple[str, str], Seen] = {}
        """(job id, event kind) -> the first such event."""
        self.latest: dict[tuple[str, str], Seen] = {}
        """(job id, event kind) -> the latest such event (a job started again, say)."""
        self.last: dict[str, str] = {}
        """job id -> the kind of its latest event."""
        self.finals: dict[str, Seen] = {}
        """job id -> its final event."""
        self.counts: dict[str, int] = {}
        """event kind -> how many were received."""
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        """Each waiting :meth:`wait`'s predicate and the future it awaits."""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tracker:
        self._task = asyncio.create_task(self._consume(), name="bench-tracker")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _consume(self) -> None:
        async for event in self._client.events():
            seen = Seen(event, time.time(), time.perf_counter())
            self.first.setdefault((event.id, event.event), seen)
            self.latest[(event.id, event.event)] = seen
            self.last[event.id] = event.event
            self.counts[event.event] = self.counts.get(event.event, 0) + 1
            if event.event in FINAL_EVENTS:
                self.finals[event.id] = seen
            self._check_waiters()

    def _check_waiters(self) -> None:
        """Wake each waiter whose predicate now holds (checked here, on the tracker's
        task: waking every waiter's task at every event would cost the producer process a
        task step per event, CPU taken from the system it measures)."""
        for predicate, done in self._waiters:
            if not done.done() and predicate():
                done.set_result(None)

    async def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Return once ``predicate()`` holds; TimeoutError naming ``what`` after ``timeout``."""
        if predicate():
            return
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None
        finally:
            self._waiters.remove(waiter)

    async def wait_event(self, job_id: str, kind: str, timeout: float) -> Seen:
        """The first ``kind`` event of ``job_id``, waiting for it if need be."""
        await self.wait(lambda: (job_id, kind) in self.first, timeout, f"{kind} of {job_id}")
        return self.first[(job_id, kind)]

    async def wait_final(self, job_id: str, timeout: float) -> Seen:
        """The final event of ``job_id``, waiting for it if need be."""
        await self.wait(lambda: job_id in self.finals, timeout, f"the end of {job_id}")
        return self.finals[job_id]

    def outcomes(self, ids: list[str]) -> dict[str, int]:
        """How many of ``ids`` ended in each final state."""
        counts: dict[str, int] = {}
        for job_id in ids:
            seen = self.finals.get(job_id)
            kind = seen.event.event if seen is not None else "unfinished"
            counts[kind] = counts.get(kind, 0) + 1
        return counts
