"""One registered connection of a scheduler client: reads the bus, sends reports, beats.

A :class:`Session` sees only what :class:`SessionLinks` gives it of its client: the
executor, the report queue, the lease view, the clock and two callbacks. When to beat
is :class:`~scheduler.policy.heartbeat.HeartbeatSchedule`'s rule; what a heartbeat's
pong proves is :class:`~scheduler.policy.fence.LeaseView`'s. To a bus whose
``registered`` said ``batch``, the reports waiting when the writer runs go out as one
batch frame (:mod:`scheduler.worker.report_frames`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from scheduler import codec
from scheduler.connect import KEEPALIVE, Registration
from scheduler.policy.fence import LeaseView
from scheduler.policy.heartbeat import HeartbeatSchedule
from scheduler.protocol import Assign, BusMessage, Error, Heartbeat, Release, Restarting, Stop
from scheduler.protocol_types import MAX_BATCH_MESSAGES
from scheduler.worker.executor import Executor
from scheduler.worker.report_frames import next_frame
from scheduler.worker.report_queue import ReportQueue

log = logging.getLogger(__name__)

SEND_BATCH: Final = 64
"""Most reports sent back to back before the writer lets other work run (at least one
frame: a batch frame may hold more)."""
FLUSH_TIMEOUT_S: Final = 5.0
"""How long a clean shutdown may spend sending the outbox before it closes the socket."""
REPORT_LINGER_S: Final = 0.002
"""How long a warm scheduler holds its reports while a job whose start waits among them
runs, so that the start and the end travel in one batch frame (a warm no-op job ends in
well under a millisecond). Jobs still wait in the local queue meanwhile, and start as
soon as a slot frees: only what the bus shows waits."""


@dataclass(frozen=True, slots=True)
class SessionLinks:
    """What a session uses of its scheduler client, and nothing more.

    ``outbox_ready`` is set whenever a report is queued; ``on_stop`` carries out the
    bus's :class:`~scheduler.protocol.Stop`; ``on_error`` stops the client with an
    unexpected error. ``linger_s``: how long the writer may hold reports while a job
    whose ``started`` report waits runs, when the bus takes batch frames (0: never).
    """

    executor: Executor
    outbox: ReportQueue
    outbox_ready: asyncio.Event
    lease: LeaseView
    clock: Callable[[], float]
    on_stop: Callable[[Stop], None]
    on_error: Callable[[BaseException], None]
    linger_s: float = 0.0


class Session:
    """Serves one registered connection ``ws`` until it ends or the client stops."""

    def __init__(
        self, registration: Registration, links: SessionLinks, heartbeats: HeartbeatSchedule
    ) -> None:
        """A session on ``registration``'s connection, beating on ``heartbeats``; nothing
        runs until :meth:`serve`."""
        self.ws = registration.ws
        self.early = registration.early
        self.batching = registration.registered.batch
        """Whether the bus said it reads batch frames: the reports waiting when the
        writer runs then go out as one frame."""
        self.links = links
        self.heartbeats = heartbeats
        self.tasks: list[asyncio.Task[None]] = []

    async def serve(self, stopping: asyncio.Event) -> None:
        """Handle what came before the registration was confirmed, then read frames, send
        the outbox and beat, until the connection ends or ``stopping`` is set; then stop
        reading, writing and beating."""
        for message in self.early:
            self.handle(message)
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            reader = self.spawn(self.read())
            self.spawn(self.write())
            self.spawn(self.beat())
            await asyncio.wait((reader, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopped, *self.tasks):
                task.cancel()
            await asyncio.gather(stopped, *self.tasks, return_exceptions=True)

    async def flush(self) -> None:
        """Send the outbox, for at most ``FLUSH_TIMEOUT_S``, while the connection lasts."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                while self.links.outbox:
                    await self.send_next()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coroutine`` for this session; an unexpected error in it stops the client."""
        task = asyncio.get_running_loop().create_task(coroutine)
        task.add_done_callback(self._check)
        self.tasks.append(task)
        return task

    def _check(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self.links.on_error(error)

    async def read(self) -> None:
        """Handle frames from the bus until the connection closes."""
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                for message in codec.decode_bus_frame(frame):
                    if isinstance(message, codec.ProtocolError):
                        log.warning("ignoring a bad frame from the bus: %s", message.message)
                        continue
                    launched = self.links.executor.launched
                    self.handle(message)
                    if self.links.executor.launched != launched:
                        # It forked a job: let heartbeats and job exits run before the
                        # next. Queueing or releasing one is quick: a burst's thousands of
                        # those go at once, or the pong behind them comes past our fence.
                        await asyncio.sleep(0)

    def handle(self, message: BusMessage) -> None:
        """Act on one decoded bus message."""
        links = self.links
        if isinstance(message, Assign):
            links.executor.submit(message.job, hold=message.hold)
        elif isinstance(message, Release):
            links.executor.release(message.id, message.attempt)
        elif isinstance(message, Stop):
            links.on_stop(message)
        elif isinstance(message, Restarting):
            links.lease.promised(links.clock() + message.keep_s)
            log.info("the bus restarts: keeping our jobs for up to %g s", message.keep_s)
        elif isinstance(message, Error):
            log.warning("the bus refused a frame: %s", message.message)
        else:
            log.debug("ignoring %s from the bus", type(message).__name__)

    async def write(self) -> None:
        """Send the outbox in order, as reports arrive, until the connection closes."""
        outbox, ready = self.links.outbox, self.links.outbox_ready
        with contextlib.suppress(ConnectionClosed):
            while True:
                if not outbox:
                    ready.clear()
                    await ready.wait()
                    continue
                if self.batching and self.links.linger_s > 0:
                    await self.linger()
                # Reports made in one loop iteration (a job's end and the next one's
                # start, say) go out together: in one batch frame to a bus that takes
                # them, else back to back (a send waits only while the socket's buffer is
                # full). A long outbox must not hold up heartbeats and job exits, so it
                # goes out SEND_BATCH reports (or one batch frame) per loop iteration.
                sent = 0
                while outbox and sent < SEND_BATCH:
                    sent += await self.send_next()
                if outbox:
                    await asyncio.sleep(0)

    async def linger(self) -> None:
        """Wait, for at most ``linger_s``, while a ``started`` report waits in the
        outbox without its attempt's end (and the outbox fills less than one batch
        frame)."""
        outbox, ready = self.links.outbox, self.links.outbox_ready
        deadline = asyncio.get_running_loop().time() + self.links.linger_s
        while len(outbox) < MAX_BATCH_MESSAGES and outbox.awaits_end():
            ready.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await ready.wait()
            except TimeoutError:
                return

    async def send_next(self) -> int:
        """Send the oldest reports of the outbox in one frame (all that fit in one batch
        when :attr:`batching`, else one); return how many. If sending fails they stay
        first there, in order."""
        outbox = self.links.outbox
        reports, frame = next_frame(outbox, self.batching)
        try:
            await self.ws.send(frame, text=True)
        except BaseException:
            # They may or may not have left: send them again (the bus ignores repeats).
            for report in reversed(reports):
                outbox.push_front(report)
            raise
        return len(reports)

    async def beat(self) -> None:
        """Send a heartbeat with the current load whenever one is due, each followed by
        a ping: its pong proves the bus read the heartbeat, which renews our lease from
        the time it was sent."""
        executor, clock, schedule = self.links.executor, self.links.clock, self.heartbeats
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(schedule.due_in(clock()))
                heartbeat = Heartbeat(running=executor.running, queued=executor.queued)
                sent_at = clock()
                schedule.sent(sent_at)
                await self.ws.send(codec.encode(heartbeat))
                pong = asyncio.ensure_future(await self.ws.ping())
                pong.add_done_callback(partial(self._ponged, sent_at))

    def _ponged(self, sent_at: float, pong: asyncio.Future[float]) -> None:
        if not pong.cancelled() and pong.exception() is None:
            self.links.lease.confirmed(sent_at)

    def give_up(self, reason: str) -> None:
        """Leave a connection the bus stopped answering: close it with code 1011 (as the
        keepalive does, so the client tries the next bus first) and ``reason``, dropping
        it after ``KEEPALIVE["close_timeout"]`` if the bus never answers; serving ends
        then. Returns at once."""
        self.spawn(self._leave(reason))

    async def _leave(self, reason: str) -> None:
        try:
            # Bounded here: a close whose frame waits behind a full send buffer (a bus
            # that reads nothing) would otherwise wait for it for ever.
            async with asyncio.timeout(KEEPALIVE["close_timeout"]):
                await self.ws.close(CloseCode.INTERNAL_ERROR, reason)
        except TimeoutError:
            self.ws.transport.abort()
