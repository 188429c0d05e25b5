"""The scheduler client: holds a v2 connection to the bus and runs what it is assigned.

Each connection is a session with its own :class:`~scheduler.executor.Executor`. When the
connection ends, every job of that session is stopped before reconnecting: the bus
requeues them elsewhere, and a job must never run on two schedulers at once.

The process stays thread-free because it forks job processes: the bus host name is
resolved with a blocking call (no jobs run while connecting) rather than in asyncio's
resolver thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.uri import parse_uri

from scheduler import protocol
from scheduler.executor import Executor
from scheduler.policy.backoff import Backoff
from scheduler.protocol import (
    FINAL_EVENTS,
    Assign,
    Assignment,
    BusMessage,
    Error,
    Heartbeat,
    Register,
    Registered,
    Report,
)
from scheduler.tasks import TaskRegistry

log = logging.getLogger(__name__)

ReportObserver = Callable[[Report, Assignment], None]
"""Called with every report sent to the bus and the assignment it is about."""


@dataclass(frozen=True)
class SchedulerConfig:
    """How a scheduler connects and runs jobs.

    ``size`` slots; ``timeout`` seconds for jobs that set none; ``grace`` seconds a
    stopped job may react to SIGTERM before SIGKILL; ``heartbeat_s`` between heartbeats.
    """

    bus_url: str = "ws://localhost:8101"
    name: str | None = None
    size: int = 5
    timeout: float = 10.0
    grace: float = 2.0
    token: str | None = None
    heartbeat_s: float = 1.0

    def __post_init__(self) -> None:
        """Refuse values the bus or the executor would refuse later, naming the field."""
        if not 1 <= self.size <= protocol.MAX_SIZE:
            raise ValueError(f"size must be 1 to {protocol.MAX_SIZE}, not {self.size}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, not {self.timeout}")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, not {self.heartbeat_s}")
        if self.grace < 0:
            raise ValueError(f"grace must be >= 0, not {self.grace}")


class SchedulerClient:
    """Connects to the bus (retrying with backoff), registers, and runs assigned jobs."""

    def __init__(
        self,
        config: SchedulerConfig,
        tasks: TaskRegistry | None = None,
        on_report: ReportObserver | None = None,
    ) -> None:
        """Prepare a client; nothing happens until :meth:`run`.

        ``tasks`` defaults to the built-in ones; ``on_report`` sees every report sent.
        """
        self.config = config
        self.tasks = tasks if tasks is not None else TaskRegistry()
        self.name: str | None = None
        """The name the bus confirmed in ``registered`` (None until then)."""
        self._on_report = on_report
        self._stopping = asyncio.Event()
        self._backoff = Backoff()

    async def run(self) -> None:
        """Serve the bus until :meth:`stop`: connect, register, run jobs, reconnect on loss.

        Every job is stopped (whole process trees) when a connection ends and before this
        returns, also when this coroutine is cancelled. Raises ``InvalidURI`` for a bad URL.
        """
        parse_uri(self.config.bus_url)
        while not self._stopping.is_set():
            try:
                ws = await self._connect()
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                await self._retry_later(f"cannot reach the bus at {self.config.bus_url}: {exc}")
                continue
            try:
                await _Session(self, ws).serve()
            finally:
                await ws.close()
            if not self._stopping.is_set():
                await self._retry_later(f"lost the bus at {self.config.bus_url}")

    def stop(self) -> None:
        """Ask :meth:`run` to stop every job, close the connection and return. Returns at once."""
        self._stopping.set()

    async def _connect(self) -> ClientConnection:
        """Open a connection, trying each address of the bus host in turn."""
        uri = parse_uri(self.config.bus_url)
        infos = socket.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM)
        error: Exception = OSError(f"no address for {uri.host}")
        for *_, address in infos:
            try:
                return await connect(
                    self.config.bus_url,
                    host=address[0],
                    port=uri.port,
                    compression=None,
                    max_size=protocol.MAX_FRAME_BYTES,
                )
            except OSError as exc:
                error = exc
        raise error

    async def _retry_later(self, why: str) -> None:
        delay = self._backoff.next_delay()
        log.warning("%s; retrying in %.1f s", why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _registered(self, name: str) -> None:
        self.name = name
        # Only a registration proves the bus takes us: a bus that closes on a bad token
        # must not be retried at the shortest delay forever.
        self._backoff.reset()
        log.info("registered with %s as %s", self.config.bus_url, name)


class _Session:
    """One connection: its executor, its outgoing frames and the assignments it holds."""

    def __init__(self, client: SchedulerClient, ws: ClientConnection) -> None:
        config = client.config
        self.client = client
        self.ws = ws
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.assignments: dict[str, Assignment] = {}
        self.executor = Executor(
            config.size, config.timeout, client.tasks, self.on_event, grace=config.grace
        )

    async def serve(self) -> None:
        """Register, then read, write and beat until the connection ends or stop is asked.

        Stops every job of this session before returning, whatever ended it.
        """
        config = self.client.config
        register = Register(
            type="scheduler",
            protocol=2,
            name=config.name,
            token=config.token,
            size=config.size,
            tasks=self.client.tasks.names,
        )
        self.outbox.put_nowait(protocol.encode(register))
        tasks = [
            asyncio.create_task(self.read()),
            asyncio.create_task(self.write()),
            asyncio.create_task(self.beat()),
            asyncio.create_task(self.client._stopping.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.executor.running or self.executor.queued:
                log.info(
                    "stopping %d running jobs, dropping %d queued",
                    self.executor.running,
                    self.executor.queued,
                )
            await self.executor.shutdown()
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error

    async def read(self) -> None:
        """Handle frames from the bus until the connection closes."""
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                try:
                    message = protocol.decode_bus(frame)
                except protocol.ProtocolError as exc:
                    log.warning("ignoring a bad frame from the bus: %s", exc.message)
                    continue
                self.handle(message)

    def handle(self, message: BusMessage) -> None:
        """Act on one decoded bus message."""
        if isinstance(message, Assign):
            job = message.job
            held = self.assignments.get(job.id)
            if held is None or job.attempt > held.attempt:
                self.assignments[job.id] = job
            self.executor.submit(job)
        elif isinstance(message, Registered):
            self.client._registered(message.name)
        elif isinstance(message, Error):
            log.warning("the bus refused a frame: %s", message.message)
        else:
            log.debug("ignoring %s from the bus", type(message).__name__)

    async def write(self) -> None:
        """Send queued frames in order until the connection closes."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.send(await self.outbox.get())

    async def beat(self) -> None:
        """Queue a heartbeat with the current load every ``heartbeat_s``."""
        while True:
            await asyncio.sleep(self.client.config.heartbeat_s)
            heartbeat = Heartbeat(running=self.executor.running, queued=self.executor.queued)
            self.outbox.put_nowait(protocol.encode(heartbeat))

    def on_event(self, report: Report) -> None:
        """Queue ``report`` for the bus and show it to the client's observer."""
        self.outbox.put_nowait(protocol.encode(report))
        if report.event in FINAL_EVENTS:
            assignment = self.assignments.pop(report.id, None)
        else:
            assignment = self.assignments.get(report.id)
        if self.client._on_report is not None and assignment is not None:
            self.client._on_report(report, assignment)
