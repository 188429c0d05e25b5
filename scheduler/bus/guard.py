"""The HTTP handshake guard: which connections the bus lets open a WebSocket at all.

Before a WebSocket opens, :meth:`HandshakeGuard.check` (the server's
``process_request``) refuses a connection past ``max_connections`` (503), a ``Host``
header naming a host the bus is not (a DNS-rebinding page reaches us under its own
name; 403) and a browser ``Origin`` not allowed (403). The decisions are the pure
functions :func:`header_refusal` and :func:`host_allowed`; the guard adds the
connection count and the logging.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Sequence
from http import HTTPStatus
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

logger = logging.getLogger("scheduler.bus.server")

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
"""``Host`` header names always accepted."""


def host_name(header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8101`` gives ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.partition(":")[0]


def bracketed(host: str) -> str:
    """``host`` as written before ``:port``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` (maybe in brackets) is an IP address rather than a name."""
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def allowed_hosts(listen_host: str) -> frozenset[str]:
    """The ``Host`` names a bus listening on ``listen_host`` accepts besides IP literals."""
    return LOOPBACK_HOSTS | {bracketed(listen_host.lower())}


def host_allowed(host: str, allowed: Collection[str]) -> bool:
    """Whether a ``Host`` header naming ``host`` is accepted: one of ``allowed`` or an IP
    literal (a rebinding page reaches us under its own DNS name, never an address)."""
    return host in allowed or is_ip_literal(host)


def header_refusal(
    hosts: Sequence[str],
    origins: Sequence[str],
    allowed: Collection[str],
    allow_origins: Collection[str],
) -> str | None:
    """Which header refuses a handshake with these ``Host`` and ``Origin`` headers
    (``"Host"`` unless exactly one names an allowed host, ``"Origin"`` if any origin is
    neither in ``allow_origins`` nor the bus's own, :func:`same_origins`), or None if
    none does."""
    if len(hosts) != 1 or not host_allowed(host_name(hosts[0]), allowed):
        return "Host"
    same = same_origins(hosts[0])
    if any(origin not in allow_origins and origin.lower() not in same for origin in origins):
        return "Origin"
    return None


def same_origins(host: str) -> frozenset[str]:
    """The ``Origin`` s of pages the bus itself serves under ``Host`` header ``host``
    (its dashboard, over http or https): always allowed, as the Host check passed."""
    host = host.strip().lower()
    return frozenset({f"http://{host}", f"https://{host}"})


def peer_of(ws: ServerConnection) -> str:
    """The connection's remote address as ``host:port`` (IPv6 in brackets)."""
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{bracketed(str(address[0]))}:{address[1]}"
    return str(address)


class HandshakeGuard:
    """Counts open connections and refuses handshakes past the cap or with foreign
    ``Host`` or ``Origin`` headers."""

    def __init__(
        self, listen_host: str, allow_origins: Collection[str], max_connections: int
    ) -> None:
        self._allowed = allowed_hosts(listen_host)
        self._allow_origins = allow_origins
        self._max = max_connections
        self._open = 0
        self._refusing = False

    @property
    def open(self) -> int:
        """How many connections are open (registered or not)."""
        return self._open

    def opened(self) -> None:
        """Count a connection that opened."""
        self._open += 1

    def closed(self) -> None:
        """Count a connection that closed."""
        self._open -= 1

    def check(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse connections past ``max_connections``, foreign ``Host`` names (DNS
        rebinding) and browser ``Origin`` s: the response that refuses, or None."""
        if self._full(ws):
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        hosts = request.headers.get_all("Host")
        origins = request.headers.get_all("Origin")
        refused = header_refusal(hosts, origins, self._allowed, self._allow_origins)
        if refused is None:
            return None
        values = hosts if refused == "Host" else origins
        logger.warning("%s: refused: %s %s not allowed", peer_of(ws), refused, values)
        return ws.respond(HTTPStatus.FORBIDDEN, f"{refused} not allowed\n")

    def _full(self, ws: ServerConnection) -> bool:
        """Whether ``max_connections`` are open (logged once until one closes)."""
        if self._open < self._max:
            self._refusing = False
            return False
        if not self._refusing:
            self._refusing = True
            logger.warning(
                "%s: refused: %d connections open (max connections %d); refusing more until"
                " one closes",
                peer_of(ws),
                self._open,
                self._max,
            )
        return True
