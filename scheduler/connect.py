"""The one way a client reaches the bus: connect, register, serve, reconnect.

Every v2 client (the producer library, the scheduler client, the monitor) goes through
:class:`Connector`:

1. open a WebSocket with the options every client uses (no compression, frames from the
   bus up to :data:`MAX_BUS_FRAME_BYTES`, TLS from :func:`scheduler.auth.tls_options`);
2. send the client's ``register`` and wait for ``registered``;
3. only then forget past failures (reset the backoff): a bus that accepts the
   connection but closes it on a bad token must not be retried at the shortest delay;
4. hand the registered connection to the client until it ends, close it with code 1000
   (also when the client is cancelled), wait the next backoff delay (with jitter, see
   :mod:`scheduler.policy.backoff`) and start again.

An ``error`` answering the ``register`` on its ``token``, ``type`` or ``name`` is a
refusal that retrying cannot cure: :class:`RegistrationRefused`, raised out of the loop,
whatever the client.

The URL may be a comma-separated list of buses sharing one journal
(:func:`parse_bus_urls`): the loop goes round it (:class:`~scheduler.policy.bus_urls.UrlRing`),
follows a standby's :class:`~scheduler.protocol_leader.NotLeader` to the leader it names,
and waits out a backoff delay only after a whole round has failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode
from websockets.uri import parse_uri

from scheduler import codec, protocol_types
from scheduler.auth import tls_options
from scheduler.policy.backoff import Backoff
from scheduler.policy.bus_urls import UrlRing
from scheduler.protocol import BusMessage, Error, Register, Registered
from scheduler.protocol_leader import NotLeader

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "ws://localhost:8101"
"""The bus every command and client talks to unless told otherwise."""

FATAL_FIELDS: Final = frozenset({"name", "token", "type"})
"""Fields of a ``register`` whose refusal is final: the same frame would be refused again."""

KEEPALIVE: Final[dict[str, float]] = {
    "ping_interval": 5.0,
    "ping_timeout": 5.0,
    "close_timeout": 2.0,
    "open_timeout": 5.0,
}
"""How long a client stays with a bus that stopped answering: a frozen bus (SIGSTOP, a
paused VM) keeps its sockets open, and its clients must leave it for the bus that took
over. A ping every 5 s must be answered within 5 s, the close that follows waits 2 s at
most, and a bus that accepts a connection but does not complete the handshake within 5 s
is passed over (websockets' defaults, 20 s + 20 s, 10 s and 10 s, kept a client there
up to a minute)."""

MAX_BUS_FRAME_BYTES: Final = 256 * 1024 * 1024
"""The largest frame a client takes from its bus (256 MiB). The bus's own bound,
:data:`~scheduler.protocol_types.MAX_FRAME_BYTES` (1 MiB), protects the bus from its
clients; a client asks for what its bus sends, and a reply can be far longer than any
request: a ``submitted_many`` repeats each id (with a ``warning`` when no scheduler serves
the task), a ``watching`` or ``jobs`` reply holds each job's whole status (its arguments
alone may be near 1 MiB), and a ``list_jobs`` may ask for
:data:`~scheduler.protocol_types.MAX_BULK` jobs. Refusing such a reply made the client
reconnect and ask again for ever. The bound stays finite so that a server that is not a
bus cannot make a client read without end; a batch frame is far below it (the bus packs
at most :data:`~scheduler.protocol_types.MAX_BATCH_BYTES` into one, and a longer message
travels alone). A connection closed on a frame too big, either way, is reported by
:func:`closed_too_big`."""

RETRYABLE: Final = (OSError, InvalidHandshake, TimeoutError, ConnectionClosed)
"""Failures to reach or keep the bus that a later try may not meet."""


def parse_bus_urls(text: str) -> tuple[str, ...]:
    """The bus URLs of ``text``: one ``ws://`` or ``wss://`` URL, or several separated by
    commas (spaces around them are ignored). Raises InvalidURI naming the entry that is
    empty or not such a URL, and its place in the list."""
    entries = [entry.strip() for entry in text.split(",")]
    for place, entry in enumerate(entries, 1):
        where = f"bus URL {place} of {len(entries)}" if len(entries) > 1 else "bus URL"
        if not entry:
            raise InvalidURI(text, f"{where} is empty")
        try:
            parse_uri(entry)
        except InvalidURI as exc:
            raise InvalidURI(entry, f"{where}: {exc.msg}") from None
    return tuple(entries)


class NotLeaderError(Exception):
    """The bus stands by: ``leader`` is the URL of the one that leads (None if unknown)."""

    def __init__(self, answer: NotLeader) -> None:
        """Carry the standby's message and the leader it names."""
        super().__init__(answer.message)
        self.leader = answer.leader


class RegistrationRefused(Exception):
    """The bus refused to register this client (a bad token, a role the token does not
    grant, a scheduler name in use): retrying cannot help. ``field`` names the part."""

    def __init__(self, error: Error) -> None:
        """Carry the bus's ``error`` message and field."""
        super().__init__(error.message)
        self.field = error.field


async def open_connection(
    url: str, cafile: str | None = None, *, blocking_resolve: bool = False
) -> ClientConnection:
    """Open a WebSocket to the bus at ``url`` with the options every client uses.

    With ``blocking_resolve`` the host name is resolved with a blocking call and each
    address tried in turn, instead of in asyncio's resolver thread pool: for a process
    that forks and must stay thread-free. Raises OSError, InvalidHandshake or TimeoutError.
    """
    tls = tls_options(url, cafile)
    options = {
        "compression": None,
        "max_size": MAX_BUS_FRAME_BYTES,
        **KEEPALIVE,
        **tls,
    }
    if not blocking_resolve:
        return await connect(url, **options)
    uri = parse_uri(url)
    if tls:
        tls["server_hostname"] = uri.host
        options.update(tls)
    error: Exception = OSError(f"no address for {uri.host}")
    for *_, address in socket.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM):
        try:
            return await connect(url, host=address[0], port=uri.port, **options)
        except OSError as exc:
            error = exc
    raise error


@dataclass(frozen=True, slots=True)
class Registration:
    """A connection the bus has registered: the socket, its ``registered`` reply, when
    (client clock) the ``register`` it answers was sent, and the messages that came
    before that reply or after it in its batch frame, in order, for the client to handle
    first."""

    ws: ClientConnection
    registered: Registered
    sent_at: float
    early: tuple[BusMessage, ...] = ()


async def register(
    ws: ClientConnection, message: Register, clock: Callable[[], float] = time.monotonic
) -> Registration:
    """Send ``message`` and wait for ``registered``; other messages before it, and those
    after it in its batch frame, are kept in :attr:`Registration.early` (errors are
    logged, bad frames skipped).

    Raises :class:`RegistrationRefused` for an ``error`` on a field of
    :data:`FATAL_FIELDS`, :class:`NotLeaderError` if the bus stands by, ConnectionClosed
    if the bus closes first.
    """
    sent_at = clock()
    await ws.send(codec.encode(message))
    early: list[BusMessage] = []
    registered: Registered | None = None
    while registered is None:
        for reply in codec.decode_bus_frame(await ws.recv()):
            if isinstance(reply, codec.ProtocolError):
                log.warning("ignoring a bad frame from the bus: %s", reply.message)
            elif registered is not None:
                early.append(reply)
            elif isinstance(reply, Registered):
                registered = reply
            elif isinstance(reply, NotLeader):
                raise NotLeaderError(reply)
            elif isinstance(reply, Error) and reply.field in FATAL_FIELDS:
                raise RegistrationRefused(reply)
            elif isinstance(reply, Error):
                log.warning("the bus refused a frame: %s", reply.message)
            else:
                early.append(reply)
    return Registration(ws, registered, sent_at, tuple(early))


Serve = Callable[[Registration], Awaitable[None]]
"""Uses one registered connection until it ends (or the client stops)."""
Pause = Callable[[float], Awaitable[None]]
"""Waits out a backoff delay."""


@dataclass
class Connector:
    """The connect-register-reconnect loop of one client of the bus at ``url`` (or of
    the buses it lists, see :func:`parse_bus_urls`; InvalidURI if it is not such a list).

    ``blocking_resolve``: see :func:`open_connection`. ``clock`` stamps the ``register``
    sends (:attr:`Registration.sent_at`).
    """

    url: str
    cafile: str | None = None
    blocking_resolve: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    ring: UrlRing = field(init=False)
    """Which of the buses is tried now."""

    def __post_init__(self) -> None:
        """Parse the URL list."""
        self.ring = UrlRing(parse_bus_urls(self.url))

    async def connect(
        self, message: Register, stop: asyncio.Event | None = None
    ) -> Registration | None:
        """One try: open a connection and register with ``message``; reset the backoff
        once registered. Returns None, the socket closed, if ``stop`` is set first.

        Raises :class:`RegistrationRefused`, :class:`NotLeaderError`, or one of
        :data:`RETRYABLE` (the socket is then closed).
        """
        url = self.ring.current
        ws = await open_connection(url, self.cafile, blocking_resolve=self.blocking_resolve)
        registration: Registration | None = None
        try:
            registration = await _unless(stop, register(ws, message, self.clock))
        finally:
            if registration is None:
                await ws.close()
        if registration is not None:
            self.backoff.reset()
            self.ring.connected()
        return registration

    async def run(
        self,
        message: Callable[[], Register],
        serve: Serve,
        *,
        stop: asyncio.Event | None = None,
        pause: Pause | None = None,
        lost: Callable[[], str] = lambda: "",
    ) -> None:
        """Connect, register with ``message()``, ``serve`` the connection, and again after
        a backoff delay, until ``stop`` is set (forever without one).

        Each connection is closed with code 1000 once ``serve`` returns or raises (or is
        cancelled). ``pause`` waits out a delay (default: until the delay passes or
        ``stop`` is set); ``lost`` adds detail to the log line of a lost connection.
        A bus that stands by sends the loop to the leader it names at once; a bus that
        cannot be reached to the next URL; a backoff delay is waited out only after a
        whole round of them failed. Raises :class:`RegistrationRefused`, which ends the loop.
        """
        wait = pause or (lambda delay: pause_unless(stop, delay))
        while stop is None or not stop.is_set():
            url = self.ring.current
            try:
                registration = await self.connect(message(), stop)
            except NotLeaderError as exc:
                log.info("%s", exc)
                if self.ring.redirected(exc.leader):
                    await wait(self._delay(f"no bus of {self.url} leads"))
                continue
            except RETRYABLE as exc:
                if self.ring.failed():
                    await wait(self._delay(f"cannot reach the bus at {url}: {exc}"))
                else:
                    log.info("cannot reach %s: %s; trying %s", url, exc, self.ring.current)
                continue
            if registration is None:
                return
            try:
                with contextlib.suppress(ConnectionClosed):
                    await serve(registration)
            finally:
                await registration.ws.close()
            if unanswered(registration.ws):
                # A bus that stopped answering (frozen) may stay so: try the next one first.
                self.ring.failed()
            if stop is None or not stop.is_set():
                await wait(self._delay(f"lost the bus at {url}{lost()}"))

    def _delay(self, why: str) -> float:
        """The next backoff delay, logged with ``why``."""
        delay = self.backoff.next_delay()
        log.warning("%s; retrying in %.1f s", why, delay)
        return delay


def unanswered(ws: ClientConnection) -> bool:
    """Whether the connection ended because the bus stopped answering its pings (the
    keepalive of :data:`KEEPALIVE` gave up on it), not because it closed or went away."""
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    return received is None and sent is not None and sent.code == CloseCode.INTERNAL_ERROR


def closed_too_big(ws: ClientConnection) -> str | None:
    """Why the connection ended, if it was closed because a frame was too big (code 1009):
    the bus refused a frame of this client (over
    :data:`~scheduler.protocol_types.MAX_FRAME_BYTES`), or this client refused one of the
    bus's (over :data:`MAX_BUS_FRAME_BYTES`). None if it ended otherwise. Sending the same
    requests again would meet the same refusal."""
    received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
    if ws.protocol.close_rcvd_then_sent and received is not None:
        if received.code == CloseCode.MESSAGE_TOO_BIG:
            return (
                f"the bus refused a frame of this client as too big ({received.reason or 1009}; "
                f"its bound is {protocol_types.MAX_FRAME_BYTES} bytes)"
            )
    elif sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
        return (
            f"a frame from the bus was over this client's bound of {MAX_BUS_FRAME_BYTES} "
            f"bytes ({sent.reason or 1009})"
        )
    return None


async def pause_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set (or is set meanwhile)."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _unless(stop: asyncio.Event | None, work: Awaitable[Registration]) -> Registration | None:
    """Await ``work``; cancel it and return None if ``stop`` is set first."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()
