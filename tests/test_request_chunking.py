"""How the producer library cuts list requests into frames the bus accepts
(:mod:`scheduler.producer.chunking`) and what it does after a connection closed on a frame
too big (:mod:`scheduler.producer.resend`): pure checks, no bus."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.frames import Close, CloseCode

from scheduler import codec
from scheduler.producer.chunking import (
    MAX_IDS_PER_REQUEST,
    Builder,
    FrameTooBig,
    id_sizes,
    spans,
    submit_in_parts,
    watch_in_parts,
)
from scheduler.producer.resend import Resender
from scheduler.producer.waiters import EventWaiters
from scheduler.protocol import (
    BusMessage,
    ClientMessage,
    JobEvent,
    JobPayload,
    SubmitMany,
    SubmitResult,
    SubmittedMany,
    Watch,
    Watching,
)
from scheduler.protocol_queries import GetStats, ListJobs
from scheduler.protocol_types import MAX_FRAME_BYTES

MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG


def test_spans_cut_at_the_byte_bound_counting_the_commas() -> None:
    assert spans([10] * 5, 20, max_bytes=41) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert spans([10] * 5, 20, max_bytes=40) == [slice(i, i + 1) for i in range(5)]


def test_spans_cut_at_the_item_bound() -> None:
    assert spans([1] * 5, 0, max_items=2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


def test_no_items_is_one_empty_request() -> None:
    assert spans([], 20) == [slice(0, 0)]


def test_an_item_that_fits_no_request_is_refused_naming_it() -> None:
    with pytest.raises(FrameTooBig, match="job 1 encodes to 30 bytes.*bound of 40 bytes"):
        spans([5, 30, 5], 20, max_bytes=40, what="job")


@settings(max_examples=60)
@given(
    sizes=st.lists(st.integers(1, 50), max_size=60),
    overhead=st.integers(0, 30),
    room=st.integers(50, 200),
    max_items=st.none() | st.integers(1, 10),
)
def test_spans_cover_every_item_in_order_each_part_full_and_under_the_bounds(
    sizes: list[int], overhead: int, room: int, max_items: int | None
) -> None:
    max_bytes = overhead + room
    parts = spans(sizes, overhead, max_bytes=max_bytes, max_items=max_items)
    assert [i for part in parts for i in range(len(sizes))[part]] == list(range(len(sizes)))
    for part, after in itertools.zip_longest(parts, parts[1:]):
        chosen = sizes[part]
        assert overhead + sum(chosen) + max(len(chosen) - 1, 0) <= max_bytes
        assert max_items is None or len(chosen) <= max_items
        if after is not None:  # the next item would not have fitted
            grown = overhead + sum(chosen) + len(chosen) + sizes[after.start]
            assert grown > max_bytes or len(chosen) == max_items


@dataclass
class FakeBus:
    """Answers each request as the bus would, recording its frame."""

    frames: list[bytes]

    async def ask(self, build: Builder) -> BusMessage:
        message = build(len(self.frames) + 1)
        self.frames.append(codec.encode(message).encode())
        if isinstance(message, SubmitMany):
            ids = [msgspec.json.decode(raw, type=JobPayload).job_id for raw in message.jobs]
            return SubmittedMany(results=[SubmitResult(id=i) for i in ids], ref=message.ref)
        assert isinstance(message, Watch)
        events = [
            JobEvent(event="queued", id=i, priority=5, state="queued", time=0.0)
            for i in message.ids
        ]
        return Watching(
            jobs=events, unknown=[f"unknown-{i}" for i in message.ids[:1]], ref=message.ref
        )


async def test_a_batch_that_fits_one_frame_is_one_request_in_its_order() -> None:
    payloads = [
        JobPayload(runtime=1.0, job_id=f"job-{n}", depends_on=["job-2"] * (n == 0))
        for n in range(3)
    ]
    bus = FakeBus([])
    results = await submit_in_parts(bus.ask, payloads)
    assert [r.id for r in results] == ["job-0", "job-1", "job-2"]
    sent = msgspec.json.decode(bus.frames[0])["jobs"]
    assert len(bus.frames) == 1 and [job["job_id"] for job in sent] == ["job-0", "job-1", "job-2"]


async def test_a_long_batch_goes_in_frames_under_the_bound_dependencies_first() -> None:
    """2.5 MB of jobs: three frames, each under 1 MiB; the first job depends on the last,
    which is sent first; the results come back in the caller's order."""
    filler = "x" * 1000
    payloads = [JobPayload(runtime=1.0, job_id=f"job-{n}", args=[filler]) for n in range(2500)]
    payloads[0] = JobPayload(runtime=1.0, job_id="job-0", args=[filler], depends_on=["job-2499"])
    bus = FakeBus([])
    results = await submit_in_parts(bus.ask, payloads)
    assert [r.id for r in results] == [p.job_id for p in payloads]
    assert len(bus.frames) == 3
    assert all(len(frame) <= MAX_FRAME_BYTES for frame in bus.frames)
    sent = [job["job_id"] for frame in bus.frames for job in msgspec.json.decode(frame)["jobs"]]
    assert sent.index("job-2499") < sent.index("job-0")
    assert sorted(sent) == sorted(p.job_id for p in payloads if p.job_id is not None)


async def test_a_long_watch_goes_in_parts_answered_as_one() -> None:
    ids = [f"job-{n}" for n in range(2 * MAX_IDS_PER_REQUEST + 1)]
    bus = FakeBus([])
    watching = await watch_in_parts(bus.ask, ids)
    assert [event.id for event in watching.jobs] == ids
    assert watching.unknown == ["unknown-job-0", "unknown-job-1000", "unknown-job-2000"]
    assert [len(msgspec.json.decode(f)["ids"]) for f in bus.frames] == [1000, 1000, 1]


def closed(code: int, *, by_bus: bool) -> ClientConnection:
    """A connection as websockets leaves it once closed with ``code``."""
    frame = Close(code, "frame with 9 bytes exceeds limit of 8 bytes")
    protocol = SimpleNamespace(close_rcvd=frame, close_sent=frame, close_rcvd_then_sent=by_bus)
    return cast(ClientConnection, SimpleNamespace(protocol=protocol))


@dataclass
class Pending:
    message: ClientMessage
    future: asyncio.Future[Any]


async def test_a_too_big_close_fails_listing_requests_and_keeps_the_others() -> None:
    """Sent again, a list request (or its reply) would meet the same refusal: it fails
    naming why; a small request whose reply is small stays, to be sent again."""
    loop = asyncio.get_running_loop()
    listing = Pending(ListJobs(ref=1), loop.create_future())
    requests = {1: listing, 2: Pending(GetStats(ref=2), loop.create_future())}
    Resender().settle(closed(MESSAGE_TOO_BIG, by_bus=False), requests, set(), EventWaiters(1))
    assert list(requests) == [2]
    with pytest.raises(FrameTooBig, match="over this client's bound.*list_jobs request is not"):
        await listing.future


async def test_a_frame_the_bus_refused_is_named_so() -> None:
    watch = Pending(Watch(ids=["a"], ref=1), asyncio.get_running_loop().create_future())
    Resender().settle(closed(MESSAGE_TOO_BIG, by_bus=True), {1: watch}, set(), EventWaiters(1))
    with pytest.raises(FrameTooBig, match=f"the bus refused .* its bound is {MAX_FRAME_BYTES}"):
        await watch.future


async def test_a_closed_connection_drops_its_rewatches_and_keeps_the_rest() -> None:
    """A connection that ends otherwise: its re-watches are dropped (the next makes its
    own), other requests stay to be sent again, and the parts keep their length."""
    loop = asyncio.get_running_loop()
    resender = Resender(ids_per_watch=2)
    watches = resender.rewatch({"c", "a", "b"}, itertools.count(7))
    assert {ref: w.ids for ref, w in watches.items()} == {7: ["a", "b"], 8: ["c"]}
    requests = {ref: Pending(w, loop.create_future()) for ref, w in watches.items()}
    requests[9] = Pending(ListJobs(ref=9), loop.create_future())
    resender.settle(closed(CloseCode.GOING_AWAY, by_bus=True), requests, set(), EventWaiters(1))
    assert list(requests) == [9] and resender.ids_per_watch == 2


async def test_a_rewatch_refused_as_too_big_is_halved_then_given_up_at_one_job() -> None:
    """No loop: parts halve to one job; a job whose status alone is refused is given up
    (its handles fail naming why) rather than asked for again."""
    loop = asyncio.get_running_loop()
    waiters = EventWaiters(1)
    watch = waiters.watch_of("a")
    resender, unfinished = Resender(ids_per_watch=2), {"a", "b"}
    for size in (2, 1):
        watches = resender.rewatch(unfinished, itertools.count(1))
        assert [len(w.ids) for w in watches.values()] == [size] * (2 // size)
        requests = {ref: Pending(w, loop.create_future()) for ref, w in watches.items()}
        resender.settle(closed(MESSAGE_TOO_BIG, by_bus=False), requests, unfinished, waiters)
    assert resender.ids_per_watch == 1 and unfinished == set()
    assert watch.closed is not None and "cannot reach this client" in watch.closed
    assert resender.rewatch(unfinished, itertools.count(1)) == {}


def test_an_id_given_as_a_str_subclass_is_measured_as_its_text() -> None:
    """A job handle is its id (a str subclass): it is measured, and sent, as the id."""

    class Handle(str):
        pass

    assert id_sizes([Handle("job-1"), "job-22"]) == [len('"job-1"'), len('"job-22"')]
