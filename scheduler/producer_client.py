"""The producer library: a v2 connection that submits jobs and hears about them.

async with ProducerClient("ws://localhost:8101") as client:
    job_id = await client.submit(JobPayload(priority=0, runtime=1.5))
    async for event in client.events():
        ...
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from types import TracebackType

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from scheduler import protocol
from scheduler.protocol import Accepted, Error, JobEvent, JobPayload, JobRequest, Register

log = logging.getLogger(__name__)


class SubmitError(Exception):
    """The bus refused a submit; ``field`` names the part of the job it blames."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.field = error.field


class BusConnectionLost(Exception):
    """The connection to the bus closed while the client still needed it."""


class ProducerClient:
    """A v2 producer connection. Replies are matched to submits by ``ref``."""

    def __init__(self, url: str, *, name: str | None = None, token: str | None = None) -> None:
        self.url = url
        self.name = name
        self._token = token
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[str]] = {}
        self._events: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        self._closed_reason: str | None = None

    async def __aenter__(self) -> ProducerClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and register as a v2 producer; sets ``name`` to the bus's answer."""
        self._ws = await connect(
            self.url, compression=None, max_size=protocol.MAX_FRAME_BYTES, open_timeout=10
        )
        register = Register(type="producer", protocol=2, name=self.name, token=self._token)
        await self._ws.send(protocol.encode(register))
        reply = protocol.decode_bus(await self._ws.recv())
        if isinstance(reply, Error):
            await self._ws.close()
            raise SubmitError(reply)
        if not isinstance(reply, protocol.Registered):
            await self._ws.close()
            raise BusConnectionLost(f"unexpected reply to register: {reply!r}")
        self.name = reply.name
        self._reader = asyncio.create_task(self._read(self._ws), name="producer-reader")

    async def close(self) -> None:
        """Close the connection; pending submits fail with :class:`BusConnectionLost`."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def submit(self, payload: JobPayload) -> str:
        """Submit one job and return its id once the bus has accepted it."""
        if self._ws is None or self._closed_reason is not None:
            raise BusConnectionLost(self._closed_reason or "not connected")
        ref = next(self._refs)
        accepted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[ref] = accepted
        try:
            await self._ws.send(protocol.encode(JobRequest(payload=payload, ref=ref)))
        except ConnectionClosed as exc:
            self._pending.pop(ref, None)
            raise BusConnectionLost(str(exc)) from None
        return await accepted

    async def events(self) -> AsyncIterator[JobEvent]:
        """Yield every event about this producer's jobs until the connection closes."""
        while (event := await self._events.get()) is not None:
            yield event
        if self._closed_reason is not None:
            raise BusConnectionLost(self._closed_reason)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self._closed_reason = f"connection to {self.url} closed"
            if ws.close_code not in (None, 1000):
                self._closed_reason += f" (code {ws.close_code}: {ws.close_reason})"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BusConnectionLost(self._closed_reason))
            self._pending.clear()
            self._events.put_nowait(None)

    def _on_frame(self, frame: str | bytes) -> None:
        try:
            message = protocol.decode_bus(frame)
        except protocol.ProtocolError as exc:
            log.warning("ignoring a frame from the bus that does not decode: %s", exc)
            return
        if isinstance(message, JobEvent):
            self._events.put_nowait(message)
        elif isinstance(message, Accepted | Error) and isinstance(message.ref, int):
            self._settle(message.ref, message)
        elif isinstance(message, Error):
            log.warning("the bus reports an error: %s", message.message)

    def _settle(self, ref: int, reply: Accepted | Error) -> None:
        future = self._pending.pop(ref, None)
        if future is None or future.done():
            return
        if isinstance(reply, Accepted):
            future.set_result(reply.id)
        else:
            future.set_exception(SubmitError(reply))
