"""One client connection of the bus and what it registered as."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedError
from websockets.frames import CloseCode

from scheduler.bus.gate import FrameGate, Refusal
from scheduler.bus.outbox import FrameOutbox
from scheduler.codec import ProtocolError, encode, ref_of, says_v2
from scheduler.policy.access import Grant
from scheduler.protocol import BusMessage
from scheduler.protocol_types import Role

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")

CLEAN_CLOSE: Final = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY})
"""Close codes that mean the client went away on purpose."""


@dataclass(eq=False)
class Connection:
    """One connection and what it registered as (compared by identity)."""

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
    holds: bool = False
    """A v2 scheduler that takes held assignments (see :class:`~scheduler.protocol.Assign`)."""

    def become(
        self, name: str, role: Role, protocol: int, batch: bool = False, hold: bool = False
    ) -> None:
        """Record that the client registered as ``name``, a ``role`` speaking
        ``protocol`` (v2 and ``batch``: it takes batch frames; a v2 scheduler and
        ``hold``: it takes held assignments); its log lines now carry that name."""
        self.name = name
        self.outbox.rename(name)
        self.role, self.protocol = role, protocol
        self.outbox.batching = batch and protocol == 2
        self.holds = hold and protocol == 2 and role == "scheduler"

    def send(self, message: BusMessage, refusal: Refusal | None = None) -> None:
        """Queue ``message`` (a reply, a stop) for this client, behind every change not
        yet durable (``refusal``: see :meth:`FrameGate.send`)."""
        self.gate.send(self, encode(message).encode(), counted=False, refusal=refusal)

    def send_now(self, message: BusMessage) -> None:
        """Send ``message`` without waiting for the journal: a refusal, which changes
        nothing."""
        self.outbox.push(encode(message).encode(), counted=False)

    def refuse(self, error: ProtocolError, frame: str | None) -> None:
        """Log a refused frame and answer it with an error if the client speaks v2; a
        client not registered yet is answered at once (a refusal journals nothing, and
        nothing was sent to it before), not behind a journal that may be failing."""
        logger.warning("%s: refused frame: %s", self.outbox.label, error.message)
        if self.role is None:
            if says_v2(frame):
                self.send_now(error.to_error(None if frame is None else ref_of(frame)))
        elif self.protocol == 2:
            self.send(error.to_error(None if frame is None else ref_of(frame)))


def log_closed(label: str, exc: ConnectionClosedError) -> None:
    """Log a connection that ended without a clean close: INFO when the client just went
    away (no close frame) or closed normally, WARNING when either side sent an error code."""
    codes = [frame.code for frame in (exc.rcvd, exc.sent) if frame is not None]
    clean = all(code in CLEAN_CLOSE for code in codes)
    level = logging.INFO if clean else logging.WARNING
    logger.log(level, "%s: connection closed: %s", label, exc)
