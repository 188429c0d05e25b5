"""The WebSocket bus: the shell that serves connections around the pure core.

Each connection's handler decodes a frame, checks that its sender may send it
(:func:`scheduler.policy.access.send_refusal`), and hands it to the registration path
(:class:`~scheduler.bus.sessions.Sessions`) or the request handlers
(:class:`~scheduler.bus.requests.Requests`), which feed
:class:`~scheduler.policy.dispatch.Dispatcher`; the :class:`~scheduler.bus.hub.Hub`
carries out the decisions it returns. Every job the core changes is queued in the
:class:`~scheduler.bus.journal.Journal`, and every frame the bus sends waits in a
:class:`~scheduler.bus.gate.FrameGate` until a group commit has made durable each change
made before it: an acknowledged job is on disk, and an attempt is journaled before it is
assigned. Handlers never await the commit of one frame before reading the next, so a
pipelining producer shares one fsync between many submits.

Handlers never await another client: every frame goes through that client's
:class:`~scheduler.bus.outbox.FrameOutbox`, which writes at once when the socket keeps up
and otherwise queues behind a writer task. A producer or monitor whose queue passes its
bound in bytes is disconnected, never waited on; so is the largest laggard when all
queues together pass theirs. A connection that does not register in time is closed, and
past ``max_connections`` new connections are refused
(:class:`~scheduler.bus.guard.HandshakeGuard`, which also refuses foreign ``Host`` and
``Origin`` headers). A handler only ever waits for its own client: it stops reading from
a client that lags behind its own replies until they are out, so a fast producer is
slowed by TCP instead of dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from scheduler.bus.config import BusConfig as BusConfig
from scheduler.bus.connection import Connection, log_closed
from scheduler.bus.guard import HandshakeGuard, bracketed, peer_of
from scheduler.bus.http import HttpRoutes, is_websocket
from scheduler.bus.hub import FLUSH_TIMEOUT_S, Hub
from scheduler.bus.journal import Journal
from scheduler.bus.outbox import BacklogBudget, FrameOutbox
from scheduler.bus.requests import Requests
from scheduler.bus.schedules import BusSchedules
from scheduler.bus.sessions import Sessions
from scheduler.codec import ProtocolError, batch_messages, decode_client_frame
from scheduler.policy.access import is_loopback, send_refusal
from scheduler.protocol import ClientMessage, Register
from scheduler.protocol_batch import ClientBatch
from scheduler.protocol_types import MAX_FRAME_BYTES

logger = logging.getLogger(__name__)

_MAX_READ_AHEAD: Final = 1024
"""Frames a client may have waiting for a commit before the bus stops reading from it."""


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
        self._hub = Hub(config, clock, wall_clock, rng)
        self._core = self._hub.core
        self._sessions = Sessions(self._hub)
        self._requests = Requests(self._hub)
        self._schedules = BusSchedules(self._hub, rng)
        self._requests.handlers.update(self._schedules.handlers)
        self._budget = BacklogBudget(config.max_total_backlog_bytes)
        self._guard = HandshakeGuard(config.host, config.allow_origins, config.max_connections)
        self._http = HttpRoutes(self._hub, self._requests.job_list, config.tokens)
        self._server: Server | None = None
        self._port: int | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal, take back its jobs, then bind and accept connections.

        Port 0 picks an ephemeral port. Raises :class:`JournalError` if the journal cannot
        be opened or read, OSError if the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the bus is already started")
        _warn_if_exposed(self.config)
        try:
            tls = self.config.ssl_context()
            restored = self._hub.open()
            self._schedules.open()
            self._server = await self._listen(tls)
        except BaseException:
            self._schedules.stop()
            self._hub.stop()
            self._hub.close_journal()
            raise
        logger.info(*restored)
        self._port = self._server.sockets[0].getsockname()[1]
        self._hub.spawn(self._requests.vacuum_periodically())
        rules = self.config.rules
        logger.info(
            "bus listening on %s (steal %s, aging %s)",
            self.url,
            rules.steal,
            "off" if rules.age_every is None else f"every {rules.age_every:g} s",
        )
        logger.info("dashboard: %s/", self.http_url)

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
                process_request=self._process_request,
                ssl=tls,
            )
        except OSError as exc:
            # asyncio's own strerror repeats the address as a tuple; a name that does not
            # resolve (socket.gaierror) has a negative errno and its own strerror.
            why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
            why = why or str(exc)
            raise OSError(exc.errno, f"cannot listen on {bracketed(host)}:{port}: {why}") from exc

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
        return f"{scheme}://{bracketed(host)}:{self.port}"

    @property
    def http_url(self) -> str:
        """The URL of the bus's dashboard and HTTP API, such as ``http://127.0.0.1:8101``."""
        return "http" + self.url.removeprefix("ws")

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """The handshake hook: the guard's refusal, else None for a WebSocket upgrade (the
        handshake goes on) or the HTTP route's response to a plain request."""
        refused = self._guard.check(ws, request)
        if refused is not None or is_websocket(request):
            return refused
        return self._http.respond(request)

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
        hub = self._hub
        self._sessions.closing()
        self._schedules.stop()
        hub.stop()
        if hub.journal.failure is None:
            await hub.promise_restart()
        server.close()
        await server.wait_closed()
        await hub.gate.drain()
        hub.close_journal()
        core = self._core
        logger.info(
            "bus closed: %d jobs accepted, %d finished, %d still tracked, %d journal commits",
            core.accepted,
            core.finished,
            len(core),
            hub.journal.commits,
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

    @property
    def journal(self) -> Journal:
        """The open journal (once started)."""
        return self._hub.journal

    def scheduler_names(self) -> list[str]:
        """Return the names of the connected schedulers, in registration order."""
        return [c.name for c in self._hub.registry if c.role == "scheduler"]

    def monitor_count(self) -> int:
        """Return how many v2 monitors receive every event."""
        return self._hub.fanout.monitors

    def connection_count(self) -> int:
        """Return how many connections are open (registered or not)."""
        return self._guard.open

    def backlog_bytes(self, name: str | None = None) -> int:
        """Return the bytes of frames waiting to be written to client ``name``, or to
        every client together (None)."""
        if name is None:
            return self._budget.total
        client = self._hub.registry.get(name)
        return 0 if client is None else client.outbox.queued_bytes

    # --- connections -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """Serve one connection until it closes; its failure never reaches other clients."""
        peer = peer_of(ws)
        outbox = FrameOutbox(ws, self._budget, self.config.max_backlog_bytes, peer)
        client = Connection(ws, outbox, self._hub.gate, peer)
        logger.info("%s: connected", peer)
        self._guard.opened()
        deadline = asyncio.get_running_loop().call_later(
            self.config.register_timeout, self._register_expired, client
        )
        try:
            await self._read(client)
        except ConnectionClosedError as exc:
            log_closed(client.outbox.label, exc)
        except Exception:
            logger.exception("%s: handler failed; closing the connection", client.outbox.label)
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            deadline.cancel()
            self._guard.closed()
            self._sessions.leave(client)
            await client.outbox.aclose()

    def _register_expired(self, client: Connection) -> None:
        """Close ``client`` if it has not registered yet."""
        if client.role is None and client.close is None:
            timeout = self.config.register_timeout
            logger.info("%s: closed: did not register within %g s", client.peer, timeout)
            self._hub.spawn(
                client.ws.close(CloseCode.POLICY_VIOLATION, f"register within {timeout:g} s")
            )

    async def _read(self, client: Connection) -> None:
        gate = client.gate
        async for frame in client.ws:
            self._on_frame(client, frame)
            if client.close is not None:
                await gate.released(client)
                await client.outbox.flush(FLUSH_TIMEOUT_S)
                await client.ws.close(*client.close)
                return
            if gate.pending(client) + client.outbox.waiting >= _MAX_READ_AHEAD:
                # Read nothing more from a client that lags behind its own replies:
                # TCP then slows its sending instead of its backlog growing to the bound.
                await gate.released(client)
                await client.outbox.flush()

    def _on_frame(self, client: Connection, frame: str | bytes) -> None:
        """Decode one frame, check the sender may send it, and act on it."""
        if isinstance(frame, bytes):
            client.refuse(ProtocolError("binary frames are not supported"), None)
            return
        try:
            message = decode_client_frame(frame)
        except ProtocolError as exc:
            client.refuse(exc, frame)
            return
        if isinstance(message, ClientBatch):
            self._on_batch(client, message)
        else:
            self._on_message(client, message, frame)

    def _on_batch(self, client: Connection, batch: ClientBatch) -> None:
        """Act on each message of ``batch`` in order, as if each had come alone, until one
        of them has the connection closed. The jobs its submits look up in the journal are
        read in one query first."""
        messages = list(batch_messages(batch))
        with self._requests.reading_ahead(message for message, _ in messages):
            for message, raw in messages:
                if isinstance(message, ProtocolError):
                    client.refuse(message, raw.decode(errors="replace"))
                else:
                    self._on_message(client, message, raw.decode(errors="replace"))
                if client.close is not None:
                    return

    def _on_message(self, client: Connection, message: ClientMessage, frame: str) -> None:
        """Check the sender may send ``message`` (whose JSON is ``frame``), and act on it."""
        if isinstance(message, Register):
            self._sessions.register(client, message, frame)
            if client.role == "scheduler" and message.schedules:
                self._schedules.declare(client, message.schedules, message.tasks or [])
            return
        refusal = send_refusal(client.role, client.protocol, client.grant.rights, message)
        if refusal is not None:
            client.refuse(ProtocolError(refusal, "cmd"), frame)
        elif not self._hub.registry.current(client):
            logger.info("%s: ignoring a frame from a replaced or expired connection", client.name)
        else:
            self._requests.handle(client, message)


def _warn_if_exposed(config: BusConfig) -> None:
    """Log what a configuration open to others gives away."""
    if not is_loopback(config.host):
        logger.warning(
            "listening on %r, which is not loopback: anyone who can reach it may connect%s%s",
            config.host,
            "" if config.certfile else "; without TLS, tokens and jobs cross the network in clear",
            "" if config.tokens else ", and no tokens are required",
        )
