"""The scheduler client: holds a v2 connection to the bus and runs what it is assigned.

One :class:`~scheduler.worker.executor.Executor` lives as long as :meth:`SchedulerClient.run`, so
jobs outlive a lost connection. While the bus is away every report waits, in order, in the
:class:`~scheduler.worker.report_queue.ReportQueue` (its outbox). The client reconnects
through :class:`~scheduler.connect.Connector` (backoff and jitter), registers again under the
same name listing in ``held`` every attempt it still has (running, waiting, or finished
with its report in the outbox), and once the bus confirms it sends the outbox. The bus
answers :class:`~scheduler.protocol.Stop` for attempts it no longer gives this scheduler:
their processes are stopped and nothing more is reported about them.

Unless it runs warm, the client registers ``hold``: the bus may then send an assignment
before journaling it, and its release after (:mod:`scheduler.worker.held`). A lost
connection drops every attempt it sent that still awaits its release, with any report
about it, before the client registers again: such attempts are never listed in ``held``.

Only a clean shutdown (:meth:`SchedulerClient.stop`, or cancelling :meth:`run`, which the
commands do on SIGINT/SIGTERM) stops the jobs; then the outbox is flushed and the socket
closed with code 1000, which tells the bus to requeue at once whatever this scheduler held.

A guard stops every job at the fence, a stop margin before the lease may end at the bus
(:meth:`~scheduler.policy.fence.LeaseView.fence_due`): when no heartbeat has been answered
for that long, whether the connection is lost (mid-backoff), being opened, or believed up
(a cut that resets nothing: then the client also gives that connection up and reconnects
as usual). Each connection is served by a :class:`~scheduler.worker.session.Session`.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scheduler import protocol_types
from scheduler.connect import (
    DEFAULT_URL,
    Connector,
    Registration,
    RegistrationRefused,
    parse_bus_urls,
)
from scheduler.policy.fence import LeaseView
from scheduler.policy.heartbeat import HeartbeatSchedule
from scheduler.policy.limits import NO_LIMITS, Limits
from scheduler.policy.warm import WarmLimits
from scheduler.protocol import Assignment, Held, Register, Report, Stop
from scheduler.protocol_types import TRANSIENT_EVENTS
from scheduler.tasks import TaskRegistry
from scheduler.worker.cgroups import JobCgroups
from scheduler.worker.executor import Executor
from scheduler.worker.forkserver_launcher import ForkServerLauncher
from scheduler.worker.job_output import DEFAULT_KEEP_LOGS, JobLogs
from scheduler.worker.launch import Launcher, ProcessLauncher
from scheduler.worker.report_queue import DEFAULT_OUTBOX_LIMIT, ReportQueue, fit_register
from scheduler.worker.session import REPORT_LINGER_S, Session, SessionLinks
from scheduler.worker.warm import WarmPool

__all__ = [
    "RegistrationRefused",
    "ReportObserver",
    "SchedulerClient",
    "SchedulerConfig",
    "default_name",
]

log = logging.getLogger(__name__)

ReportObserver = Callable[[Report, Assignment], None]
"""Called with every report made (sent now or kept in the outbox) and its assignment."""


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
    reports kept while the bus is away (beyond it the oldest are dropped); ``log_dir``
    the root of the job log files (``log_dir/<name>/<job id>.<attempt>.log``; None: jobs
    write to this process's stdout and stderr and no output is reported), of which the
    newest ``keep_logs`` are kept. With ``warm`` each slot keeps a process that runs jobs
    one after another, replaced past those limits (:mod:`scheduler.worker.warm`); else
    each job gets a fresh process, forked by a fork server (``fork_server``;
    :mod:`scheduler.worker.forkserver_link`) or by this process.
    """

    bus_url: str = DEFAULT_URL
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
    log_dir: Path | None = None
    keep_logs: int = DEFAULT_KEEP_LOGS
    warm: WarmLimits | None = None
    fork_server: bool = True

    def launcher(self, tasks: TaskRegistry) -> Launcher:
        """What starts each job's process (a new one each call: it belongs to one
        executor): a warm slot pool with ``warm``, else a fork per job, by a fork server
        that has imported ``tasks``' modules when ``fork_server``."""
        if self.warm is not None:
            return WarmPool(self.warm)
        return ForkServerLauncher(tasks) if self.fork_server else ProcessLauncher()

    def __post_init__(self) -> None:
        """Refuse values the bus or the executor would refuse later, naming the field."""
        if not 1 <= self.size <= protocol_types.MAX_SIZE:
            raise ValueError(f"size must be 1 to {protocol_types.MAX_SIZE}, not {self.size}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, not {self.timeout}")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, not {self.heartbeat_s}")
        if self.grace < 0:
            raise ValueError(f"grace must be >= 0, not {self.grace}")
        if self.outbox_limit < 1:
            raise ValueError(f"outbox_limit must be >= 1, not {self.outbox_limit}")
        if self.keep_logs < 1:
            raise ValueError(f"keep_logs must be >= 1, not {self.keep_logs}")


class SchedulerClient:
    """Connects to the bus (retrying with backoff), registers, and runs assigned jobs."""

    def __init__(
        self,
        config: SchedulerConfig,
        tasks: TaskRegistry | None = None,
        on_report: ReportObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare a client; nothing happens until :meth:`run`.

        ``tasks`` defaults to the built-in ones; ``on_report`` sees every report made;
        ``clock`` (monotonic seconds) times jobs, heartbeats and the lease.
        """
        self.config = config
        self.tasks = tasks if tasks is not None else TaskRegistry()
        self.name: str | None = None
        """The name the bus confirmed in ``registered`` (None until then)."""
        self.outbox = ReportQueue(config.outbox_limit)
        # The fence falls one stop grace before the lease may end: the time stopping takes.
        # The bus renewed the lease when it read the answered heartbeat (the anchor), so
        # nothing more is needed for the guarantee, and each extra second here is a second
        # less that a slow bus may take to answer before every job is stopped.
        self.lease = LeaseView(stop_margin=config.grace, heartbeat_s=config.heartbeat_s)
        """Our lease at the bus as our own clock sees it: fences starts and running jobs."""
        self._granted = asyncio.Event()
        """Set when a registration changes the lease: the guard looks again."""
        self._session: Session | None = None
        """The session of the registered connection being served, if any."""
        self._clock = clock
        self._wanted_name = config.name or default_name()
        self._on_report = on_report
        self._unobserved: list[tuple[Report, Assignment]] = []
        """Reports made but not yet shown to ``on_report``."""
        self._stopping = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._connector = Connector(
            config.bus_url, config.cafile, blocking_resolve=True, clock=clock
        )
        self._executor: Executor | None = None
        self._error: Exception | None = None
        self._secret: str | None = None
        """What proves to the bus that we hold our name; kept in memory only."""
        self._connected = False
        """Whether a registered connection is being served (transient reports wait for
        nobody: they are dropped while the bus is away)."""

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
        URL, :class:`~scheduler.connect.RegistrationRefused` if the bus refuses this
        scheduler, and the error of a failing ``on_report`` (after that shutdown).
        """
        parse_bus_urls(self.config.bus_url)
        config = self.config
        launcher = config.launcher(self.tasks)
        self._executor = Executor(
            config.size,
            config.timeout,
            self.tasks,
            self._on_event,
            grace=config.grace,
            clock=self._clock,
            on_error=self._fail,
            may_start=self._may_start,
            limits=config.limits,
            cgroups=config.cgroups,
            logs=None
            if config.log_dir is None
            else JobLogs(config.log_dir, self._wanted_name, config.keep_logs),
            launcher=launcher,
        )
        guard = asyncio.get_running_loop().create_task(self._guard())
        guard.add_done_callback(self._guard_ended)
        try:
            await launcher.ready()
            await self._connector.run(
                self._register_message, self._serve, stop=self._stopping, lost=self._kept
            )
        except RegistrationRefused as exc:
            log.error("the bus %s refused this scheduler: %s", config.bus_url, exc)
            self._error = self._error or exc
        finally:
            guard.cancel()
            try:
                await self._executor.shutdown()
            finally:
                if self._unobserved:
                    self._observe()  # the last reports: this returns only once all are seen
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Ask :meth:`run` to stop every job, close the connection and return. Returns at once."""
        self._stopping.set()

    async def _serve(self, registration: Registration) -> None:
        """Serve one registered connection until it ends or we stop; when we stop (or
        are cancelled), stop every job and send the outbox before it closes."""
        links = SessionLinks(
            self.executor,
            self.outbox,
            self._outbox_ready,
            self.lease,
            self._clock,
            self._on_stop,
            self._fail,
            REPORT_LINGER_S if self.config.warm is not None else 0.0,
        )
        session = Session(registration, links, self._registered(registration))
        self._connected = True
        self._session = session
        try:
            await session.serve(self._stopping)
        finally:
            self._connected = False
            self._session = None
            task = asyncio.current_task()
            if self._stopping.is_set() or (task is not None and task.cancelling()):
                await self.executor.shutdown()
                await session.flush()
            else:
                self._forget_unreleased()

    def _forget_unreleased(self) -> None:
        """The connection is lost: drop every held attempt it sent that awaits its
        release, and every report about one (the bus that sent it may never have
        journaled it), so that nothing about it is reported nor listed in ``held``."""
        for job_id, attempt in self.executor.forget_unreleased():
            self.outbox.purge(job_id, attempt)

    def _kept(self) -> str:
        """What a lost connection leaves here, for the log line."""
        held = self.executor.running + self.executor.queued
        return f" ({held} jobs kept, {len(self.outbox)} reports waiting)"

    def _may_start(self) -> bool:
        """Whether a queued job may start now: our lease surely holds (see :class:`LeaseView`)."""
        return self.lease.may_start(self._clock())

    async def _guard(self) -> None:
        """Stop every job held at the fence (:meth:`LeaseView.fence_due`), whatever the
        connection is doing: believed up, being opened, or lost and waiting to reconnect."""
        lease, clock = self.lease, self._clock
        while True:
            if lease.fence_due(clock(), self.executor.holding):
                self._fence()
            self._granted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._granted.wait(), lease.recheck_in(clock()))

    def _guard_ended(self, guard: asyncio.Task[None]) -> None:
        if not guard.cancelled() and (error := guard.exception()) is not None:
            self._fail(error)

    def _fence(self) -> None:
        """Stop every job held (drop the waiting ones), and give up a connection believed
        up: the bus may give them to others once the lease ends, and a job must never run
        in two places. The fence falls a stop margin before the lease may end, so the jobs
        are gone before the bus can requeue them."""
        held = self.executor.held()
        lease, now = self.lease, self._clock()
        anchor, end = lease.anchor, lease.expires_at()
        assert anchor is not None and end is not None
        session = self._session
        log.warning(
            "no answer from the bus for %.1f s, and %s may end in %.1f s: stopping %d jobs, "
            "which the bus may then give to another scheduler%s",
            now - anchor,
            f"the lease ({lease.lease_s:g} s)"
            if lease.keep_until is None
            else "its restart promise",
            end - now,
            len(held),
            "; giving this connection up" if session is not None else "",
        )
        for attempt in held:
            self.executor.drop(attempt.id, attempt.attempt)
            self.outbox.purge(attempt.id, attempt.attempt)
        if session is not None:
            session.give_up("no answer within the lease")

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
            schedules=self.tasks.schedules() or None,
            batch=True,
            hold=config.warm is None,
        )
        return fit_register(register)

    def _registered(self, registration: Registration) -> HeartbeatSchedule:
        """Take the bus's confirmation: our name, secret and lease; return this
        connection's heartbeat schedule (several beats per lease)."""
        registered = registration.registered
        self.name = registered.name
        self._secret = registered.secret or self._secret
        self.lease.granted(registered.lease_s, registration.sent_at)
        self._granted.set()
        heartbeats = HeartbeatSchedule(self.config.heartbeat_s, registered.lease_s)
        log.info(
            "registered with %s as %s (%d jobs held, %d reports to send)",
            self.config.bus_url,
            registered.name,
            self.executor.running + self.executor.queued,
            len(self.outbox),
        )
        return heartbeats

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
        """Queue ``report`` for the bus, then show it to the client's observer; a
        progress or output report is dropped instead while the bus is away.

        The observer sees it in the next loop iteration, after the writer has sent it (if
        connected): a log line written first would hold the report up, all the more right
        after a fork, when each page the observer touches is copied first.
        """
        if report.event in TRANSIENT_EVENTS and not self._connected:
            return  # progress or output: stale by the time the bus is back
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

    def _fail(self, error: BaseException) -> None:
        """Shut down because of ``error``, which :meth:`run` raises once jobs are stopped."""
        log.error("stopping the scheduler after an error", exc_info=error)
        if self._error is None and isinstance(error, Exception):
            self._error = error
        self._stopping.set()
