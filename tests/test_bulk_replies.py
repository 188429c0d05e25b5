"""README, "Bulk submit": "one ``submit_many`` message carries thousands of jobs,
journaled in one transaction; the reply lists ids in order"; "producers reconnect and
``watch`` the jobs they still wait for, so ``producer --wait`` sees every job to its end
through a bus restart"; and "Frames over 1 MiB close that one connection (code 1009)".

The bus's ``submitted_many`` reply can pass 1 MiB although the request did not (each result
repeats the id and, with no scheduler for the task, a 90-byte ``warning``): the client's
WebSocket layer closed with 1009, reconnected, re-sent the request (idempotent, every job
``existing``), got the same oversized reply, and so on for ever. By hand,
``producer --bulk --count 9000 --id-prefix <40 chars>`` never ended (34 reconnects in 60 s),
and ``--count 20000`` looped the same way on its own 2 MB request. The same held for
``watch``, which is how a producer catches up after a reconnect: ``producer --count 8000
--wait --id-prefix <40 chars>`` with the bus SIGKILLed and restarted never ended.

Now clients take long replies from their bus (:data:`scheduler.connect.MAX_BUS_FRAME_BYTES`),
cut long requests into frames the bus accepts (:mod:`scheduler.producer.chunking`), and
fail, rather than send again, a request whose connection was closed with 1009
(:mod:`scheduler.producer.resend`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from conftest import unit

from scheduler import codec, connect
from scheduler.bus.config import BusConfig
from scheduler.bus.server import BusServer
from scheduler.producer import client as client_module
from scheduler.producer.chunking import FrameTooBig, frame_size
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload, SubmitMany, SubmittedMany
from scheduler.protocol_types import MAX_FRAME_BYTES

PREFIX = "a-rather-long-client-prefix-for-bulk-jobs"
LONG_PREFIX = "a-job-id-as-long-as-the-protocol-allows-" * 4
"""Ids near the protocol's 200 characters: fewer jobs make a reply over 1 MiB."""
SMALL_BOUND = 512 * 1024
"""A client bound that stands in for 256 MiB (above the bus's batch frames, 256 KiB)."""


async def test_a_bulk_submit_whose_reply_passes_a_frame_gets_its_answer(bus: BusServer) -> None:
    """The finding's 9,000 jobs with 40-character ids, made cheaper: 4,500 jobs with ids
    near 200 characters fit one request, and their results do not fit one frame."""
    payloads = [JobPayload(runtime=1.0, job_id=f"{LONG_PREFIX}{n}") for n in range(4500)]
    assert frame_size(SubmitMany(jobs=[msgspec.Raw(msgspec.json.encode(p)) for p in payloads])) < (
        MAX_FRAME_BYTES
    )
    async with ProducerClient(bus.url) as producer:
        results = await asyncio.wait_for(producer.submit_many(payloads), 10 * unit())
    assert [r.id for r in results] == [p.job_id for p in payloads]
    assert len(codec.encode(SubmittedMany(results=results))) > MAX_FRAME_BYTES
    assert {r.warning for r in results} != {None}  # no scheduler serves the task


async def test_watching_jobs_whose_statuses_pass_a_frame_gets_its_answer(bus: BusServer) -> None:
    """The finding's 8,000 ids of 40 characters, made cheaper: 4,000 ids near 200."""
    ids = [f"{LONG_PREFIX}{n}" for n in range(4000)]
    async with ProducerClient(bus.url) as producer:
        for start in range(0, len(ids), 1000):
            chunk = [JobPayload(runtime=1.0, job_id=i) for i in ids[start : start + 1000]]
            await producer.submit_many(chunk)
        watching = await asyncio.wait_for(producer.watch(ids), 10 * unit())
    assert [event.id for event in watching.jobs] == ids
    assert len(codec.encode(watching)) > MAX_FRAME_BYTES


async def test_a_submit_many_longer_than_a_frame_is_sent_in_parts(bus: BusServer) -> None:
    """A 1.2 MB batch (the bus refuses a frame over 1 MiB with 1009) is accepted, one
    result per job in order; the first job depends on the last, which travels first."""
    filler = "x" * 4000
    payloads = [JobPayload(runtime=1.0, job_id=f"{PREFIX}-{n}", args=[filler]) for n in range(300)]
    payloads[0] = JobPayload(
        runtime=1.0, job_id=f"{PREFIX}-0", args=[filler], depends_on=[f"{PREFIX}-299"]
    )
    async with ProducerClient(bus.url) as producer:
        results = await asyncio.wait_for(producer.submit_many(payloads), 10 * unit())
    assert [r.id for r in results] == [p.job_id for p in payloads]
    assert [r.error for r in results if r.error is not None] == []


async def test_a_job_too_big_for_any_frame_fails_naming_the_bound(bus: BusServer) -> None:
    """Sent, it would close the connection with 1009 every time: it is refused before."""
    huge = JobPayload(runtime=1.0, args=["x" * MAX_FRAME_BYTES])
    async with ProducerClient(bus.url) as producer:
        with pytest.raises(FrameTooBig, match=f"frame bound of {MAX_FRAME_BYTES} bytes"):
            await producer.submit(huge)
        with pytest.raises(FrameTooBig, match="job 1 encodes to"):
            await producer.submit_many([JobPayload(runtime=1.0), huge])
        assert (await producer.submit_accepted(JobPayload(runtime=1.0))).id


async def test_a_reply_over_the_clients_bound_fails_its_request_once(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply the client refuses (1009) fails its request instead of being asked again
    for ever; the client goes on serving. A bound of 512 KiB stands in for 256 MiB (a
    client's bound must pass the bus's batch frames, up to 256 KiB)."""
    monkeypatch.setattr(connect, "MAX_BUS_FRAME_BYTES", SMALL_BOUND)
    payloads = [JobPayload(runtime=1.0, job_id=f"{LONG_PREFIX}{n}") for n in range(2000)]
    async with ProducerClient(bus.url) as producer:
        with pytest.raises(FrameTooBig, match=f"over this client's bound of {SMALL_BOUND} bytes"):
            await asyncio.wait_for(producer.submit_many(payloads), 10 * unit())
        assert (await asyncio.wait_for(producer.stats(), 10 * unit())).bus


async def test_a_frame_the_bus_refuses_fails_its_request_once(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a frame over the bus's bound sent (a bus with a smaller bound than this
    client knows), its 1009 fails the request instead of a re-send for ever."""
    monkeypatch.setattr(client_module, "encoded_frame", codec.encode_bytes)
    huge = JobPayload(runtime=1.0, args=["x" * MAX_FRAME_BYTES])
    async with ProducerClient(bus.url) as producer:
        with pytest.raises(FrameTooBig, match=f"the bus refused .* {MAX_FRAME_BYTES} bytes"):
            await asyncio.wait_for(producer.submit(huge), 10 * unit())
        assert (await asyncio.wait_for(producer.stats(), 10 * unit())).bus


@asynccontextmanager
async def restartable_bus(db: Path, port: int = 0) -> AsyncIterator[BusServer]:
    """A real bus journaling in ``db`` (to be started again on its port)."""
    async with BusServer(BusConfig(host="127.0.0.1", port=port, db=str(db))) as server:
        yield server


async def rewatch_through_a_restart(db: Path, ids: list[str], args: list[object] | None) -> None:
    """Submit ``ids`` (in requests whose replies pass any bound), restart the bus, cancel
    the last job from another client: the producer hears it only if its re-watch of every
    job was answered."""
    async with restartable_bus(db) as first:
        port = first.port
        producer = ProducerClient(first.url)
        await producer.connect()
        for start in range(0, len(ids), 1000):
            chunk = [
                JobPayload(runtime=1.0, job_id=i, args=args) for i in ids[start : start + 1000]
            ]
            await producer.submit_many(chunk)
    try:
        heard = asyncio.create_task(cancelled(producer, ids[-1]))
        async with restartable_bus(db, port) as second, ProducerClient(second.url) as other:
            await other.cancel(ids[-1])
            await asyncio.wait_for(heard, 10 * unit())
    finally:
        await producer.close()


async def cancelled(producer: ProducerClient, job_id: str) -> JobEvent:
    """The ``cancelled`` event of ``job_id``, once the producer hears it."""
    async for event in producer.events():
        if event.id == job_id and event.event == "cancelled":
            return event
    raise AssertionError("the events ended")


async def test_a_producer_rewatches_its_jobs_after_a_bus_restart(tmp_path: Path) -> None:
    """4,000 unfinished jobs with long ids: in one frame the re-watch reply would be over
    1 MiB (as in the test of ``watch`` above)."""
    await rewatch_through_a_restart(
        tmp_path / "bus.db", [f"{LONG_PREFIX}{n}" for n in range(4000)], None
    )


async def test_a_rewatch_refused_as_too_big_is_asked_in_shorter_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a client bound of 512 KiB, a re-watch of 1,000 jobs (each status ~700 bytes,
    arguments included) in one part is refused: the client halves its parts until they
    pass, instead of asking the same for ever."""
    monkeypatch.setattr(connect, "MAX_BUS_FRAME_BYTES", SMALL_BOUND)
    ids = [f"{LONG_PREFIX}{n}" for n in range(1000)]
    await rewatch_through_a_restart(tmp_path / "bus.db", ids, ["x" * 300])
