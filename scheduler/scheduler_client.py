"""The scheduler client: holds a v2 connection to the bus and runs what it is assigned.

One :class:`~scheduler.executor.Executor` lives as long as :meth:`SchedulerClient.run`, so
jobs outlive a lost connection. While the bus is away every report waits, in order, in the
:class:`Outbox`. The client reconnects with backoff and jitter, registers again under the
same name listing in ``held`` every attempt it still has (running, waiting, or finished
with its report in the outbox), and once the bus confirms it sends the outbox. The bus
answers :class:`~scheduler.protocol.Stop` for attempts it no longer gives this scheduler:
their processes are stopped and nothing more is reported about them.

Only a clean shutdown (:meth:`SchedulerClient.stop`, or cancelling :meth:`run`, which the
commands do on SIGINT/SIGTERM) stops the jobs; then the outbox is flushed and the socket
closed with code 1000, which tells the bus to requeue at once whatever this scheduler held.

The process stays thread-free because it forks job processes: the bus host name is
resolved with a blocking call rather than in asyncio's resolver thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.uri import parse_uri

from scheduler import protocol
from scheduler.auth import tls_options
from scheduler.cgroups import JobCgroups
from scheduler.executor import Executor
from scheduler.policy.backoff import Backoff
from scheduler.policy.fence import LeaseView
from scheduler.policy.limits import NO_LIMITS, Limits
from scheduler.protocol import (
    Assign,
    Assignment,
    BusMessage,
    Error,
    Heartbeat,
    Held,
    Register,
    Registered,
    Report,
    Restarting,
    Stop,
)
from scheduler.tasks import TaskRegistry

log = logging.getLogger(__name__)

ReportObserver = Callable[[Report, Assignment], None]
"""Called with every report made (sent now or kept in the outbox) and its assignment."""

DEFAULT_OUTBOX_LIMIT: Final = 100_000
"""Reports kept while the bus is away, unless the config says otherwise."""
CLOSING_REPORTS: Final[frozenset[str]] = frozenset(
    {"succeeded", "failed", "timed_out", "evicted", "cancelled"}
)
"""Reports after which an attempt is no longer this scheduler's to run."""
SEND_BATCH: Final = 64
"""Most reports sent back to back before the writer lets other work run."""
FLUSH_TIMEOUT_S: Final = 5.0
"""How long a clean shutdown may spend sending the outbox before it closes the socket."""


def default_name() -> str:
    """``HOST-PID``: stable for this process's life, so a reconnect can reclaim its jobs."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class SchedulerConfig:
    """How a scheduler connects and runs jobs.

    ``name`` to register under (default :func:`default_name`); ``size`` slots;
    ``timeout`` seconds for jobs that set none (None: no timeout); ``limits`` on each
    job's process tree unless its task sets its own; ``cgroups`` to run each job in a
    cgroup of its own (None: none); ``grace`` seconds a stopped job may react
    to SIGTERM before SIGKILL; ``heartbeat_s`` between heartbeats; ``outbox_limit``
    reports kept while the bus is away (beyond it the oldest are dropped).
    """

    bus_url: str = "ws://localhost:8101"
    name: str | None = None
    size: int = 5
    timeout: float | None = 10.0
    grace: float = 2.0
    token: str | None = None
    heartbeat_s: float = 1.0
    outbox_limit: int = DEFAULT_OUTBOX_LIMIT
    cafile: str | None = None
    """CA certificates to verify a ``wss://`` bus with (None: the system's)."""
    limits: Limits = NO_LIMITS
    cgroups: JobCgroups | None = None

    def __post_init__(self) -> None:
        """Refuse values the bus or the executor would refuse later, naming the field."""
        if not 1 <= self.size <= protocol.MAX_SIZE:
            raise ValueError(f"size must be 1 to {protocol.MAX_SIZE}, not {self.size}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, not {self.timeout}")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, not {self.heartbeat_s}")
        if self.grace < 0:
            raise ValueError(f"grace must be >= 0, not {self.grace}")
        if self.outbox_limit < 1:
            raise ValueError(f"outbox_limit must be >= 1, not {self.outbox_limit}")


class RegistrationRefused(Exception):
    """The bus refused to register this scheduler (its name is another scheduler's, or
    its token is not valid for a scheduler): retrying cannot help."""


_FATAL_FIELDS: Final = frozenset({"name", "token", "type"})
"""Fields of a ``register`` whose refusal is fatal."""


class Outbox:
    """Reports on their way to the bus, oldest first; at most ``limit`` of them.

    Past the limit the oldest report is dropped with a warning: the bus then learns that
    attempt's end only by presuming it lost (it runs again elsewhere).
    """

    def __init__(self, limit: int = DEFAULT_OUTBOX_LIMIT) -> None:
        """An empty outbox."""
        self.limit = limit
        self.dropped = 0
        """How many reports were dropped for want of room."""
        self._reports: deque[Report] = deque()

    def append(self, report: Report) -> None:
        """Add ``report`` last, dropping the oldest report if the outbox is full."""
        if len(self._reports) >= self.limit:
            lost = self._reports.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "outbox full (%d reports): dropped the oldest (%s of %s attempt %d); "
                    "%d dropped so far",
                    self.limit,
                    lost.event,
                    lost.id,
                    lost.attempt,
                    self.dropped,
                )
        self._reports.append(report)

    def popleft(self) -> Report:
        """Remove and return the oldest report; ``IndexError`` if empty."""
        return self._reports.popleft()

    def push_front(self, report: Report) -> None:
        """Put back first a report whose sending failed, so it goes out again first."""
        self._reports.appendleft(report)

    def purge(self, job_id: str, attempt: int) -> int:
        """Drop every report about ``attempt`` of ``job_id``; return how many there were."""
        kept = deque(r for r in self._reports if (r.id, r.attempt) != (job_id, attempt))
        purged = len(self._reports) - len(kept)
        self._reports = kept
        return purged

    def closed_attempts(self) -> list[Held]:
        """The attempts whose closing report waits here, as ``Held(done=True)``, oldest
        first. Changes nothing."""
        seen: dict[tuple[str, int], Held] = {}
        for r in self._reports:
            if r.event in CLOSING_REPORTS:
                seen.setdefault((r.id, r.attempt), Held(r.id, r.attempt, done=True))
        return list(seen.values())

    def __len__(self) -> int:
        """How many reports wait."""
        return len(self._reports)

    def __iter__(self) -> Iterator[Report]:
        """The waiting reports, oldest first."""
        return iter(self._reports)


def fit_register(register: Register, max_bytes: int = protocol.MAX_FRAME_BYTES) -> Register:
    """``register`` with ``held`` cut short, if needed, so that the frame fits ``max_bytes``.

    Entries are kept in order, so list running attempts first: one left out is presumed
    lost by the bus (and is stopped when it answers with a ``Stop`` or a new attempt).
    """
    if not register.held or len(protocol.encode(register).encode()) <= max_bytes:
        return register
    empty = protocol.encode(msgspec.structs.replace(register, held=[]))
    budget = max_bytes - len(empty.encode()) + 1  # the first entry needs no comma
    kept: list[Held] = []
    for held in register.held:
        budget -= len(msgspec.json.encode(held)) + 1
        if budget < 0:
            break
        kept.append(held)
    log.warning(
        "re-registering: %d of %d held attempts fit in one frame; the bus presumes the others lost",
        len(kept),
        len(register.held),
    )
    return msgspec.structs.replace(register, held=kept)


class SchedulerClient:
    """Connects to the bus (retrying with backoff), registers, and runs assigned jobs."""

    def __init__(
        self,
        config: SchedulerConfig,
        tasks: TaskRegistry | None = None,
        on_report: ReportObserver | None = None,
    ) -> None:
        """Prepare a client; nothing happens until :meth:`run`.

        ``tasks`` defaults to the built-in ones; ``on_report`` sees every report made.
        """
        self.config = config
        self.tasks = tasks if tasks is not None else TaskRegistry()
        self.name: str | None = None
        """The name the bus confirmed in ``registered`` (None until then)."""
        self.outbox = Outbox(config.outbox_limit)
        self._wanted_name = config.name or default_name()
        self._on_report = on_report
        self._unobserved: list[tuple[Report, Assignment]] = []
        """Reports made but not yet shown to ``on_report``."""
        self._stopping = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._backoff = Backoff()
        self._executor: Executor | None = None
        self._error: Exception | None = None
        self._secret: str | None = None
        """What proves to the bus that we hold our name; kept in memory only."""
        self._lease = LeaseView(
            start_margin=config.heartbeat_s, stop_margin=config.grace + config.heartbeat_s
        )
        """Our lease at the bus as our own clock sees it: fences starts and running jobs."""

    @property
    def executor(self) -> Executor:
        """The executor running this client's jobs; RuntimeError before :meth:`run`."""
        if self._executor is None:
            raise RuntimeError("the client is not running")
        return self._executor

    async def run(self) -> None:
        """Serve the bus until :meth:`stop`: connect, register, run jobs, reconnect on loss.

        Jobs keep running while the bus is away. Before this returns, also when it is
        cancelled, every job is stopped (whole process trees), the outbox is sent if the
        bus is there, and the socket closed with code 1000. Raises ``InvalidURI`` for a bad
        URL, and the error of a failing ``on_report`` (after that shutdown).
        """
        parse_uri(self.config.bus_url)
        config = self.config
        executor = self._executor = Executor(
            config.size,
            config.timeout,
            self.tasks,
            self._on_event,
            grace=config.grace,
            on_error=self._fail,
            may_start=self._may_start,
            limits=config.limits,
            cgroups=config.cgroups,
        )
        session: _Session | None = None
        try:
            while not self._stopping.is_set():
                session = await self._open()
                if session is None:
                    continue
                await session.serve()
                if not self._stopping.is_set():
                    session = None
                    held = executor.running + executor.queued
                    await self._retry_later(
                        f"lost the bus at {config.bus_url} ({held} jobs kept, "
                        f"{len(self.outbox)} reports waiting)"
                    )
        finally:
            try:
                await executor.shutdown()
                if session is not None:
                    await session.close()
            finally:
                if self._unobserved:
                    self._observe()  # the last reports: this returns only once all are seen
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Ask :meth:`run` to stop every job, close the connection and return. Returns at once."""
        self._stopping.set()

    async def _open(self) -> _Session | None:
        """Connect, or wait the next backoff delay and return None."""
        try:
            ws = await self._connect()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            await self._retry_later(f"cannot reach the bus at {self.config.bus_url}: {exc}")
            return None
        return _Session(self, ws)

    async def _connect(self) -> ClientConnection:
        """Open a connection, trying each address of the bus host in turn."""
        uri = parse_uri(self.config.bus_url)
        infos = socket.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM)
        error: Exception = OSError(f"no address for {uri.host}")
        tls = tls_options(self.config.bus_url, self.config.cafile)
        if tls:
            tls["server_hostname"] = uri.host
        for *_, address in infos:
            try:
                return await connect(
                    self.config.bus_url,
                    host=address[0],
                    port=uri.port,
                    compression=None,
                    max_size=protocol.MAX_FRAME_BYTES,
                    **tls,
                )
            except OSError as exc:
                error = exc
        raise error

    async def _retry_later(self, why: str) -> None:
        delay = self._backoff.next_delay()
        log.warning("%s; retrying in %.1f s", why, delay)
        fence_in = self._fence_in()
        if fence_in is not None and fence_in < delay:
            await self._pause(max(0.0, fence_in))
            self._fence()
            delay -= max(0.0, fence_in)
        await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if :meth:`stop` is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _may_start(self) -> bool:
        """Whether a queued job may start now: our lease surely holds (see :class:`LeaseView`)."""
        return self._lease.may_start(time.monotonic())

    def _fence_in(self) -> float | None:
        """Seconds until our lease may have expired at the bus, less the time stopping a
        job can take; None while we hold nothing or never had a lease."""
        if not self.executor.held():
            return None
        return self._lease.fence_in(time.monotonic())

    def _fence(self) -> None:
        """Stop every job: the bus has given them to others by now (lease expired), and a
        job must never run in two places. A job still held is stopped before the bus
        can requeue it, since the fence falls a grace period before the lease ends."""
        held = self.executor.held()
        if not held:
            return
        log.warning(
            "cut off from the bus for longer than the lease (%.1f s): stopping %d jobs, "
            "which the bus runs elsewhere",
            self._lease.lease_s,
            len(held),
        )
        for attempt in held:
            self._on_stop(Stop(attempt.id, attempt.attempt, "lease lost", kind="drop"))

    def _register_message(self) -> Register:
        """The register frame: after a first registration, it lists every attempt held."""
        held: list[Held] | None = None
        if self.name is not None:
            held = [*self.executor.held(), *self.outbox.closed_attempts()]
        config = self.config
        register = Register(
            type="scheduler",
            protocol=2,
            name=self.name or self._wanted_name,
            token=config.token,
            size=config.size,
            tasks=self.tasks.names,
            priorities=self.tasks.priorities() or None,
            held=held,
            secret=self._secret,
        )
        return fit_register(register)

    def _registered(self, name: str, secret: str | None) -> None:
        self.name = name
        self._secret = secret or self._secret
        # Only a registration proves the bus takes us: a bus that closes on a bad token
        # must not be retried at the shortest delay forever.
        self._backoff.reset()
        log.info(
            "registered with %s as %s (%d jobs held, %d reports to send)",
            self.config.bus_url,
            name,
            self.executor.running + self.executor.queued,
            len(self.outbox),
        )

    def _on_stop(self, stop: Stop) -> None:
        """Carry out the bus's ``Stop``; one for an attempt we do not hold is stale."""
        if stop.kind == "steal":
            self._on_stolen(stop)
            return
        if stop.kind == "cancel":
            found = self.executor.cancel(stop.id, stop.attempt)
        else:
            found = self.executor.drop(stop.id, stop.attempt)
            found = self.outbox.purge(stop.id, stop.attempt) > 0 or found
        if found:
            log.info("the bus stopped %s attempt %d (%s)", stop.id, stop.attempt, stop.reason)
        else:
            log.debug("ignoring a stop of %s attempt %d: not held here", stop.id, stop.attempt)

    def _on_stolen(self, stop: Stop) -> None:
        """Another scheduler takes the job: give it up if it still waits here and answer
        ``revoked``; one that started stays (its ``started`` report ends the steal)."""
        dropped = self.executor.revoke(stop.id, stop.attempt)
        if dropped is None:
            log.debug("keeping %s attempt %d: started, or not held here", stop.id, stop.attempt)
            return
        log.debug("gave %s attempt %d up to another scheduler", stop.id, stop.attempt)
        self._on_event(Report("revoked", stop.id, stop.attempt), dropped)

    def _on_event(self, report: Report, assignment: Assignment) -> None:
        """Queue ``report`` for the bus, then show it to the client's observer.

        The observer sees it in the next loop iteration, after the writer has sent it (if
        connected): a log line written first would hold the report up, all the more right
        after a fork, when each page the observer touches is copied first.
        """
        self.outbox.append(report)
        self._outbox_ready.set()
        if self._on_report is not None:
            if not self._unobserved:
                asyncio.get_running_loop().call_soon(self._observe)
            self._unobserved.append((report, assignment))

    def _observe(self) -> None:
        """Show the observer every report it has not seen yet, in order."""
        assert self._on_report is not None
        unobserved, self._unobserved = self._unobserved, []
        for report, assignment in unobserved:
            try:
                self._on_report(report, assignment)
            except Exception as exc:
                self._fail(exc)

    def _refused(self, error: Error) -> None:
        """The bus refused our registration: stop, and let :meth:`run` raise why."""
        log.error("the bus %s refused this scheduler: %s", self.config.bus_url, error.message)
        if self._error is None:
            self._error = RegistrationRefused(error.message)
        self._stopping.set()

    def _fail(self, error: BaseException) -> None:
        """Shut down because of ``error``, which :meth:`run` raises once jobs are stopped."""
        log.error("stopping the scheduler after an error", exc_info=error)
        if self._error is None and isinstance(error, Exception):
            self._error = error
        self._stopping.set()


class _Session:
    """One connection: registers, then reads, writes reports and beats until it ends."""

    def __init__(self, client: SchedulerClient, ws: ClientConnection) -> None:
        self.client = client
        self.ws = ws
        self.registered = False
        self.heartbeat_s = client.config.heartbeat_s
        self.register_sent_at = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []

    async def serve(self) -> None:
        """Register and handle the bus until the connection ends or stop is asked."""
        stopped = asyncio.ensure_future(self.client._stopping.wait())
        try:
            self.register_sent_at = time.monotonic()
            await self.ws.send(protocol.encode(self.client._register_message()))
            reader = self.spawn(self.read())
            await asyncio.wait((reader, stopped), return_when=asyncio.FIRST_COMPLETED)
        except ConnectionClosed:
            pass  # gone before we could register: run() reconnects
        finally:
            for task in (stopped, *self.tasks):
                task.cancel()
            await asyncio.gather(stopped, *self.tasks, return_exceptions=True)

    async def close(self) -> None:
        """Send the outbox (if registered, for at most ``FLUSH_TIMEOUT_S``), then close
        the socket with code 1000."""
        if self.registered:
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    while self.client.outbox:
                        await self.send_next()
        await self.ws.close()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coroutine`` for this session; an unexpected error in it stops the client."""
        task = asyncio.get_running_loop().create_task(coroutine)
        task.add_done_callback(self._check)
        self.tasks.append(task)
        return task

    def _check(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self.client._fail(error)

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
                # A frame may fork a job: let heartbeats and job exits run between frames.
                await asyncio.sleep(0)

    def handle(self, message: BusMessage) -> None:
        """Act on one decoded bus message."""
        client = self.client
        if isinstance(message, Assign):
            client.executor.submit(message.job)
        elif isinstance(message, Stop):
            client._on_stop(message)
        elif isinstance(message, Registered):
            client._registered(message.name, message.secret)
            client._lease.granted(message.lease_s, self.register_sent_at)
            if message.lease_s is not None:
                # Several heartbeats per lease, so one late beat does not cost our jobs.
                self.heartbeat_s = min(client.config.heartbeat_s, message.lease_s / 3)
                client._lease.start_margin = self.heartbeat_s
            if not self.registered:
                self.registered = True
                self.spawn(self.write())
                self.spawn(self.beat())
        elif isinstance(message, Error) and not self.registered and message.field in _FATAL_FIELDS:
            client._refused(message)
        elif isinstance(message, Restarting):
            client._lease.promised(time.monotonic() + message.keep_s)
            log.info("the bus restarts: keeping our jobs for up to %g s", message.keep_s)
        elif isinstance(message, Error):
            log.warning("the bus refused a frame: %s", message.message)
        else:
            log.debug("ignoring %s from the bus", type(message).__name__)

    async def write(self) -> None:
        """Send the outbox in order, as reports arrive, until the connection closes."""
        outbox, ready = self.client.outbox, self.client._outbox_ready
        with contextlib.suppress(ConnectionClosed):
            while True:
                if not outbox:
                    ready.clear()
                    await ready.wait()
                    continue
                # Reports made in one loop iteration (a job's end and the next one's
                # start, say) go out back to back: a send waits only while the socket's
                # buffer is full. A long outbox must not hold up heartbeats and job
                # exits, so it goes out SEND_BATCH reports per loop iteration.
                for _ in range(min(len(outbox), SEND_BATCH)):
                    await self.send_next()
                if outbox:
                    await asyncio.sleep(0)

    async def send_next(self) -> None:
        """Send the oldest report of the outbox; it stays first there if sending fails."""
        report = self.client.outbox.popleft()
        try:
            await self.ws.send(protocol.encode(report))
        except BaseException:
            # It may or may not have left: send it again (the bus ignores repeats).
            self.client.outbox.push_front(report)
            raise

    async def beat(self) -> None:
        """Send a heartbeat with the current load now and every ``heartbeat_s`` (at most a
        third of the lease the bus announced), each followed by a ping: its pong proves
        the bus read the heartbeat, which renews our lease from the time it was sent."""
        executor = self.client.executor
        with contextlib.suppress(ConnectionClosed):
            while True:
                heartbeat = Heartbeat(running=executor.running, queued=executor.queued)
                sent_at = time.monotonic()
                await self.ws.send(protocol.encode(heartbeat))
                pong = asyncio.ensure_future(await self.ws.ping())
                pong.add_done_callback(partial(self._ponged, sent_at))
                await asyncio.sleep(self.heartbeat_s)

    def _ponged(self, sent_at: float, pong: asyncio.Future[float]) -> None:
        if not pong.cancelled() and pong.exception() is None:
            self.client._lease.confirmed(sent_at)
