"""Frames on their way to each connection, with a memory bound per client and in total.

Every frame the bus sends goes through the client's :class:`FrameOutbox`: written at
once when the socket keeps up, else queued behind a writer task, so a handler never
waits for another client. Queued frames are counted in bytes, per client and across all
clients (:class:`BacklogBudget`). A producer or monitor whose queue passes its per-client
bound is disconnected; when the total passes its bound, the client with the largest
backlog is disconnected first, until the total fits again. The memory so freed is handed
back to the operating system (``malloc_trim`` on glibc).

An outbox set to :attr:`FrameOutbox.batching` (a client that registered with ``batch``)
gathers the frames pushed in one loop turn and sends them at the start of the next one,
packed into batch frames (:func:`scheduler.batch_pack.pack`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from scheduler.batch_pack import Pending, pack
from scheduler.codec import encode_batch

logger = logging.getLogger(__name__)

DEFAULT_MAX_BACKLOG_BYTES: Final = 4 * 1024 * 1024
"""Bytes of frames a producer or monitor may fall behind before it is disconnected."""

DEFAULT_MAX_TOTAL_BACKLOG_BYTES: Final = 64 * 1024 * 1024
"""Bytes of frames all clients together may fall behind before the largest laggard goes."""

_TRIM_EVERY_S: Final = 1.0
"""Least time between two hand-backs of freed memory to the operating system."""

_TRIM_AFTER_BYTES: Final = 256 * 1024
"""A closed connection's backlog at least this big is worth handing back to the OS."""


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class BacklogBudget:
    """The bytes queued in every outbox, and the total bound they share."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._total = 0
        self._droppable: set[FrameOutbox] = set()
        self._trim = _malloc_trim()
        self._trimmed_at = -_TRIM_EVERY_S
        self._trim_pending = False
        self._dropped = 0

    @property
    def limit(self) -> int:
        """Most bytes all outboxes together may queue."""
        return self._limit

    @property
    def total(self) -> int:
        """Bytes queued now, in all outboxes."""
        return self._total

    @property
    def dropped(self) -> int:
        """Outboxes disconnected for their backlog since the start."""
        return self._dropped

    def add(self, outbox: FrameOutbox, size: int) -> None:
        """Count ``size`` more bytes queued in ``outbox``; past the limit, disconnect the
        droppable outbox with the largest backlog until the total fits (maybe ``outbox``)."""
        self._total += size
        while self._total > self._limit and self._droppable:
            laggard = max(self._droppable, key=lambda box: box.queued_bytes)
            if laggard.queued_bytes == 0:
                return
            laggard.drop(f"the bus's total backlog passed {self._limit} bytes; largest first")

    def remove(self, size: int) -> None:
        """Count ``size`` bytes no longer queued."""
        self._total -= size

    def track(self, outbox: FrameOutbox, droppable: bool) -> None:
        """Let ``outbox`` be dropped for the total bound (producers, monitors) or not."""
        if droppable:
            self._droppable.add(outbox)
        else:
            self._droppable.discard(outbox)

    def forget(self, outbox: FrameOutbox, dropped: bool = False) -> None:
        """Stop considering ``outbox`` (closed; ``dropped``: disconnected for its
        backlog, which :attr:`dropped` counts)."""
        self._droppable.discard(outbox)
        self._dropped += dropped

    def freed(self, size: int) -> None:
        """A backlog of ``size`` bytes was dropped: hand big ones back to the OS, at most
        once a second (a later one is deferred, not skipped)."""
        if size < _TRIM_AFTER_BYTES or self._trim is None or self._trim_pending:
            return
        wait = self._trimmed_at + _TRIM_EVERY_S - time.monotonic()
        if wait <= 0:
            self._trim_now()
        else:
            self._trim_pending = True
            asyncio.get_running_loop().call_later(wait, self._trim_now)

    def _trim_now(self) -> None:
        assert self._trim is not None
        self._trim_pending = False
        self._trimmed_at = time.monotonic()
        self._trim()


class FrameOutbox:
    """Frames on their way to one connection, in order. :meth:`push` never waits."""

    def __init__(
        self, ws: ServerConnection, budget: BacklogBudget, bound: int | None, label: str
    ) -> None:
        self._label = label
        self._ws = ws
        self._budget = budget
        self._bound = bound
        self._backlog: deque[Pending] = deque()
        self._turn: list[Pending] = []
        self._turn_handle: asyncio.Handle | None = None
        self.batching = False
        """Whether the frames of one loop turn go out packed in batch frames."""
        self._counted = 0
        self._queued = 0
        self._writer: asyncio.Task[None] | None = None
        self._high_water = ws.transport.get_write_buffer_limits()[1]
        self._dropped = False
        budget.track(self, bound is not None)

    @property
    def label(self) -> str:
        """Who the connection is in log lines: its peer address, then its name."""
        return self._label

    def rename(self, label: str) -> None:
        """Name the connection ``label`` in log lines from now on."""
        self._label = label

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames waiting behind the socket."""
        return self._queued

    @property
    def bound(self) -> int | None:
        """Most bytes of counted frames that may wait; None: no limit, and never dropped
        for the total (schedulers: one frame per held job)."""
        return self._bound

    @bound.setter
    def bound(self, bound: int | None) -> None:
        self._bound = bound
        self._budget.track(self, bound is not None)

    def push(self, frame: bytes, counted: bool = True) -> None:
        """Send text ``frame`` now if nothing waits and the socket keeps up, else queue it.

        A frame the client caused itself (a reply, the events of its own submit) is not
        ``counted``: its reading is paused instead. When a counted frame would take the
        counted bytes waiting past ``bound``, the connection is aborted and later frames
        dropped. Every queued frame counts against the :class:`BacklogBudget`. While
        :attr:`batching`, the frame waits for the end of this loop turn.
        """
        if self._dropped:
            return
        weight = len(frame) if counted else 0
        if not self.batching:
            self._send(frame, weight)
            return
        if self._turn_handle is None:
            self._turn_handle = asyncio.get_running_loop().call_soon(self._send_turn)
        self._turn.append((frame, weight))

    def _send_turn(self) -> None:
        """Send the frames gathered in the last loop turn, packed in batches."""
        self._turn_handle = None
        turn, self._turn = self._turn, []
        for frame, weight in pack(turn, encode_batch):
            self._send(frame, weight)

    def _send(self, frame: bytes, counted: int) -> None:
        """Write ``frame`` now if nothing waits and the socket keeps up, else queue it
        (``counted``: how many of its bytes count against :attr:`bound`)."""
        if self._dropped:
            return
        if not self._backlog and self._ws.transport.get_write_buffer_size() < self._high_water:
            broadcast((self._ws,), frame, text=True)
            return
        size = len(frame)
        if counted and self._bound is not None and self._counted + counted > self._bound:
            self.drop(f"more than {self._bound} bytes waiting")
            return
        self._backlog.append((frame, counted))
        self._counted += counted
        self._queued += size
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        self._budget.add(self, size)

    @property
    def waiting(self) -> int:
        """How many frames wait for the end of this loop turn or behind a full socket
        buffer."""
        return len(self._turn) + len(self._backlog)

    async def flush(self, timeout: float | None = None) -> None:
        """Send what this loop turn gathered, then wait (up to ``timeout`` seconds) until
        no frame waits behind the socket."""
        if self._turn_handle is not None:
            self._turn_handle.cancel()
            self._send_turn()
        if self._writer is not None:
            await asyncio.wait((self._writer,), timeout=timeout)

    async def aclose(self) -> None:
        """Drop whatever is queued and stop the writer task."""
        self._dropped = True
        self._budget.freed(self._clear())
        self._budget.forget(self)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait((self._writer,))

    def drop(self, why: str) -> None:
        """Disconnect this client now, saying ``why`` in the log; later frames are dropped."""
        if self._dropped:
            return
        logger.warning("%s: %s; disconnecting it", self._label, why)
        self._dropped = True
        size = self._clear()
        self._budget.forget(self, dropped=True)
        if self._writer is not None:
            self._writer.cancel()
        self._ws.transport.abort()
        self._budget.freed(size)

    def _clear(self) -> int:
        """Forget every queued frame; return how many bytes they were."""
        size = self._queued
        self._turn.clear()
        if self._turn_handle is not None:
            self._turn_handle.cancel()
            self._turn_handle = None
        self._backlog.clear()
        self._budget.remove(size)
        self._queued = self._counted = 0
        return size

    async def _drain(self) -> None:
        try:
            while self._backlog:
                # The head stays queued until written, so push() queues behind it.
                frame, counted = self._backlog[0]
                await self._ws.send(frame, text=True)
                self._backlog.popleft()
                size = len(frame)
                self._counted -= counted
                self._queued -= size
                self._budget.remove(size)
        except ConnectionClosed:
            self._clear()
        finally:
            self._writer = None
