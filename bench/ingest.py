"""Ingest and memory: a bus with no scheduler, fed by one lean producer connection.

The producer here is a bare WebSocket client speaking the v2 protocol with frames
encoded before the clock starts, so the figures are the bus's and not the client
library's: it sends every frame back to back while a reader counts the replies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.stats import Json, rate
from bench.system import NOOP_RUNTIME, client_token
from scheduler import codec, protocol, protocol_types
from scheduler.protocol import Error, JobPayload, JobRequest, Register, Registered

BULK_BATCH = 1000
"""Jobs per ``submit_many`` frame."""

_ACCEPTED = '{"type":"accepted"'
_EVENT = '{"type":"event"'


def single_frames(count: int, start_ref: int = 0) -> list[str]:
    """``count`` encoded ``job_request`` frames for no-op jobs, refs from ``start_ref``."""
    payload = JobPayload(priority=5, runtime=NOOP_RUNTIME)
    return [codec.encode(JobRequest(payload=payload, ref=start_ref + i)) for i in range(count)]


def bulk_frames(
    count: int, batch: int = BULK_BATCH, delay: float | None = None
) -> list[tuple[str, int]]:
    """``submit_many`` frames carrying ``count`` no-op jobs (each ``delay`` seconds later,
    if given), ``batch`` a frame, with sizes."""
    payload = JobPayload(priority=5, runtime=NOOP_RUNTIME, delay=delay)
    raw = msgspec.Raw(msgspec.json.encode(payload))
    frames: list[tuple[str, int]] = []
    for ref, first in enumerate(range(0, count, batch)):
        size = min(batch, count - first)
        frames.append((codec.encode(protocol.SubmitMany(jobs=[raw] * size, ref=ref)), size))
    return frames


@dataclass
class _Counter:
    """Replies counted by the reader; ``done`` is set once ``expected`` jobs are answered."""

    expected: int
    accepted: int = 0
    refused: int = 0
    first_error: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float = 0.0

    def add(self, accepted: int, refused: int = 0, error: str | None = None) -> None:
        self.accepted += accepted
        self.refused += refused
        self.first_error = self.first_error or error
        if self.accepted + self.refused >= self.expected and not self.done.is_set():
            self.finished_at = time.perf_counter()
            self.done.set()


class LeanProducer:
    """A registered v2 producer connection whose reader counts replies for :meth:`send_all`.

    The reader drains every frame until the connection closes: a bus does not read from
    a client that lags behind its replies, so a client that stopped reading could not
    even complete the closing handshake.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._counter: _Counter | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, name: str) -> LeanProducer:
        """Connect and register; raise RuntimeError if the bus says no."""
        ws = await connect(url, compression=None, max_size=protocol_types.MAX_FRAME_BYTES)
        await ws.send(
            codec.encode(
                Register(type="producer", protocol=2, name=name, token=client_token("producer"))
            )
        )
        reply = codec.decode_bus(await ws.recv())
        if not isinstance(reply, Registered):
            await ws.close()
            raise RuntimeError(f"register refused: {reply!r}")
        return cls(ws)

    async def close(self) -> None:
        """Close the connection (the reader drains until the bus closes its side)."""
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                counter = self._counter
                if counter is None or not isinstance(frame, str):
                    continue
                if frame.startswith(_ACCEPTED):
                    counter.add(1)
                elif not frame.startswith(_EVENT):
                    _count_other(codec.decode_bus(frame), counter)
        except ConnectionClosed:
            pass
        finally:
            counter = self._counter
            if counter is not None and not counter.done.is_set():
                counter.first_error = counter.first_error or "the bus closed the connection"
                counter.done.set()

    async def send_all(self, frames: Sequence[str], jobs: int, timeout: float) -> Json:
        """Send ``frames`` (``jobs`` jobs in all) back to back; time until all are answered."""
        counter = self._counter = _Counter(jobs)
        t0 = time.perf_counter()
        for frame in frames:
            await self.ws.send(frame)
        await asyncio.wait_for(counter.done.wait(), timeout)
        if counter.accepted < jobs:
            raise RuntimeError(
                f"{counter.accepted} of {jobs} accepted, {counter.refused} refused: "
                f"{counter.first_error}"
            )
        return {"jobs_per_s": rate(jobs, counter.finished_at - t0), "jobs": jobs}


def _count_other(message: protocol.BusMessage, counter: _Counter) -> None:
    if isinstance(message, protocol.SubmittedMany):
        ok = sum(1 for r in message.results if r.id is not None)
        bad = [r for r in message.results if r.id is None]
        counter.add(ok, len(bad), bad[0].error if bad else None)
    elif isinstance(message, protocol.Accepted):
        counter.add(1)
    elif isinstance(message, Error):
        counter.add(0, 1, message.message)


async def bulk_support(url: str) -> str | None:
    """None if the bus answers ``submit_many``, else why not (probed on its own connection)."""
    if not hasattr(protocol, "SubmitMany"):
        return "scheduler.protocol has no SubmitMany"
    producer = await LeanProducer.open(url, "bench-probe")
    try:
        await producer.send_all([bulk_frames(1)[0][0]], 1, 5.0)
    except TimeoutError:
        return "no reply to submit_many within 5 s"
    except RuntimeError as exc:
        return f"submit_many refused: {exc}"
    finally:
        await producer.close()
    return None


async def ingest(url: str, jobs: int, bulk: bool) -> Json:
    """Jobs/s accepted from one producer: single pipelined submits, or ``submit_many``."""
    producer = await LeanProducer.open(url, "bench-ingest")
    try:
        if bulk:
            frames = [frame for frame, _ in bulk_frames(jobs)]
            return await producer.send_all(frames, jobs, 120.0) | {"batch": BULK_BATCH}
        return await producer.send_all(single_frames(jobs), jobs, 120.0)
    finally:
        await producer.close()


async def _rss_around(
    url: str, bus: psutil.Process, name: str, frames: list[str], jobs: int
) -> tuple[int, int]:
    """The bus's RSS with a producer connected, then once the ``jobs`` of ``frames`` are
    all accepted."""
    producer = await LeanProducer.open(url, name)
    try:
        await asyncio.sleep(0.3)
        empty = bus.memory_info().rss
        await producer.send_all(frames, jobs, 300.0)
        await asyncio.sleep(0.5)
        return empty, bus.memory_info().rss
    finally:
        await producer.close()


async def memory(url: str, bus: psutil.Process, jobs: int, bulk: bool) -> Json:
    """Bus RSS with 0 and ``jobs`` queued jobs (no scheduler), and the bytes per job."""
    frames = [f for f, _ in bulk_frames(jobs)] if bulk else single_frames(jobs)
    empty, full = await _rss_around(url, bus, "bench-memory", frames, jobs)
    return {
        "bytes_per_job": round((full - empty) / jobs, 1),
        "rss_empty_mb": round(empty / 2**20, 1),
        "rss_queued_mb": round(full / 2**20, 1),
        "jobs": jobs,
        "submitted_with": "submit_many" if bulk else "pipelined single submits",
    }


SCHEDULED_DELAY_S = 3600.0
"""How far ahead the jobs of :func:`scheduled_memory` are scheduled: past the run."""


async def scheduled_memory(url: str, bus: psutil.Process, jobs: int) -> Json:
    """Bus RSS with 0 and ``jobs`` jobs scheduled an hour ahead (``submit_many``)."""
    frames = [f for f, _ in bulk_frames(jobs, delay=SCHEDULED_DELAY_S)]
    empty, full = await _rss_around(url, bus, "bench-scheduled", frames, jobs)
    return {
        "jobs": jobs,
        "rss_empty_mb": round(empty / 2**20, 1),
        "rss_scheduled_mb": round(full / 2**20, 1),
        "bytes_per_job": round((full - empty) / jobs, 1),
    }
