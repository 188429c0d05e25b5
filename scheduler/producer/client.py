"""The producer library: a v2 connection that submits jobs and hears about them, and
rides out a bus restart.

    async with ProducerClient("ws://localhost:8101") as client:
        job = await client.submit(JobPayload(task="add", args=[2, 3]))
        print(await job.result(timeout=60))     # see scheduler.producer.handle
        async for event in client.events():     # every event of this client's jobs
            ...

The connection is :class:`scheduler.connect.Connector`'s: when it drops, the client
reconnects with backoff and jitter, sends again every request not yet answered, and
re-subscribes (``watch``, in parts) to every job it submitted that is not final yet, so
no event about its jobs is missed for good; what a connection closed on a frame too big
(1009) refused is not sent again (see :mod:`scheduler.producer.resend`). Jobs get
client-chosen ids (unless the payload names one) submitted with ``on_conflict="ignore"``,
so sending a submit again after a lost acknowledgement never creates a second job.
A bus that refuses the registration itself raises
:class:`~scheduler.connect.RegistrationRefused`; :class:`SubmitError` is a refused request
(:class:`FrameTooBig` one too big to travel: see :mod:`scheduler.producer.chunking`).

Events go to every waiter on its own: each :meth:`ProducerClient.events` iterator has its
own queue, and the handles on a job share the job's :class:`~scheduler.producer.handle.
JobWatch`. Events that come while no :meth:`~ProducerClient.events` iterator is open wait
(the newest ``backlog`` of them) for the next one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from scheduler import codec
from scheduler.connect import Connector, Registration, RegistrationRefused
from scheduler.producer import resend
from scheduler.producer.chunking import (
    FrameTooBig,
    encoded_frame,
    retry_in_parts,
    submit_in_parts,
    watch_in_parts,
)
from scheduler.producer.errors import BusConnectionLost, SubmitError
from scheduler.producer.handle import Job, JobWatch, UnknownJob
from scheduler.producer.turn_sender import TurnSender
from scheduler.producer.waiters import EventWaiters
from scheduler.protocol import (
    Accepted,
    BusMessage,
    Cancel,
    CancelReply,
    ClientMessage,
    Error,
    JobEvent,
    JobList,
    JobPayload,
    JobRequest,
    Register,
    Retried,
    SubmitResult,
    SubmittedMany,
    Watching,
)
from scheduler.protocol_queries import GetStats, ListJobs, Vacuum, Vacuumed
from scheduler.protocol_schedules import (
    ScheduleAction,
    ScheduleAdd,
    ScheduleChange,
    ScheduleQuery,
    ScheduleQueryKind,
    Schedules,
    ScheduleSpec,
)
from scheduler.protocol_stats import StatsReply
from scheduler.protocol_types import FINAL_EVENTS, JobState

__all__ = ["BusConnectionLost", "BusReply", "FrameTooBig", "ProducerClient", "SubmitError"]

log = logging.getLogger(__name__)

BusReply = (
    Accepted
    | SubmittedMany
    | CancelReply
    | Watching
    | Vacuumed
    | StatsReply
    | JobList
    | Schedules
    | Retried
)
"""What the bus answers a producer's request with (an ``error`` fails the request)."""
_Builder = Callable[[int], ClientMessage]


@dataclass
class _Request:
    message: ClientMessage
    future: asyncio.Future[BusReply]


class ProducerClient:
    """A v2 producer connection that reconnects by itself. Replies are matched by ``ref``.

    ``connect_timeout`` bounds how long :meth:`connect` keeps trying to reach the bus;
    after the first connection the client keeps trying until :meth:`close`. A ``wss://``
    bus is verified against ``cafile`` (None: the system's CAs). ``backlog`` bounds the
    events kept while no :meth:`events` iterator is open (the oldest go first).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        token: str | None = None,
        connect_timeout: float = 30.0,
        cafile: str | None = None,
        backlog: int = 10_000,
    ) -> None:
        self.url = url
        self.name = name
        self._token = token
        self._connector = Connector(url, cafile)
        self._connect_timeout = connect_timeout
        self._refs = itertools.count(1)
        self._resend = resend.Resender()
        self._requests: dict[int, _Request] = {}
        self._unfinished: set[str] = set()
        self._waiters = EventWaiters(backlog)
        self._sender: TurnSender | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False

    async def __aenter__(self) -> ProducerClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Start the connection and wait until it is registered; sets ``name``.

        Raises :class:`BusConnectionLost` if the bus cannot be reached within
        ``connect_timeout`` seconds, :class:`~scheduler.connect.RegistrationRefused` if
        it refuses to register us.
        """
        self._runner = asyncio.create_task(self._run(), name="producer-connection")
        waiter = asyncio.create_task(self._connected.wait())
        done, _ = await asyncio.wait(
            {waiter, self._runner},
            timeout=self._connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._runner in done:
            waiter.cancel()
            self._runner.result()
        if waiter not in done:
            waiter.cancel()
            await self.close()
            raise BusConnectionLost(f"could not reach {self.url} in {self._connect_timeout:g} s")

    async def close(self) -> None:
        """Close for good: pending requests, and waiters on jobs that are not final, fail
        with :class:`BusConnectionLost`; :meth:`events` iterators end."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, RegistrationRefused):
                pass
        self._fail_requests("the client was closed")
        self._waiters.end("the client was closed")

    async def submit(
        self,
        payload: JobPayload,
        *,
        delay: float | None = None,
        run_at: float | datetime | None = None,
    ) -> Job:
        """Submit one job; return a handle on it (a :class:`~scheduler.producer.handle.Job`,
        which is also its id) once the bus has journaled it.

        ``delay`` (seconds) or ``run_at`` (epoch seconds, or a datetime with a zone) make
        it a delayed job, as the payload's fields of those names do. Raises ValueError
        for a naive datetime.
        """
        if isinstance(run_at, datetime):
            if run_at.tzinfo is None or run_at.utcoffset() is None:
                raise ValueError("run_at: a datetime must carry a zone (tzinfo)")
            run_at = run_at.timestamp()
        if delay is not None or run_at is not None:
            payload = msgspec.structs.replace(payload, delay=delay, run_at=run_at)
        _, watch = await self._submit_watched(payload)
        return Job(watch, self)

    async def submit_accepted(self, payload: JobPayload) -> Accepted:
        """Submit one job; return the bus's whole reply once it has journaled it (its id,
        and a ``warning`` if no connected scheduler serves its task).

        A job that existed already (a re-send of this submission, or ``ignore``) may be
        further along, even final: its current state is then put in :meth:`events`.
        """
        reply, _ = await self._submit_watched(payload)
        return reply

    async def _submit_watched(self, payload: JobPayload) -> tuple[Accepted, JobWatch]:
        """Submit one job; its watch exists before the request goes out, so that no event
        of the job can come before it."""
        payload = self._with_id(payload)
        assert payload.job_id is not None
        watch = self._waiters.watch_of(payload.job_id)
        reply = await self._request(lambda ref: JobRequest(payload=payload, ref=ref))
        assert isinstance(reply, Accepted)
        self._unfinished.add(reply.id)
        if reply.existing:
            await self._catch_up([reply.id])
        return reply, watch

    async def job(self, job_id: str) -> Job:
        """A handle on job ``job_id``, submitted by this client or elsewhere: the client
        watches it from now on (again after a reconnect), and the handle starts from its
        current state. Raises :class:`~scheduler.producer.handle.UnknownJob` if the bus
        does not know it, :class:`SubmitError` if this client may not watch it."""
        watch = self._waiters.watch_of(job_id)
        watch.add(await self.job_status(job_id), snapshot=True)
        return Job(watch, self)

    async def job_status(self, job_id: str) -> JobEvent:
        """Job ``job_id``'s current state, asked of the bus now (watching it from now on).
        Raises :class:`~scheduler.producer.handle.UnknownJob` if the bus does not know it."""
        reply = await self.watch([job_id])
        if not reply.jobs:
            raise UnknownJob(f"the bus does not know job {job_id} (never submitted, or vacuumed)")
        return reply.jobs[0]

    async def submit_many(self, payloads: Sequence[JobPayload]) -> list[SubmitResult]:
        """Submit many jobs in one message (one journal transaction); one result per job,
        in order. A batch too long for one frame goes as several messages (see
        :mod:`scheduler.producer.chunking`); a job too big for any raises
        :class:`~scheduler.producer.chunking.FrameTooBig` before any is sent. Jobs that
        existed already are caught up with as in :meth:`submit`."""
        results = await submit_in_parts(self._request, [self._with_id(p) for p in payloads])
        self._unfinished.update(result.id for result in results if result.id is not None)
        await self._catch_up([r.id for r in results if r.id is not None and r.existing])
        return results

    async def cancel(self, job_id: str) -> CancelReply:
        """Ask the bus to cancel ``job_id``; the reply says what it did."""
        reply = await self._request(lambda ref: Cancel(id=job_id, ref=ref))
        assert isinstance(reply, CancelReply)
        return reply

    async def watch(self, job_ids: Sequence[str]) -> Watching:
        """Subscribe to the events of ``job_ids``; the reply holds their current state
        (asked in parts of at most :data:`~scheduler.producer.chunking.MAX_IDS_PER_REQUEST`
        ids, answered as one)."""
        reply = await watch_in_parts(self._request, job_ids)
        self._unfinished.update(e.id for e in reply.jobs if e.event not in FINAL_EVENTS)
        return reply

    async def vacuum(self, older_than_s: float | None = None) -> dict[str, int]:
        """Delete old final jobs now; return how many were deleted, by state."""
        reply = await self._request(lambda ref: Vacuum(older_than_s=older_than_s, ref=ref))
        assert isinstance(reply, Vacuumed)
        return reply.deleted

    async def stats(self) -> StatsReply:
        """The bus's and every scheduler's figures now."""
        reply = await self._request(lambda ref: GetStats(ref=ref))
        assert isinstance(reply, StatsReply)
        return reply

    async def list_jobs(
        self,
        states: Sequence[JobState] | None = None,
        limit: int = 1000,
        *,
        final: bool = False,
        newest_first: bool = False,
        task: str | None = None,
        since: float | None = None,
        prefix: str | None = None,
    ) -> JobList:
        """The status of the jobs the bus tracks (not final), in ``states`` if given;
        ``final`` adds the final jobs its journal keeps; the other arguments are the
        fields of :class:`ListJobs` of the same names."""
        request = ListJobs(
            states=None if states is None else list(states),
            limit=limit,
            task=task,
            since=since,
            prefix=prefix,
            final=final,
            newest_first=newest_first,
        )
        reply = await self._request(lambda ref: msgspec.structs.replace(request, ref=ref))
        assert isinstance(reply, JobList)
        return reply

    async def retry(self, job_ids: Sequence[str]) -> Retried:
        """Run final jobs again (full ids); the reply holds the ``retried`` event of each
        job that runs again and why each other id was refused. This client then hears
        the events of the retried jobs, and its handles on them wait for their new end.
        A long list is asked in parts, answered as one."""
        reply = await retry_in_parts(self._request, job_ids)
        for event in reply.jobs:
            self._unfinished.add(event.id)
            self._waiters.note(event)
        return reply

    async def schedule_add(self, spec: ScheduleSpec) -> Schedules:
        """Add the schedule ``spec`` or replace the one of its name (an admin's request)."""
        return await self._schedules(lambda ref: ScheduleAdd(schedule=spec, ref=ref))

    async def schedule_change(self, action: ScheduleAction, name: str) -> Schedules:
        """Pause, resume, remove or trigger schedule ``name`` (an admin's request)."""
        return await self._schedules(lambda ref: ScheduleChange(action=action, name=name, ref=ref))

    async def schedule_query(
        self, query: ScheduleQueryKind = "list", name: str | None = None, count: int = 5
    ) -> Schedules:
        """Every schedule, one (``show``), or one's next ``count`` fire times (``next``)."""
        return await self._schedules(
            lambda ref: ScheduleQuery(query=query, name=name, count=count, ref=ref)
        )

    async def _schedules(self, build: _Builder) -> Schedules:
        reply = await self._request(build)
        assert isinstance(reply, Schedules)
        return reply

    async def events(self) -> AsyncIterator[JobEvent]:
        """Yield every event about this client's jobs, across reconnects, until closed.

        Each iterator has its own queue: several see every event from when they start.
        The first to start while none is open first gets the events that came while none
        was (see ``backlog``); events it had not yet yielded when it ends go back there.
        """
        async for event in self._waiters.stream():
            yield event

    async def _catch_up(self, job_ids: list[str]) -> None:
        """Put the current state of ``job_ids`` in the events: a job that was final before
        we submitted it sends no more events."""
        if job_ids:
            reply = await watch_in_parts(self._request, job_ids)
            for event in reply.jobs:
                self._on_event(event, snapshot=True)

    @staticmethod
    def _with_id(payload: JobPayload) -> JobPayload:
        if payload.job_id is not None:
            return payload
        return msgspec.structs.replace(payload, job_id=uuid.uuid4().hex, on_conflict="ignore")

    async def _request(self, build: _Builder) -> BusReply:
        if self._closing:
            raise BusConnectionLost("the client was closed")
        ref = next(self._refs)
        message = build(ref)
        frame = encoded_frame(message)
        request = _Request(message, asyncio.get_running_loop().create_future())
        self._requests[ref] = request
        if self._sender is not None and self._connected.is_set():
            try:
                await self._sender.send(frame)
            except ConnectionClosed:
                pass  # sent again after the reconnect
        return await request.future

    async def _run(self) -> None:
        try:
            await self._connector.run(self._register_message, self._serve)
        except RegistrationRefused as exc:
            log.error("the bus %s refused this producer: %s", self.url, exc)
            self._fail_requests(f"the bus refused this producer: {exc}")
            self._waiters.end(f"the bus refused this producer: {exc}")
            raise

    def _register_message(self) -> Register:
        return Register(type="producer", protocol=2, name=self.name, token=self._token, batch=True)

    async def _serve(self, registration: Registration) -> None:
        """Take the name the bus gave us, then serve the connection until it ends."""
        if self.name is not None and self.name != registration.registered.name:
            log.debug("registered as %s", registration.registered.name)
        self.name = registration.registered.name
        for message in registration.early:
            self._on_message(message)
        self._sender = TurnSender(registration.ws, registration.registered.batch)
        try:
            await self._resend_and_read(registration.ws)
        finally:
            self._connected.clear()
            self._sender = None

    async def _resend_and_read(self, ws: ClientConnection) -> None:
        """Resend what is unanswered, re-subscribe, then read until the connection ends."""
        # Set before resending, with no await in between: a request made from now on is
        # sent by _request itself, one made before is in the list below.
        self._connected.set()
        for ref, watch in self._resend.rewatch(self._unfinished, self._refs).items():
            self._requests[ref] = _Request(watch, asyncio.get_running_loop().create_future())
            self._requests[ref].future.add_done_callback(self._after_rewatch)
        try:
            for request in list(self._requests.values()):
                await ws.send(codec.encode(request.message))
            async for frame in ws:
                self._on_frame(frame)
        finally:
            self._resend.settle(ws, self._requests, self._unfinished, self._waiters)

    def _after_rewatch(self, future: asyncio.Future[BusReply]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        reply = future.result()
        assert isinstance(reply, Watching)
        for event in reply.jobs:
            self._on_event(event, snapshot=True)
        for job_id in reply.unknown:
            log.error("the bus no longer knows job %s (was its journal lost?)", job_id)
            self._on_event(_lost(job_id))

    def _on_frame(self, frame: str | bytes) -> None:
        for message in codec.decode_bus_frame(frame):
            if isinstance(message, codec.ProtocolError):
                log.warning("ignoring a frame from the bus that does not decode: %s", message)
            else:
                self._on_message(message)

    def _on_message(self, message: BusMessage) -> None:
        if isinstance(message, JobEvent):
            self._on_event(message)
        else:
            self._on_reply(message)

    def _on_event(self, event: JobEvent, *, snapshot: bool = False) -> None:
        """Give ``event`` to every events() iterator (or the backlog) and the job's watch;
        a ``snapshot`` is a state from a watch reply."""
        if event.event in FINAL_EVENTS:
            self._unfinished.discard(event.id)
        self._waiters.deliver(event, snapshot=snapshot)

    def _on_reply(self, message: BusMessage) -> None:
        ref = getattr(message, "ref", None)
        request = self._requests.pop(ref, None) if isinstance(ref, int) else None
        if request is None or request.future.done():
            if isinstance(message, Error):
                log.warning("the bus reports an error: %s", message.message)
            return
        if isinstance(message, Error):
            request.future.set_exception(SubmitError(message))
        elif isinstance(message, BusReply):
            request.future.set_result(message)

    def _fail_requests(self, reason: str) -> None:
        for request in self._requests.values():
            if not request.future.done():
                request.future.set_exception(BusConnectionLost(reason))
        self._requests.clear()


def _lost(job_id: str) -> JobEvent:
    return JobEvent(
        event="dead",
        id=job_id,
        priority=0,
        state="dead",
        time=time.time(),
        runtime=0.0,
        error="the bus no longer knows this job (its journal was lost or vacuumed)",
    )
