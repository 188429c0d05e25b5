"""The WebSocket bus: connections, roles, the journal and fan-out around the pure core.

Each connection's handler decodes a frame, feeds the pure core
(:class:`~scheduler.policy.dispatch.dispatcher.Dispatcher`)
and carries out the decisions it returns. Every job the core changes is queued in the
:class:`~scheduler.bus.journal.Journal`, and every frame the bus sends waits in a
:class:`~scheduler.bus.gate.FrameGate` until a group commit has made durable each change
made before it: an
acknowledged job is on disk, and an attempt is journaled before it is assigned. Handlers
never await the commit of one frame before reading the next, so a pipelining producer
shares one fsync between many submits.

Handlers never await another client: every frame goes through that client's
:class:`~scheduler.bus.outbox.FrameOutbox`, which writes at once when the socket keeps up
and otherwise queues behind a writer task. A producer or monitor whose queue passes its
bound in bytes is disconnected, never waited on; so is the largest laggard when all
queues together pass theirs. A connection that does not register in time is closed, and
past ``max_connections`` new connections are refused. A handler only ever waits for its
own client: it stops reading from a client that lags behind its own replies until they
are out, so a fast producer is slowed by TCP instead of dropped.

Leases, retry delays and v1 expiries are the core's timers: the bus asks it for the next
deadline and sets one loop timer for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from scheduler.auth import TokenTable, new_secret, secret_hash, secret_matches
from scheduler.bus.access import Grant, authenticate, owner_filter, rights_refusal
from scheduler.bus.access import is_loopback as _is_loopback
from scheduler.bus.gate import FrameGate, Recipient, Refusal, journal_problem
from scheduler.bus.journal import MEMORY, Journal, JournalError
from scheduler.bus.outbox import (
    DEFAULT_MAX_BACKLOG_BYTES,
    DEFAULT_MAX_TOTAL_BACKLOG_BYTES,
    BacklogBudget,
    FrameOutbox,
)
from scheduler.policy.dispatch.config import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_EVICTIONS,
    DEFAULT_RESTART_GRACE_S,
    DEFAULT_START_DEADLINE_S,
    DEFAULT_STEAL,
    DispatchConfig,
)
from scheduler.policy.dispatch.decisions import (
    Decision,
    EmitEvent,
    Ignored,
    LeaseExpired,
    Requeued,
    SendAssign,
    SendReply,
    SendStop,
    StartOverdue,
)
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.policy.job import Job
from scheduler.protocol import (
    FINAL_EVENTS,
    MAX_FRAME_BYTES,
    MAX_TIMEOUT_S,
    Accepted,
    Assign,
    BusMessage,
    Cancel,
    Error,
    GetStats,
    Heartbeat,
    JobEvent,
    JobPayload,
    JobRequest,
    ProtocolError,
    Register,
    Registered,
    Report,
    Restarting,
    Role,
    SubmitMany,
    SubmittedMany,
    Vacuum,
    Vacuumed,
    Watch,
    Watching,
    decode_client,
    decode_payload,
    encode,
    encode_v1_payload,
    ref_of,
    says_v2,
)

logger = logging.getLogger(__name__)

DEFAULT_REGISTER_TIMEOUT_S: Final = 5.0
"""Seconds a connection has to register before it is closed."""

DEFAULT_MAX_CONNECTIONS: Final = 1000
"""Open connections past which new ones are refused (HTTP 503)."""

DEFAULT_RETENTION_S: Final = 7 * 24 * 3600.0
"""How long a final job stays in the journal unless a retention says otherwise."""

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""``Host`` header names always accepted."""

CLOSE_LEASE_EXPIRED: Final = 4000
"""Close code for a scheduler connection that stayed silent past its lease."""

CLOSE_REPLACED: Final = 4001
"""Close code for a scheduler connection replaced by a newer one with its name."""

_FLUSH_TIMEOUT_S: Final = 5.0
"""How long a refused client's error reply may take to leave before the connection closes."""

_MAX_READ_AHEAD: Final = 1024
"""Frames a client may have waiting for a commit before the bus stops reading from it."""

_CLEAN_CLOSE: Final = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY})

# Which client type may send what; Register is allowed to anyone not yet registered.
_ROLES_FOR: Final[dict[type, tuple[Role, ...]]] = {
    JobRequest: ("producer",),
    SubmitMany: ("producer",),
    Cancel: ("producer", "monitor"),
    Watch: ("producer", "monitor"),
    Vacuum: ("producer", "monitor"),
    GetStats: ("producer", "monitor"),
    Report: ("scheduler",),
    Heartbeat: ("scheduler",),
}
_V2_ONLY: Final = frozenset({SubmitMany, Cancel, Watch, Vacuum, GetStats})


@dataclass(frozen=True)
class BusConfig:
    """Where the bus listens, whom it lets in, where it journals and its rules' numbers.

    ``tokens``: the tokens clients must present (None: no tokens, everyone may do what
    its client type may, as before tokens existed; the ``python -m scheduler.bus``
    command always has tokens). ``v1``: accept tokenless v1 clients (from a loopback
    peer with no ``Origin`` header, when there are tokens). ``certfile``/``keyfile``:
    serve TLS (``wss://``). Listening beyond loopback without TLS is refused unless
    ``insecure``.

    ``db`` is the journal file (``:memory:``: none, jobs die with the bus). ``lease``
    seconds a silent or disconnected scheduler keeps its jobs. ``retention`` maps a
    final state to the seconds its jobs are kept (others: ``retention_default``);
    final jobs past it are deleted every ``vacuum_every`` seconds. ``steal`` names the
    work-stealing strategy (``urgent``, ``tail``, ``off``); ``age_every`` seconds of
    waiting make a job one level more urgent (None: no aging).

    Memory and connection bounds: a producer or monitor with more than
    ``max_backlog_bytes`` of frames waiting to be written is disconnected, and when all
    clients together pass ``max_total_backlog_bytes`` the one with the largest backlog
    goes first; a connection that has not registered within ``register_timeout`` seconds
    is closed; past ``max_connections`` open connections, new ones are refused (503).
    """

    host: str = "127.0.0.1"
    port: int = 8101
    tokens: TokenTable | None = None
    v1: bool = True
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False
    allow_origins: tuple[str, ...] = ()
    db: str = ":memory:"
    lease: float = DEFAULT_LEASE_S
    max_evictions: int = DEFAULT_MAX_EVICTIONS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    retention: Mapping[str, float] = field(default_factory=dict)
    retention_default: float = DEFAULT_RETENTION_S
    vacuum_every: float = 3600.0
    steal: str = DEFAULT_STEAL
    age_every: float | None = None
    restart_grace: float = DEFAULT_RESTART_GRACE_S
    """Seconds a bus shutting down (:meth:`BusServer.close`) promises its v2 schedulers
    their jobs, which the restarted bus honours; 0: no promise (their lease only)."""
    start_deadline: float | None = DEFAULT_START_DEADLINE_S
    """Seconds a scheduler with room may hold assigned jobs without starting any before
    they are requeued (None: no deadline)."""
    max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    max_total_backlog_bytes: int = DEFAULT_MAX_TOTAL_BACKLOG_BYTES
    register_timeout: float = DEFAULT_REGISTER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field."""
        self.rules()
        if not 0 <= self.restart_grace <= MAX_TIMEOUT_S:
            raise ValueError(
                f"restart_grace must be 0 to {MAX_TIMEOUT_S:g} s, not {self.restart_grace}"
            )
        for name in ("max_backlog_bytes", "max_total_backlog_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not self.register_timeout > 0:
            raise ValueError(f"register_timeout must be > 0 s, not {self.register_timeout}")
        if not self.vacuum_every > 0:
            raise ValueError(f"vacuum_every must be > 0 s, not {self.vacuum_every}")
        unknown = set(self.retention) - FINAL_EVENTS
        if unknown:
            raise ValueError(f"retention: not final states: {', '.join(sorted(unknown))}")
        if min([self.retention_default, *self.retention.values()]) < 0:
            raise ValueError("retention: seconds must be >= 0")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs a certfile")
        if not _is_loopback(self.host) and self.certfile is None and not self.insecure:
            raise ValueError(
                f"host {self.host} is not loopback: serve TLS (certfile, keyfile) or accept"
                " that tokens and jobs cross the network in clear (insecure)"
            )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context for ``certfile``/``keyfile``, or None without TLS.
        Raises OSError or ssl.SSLError if they cannot be loaded."""
        if self.certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def rules(self) -> DispatchConfig:
        """The dispatch core's rules from this configuration."""
        return DispatchConfig(
            self.lease,
            self.max_evictions,
            self.max_deliveries,
            steal=self.steal,
            age_every=self.age_every,
            start_deadline=self.start_deadline,
        )


@dataclass(eq=False)
class _Client:
    """One connection and what it registered as."""

    ws: ServerConnection
    outbox: FrameOutbox
    gate: FrameGate
    peer: str
    name: str = ""
    role: Role | None = None
    protocol: int = 1
    grant: Grant = field(default_factory=Grant)
    """What its token lets it do, and the owner recorded on the jobs it submits."""
    close: tuple[int, str] | None = None
    """Set when the connection must be closed with this code and reason."""
    pending: int = 0
    """Frames for this client waiting in the gate for a commit."""
    watching: set[str] = field(default_factory=set)
    """Ids of the jobs whose events this client receives (monitors receive all)."""

    def send(self, message: BusMessage, refusal: Refusal | None = None) -> None:
        """Queue ``message`` (a reply, a stop) for this client, behind every change not
        yet durable (``refusal``: see :meth:`FrameGate.send`)."""
        self.gate.send(self, encode(message).encode(), counted=False, refusal=refusal)

    def send_now(self, message: BusMessage) -> None:
        """Send ``message`` without waiting for the journal: a refusal, which changes
        nothing."""
        self.outbox.push(encode(message).encode(), counted=False)


class BusServer:
    """The bus: accepts producers, schedulers and monitors, and routes jobs and events."""

    def __init__(
        self,
        config: BusConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """Configure a bus; nothing is opened or listens until :meth:`start`.

        ``clock`` gives the monotonic time the core sees and ``wall_clock`` the epoch time
        stamped on jobs; ``rng`` draws retry jitter.
        """
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self._budget = BacklogBudget(config.max_total_backlog_bytes)
        self._connections = 0
        self._refusing_connections = False
        self._core = Dispatcher(config.rules(), rng, new_id=_new_id)
        self._started_at = clock()
        self._journal: Journal | None = None
        self._gate: FrameGate | None = None
        self._clients: dict[str, _Client] = {}
        self._secrets: dict[str, str] = {}
        """Scheduler name -> hash of the secret that proves its identity."""
        self._monitors: set[_Client] = set()
        self._watchers: dict[str, set[_Client]] = {}
        self._generated: dict[str, int] = {}
        self._server: Server | None = None
        self._port: int | None = None
        self._allowed_hosts = LOOPBACK_HOSTS | {_bracketed(config.host.lower())}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._handlers: dict[type, Callable[[_Client, Any], None]] = {
            JobRequest: self._submit,
            SubmitMany: self._submit_many,
            Cancel: self._cancel,
            Watch: self._watch,
            Vacuum: self._vacuum,
            GetStats: self._stats,
            Report: self._report,
            Heartbeat: self._heartbeat,
        }

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal, take back its jobs, then bind and accept connections.

        Port 0 picks an ephemeral port. Raises :class:`JournalError` if the journal cannot
        be opened or read, OSError if the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the bus is already started")
        self._warn_if_exposed()
        try:
            tls = self.config.ssl_context()
            restored = self._open_journal()
            self._server = await self._listen(tls)
        except BaseException:
            if self._timer is not None:
                self._timer.cancel()
            self._close_journal()
            raise
        logger.info(*restored)
        self._port = self._server.sockets[0].getsockname()[1]
        self._started_at = self._clock()
        self._spawn(self._vacuum_periodically())
        logger.info(
            "bus listening on %s (steal %s, aging %s)",
            self.url,
            self.config.steal,
            "off" if self.config.age_every is None else f"every {self.config.age_every:g} s",
        )

    def _warn_if_exposed(self) -> None:
        """Log what a configuration open to others gives away."""
        config = self.config
        if not _is_loopback(config.host):
            logger.warning(
                "listening on %r, which is not loopback: anyone who can reach it may connect%s%s",
                config.host,
                ""
                if config.certfile
                else "; without TLS, tokens and jobs cross the network in clear",
                "" if config.tokens else ", and no tokens are required",
            )

    async def _listen(self, tls: ssl.SSLContext | None) -> Server:
        """Bind and accept (over TLS with ``tls``); an address that cannot be bound raises
        OSError naming it."""
        host, port = self.config.host, self.config.port
        try:
            return await serve(
                self._handle,
                host,
                port,
                compression=None,
                max_size=MAX_FRAME_BYTES,
                process_request=self._check_request,
                ssl=tls,
            )
        except OSError as exc:
            # asyncio's own strerror repeats the address as a tuple; a name that does not
            # resolve (socket.gaierror) has a negative errno and its own strerror.
            why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
            why = why or str(exc)
            raise OSError(exc.errno, f"cannot listen on {_bracketed(host)}:{port}: {why}") from exc

    def _open_journal(self) -> tuple[object, ...]:
        """Open the journal and take back its jobs; return the log line that says so."""
        journal = self._journal = Journal.open(self.config.db)
        self._gate = FrameGate(journal, self._refused)
        jobs = journal.load()
        promised = journal.restart_promise()
        wall = self._wall()
        self._core.restore(jobs, journal.next_seq(), self._clock(), wall, promised_until=promised)
        self._restore_secrets(journal)
        held = [job for job in jobs if job.holder is not None]
        self._arm()
        return (
            "journal %s: %d jobs to finish (%d queued, %d held by %d schedulers that have"
            " %.1f s to come back)",
            self.config.db,
            len(jobs),
            len(jobs) - len(held),
            len(held),
            len({job.holder for job in held}),
            max(self.config.lease, (promised or 0.0) - wall),
        )

    @property
    def port(self) -> int:
        """The port the bus is bound to (known once started)."""
        if self._port is None:
            raise RuntimeError("the bus is not started")
        return self._port

    @property
    def url(self) -> str:
        """The URL a local client connects to, such as ``ws://127.0.0.1:8101``."""
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        scheme = "ws" if self.config.certfile is None else "wss"
        return f"{scheme}://{_bracketed(host)}:{self.port}"

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called or this coroutine is cancelled (which
        closes the bus as :meth:`close` does).

        A journal that fails to commit does not stop the bus: submits are refused and
        other frames held until it commits again (see :mod:`scheduler.bus.gate`).
        """
        if self._server is None:
            await self.start()
        assert self._server is not None
        # Not the server's serve_forever: cancelling that closes every connection at
        # once, before close() can tell the schedulers that this is a restart.
        try:
            await self._server.wait_closed()
        except asyncio.CancelledError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every connection and the listener, commit the journal and close it, then
        log a summary. Idempotent.

        Jobs held by schedulers stay held for a restart: with ``restart_grace``, the
        journal records the promise and every v2 scheduler is told (``restarting``) to
        keep its jobs that long; the restarted bus keeps them held until then.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._background:
            task.cancel()
        assert self._journal is not None
        if self._journal.failure is None:
            await self._promise_restart()
        server.close()
        await server.wait_closed()
        assert self._gate is not None and self._journal is not None
        await self._gate.drain()
        self._close_journal()
        core = self._core
        logger.info(
            "bus closed: %d jobs accepted, %d finished, %d still tracked, %d journal commits",
            core.accepted,
            core.finished,
            len(core),
            self._journal.commits,
        )

    async def _promise_restart(self) -> None:
        """Journal the restart promise, then tell every v2 scheduler how long to keep its
        jobs; with no grace (or a journal that cannot record it) promise nothing."""
        assert self._journal is not None and self._gate is not None
        grace = self.config.restart_grace
        if self._journal.path == MEMORY:
            return  # the jobs die with this bus: nobody would honour a promise
        try:
            self._journal.promise_restart(self._wall() + grace if grace > 0 else None)
        except JournalError as exc:
            logger.error("cannot journal the restart promise; schedulers keep their lease: %s", exc)
            return
        if grace <= 0:
            return
        told = [
            client
            for client in self._clients.values()
            if client.role == "scheduler" and client.protocol == 2
        ]
        for client in told:
            client.send(Restarting(keep_s=grace))
        await self._gate.drain()
        await asyncio.gather(*(client.outbox.flush(_FLUSH_TIMEOUT_S) for client in told))
        logger.info(
            "shutting down for a restart: %d schedulers keep their jobs for %g s", len(told), grace
        )

    def _close_journal(self) -> None:
        if self._journal is None:
            return
        try:
            self._journal.close()
        except JournalError as exc:
            logger.error("closing the journal failed; unsaved changes are lost: %s", exc)

    async def __aenter__(self) -> BusServer:
        """Start the bus."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bus."""
        await self.close()

    @property
    def journal(self) -> Journal:
        """The open journal (once started)."""
        if self._journal is None:
            raise RuntimeError("the bus is not started")
        return self._journal

    def scheduler_names(self) -> list[str]:
        """Return the names of the connected schedulers, in registration order."""
        return [c.name for c in self._clients.values() if c.role == "scheduler"]

    def monitor_count(self) -> int:
        """Return how many v2 monitors receive every event."""
        return len(self._monitors)

    def connection_count(self) -> int:
        """Return how many connections are open (registered or not)."""
        return self._connections

    def backlog_bytes(self, name: str | None = None) -> int:
        """Return the bytes of frames waiting to be written to client ``name``, or to
        every client together (None)."""
        if name is None:
            return self._budget.total
        client = self._clients.get(name)
        return 0 if client is None else client.outbox.queued_bytes

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- HTTP ------------------------------------------------------------------------

    def _check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse connections past ``max_connections``, foreign ``Host`` names (DNS
        rebinding) and browser ``Origin`` s."""
        full = self._too_many_connections(ws)
        if full is not None:
            return full
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or not self._host_allowed(_host_name(hosts[0])):
            logger.warning("%s: refused: Host %s not allowed", _peer(ws), hosts)
            return ws.respond(HTTPStatus.FORBIDDEN, "Host not allowed\n")
        origins = request.headers.get_all("Origin")
        if any(origin not in self.config.allow_origins for origin in origins):
            logger.warning("%s: refused: Origin %s not allowed", _peer(ws), origins)
            return ws.respond(HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        return None

    def _too_many_connections(self, ws: ServerConnection) -> Response | None:
        """A 503 response if ``max_connections`` are open (logged once until one closes)."""
        limit = self.config.max_connections
        if self._connections < limit:
            self._refusing_connections = False
            return None
        if not self._refusing_connections:
            self._refusing_connections = True
            logger.warning(
                "%s: refused: %d connections open (max connections %d); refusing more until"
                " one closes",
                _peer(ws),
                self._connections,
                limit,
            )
        return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")

    def _host_allowed(self, host: str) -> bool:
        # A rebinding page reaches us under its own DNS name; an IP literal cannot be one.
        return host in self._allowed_hosts or _is_ip_literal(host)

    # --- connections -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """Serve one connection until it closes; its failure never reaches other clients."""
        peer = _peer(ws)
        assert self._gate is not None
        outbox = FrameOutbox(ws, self._budget, self.config.max_backlog_bytes, peer)
        client = _Client(ws, outbox, self._gate, peer)
        logger.info("%s: connected", peer)
        self._connections += 1
        deadline = asyncio.get_running_loop().call_later(
            self.config.register_timeout, self._register_expired, client
        )
        try:
            await self._read(client)
        except ConnectionClosedError as exc:
            _log_closed(client.outbox.label, exc)
        except Exception:
            logger.exception("%s: handler failed; closing the connection", client.outbox.label)
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            deadline.cancel()
            self._connections -= 1
            self._leave(client)
            await client.outbox.aclose()

    def _register_expired(self, client: _Client) -> None:
        """Close ``client`` if it has not registered yet."""
        if client.role is None and client.close is None:
            timeout = self.config.register_timeout
            logger.info("%s: closed: did not register within %g s", client.peer, timeout)
            self._spawn(
                client.ws.close(CloseCode.POLICY_VIOLATION, f"register within {timeout:g} s")
            )

    async def _read(self, client: _Client) -> None:
        async for frame in client.ws:
            self._on_frame(client, frame)
            if client.close is not None:
                await client.gate.released(client)
                await client.outbox.flush(_FLUSH_TIMEOUT_S)
                await client.ws.close(*client.close)
                return
            if client.pending + client.outbox.waiting >= _MAX_READ_AHEAD:
                # Read nothing more from a client that lags behind its own replies:
                # TCP then slows its sending instead of its backlog growing to the bound.
                await client.gate.released(client)
                await client.outbox.flush()

    def _current(self, client: _Client) -> bool:
        """Whether ``client`` still speaks for its name (not replaced, not expired)."""
        return self._clients.get(client.name) is client

    def _leave(self, client: _Client) -> None:
        """Forget ``client``; a scheduler's jobs go back to dispatch or wait for its lease."""
        for job_id in client.watching:
            self._unwatch(client, job_id)
        if client.role is None:
            logger.info("%s: disconnected", client.peer)
            return
        if not self._current(client):
            logger.info("%s: old connection closed (%s)", client.name, client.peer)
            return
        del self._clients[client.name]
        self._monitors.discard(client)
        if client.role != "scheduler" or self._closing:
            logger.info("%s: left (%s)", client.name, client.peer)
            return
        clean = client.ws.close_code in _CLEAN_CLOSE
        decisions = self._core.detach(
            client.name, clean=clean, now=self._clock(), wall=self._wall()
        )
        info = self._core.scheduler(client.name)
        keeps = "" if info is None else f"; keeps {info.outstanding} jobs until its lease expires"
        requeued = sum(isinstance(d, Requeued) for d in decisions)
        how = "cleanly" if clean else f"abnormally ({client.ws.close_code})"
        logger.info(
            "%s: left %s (%s, %d jobs requeued%s)", client.name, how, client.peer, requeued, keeps
        )
        self._apply(decisions)

    def _on_frame(self, client: _Client, frame: str | bytes) -> None:
        """Decode one frame, check the sender may send it, and act on it."""
        if isinstance(frame, bytes):
            self._refuse(client, ProtocolError("binary frames are not supported"), None)
            return
        try:
            message = decode_client(frame)
        except ProtocolError as exc:
            self._refuse(client, exc, frame)
            return
        if isinstance(message, Register):
            self._on_register(client, message, frame)
            return
        refusal = self._may_not_send(client, message)
        if refusal is not None:
            self._refuse(client, ProtocolError(refusal, "cmd"), frame)
        elif not self._current(client):
            logger.info("%s: ignoring a frame from a replaced or expired connection", client.name)
        else:
            self._handlers[type(message)](client, message)

    def _may_not_send(self, client: _Client, message: object) -> str | None:
        """Why ``client`` may not send ``message``, or None if it may."""
        if client.role is None:
            return "register first"
        roles = _ROLES_FOR[type(message)]
        if client.role not in roles:
            return f"a {client.role} may not send this cmd; only a {' or '.join(roles)} may"
        if client.protocol != 2 and type(message) in _V2_ONLY:
            return "this cmd needs protocol 2"
        return rights_refusal(client.grant.rights, message)

    def _by(self, client: _Client) -> str | None:
        """Whose jobs ``client`` may cancel and watch (see :func:`owner_filter`)."""
        return owner_filter(client.grant)

    def _on_register(self, client: _Client, message: Register, frame: str) -> None:
        """Check the token, then give ``client`` its role and name; a scheduler
        (re)attaches and gets work."""
        if client.role is not None:
            self._refuse(client, ProtocolError("already registered", "cmd"), frame)
            return
        refusal = self._authenticate(client, message)
        if refusal is None and message.type == "scheduler":
            refusal = self._register_scheduler(client, message)
            if refusal is None:
                return
        if refusal is not None:
            self._refuse(client, refusal, frame)
            client.close = (CloseCode.POLICY_VIOLATION, f"registration refused: {refusal.field}")
            return
        client.role, client.protocol = message.type, message.protocol
        client.name = client.outbox.label = self._unique_name(message.name, message.type)
        self._clients[client.name] = client
        if message.protocol == 2:
            client.send(Registered(name=client.name))
            if message.type == "monitor":
                self._monitors.add(client)
        logger.info(
            "%s: registered as %s (protocol %d)", client.peer, client.name, message.protocol
        )

    def _authenticate(self, client: _Client, message: Register) -> ProtocolError | None:
        """Give ``client`` what its token grants (:func:`authenticate`), or say why it
        is refused."""
        address = client.ws.remote_address
        request = client.ws.request
        grant = authenticate(
            message,
            self.config.tokens,
            v1=self.config.v1,
            peer_host=str(address[0]) if isinstance(address, tuple) else "",
            has_origin=request is not None and "Origin" in request.headers,
        )
        if isinstance(grant, ProtocolError):
            return grant
        client.grant = grant
        return None

    def _register_scheduler(self, client: _Client, message: Register) -> ProtocolError | None:
        """Attach a scheduler under its name, or say why the name is refused.

        A v2 name held by a live scheduler (connected, or keeping jobs until its lease
        expires) is taken over only by a registration that proves it is that scheduler,
        with the secret its first registration was given; its old connection is closed.
        A free name gets a new secret, journaled before the reply leaves.
        """
        v2 = message.protocol == 2
        name = message.name if v2 else None
        old = None if name is None else self._clients.get(name)
        if name is None or (old is not None and old.role != "scheduler"):
            name = self._unique_name(name, "scheduler")
        elif self._scheduler_live(name):
            if not secret_matches(message.secret, self._secrets.get(name, "")):
                return ProtocolError(f"name {name} is in use by another scheduler", "name")
            if old is not None:
                logger.warning("%s: a new connection (%s) takes over its name", name, client.peer)
                self._spawn(old.ws.close(CLOSE_REPLACED, "replaced by a newer connection"))
        client.role, client.protocol = message.type, message.protocol
        client.name = client.outbox.label = name
        client.outbox.bound = None
        self._clients[name] = client
        held = (message.held or []) if v2 else []
        known = self._core.scheduler(name) is not None
        if v2:
            secret = message.secret if known and message.secret else self._issue_secret(name)
            client.send(Registered(name=name, lease_s=self.config.lease, secret=secret))
        decisions = self._core.attach(
            name,
            size=message.size if v2 else None,
            tasks=message.tasks if v2 else None,
            priorities=message.priorities if v2 else None,
            reports=v2,
            held=held,
            now=self._clock(),
            wall=self._wall(),
        )
        logger.info(
            "%s: registered as %s (protocol %d, %s; %d attempts held, %d told to stop,"
            " %d jobs requeued)",
            client.peer,
            name,
            message.protocol,
            "reattached" if known else "new",
            len(held),
            sum(isinstance(d, SendStop) for d in decisions),
            sum(isinstance(d, Requeued) for d in decisions),
        )
        self._apply(decisions)
        return None

    def _scheduler_live(self, name: str) -> bool:
        """Whether a scheduler holds ``name``: connected, or kept by the core until its
        lease expires."""
        client = self._clients.get(name)
        connected = client is not None and client.role == "scheduler"
        return connected or self._core.scheduler(name) is not None

    def _issue_secret(self, name: str) -> str:
        """A new secret for scheduler ``name``; its hash is kept and journaled, and the
        frames sent from now on wait for that commit."""
        assert self._journal is not None and self._gate is not None
        secret = new_secret()
        self._secrets[name] = hashed = secret_hash(secret)
        self._journal.save_secret(name, hashed)
        self._gate.changed()
        return secret

    def _restore_secrets(self, journal: Journal) -> None:
        """Keep the secrets of the schedulers the restored core still waits for; forget
        the journal's others (their names are free)."""
        for name, hashed in journal.scheduler_secrets().items():
            if self._core.scheduler(name) is not None:
                self._secrets[name] = hashed
            else:
                journal.forget_secrets([name])

    # --- requests --------------------------------------------------------------------

    def _submit(self, client: _Client, request: JobRequest) -> None:
        """Accept one job; a v2 producer gets the reply once it is journaled."""
        if self._journal_refuses(client, request.ref):
            return
        stored = self._stored([request.payload.job_id])
        decisions = self._core.submit(
            request.payload,
            self._clock(),
            self._wall(),
            stored=stored,
            ref=request.ref,
            owner=client.grant.owner,
        )
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, Accepted):
            self._subscribe(client, reply.message.id)
        self._apply(decisions, client)

    def _submit_many(self, client: _Client, request: SubmitMany) -> None:
        """Accept a batch: every good job journaled in one commit, one result per job."""
        if self._journal_refuses(client, request.ref):
            return
        payloads = [_decode_job(raw) for raw in request.jobs]
        stored = self._stored(p.job_id for p in payloads if isinstance(p, JobPayload))
        decisions = self._core.submit_many(
            payloads,
            self._clock(),
            self._wall(),
            stored=stored,
            ref=request.ref,
            owner=client.grant.owner,
        )
        reply = decisions[0]
        if isinstance(reply, SendReply) and isinstance(reply.message, SubmittedMany):
            for result in reply.message.results:
                if result.id is not None:
                    self._subscribe(client, result.id)
        self._apply(decisions, client)

    def _journal_refuses(self, client: _Client, ref: str | int | None) -> bool:
        """Refuse a submit while the journal fails to commit; return whether it did."""
        failure = self.journal.failure
        if failure is None:
            return False
        why = f"{journal_problem(failure)}; submit refused"
        if client.protocol == 2:
            client.send_now(Error(message=why, ref=ref))
        else:
            logger.warning("%s: refused job: %s", client.outbox.label, why)
        return True

    def _refused(self, recipient: Recipient, refusal: Refusal, error: JournalError) -> None:
        """A commit failed before ``refusal``'s acknowledgment went out: tell its sender
        and take its jobs back (cancelled, so they never run)."""
        assert isinstance(recipient, _Client)
        why = f"{journal_problem(error)}; submit refused"
        logger.warning(
            "%s: %d accepted jobs taken back: %s", recipient.outbox.label, len(refusal.job_ids), why
        )
        recipient.send_now(Error(message=why, ref=refusal.ref))
        for job_id in refusal.job_ids:
            self._unwatch(recipient, job_id)
            recipient.watching.discard(job_id)
            if self._core.tracks(job_id):
                self._apply(self._core.cancel(job_id, self._wall()))

    def _cancel(self, client: _Client, request: Cancel) -> None:
        """Cancel a job; the reply says what happened."""
        stored = None if self._core.tracks(request.id) else self._get_stored(request.id)
        decisions = self._core.cancel(
            request.id, self._wall(), stored=stored, ref=request.ref, by=self._by(client)
        )
        self._apply(decisions, client)

    def _watch(self, client: _Client, request: Watch) -> None:
        """Subscribe ``client`` to jobs' events and reply with the status of each."""
        wall = self._wall()
        jobs: list[JobEvent] = []
        unknown: list[str] = []
        for job_id in request.ids:
            stored = None if self._core.tracks(job_id) else self._get_stored(job_id)
            event = self._core.watch(job_id, wall, stored=stored, by=self._by(client))
            if isinstance(event, Error):
                client.send(msgspec.structs.replace(event, ref=request.ref))
                return
            if event is None:
                unknown.append(job_id)
                continue
            jobs.append(event)
        for event in jobs:
            self._subscribe(client, event.id)
        client.send(Watching(jobs=jobs, unknown=unknown, ref=request.ref))

    def _vacuum(self, client: _Client, request: Vacuum) -> None:
        """Delete final jobs past their retention (or ``older_than_s``) and reply the counts."""
        try:
            deleted = self._run_vacuum(request.older_than_s)
        except JournalError as exc:
            logger.error("vacuum failed: %s", exc)
            client.send(Error(message=f"vacuum failed: {exc}", ref=request.ref))
            return
        client.send(Vacuumed(deleted=deleted, ref=request.ref))

    def _stats(self, client: _Client, request: GetStats) -> None:
        """Reply with the core's snapshot of the bus and every scheduler."""
        now = self._clock()
        client.send(self._core.stats(now, now - self._started_at, ref=request.ref))

    def _report(self, client: _Client, report: Report) -> None:
        self._apply(self._core.report(client.name, report, self._clock(), self._wall()))

    def _heartbeat(self, client: _Client, beat: Heartbeat) -> None:
        self._core.heartbeat(client.name, beat.running, beat.queued, self._clock())

    def _stored(self, job_ids: Iterable[str | None]) -> dict[str, Job]:
        """The journal's records of the given ids that the core no longer tracks."""
        stored: dict[str, Job] = {}
        for job_id in job_ids:
            if job_id is not None and not self._core.tracks(job_id):
                job = self._get_stored(job_id)
                if job is not None:
                    stored[job_id] = job
        return stored

    def _get_stored(self, job_id: str) -> Job | None:
        assert self._journal is not None
        return self._journal.get(job_id)

    def _run_vacuum(self, older_than_s: float | None) -> dict[str, int]:
        assert self._journal is not None
        if older_than_s is None:
            retention, default = self.config.retention, self.config.retention_default
        else:
            retention, default = {}, older_than_s
        deleted = self._journal.vacuum(self._wall(), retention, default)
        logger.info(
            "vacuum: deleted %d final jobs%s",
            sum(deleted.values()),
            "".join(f", {count} {state}" for state, count in sorted(deleted.items())),
        )
        return deleted

    async def _vacuum_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.vacuum_every)
            try:
                self._run_vacuum(None)
            except JournalError:
                logger.exception("periodic vacuum failed")

    def _refuse(self, client: _Client, error: ProtocolError, frame: str | None) -> None:
        """Log a refused frame and answer it with an error if the client speaks v2."""
        logger.warning("%s: refused frame: %s", client.outbox.label, error.message)
        v2 = client.protocol == 2 if client.role is not None else says_v2(frame)
        if v2:
            client.send(error.to_error(None if frame is None else ref_of(frame)))

    def _unique_name(self, wanted: str | None, role: Role) -> str:
        """``wanted``, suffixed ``-2``, ``-3``... if taken; or the next free ``role-N``.

        A name is taken by a connected client or by a scheduler the core still keeps
        jobs for (it may come back).
        """
        if wanted is None:
            while True:
                n = self._generated[role] = self._generated.get(role, 0) + 1
                if not self._taken(f"{role}-{n}"):
                    return f"{role}-{n}"
        name, n = wanted, 1
        while self._taken(name):
            n += 1
            name = f"{wanted}-{n}"
        return name

    def _taken(self, name: str) -> bool:
        return name in self._clients or self._core.scheduler(name) is not None

    # --- subscriptions ---------------------------------------------------------------

    def _subscribe(self, client: _Client, job_id: str) -> None:
        """Send ``client`` the events of ``job_id`` if it may have more (monitors get every
        event and v1 clients none)."""
        if client.role == "producer" and client.protocol == 2 and self._core.tracks(job_id):
            self._watchers.setdefault(job_id, set()).add(client)
            client.watching.add(job_id)

    def _unwatch(self, client: _Client, job_id: str) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(client)
            if not watchers:
                del self._watchers[job_id]

    def _forget_watchers(self, job_id: str) -> None:
        for client in self._watchers.pop(job_id, ()):
            client.watching.discard(job_id)

    # --- decisions -------------------------------------------------------------------

    def _apply(self, decisions: Iterable[Decision], requester: _Client | None = None) -> None:
        """Journal what the core changed, carry out its decisions in order (their frames
        wait for that journal commit), and re-arm the core's timer."""
        assert self._journal is not None and self._gate is not None
        changed, deleted = self._core.take_changes()
        if changed or deleted:
            self._journal.save(changed)
            self._journal.delete(deleted)
            self._gate.changed()
            for job_id in deleted:
                self._forget_watchers(job_id)
        for decision in decisions:
            self._carry_out(decision, requester)
        self._arm()

    def _carry_out(self, decision: Decision, requester: _Client | None) -> None:
        if isinstance(decision, EmitEvent):
            self._publish(decision.event, requester)
        elif isinstance(decision, SendAssign):
            self._assign(decision)
        elif isinstance(decision, SendStop):
            self._stop(decision)
        elif isinstance(decision, SendReply):
            self._reply(decision, requester)
        else:
            self._note(decision)

    def _reply(self, reply: SendReply, requester: _Client | None) -> None:
        """Answer a v2 requester; a v1 producer is never sent anything, so its refused
        job is logged."""
        if requester is None:
            return
        if requester.protocol == 2:
            requester.send(reply.message, _refusal_of(reply.message))
        elif isinstance(reply.message, Error):
            logger.warning("%s: refused job: %s", requester.outbox.label, reply.message.message)

    def _note(self, decision: Requeued | Ignored | LeaseExpired | StartOverdue) -> None:
        """Log a decision that sends nothing; a lease that expired on an open connection
        closes it."""
        if isinstance(decision, Requeued):
            logger.debug(
                "job %.8s: taken back from %s after attempt %d: %s",
                decision.job_id,
                decision.scheduler,
                decision.attempt,
                decision.reason,
            )
        elif isinstance(decision, Ignored):
            logger.warning(
                "%s: ignored report about job %.8s: %s",
                decision.scheduler,
                decision.job_id,
                decision.reason,
            )
        elif isinstance(decision, StartOverdue):
            logger.warning(
                "%s: started none of its %d assigned jobs within the start deadline (%g s):"
                " they are requeued, and it gets no new work until it starts one",
                decision.scheduler,
                decision.jobs,
                self.config.start_deadline,
            )
        else:
            logger.info("%s: lease expired; %d jobs taken back", decision.scheduler, decision.jobs)
            if decision.connected:
                client = self._clients.pop(decision.scheduler)
                self._spawn(client.ws.close(CLOSE_LEASE_EXPIRED, "lease expired"))

    def _assign(self, decision: SendAssign) -> None:
        scheduler = self._clients[decision.scheduler]
        if scheduler.protocol == 2:
            frame = encode(Assign(decision.assignment))
        else:
            frame = encode_v1_payload(decision.payload)
        scheduler.gate.send(scheduler, frame.encode())

    def _stop(self, decision: SendStop) -> None:
        stop = decision.stop
        scheduler = self._clients.get(decision.scheduler)
        logger.debug(
            "%s: stop job %.8s attempt %d: %s",
            decision.scheduler,
            stop.id,
            stop.attempt,
            stop.reason,
        )
        if scheduler is not None:
            scheduler.send(stop)

    def _publish(self, event: JobEvent, requester: _Client | None) -> None:
        """Send an event to the job's watchers and every monitor, encoded once; it counts
        against the backlog bound of all but the client whose request caused it."""
        assert self._gate is not None
        frame = encode(event).encode()
        for client in self._watchers.get(event.id, ()):
            self._gate.send(client, frame, counted=client is not requester, about=event.id)
        for monitor in self._monitors:
            self._gate.send(monitor, frame)
        if event.event in FINAL_EVENTS:
            self._forget_watchers(event.id)
        logger.debug(
            "job %.8s: %s p%d %s attempt %d",
            event.id,
            event.event,
            event.priority,
            event.scheduler or "-",
            event.attempt,
        )

    # --- timer -----------------------------------------------------------------------

    def _arm(self) -> None:
        """Set the loop timer for the core's next deadline if it is earlier than the one set."""
        deadline = self._core.next_deadline()
        if deadline is None or (self._timer is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self._core.tick(self._clock(), self._wall()))


def _new_id() -> str:
    """128 bits from the OS's generator, as hex: ids nobody can guess ahead."""
    return os.urandom(16).hex()


def _decode_job(raw: msgspec.Raw) -> JobPayload | ProtocolError:
    try:
        return decode_payload(bytes(raw))
    except ProtocolError as exc:
        return exc


def _refusal_of(message: BusMessage) -> Refusal | None:
    """What to take back if the acknowledgment ``message`` cannot be sent: the new jobs
    it accepted (not those that existed already)."""
    if isinstance(message, Accepted) and not message.existing:
        return Refusal((message.id,), message.ref)
    if isinstance(message, SubmittedMany):
        new = tuple(r.id for r in message.results if r.id is not None and not r.existing)
        return Refusal(new, message.ref) if new else None
    return None


def _log_closed(label: str, exc: ConnectionClosedError) -> None:
    """Log a connection that ended without a clean close: INFO when the client just went
    away (no close frame) or closed normally, WARNING when either side sent an error code."""
    codes = [frame.code for frame in (exc.rcvd, exc.sent) if frame is not None]
    clean = all(code in _CLEAN_CLOSE for code in codes)
    level = logging.INFO if clean else logging.WARNING
    logger.log(level, "%s: connection closed: %s", label, exc)


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{_bracketed(str(address[0]))}:{address[1]}"
    return str(address)


def _host_name(header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8101`` gives ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.partition(":")[0]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True
