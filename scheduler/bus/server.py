"""The WebSocket bus: connections, roles and fan-out around the pure dispatch core.

Each connection's handler decodes a frame, feeds :class:`~scheduler.policy.dispatch.Dispatcher`
and carries out the decisions it returns. Handlers never await another client: every
frame goes through that client's :class:`_Outbox`, which writes at once when the socket
keeps up and otherwise queues behind a writer task. A producer or monitor whose queue
passes ``max_backlog`` frames is disconnected, never waited on. A handler only ever
waits for its own client: it stops reading from a client that lags behind its own
replies until they are out, so a fast producer is slowed by TCP instead of dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Final

import msgspec
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from scheduler.policy.dispatch import (
    Decision,
    Dispatcher,
    EmitEvent,
    Requeued,
    SendAssign,
)
from scheduler.protocol import (
    MAX_FRAME_BYTES,
    Accepted,
    Assign,
    BusMessage,
    Heartbeat,
    JobRequest,
    ProtocolError,
    Register,
    Registered,
    Report,
    Role,
    decode_client,
    encode,
    encode_v1_payload,
    ref_of,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BACKLOG: Final = 10_000
"""Frames a producer or monitor may fall behind before it is disconnected."""

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""``Host`` header names always accepted."""

_FLUSH_TIMEOUT_S: Final = 5.0
"""How long a refused client's error reply may take to leave before the connection closes."""

# Who may send what; Register is allowed to anyone not yet registered.
_ROLE_FOR: Final[dict[type, Role]] = {
    JobRequest: "producer",
    Report: "scheduler",
    Heartbeat: "scheduler",
}


@dataclass(frozen=True)
class BusConfig:
    """Where the bus listens and whom it lets in."""

    host: str = "127.0.0.1"
    port: int = 8101
    token: str | None = None
    allow_origins: tuple[str, ...] = ()


class _Outbox:
    """Frames on their way to one connection, in order. :meth:`push` never waits."""

    def __init__(self, ws: ServerConnection, bound: int | None, label: str) -> None:
        self.bound = bound
        """Most frames that may wait; None: no limit (schedulers: one frame per held job)."""
        self.label = label
        self._ws = ws
        self._backlog: deque[bytes] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._high_water = ws.transport.get_write_buffer_limits()[1]
        self._dropped = False

    def push(self, frame: bytes) -> None:
        """Send text ``frame`` now if nothing waits and the socket keeps up, else queue it.

        Past ``bound`` waiting frames the connection is aborted and later frames dropped.
        """
        if self._dropped:
            return
        if self._backlog:
            if self.bound is not None and len(self._backlog) >= self.bound:
                self._drop()
                return
            self._backlog.append(frame)
        elif self._ws.transport.get_write_buffer_size() < self._high_water:
            broadcast((self._ws,), frame, text=True)
        else:
            self._backlog.append(frame)
            self._writer = asyncio.create_task(self._drain())

    @property
    def waiting(self) -> int:
        """How many frames wait behind a full socket buffer."""
        return len(self._backlog)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds) until no frame waits behind the socket."""
        if self._writer is not None:
            await asyncio.wait((self._writer,), timeout=timeout)

    async def aclose(self) -> None:
        """Drop whatever is queued and stop the writer task."""
        self._dropped = True
        self._backlog.clear()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait((self._writer,))

    def _drop(self) -> None:
        logger.warning("%s: more than %d frames waiting; disconnecting it", self.label, self.bound)
        self._dropped = True
        self._backlog.clear()
        if self._writer is not None:
            self._writer.cancel()
        self._ws.transport.abort()

    async def _drain(self) -> None:
        try:
            while self._backlog:
                # The head stays queued until written, so push() queues behind it.
                await self._ws.send(self._backlog[0], text=True)
                self._backlog.popleft()
        except ConnectionClosed:
            self._backlog.clear()
        finally:
            self._writer = None


@dataclass(eq=False)
class _Client:
    """One connection and what it registered as."""

    ws: ServerConnection
    outbox: _Outbox
    peer: str
    name: str = ""
    role: Role | None = None
    protocol: int = 1
    close: tuple[int, str] | None = None
    """Set when the connection must be closed with this code and reason."""

    def send(self, message: BusMessage) -> None:
        """Queue ``message`` for this client."""
        self.outbox.push(encode(message).encode())


class BusServer:
    """The bus: accepts producers, schedulers and monitors, and routes jobs and events."""

    def __init__(
        self,
        config: BusConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        """Configure a bus; nothing listens until :meth:`start`.

        ``clock`` gives the monotonic time the dispatch core sees; ``max_backlog`` is how
        many frames a producer or monitor may fall behind before it is disconnected.
        """
        self.config = config
        self._clock = clock
        self._max_backlog = max_backlog
        self._core = Dispatcher()
        self._clients: dict[str, _Client] = {}
        self._monitors: set[_Client] = set()
        self._generated: dict[str, int] = {}
        self._server: Server | None = None
        self._port: int | None = None
        self._allowed_hosts = LOOPBACK_HOSTS | {_bracketed(config.host.lower())}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections; port 0 picks an ephemeral port."""
        if self._server is not None:
            raise RuntimeError("the bus is already started")
        if not _is_loopback(self.config.host):
            logger.warning(
                "listening on %r, which is not loopback: anyone who can reach it may connect%s",
                self.config.host,
                "" if self.config.token else ", and no token is set",
            )
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            process_request=self._check_request,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("bus listening on %s", self.url)

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
        return f"ws://{_bracketed(host)}:{self.port}"

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called or this coroutine is cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Close every connection and the listener, then log a summary. Idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        core = self._core
        logger.info(
            "bus closed: %d jobs accepted, %d finished, %d still tracked",
            core.accepted,
            core.finished,
            len(core),
        )

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

    def scheduler_names(self) -> list[str]:
        """Return the names of the connected schedulers, in registration order."""
        return [c.name for c in self._clients.values() if c.role == "scheduler"]

    def monitor_count(self) -> int:
        """Return how many v2 monitors receive every event."""
        return len(self._monitors)

    # --- HTTP ------------------------------------------------------------------------

    def _check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse foreign ``Host`` names (DNS rebinding) and browser ``Origin`` s."""
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or not self._host_allowed(_host_name(hosts[0])):
            logger.warning("%s: refused: Host %s not allowed", _peer(ws), hosts)
            return ws.respond(HTTPStatus.FORBIDDEN, "Host not allowed\n")
        origins = request.headers.get_all("Origin")
        if any(origin not in self.config.allow_origins for origin in origins):
            logger.warning("%s: refused: Origin %s not allowed", _peer(ws), origins)
            return ws.respond(HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        return None

    def _host_allowed(self, host: str) -> bool:
        # A rebinding page reaches us under its own DNS name; an IP literal cannot be one.
        return host in self._allowed_hosts or _is_ip_literal(host)

    # --- connections -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """Serve one connection until it closes; its failure never reaches other clients."""
        peer = _peer(ws)
        client = _Client(ws, _Outbox(ws, self._max_backlog, peer), peer)
        logger.info("%s: connected", peer)
        try:
            await self._read(client)
        except ConnectionClosedError as exc:
            logger.warning("%s: connection closed: %s", client.outbox.label, exc)
        except Exception:
            logger.exception("%s: handler failed; closing the connection", client.outbox.label)
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._leave(client)

    async def _read(self, client: _Client) -> None:
        async for frame in client.ws:
            self._on_frame(client, frame)
            if client.close is not None:
                await client.outbox.flush(_FLUSH_TIMEOUT_S)
                await client.ws.close(*client.close)
                return
            if client.outbox.waiting:
                # Read nothing more from a client that lags behind its own replies:
                # TCP then slows its sending instead of its backlog growing to the bound.
                await client.outbox.flush()

    async def _leave(self, client: _Client) -> None:
        """Forget ``client``; a scheduler's jobs go back to dispatch."""
        if client.role is None:
            logger.info("%s: disconnected", client.peer)
        else:
            del self._clients[client.name]
            self._monitors.discard(client)
            decisions: list[Decision] = []
            if client.role == "scheduler":
                decisions = self._core.remove_scheduler(client.name, self._clock(), time.time())
            requeued = sum(isinstance(d, Requeued) for d in decisions)
            logger.info("%s: left (%s, %d jobs requeued)", client.name, client.peer, requeued)
            self._carry_out(decisions)
        await client.outbox.aclose()

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
        if client.role is None:
            self._refuse(client, ProtocolError("register first", "cmd"), frame)
            return
        required = _ROLE_FOR[type(message)]
        if client.role != required:
            error = f"a {client.role} may not send this cmd; only a {required} may"
            self._refuse(client, ProtocolError(error, "cmd"), frame)
            return
        if isinstance(message, JobRequest):
            self._submit(client, message)
        elif isinstance(message, Report):
            self._carry_out(self._core.report(client.name, message, time.time()))
        else:
            self._core.heartbeat(client.name, message.running, message.queued, self._clock())

    def _on_register(self, client: _Client, message: Register, frame: str) -> None:
        """Give ``client`` its role and unique name; a scheduler gets the backlog."""
        if client.role is not None:
            self._refuse(client, ProtocolError("already registered", "cmd"), frame)
            return
        if not self._token_ok(message.token):
            why = "invalid token" if message.protocol == 2 else "token required; v1 cannot send one"
            self._refuse(client, ProtocolError(why, "token"), frame)
            client.close = (CloseCode.POLICY_VIOLATION, "invalid token")
            return
        v2 = message.protocol == 2
        name = self._unique_name(message.name, message.type)
        client.name, client.role, client.protocol = name, message.type, message.protocol
        client.outbox.label = name
        self._clients[name] = client
        if v2:
            client.send(Registered(name=name))
        logger.info("%s: registered as %s (protocol %d)", client.peer, name, message.protocol)
        if message.type == "monitor" and v2:
            self._monitors.add(client)
        elif message.type == "scheduler":
            client.outbox.bound = None
            decisions = self._core.add_scheduler(
                name,
                size=message.size if v2 else None,
                tasks=message.tasks if v2 else None,
                reports=v2,
                now=self._clock(),
                wall=time.time(),
            )
            self._carry_out(decisions)

    def _submit(self, client: _Client, request: JobRequest) -> None:
        """Accept a job: reply to a v2 producer, then let the core dispatch it."""
        job_id = uuid.uuid4().hex
        producer: str | None = None
        if client.protocol == 2:
            producer = client.name
            client.send(Accepted(id=job_id, ref=request.ref))
        now, wall = self._clock(), time.time()
        self._carry_out(self._core.submit(job_id, request.payload, producer, now, wall))

    def _refuse(self, client: _Client, error: ProtocolError, frame: str | None) -> None:
        """Log a refused frame and answer it with an error if the client speaks v2."""
        logger.warning("%s: refused frame: %s", client.outbox.label, error.message)
        v2 = client.protocol == 2 if client.role is not None else _says_v2(frame)
        if v2:
            client.send(error.to_error(None if frame is None else ref_of(frame)))

    def _token_ok(self, given: str | None) -> bool:
        token = self.config.token
        if token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    def _unique_name(self, wanted: str | None, role: Role) -> str:
        """``wanted``, suffixed ``-2``, ``-3``... if taken; or the next free ``role-N``."""
        if wanted is None:
            while True:
                n = self._generated[role] = self._generated.get(role, 0) + 1
                if f"{role}-{n}" not in self._clients:
                    return f"{role}-{n}"
        name, n = wanted, 1
        while name in self._clients:
            n += 1
            name = f"{wanted}-{n}"
        return name

    # --- decisions -------------------------------------------------------------------

    def _carry_out(self, decisions: Iterable[Decision]) -> None:
        """Send the frames the core decided on, in its order, and log the rest."""
        for decision in decisions:
            if isinstance(decision, EmitEvent):
                self._publish(decision)
            elif isinstance(decision, SendAssign):
                self._assign(decision)
            elif isinstance(decision, Requeued):
                logger.debug(
                    "job %.8s: taken back from %s, attempt %d",
                    decision.job_id,
                    decision.scheduler,
                    decision.attempt,
                )
            else:
                logger.warning(
                    "%s: ignored report about job %.8s: %s",
                    decision.scheduler,
                    decision.job_id,
                    decision.reason,
                )

    def _assign(self, decision: SendAssign) -> None:
        scheduler = self._clients[decision.scheduler]
        if scheduler.protocol == 2:
            frame = encode(Assign(decision.assignment))
        else:
            frame = encode_v1_payload(decision.payload)
        scheduler.outbox.push(frame.encode())

    def _publish(self, decision: EmitEvent) -> None:
        """Send an event to its producer and every monitor, encoded once."""
        event = decision.event
        frame = encode(event).encode()
        if decision.producer is not None:
            producer = self._clients.get(decision.producer)
            if producer is not None and producer.role == "producer":
                producer.outbox.push(frame)
        for monitor in self._monitors:
            monitor.outbox.push(frame)
        logger.debug(
            "job %.8s: %s p%d %s attempt %d",
            event.id,
            event.event,
            event.priority,
            event.scheduler or "-",
            event.attempt,
        )


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{_bracketed(str(address[0]))}:{address[1]}"
    return str(address)


def _says_v2(frame: str | None) -> bool:
    """Whether a frame that failed to decode still announces ``"protocol": 2``."""
    if frame is None:
        return False
    try:
        raw = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return False
    return isinstance(raw, dict) and raw.get("protocol") == 2


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
