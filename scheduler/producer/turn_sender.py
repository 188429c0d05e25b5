"""A producer's requests made in one loop turn, sent as one frame.

To a bus whose ``registered`` said ``batch``, the requests a producer makes in one loop
turn (the submits of an ``asyncio.gather``, say) travel as one client ``batch`` frame
(bounded as :func:`scheduler.batch_pack.pack` says): one write for the producer, one
frame read and one wake-up for the bus. To an older bus each travels alone, as before.

A turn that makes more requests than one batch holds does not wait for its end: each time
a full batch (:data:`~scheduler.protocol_types.MAX_BATCH_MESSAGES` requests) waits and
nothing is being written, it goes out at once, so the bus works on the first requests
of a gather of thousands while the producer makes the rest.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection

from scheduler.batch_pack import pack
from scheduler.codec import encode_client_batch
from scheduler.protocol_types import MAX_BATCH_MESSAGES


class TurnSender:
    """Sends frames over ``ws`` in order; with ``batching``, those given in one loop turn
    as one batch frame."""

    def __init__(self, ws: ClientConnection, batching: bool) -> None:
        """A sender on ``ws``; nothing is sent until :meth:`send`."""
        self._ws = ws
        self._batching = batching
        self._turn: list[bytes] = []
        self._sending: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        """Held while frames are written: whoever holds it writes the oldest first."""

    async def send(self, frame: bytes) -> None:
        """Send ``frame`` (an encoded client message) after every frame given before it;
        return once it is written. Raises what sending raises (``ConnectionClosed``)."""
        if not self._batching:
            await self._ws.send(frame, text=True)
            return
        self._turn.append(frame)
        if self._sending is None:
            # A task runs in the next loop turn: every frame given in this one is there.
            self._sending = asyncio.get_running_loop().create_task(self._send_turns())
            self._sending.add_done_callback(_retrieve)
        sending = self._sending
        if len(self._turn) >= MAX_BATCH_MESSAGES and not self._writing.locked():
            await self._write_waiting()
        await asyncio.shield(sending)

    async def _send_turns(self) -> None:
        """Send what waits, packed, until nothing does (frames given meanwhile too)."""
        try:
            while self._turn:
                await self._write_waiting()
        finally:
            self._turn = []
            self._sending = None

    async def _write_waiting(self) -> None:
        """Write every frame waiting, packed, oldest first."""
        async with self._writing:
            turn, self._turn = self._turn, []
            for frame, _ in pack([(frame, 0) for frame in turn], encode_client_batch):
                await self._ws.send(frame, text=True)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a failed send's error as seen: every request it carried got it already, or
    was cancelled (and is sent again after a reconnect)."""
    if not task.cancelled():
        task.exception()
