"""What a bus that stands by serves on its port: ``/healthz`` and refusals.

While another bus leads, a standby listens on its own address so that operators and
load balancers see it alive and clients are sent on:

- ``GET /healthz`` answers ``{"ok", "role": "standby", "leader"}`` (200);
- any other plain HTTP request is redirected (307) to the same path on the leader, so a
  dashboard link to any bus of the group reaches the leader's; 503 while none is known;
- a WebSocket client is answered its first frame: a v2 ``register`` gets
  :class:`~scheduler.protocol_leader.NotLeader` naming the leader, anything else an
  ``error`` on the field ``leader`` with the same text; then the connection is closed
  with code 1013 (try again later).

The election itself (:mod:`scheduler.bus.leadership`) decides what the answers say,
through :class:`~scheduler.policy.leadership.Leadership`.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from scheduler import codec
from scheduler.bus.config import BusConfig
from scheduler.bus.guard import HandshakeGuard, peer_of
from scheduler.bus.http import error, is_websocket, json_response
from scheduler.policy.leadership import Leadership
from scheduler.protocol import Error, Register
from scheduler.protocol_leader import LEADER_FIELD, NotLeader
from scheduler.protocol_types import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

_MAX_REASON: Final = 120
"""Bytes of a close reason (the protocol allows 123)."""


def http_of(ws_url: str) -> str:
    """The HTTP URL of the bus at WebSocket URL ``ws_url`` (``ws`` → ``http``)."""
    return "http" + ws_url.removeprefix("ws")


class StandbyListener:
    """The listener of a standby bus: health, redirects, refusals (see the module)."""

    def __init__(self, config: BusConfig, leadership: Leadership) -> None:
        """Listen where ``config`` says, answering as ``leadership`` stands."""
        self._config = config
        self._leadership = leadership
        self._guard = HandshakeGuard(config.host, config.allow_origins, config.max_connections)
        self._server: Server | None = None

    async def start(self) -> int:
        """Bind and serve; return the port (an ephemeral one for port 0). Raises OSError."""
        config = self._config
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            process_request=self._process_request,
            ssl=config.ssl_context(),
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        refused = self._guard.check(ws, request)
        if refused is not None or is_websocket(request):
            return refused
        path = urlsplit(request.path).path
        if path == "/healthz":
            return json_response(HTTPStatus.OK, self._leadership.health())
        leader = self._leadership.named_leader()
        if leader is None:
            return error(HTTPStatus.SERVICE_UNAVAILABLE, self._leadership.refusal())
        location = redirect_location(http_of(leader), request.path)
        if location is None:
            return error(HTTPStatus.BAD_REQUEST, "request target: must be a path starting with /")
        response = error(HTTPStatus.TEMPORARY_REDIRECT, self._leadership.refusal())
        response.headers["Location"] = location
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        """Answer the first frame with a refusal naming the leader, then close."""
        self._guard.opened()
        try:
            frame = await asyncio.wait_for(ws.recv(), self._config.register_timeout)
            await ws.send(self._answer(frame))
        except (TimeoutError, ConnectionClosed) as exc:
            log.debug("%s: nothing to answer: %s", peer_of(ws), exc)
        finally:
            self._guard.closed()
            reason = self._leadership.refusal().encode()[:_MAX_REASON].decode(errors="ignore")
            await ws.close(CloseCode.TRY_AGAIN_LATER, reason)

    def _answer(self, frame: str | bytes) -> str:
        """``not_leader`` to a v2 ``register``, else an ``error`` on ``leader``."""
        message = self._leadership.refusal()
        try:
            decoded = codec.decode_client(frame)
        except codec.ProtocolError:
            decoded = None
        if isinstance(decoded, Register) and decoded.protocol == 2:
            return codec.encode(NotLeader(message, self._leadership.named_leader()))
        return codec.encode(Error(message, field=LEADER_FIELD))


def redirect_location(leader: str, target: str) -> str | None:
    """Where a standby redirects the HTTP request for ``target``: the same path and query
    on the ``leader`` (``http://host:port``); None for a target that is not a plain path
    (an absolute URL, ``//host``, ``@host``), which must not choose where the client goes."""
    if not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return leader + parts.path + (f"?{parts.query}" if parts.query else "")
