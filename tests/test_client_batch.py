"""Client batch frames: the decoder (round trips, bounds, fuzzed: a message in a batch is
decoded and refused exactly as alone), the scheduler's packing of its outbox, a real bus
that handles each message of a batch as if it had come alone, and a real scheduler that
sends a warm job's two reports in one frame to a bus that takes batches, and single
frames to one that does not say so."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
from conftest import count_reads, unit, wait_until
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_bus import barrier, client, next_event, recv, register, submit
from test_protocol import json_values
from test_scheduler_client import FakeBus, Starter, assign_frame, fake_bus, start_client
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError

from scheduler import codec
from scheduler.bus.server import BusServer
from scheduler.connect import Registration
from scheduler.policy.fence import LeaseView
from scheduler.policy.heartbeat import HeartbeatSchedule
from scheduler.policy.warm import WarmLimits
from scheduler.producer.client import ProducerClient
from scheduler.producer.turn_sender import TurnSender
from scheduler.protocol import (
    ClientMessage,
    Heartbeat,
    JobPayload,
    Register,
    Registered,
    Report,
)
from scheduler.protocol_batch import ClientBatch
from scheduler.protocol_types import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES
from scheduler.tasks import TaskRegistry
from scheduler.worker import client as worker_client
from scheduler.worker.executor import Executor
from scheduler.worker.report_frames import next_frame
from scheduler.worker.report_queue import ReportQueue
from scheduler.worker.session import Session, SessionLinks

__all__ = ["fake_bus", "start_client"]  # fixtures, used by name

Frame = dict[str, Any]

REPORTS: list[ClientMessage] = [
    Report("started", "job-a", 1),
    Report("succeeded", "job-a", 1, exit_code=0, wall_s=0.01, result={"caf\u00e9": [1, 2]}),
    Heartbeat(running=1, queued=0),
    Report("failed", "job-b", 2, error="ValueError: no", traceback="Traceback..."),
]


def batch_of(messages: list[bytes]) -> bytes:
    return codec.encode_client_batch(messages)


def decoded_batch(frame: str | bytes) -> list[ClientMessage | codec.ProtocolError]:
    batch = codec.decode_client_frame(frame)
    assert isinstance(batch, ClientBatch), batch
    return [message for message, _ in codec.batch_messages(batch)]


# --- the decoder ----------------------------------------------------------------------


@given(st.lists(st.sampled_from(REPORTS), min_size=1, max_size=MAX_BATCH_MESSAGES))
def test_a_batch_decodes_into_its_messages_in_order(messages: list[ClientMessage]) -> None:
    frame = batch_of([codec.encode_bytes(message) for message in messages])
    assert decoded_batch(frame) == messages


def test_a_single_message_frame_decodes_as_before() -> None:
    for message in REPORTS:
        assert codec.decode_client_frame(codec.encode(message)) == message


def test_register_and_a_nested_batch_are_refused_in_a_batch_naming_cmd() -> None:
    register = codec.encode_bytes(Register(type="scheduler", protocol=2))
    nested = batch_of([codec.encode_bytes(REPORTS[0])] * 2)
    first, refused_register, refused_nested, last = decoded_batch(
        batch_of([codec.encode_bytes(REPORTS[0]), register, nested, codec.encode_bytes(REPORTS[1])])
    )
    assert (first, last) == (REPORTS[0], REPORTS[1])
    assert isinstance(refused_register, codec.ProtocolError) and refused_register.field == "cmd"
    assert "register may not travel in a batch" in refused_register.message
    assert isinstance(refused_nested, codec.ProtocolError) and refused_nested.field == "cmd"
    assert "a batch may not hold a batch" in refused_nested.message


def test_a_batch_past_its_bounds_is_refused_as_a_whole_naming_messages() -> None:
    small = codec.encode_bytes(REPORTS[0])
    with pytest.raises(codec.ProtocolError) as too_many:
        codec.decode_client_frame(batch_of([small] * (MAX_BATCH_MESSAGES + 1)))
    assert too_many.value.field == "messages"
    assert f"length <= {MAX_BATCH_MESSAGES}" in too_many.value.message

    big = codec.encode_bytes(Report("output", "job-a", 1, output="\u2603" * 4000))
    count = MAX_BATCH_BYTES // len(big) + 1
    with pytest.raises(codec.ProtocolError) as too_big:
        codec.decode_client_frame(batch_of([big] * count).decode())
    assert too_big.value.field == "messages" and f"at most {MAX_BATCH_BYTES} bytes" in str(
        too_big.value
    )
    assert len(decoded_batch(batch_of([big] * (count - 1)))) == count - 1, "within the bound"


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_frame_decodes_or_names_what_is_wrong_and_never_raises_else(
    frame: str | bytes,
) -> None:
    try:
        message = codec.decode_client_frame(frame)
    except codec.ProtocolError as exc:
        assert exc.message
        return
    if isinstance(message, ClientBatch):
        for item, _ in codec.batch_messages(message):
            assert not isinstance(item, codec.ProtocolError) or item.message


@settings(max_examples=50)  # each example is a batch of up to 8 messages, each decoded twice
@given(
    st.lists(
        st.fixed_dictionaries(
            {"cmd": st.sampled_from(["report", "heartbeat", "batch", "register", "cancel", "x"])},
            optional={
                "event": st.sampled_from(["started", "succeeded", "bogus"]) | json_values,
                "id": json_values,
                "attempt": json_values,
                "ref": json_values,
                "messages": json_values,
                "type": json_values,
            },
        ),
        max_size=8,
    )
)
def test_each_fuzzed_message_of_a_batch_is_decoded_or_refused_as_if_alone(
    messages: list[Frame],
) -> None:
    raws = [json.dumps(message) for message in messages]
    frame = json.dumps({"cmd": "batch", "messages": messages})
    assume("Infinity" not in frame)  # not JSON: the whole frame is refused
    items = decoded_batch(frame)
    assert len(items) == len(raws)
    for item, raw, message in zip(items, raws, messages, strict=True):
        alone: ClientMessage | codec.ProtocolError
        try:
            alone = codec.decode_client(raw)
        except codec.ProtocolError as exc:
            alone = exc
        if message["cmd"] == "batch" or isinstance(alone, Register):
            assert isinstance(item, codec.ProtocolError) and item.message
        elif isinstance(alone, codec.ProtocolError):
            assert isinstance(item, codec.ProtocolError)
            assert (item.message, item.field) == (alone.message, alone.field), "as alone"
        else:
            assert item == alone


# --- the scheduler's packing -------------------------------------------------------------


def queue_of(*reports: Report) -> ReportQueue:
    queue = ReportQueue()
    for report in reports:
        queue.append(report)
    return queue


def test_next_frame_packs_what_waits_in_order_within_the_bounds() -> None:
    reports = [Report("started", f"job-{n}", 1) for n in range(10)]
    queue = queue_of(*reports)
    taken, frame = next_frame(queue, batching=True, max_messages=4)
    assert taken == reports[:4] and decoded_batch(frame) == reports[:4]
    assert list(queue) == reports[4:], "the rest waits, in order"

    taken, frame = next_frame(queue_of(reports[0]), batching=True)
    assert taken == [reports[0]] and frame == codec.encode_bytes(reports[0]), "a lone report"
    taken, frame = next_frame(queue_of(*reports), batching=False)
    assert taken == [reports[0]] and frame == codec.encode_bytes(reports[0]), "an older bus"

    big = Report("output", "job-x", 1, output="x" * 4000)
    queue = queue_of(*[big] * 100)
    while queue:
        taken, frame = next_frame(queue, batching=True)
        assert len(frame) <= MAX_BATCH_BYTES and decoded_batch(frame) == taken


def test_a_start_awaits_its_end_until_a_report_ending_its_attempt_follows_it() -> None:
    started, progress = Report("started", "a", 1), Report("progress", "a", 1, progress=0.5)
    assert not queue_of().awaits_end()
    assert queue_of(started, progress).awaits_end()
    assert queue_of(started, Report("succeeded", "b", 1)).awaits_end()
    assert not queue_of(started, progress, Report("failed", "a", 1)).awaits_end()
    assert queue_of(Report("succeeded", "b", 1), Report("started", "b", 2)).awaits_end()


# --- a real bus ---------------------------------------------------------------------------


async def test_the_bus_handles_each_message_of_a_batch_as_if_alone(bus: BusServer) -> None:
    async with client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        reply = await register_scheduler(scheduler)
        assert reply["batch"] is True, "the bus says it takes batch frames"
        job_id = await submit(producer, runtime=1)
        assert (await recv(scheduler))["job"]["id"] == job_id

        def report(event: str, **more: Any) -> Frame:
            return {"cmd": "report", "event": event, "id": job_id, "attempt": 1, **more}

        messages: list[Frame] = [
            report("started"),
            report("progress", progress=7, ref="bad-progress"),
            {"cmd": "job_request", "payload": {"runtime": 1}, "ref": "not-yours"},
            {"cmd": "register", "type": "scheduler", "protocol": 2, "ref": "again"},
            {"cmd": "batch", "messages": [], "ref": "nested"},
            {"cmd": "heartbeat", "running": 1},
            report("succeeded", exit_code=0),
        ]
        await scheduler.send(json.dumps({"cmd": "batch", "messages": messages}))
        errors = [await recv(scheduler) for _ in range(4)]
        assert [(e["type"], e["field"], e["ref"]) for e in errors] == [
            ("error", "progress", "bad-progress"),
            ("error", "cmd", "not-yours"),
            ("error", "cmd", "again"),
            ("error", "cmd", "nested"),
        ]
        assert "only a producer" in errors[1]["message"]
        assert "register may not travel in a batch" in errors[2]["message"]
        assert (await next_event(producer, "started"))["id"] == job_id
        final = await next_event(producer, "succeeded")
        assert final["id"] == job_id, "the good messages around the bad ones were handled"
        await barrier(scheduler)


async def test_an_oversized_batch_costs_only_itself_and_the_bus_keeps_serving(
    bus: BusServer,
) -> None:
    async with client(bus) as producer, client(bus) as scheduler:
        await register(producer, "producer")
        await register_scheduler(scheduler)
        job_id = await submit(producer, runtime=1)
        await recv(scheduler)
        started = {"cmd": "report", "event": "started", "id": job_id, "attempt": 1}
        too_many = {"cmd": "batch", "messages": [started] * (MAX_BATCH_MESSAGES + 1), "ref": 9}
        await scheduler.send(json.dumps(too_many))
        error = await recv(scheduler)
        assert (error["type"], error["field"], error["ref"]) == ("error", "messages", 9)
        ended = {**started, "event": "succeeded"}
        await scheduler.send(json.dumps({"cmd": "batch", "messages": [started, ended]}))
        assert (await next_event(producer, "succeeded"))["id"] == job_id


async def test_a_batch_gets_no_further_than_its_messages_would_alone(bus: BusServer) -> None:
    async with client(bus) as stranger, client(bus) as producer:
        # As alone: an unregistered client's frame is answered if it says protocol 2.
        beat = {"cmd": "heartbeat", "ref": 1, "protocol": 2}
        await stranger.send(json.dumps({"cmd": "batch", "messages": [beat, beat]}))
        for _ in range(2):
            error = await recv(stranger)
            assert error["type"] == "error" and "register first" in error["message"]
        await register(producer, "producer")
        await producer.send(json.dumps({"cmd": "batch", "messages": [beat]}))
        error = await recv(producer)
        assert error["type"] == "error" and "only a scheduler may" in error["message"]
    assert bus.scheduler_names() == []


async def register_scheduler(ws: Any) -> Frame:
    frame = {"cmd": "register", "type": "scheduler", "protocol": 2, "name": "s1", "size": 1}
    await ws.send(json.dumps(frame))
    reply = await recv(ws)
    assert reply["type"] == "registered", reply
    return reply


# --- a real scheduler ---------------------------------------------------------------------

NOOP = JobPayload(priority=5, runtime=1e-6)


async def test_a_warm_scheduler_sends_a_jobs_start_and_end_in_one_frame(
    bus: BusServer, start_client: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for any loaded machine: the wait ends as soon as the job's end is queued.
    monkeypatch.setattr(worker_client, "REPORT_LINGER_S", 5 * unit())
    frames = record_frames(bus, monkeypatch)
    start_client(bus.url, name="warm", size=1, warm=WarmLimits(max_jobs=10))
    await wait_until(lambda: "warm" in bus.scheduler_names(), 10 * unit(), "it registers")
    async with ProducerClient(bus.url) as producer:
        for _ in range(2):
            job_id = await producer.submit(NOOP)
            assert (await job_id.wait(timeout=10 * unit())).event == "succeeded"
            reports = [json.loads(frame) for frame in frames if job_id in frame]
            assert len(reports) == 1 and reports[0]["cmd"] == "batch", reports
            events = [(m["event"], m["id"]) for m in reports[0]["messages"]]
            assert events == [("started", job_id), ("succeeded", job_id)]


def record_frames(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch, role: str = "scheduler"
) -> list[str]:
    """Every text frame the bus reads from a registered ``role`` from now on, in order."""
    frames: list[str] = []
    on_frame: Callable[[Any, str | bytes], None] = bus._on_frame

    def recording(client: Any, frame: str | bytes) -> None:
        if isinstance(frame, str) and client.role == role:
            frames.append(frame)
        on_frame(client, frame)

    monkeypatch.setattr(bus, "_on_frame", recording)
    return frames


@pytest.mark.parametrize("bus_takes_batches", [False, True])
async def test_a_scheduler_batches_only_for_a_bus_that_says_it_takes_batches(
    fake_bus: FakeBus,
    start_client: Starter,
    monkeypatch: pytest.MonkeyPatch,
    bus_takes_batches: bool,
) -> None:
    monkeypatch.setattr(worker_client, "REPORT_LINGER_S", 5 * unit())
    start_client(fake_bus.url, size=1, warm=WarmLimits(max_jobs=10))
    peer = await fake_bus.peer()
    await peer.expect("register")
    registered = {"type": "registered", "name": "s", "protocol": 2}
    await peer.send(registered | ({"batch": True} if bus_takes_batches else {}))
    await peer.send(assign_frame("job-1", runtime=1e-6))
    if bus_takes_batches:
        batch = await peer.expect("batch")
        assert [m["event"] for m in batch["messages"]] == ["started", "succeeded"]
    else:
        assert (await peer.expect("report"))["event"] == "started"
        assert (await peer.expect("report"))["event"] == "succeeded"
    assert [f["cmd"] for f in peer.log if f["cmd"] != "heartbeat"] == [
        "register",
        *(["batch"] if bus_takes_batches else ["report", "report"]),
    ]


class FailingSocket:
    """Stands in for a connection: its first send fails, later ones are kept."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.failed = False

    async def send(self, frame: bytes, text: bool = False) -> None:
        assert text, "reports travel as text frames"
        if not self.failed:
            self.failed = True
            raise ConnectionClosedError(None, None)
        self.sent.append(frame)


def session_on(ws: object, outbox: ReportQueue, linger_s: float = 0.0) -> Session:
    """A session of a scheduler client on ``ws`` (a bus that takes batch frames), with
    ``outbox``; nothing runs."""
    links = SessionLinks(
        Executor(1, None, TaskRegistry(), lambda report, assignment: None),
        outbox,
        asyncio.Event(),
        LeaseView(),
        time.monotonic,
        lambda stop: None,
        lambda error: None,
        linger_s,
    )
    registration = Registration(cast(Any, ws), Registered(name="s", batch=True), 0.0)
    return Session(registration, links, HeartbeatSchedule(1.0))


async def test_a_batch_whose_send_fails_is_sent_again_first_in_order() -> None:
    reports = [Report("started", "a", 1), Report("succeeded", "a", 1), Report("started", "b", 1)]
    outbox = queue_of(*reports)
    ws = FailingSocket()
    session = session_on(ws, outbox)
    with pytest.raises(ConnectionClosedError):
        await session.send_next()
    assert list(outbox) == reports, "every report of the failed batch waits, in order"
    assert await session.send_next() == 3
    assert ws.sent == [codec.encode_client_batch([codec.encode_bytes(r) for r in reports])]


# --- a producer's requests ------------------------------------------------------------


async def test_a_producers_submits_of_one_loop_turn_travel_as_one_frame(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = record_frames(bus, monkeypatch, role="producer")
    payload = JobPayload(priority=5, runtime=30)
    async with ProducerClient(bus.url) as producer:
        jobs = await asyncio.gather(*(producer.submit(payload) for _ in range(20)))
        await producer.submit(payload)
    [batch, lone] = [json.loads(frame) for frame in frames]
    assert [m["payload"]["job_id"] for m in batch["messages"]] == jobs, "one frame, in order"
    assert lone["cmd"] == "job_request", "a lone request is a plain frame"


async def test_the_submits_of_a_batch_frame_look_their_jobs_up_in_one_query(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ProducerClient(bus.url) as producer:
        old = JobPayload(priority=5, runtime=30, job_id="old", on_conflict="ignore")
        await producer.submit(old)
        await producer.cancel("old")  # final: only the journal knows it now
        reads = count_reads(bus.journal, monkeypatch)
        new = [JobPayload(priority=5, runtime=30, job_id=f"new-{n}") for n in range(20)]
        replies = await asyncio.gather(*(producer.submit_accepted(p) for p in [*new, old]))
    assert [r.existing for r in replies] == [False] * 20 + [True], "as if each came alone"
    # One query for the 21 ids, none per submit; then the client's catch-up watch of the
    # job that existed (a frame of its own) reads it once more.
    assert reads == ["get_rows", "get_row"]


async def test_a_watch_of_jobs_only_the_journal_knows_reads_them_in_one_query(
    bus: BusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ProducerClient(bus.url) as producer:
        ids = [str(await producer.submit(JobPayload(priority=5, runtime=30))) for _ in range(3)]
        for job_id in ids:
            await producer.cancel(job_id)  # final: only the journal knows them now
        reads = count_reads(bus.journal, monkeypatch)
        reply = await producer.watch([*ids, "never"])
    assert sorted(event.id for event in reply.jobs) == sorted(ids)
    assert {event.event for event in reply.jobs} == {"cancelled"}
    assert reply.unknown == ["never"]
    assert reads == ["get_rows"]


async def test_a_producer_sends_single_frames_to_a_bus_that_does_not_take_batches() -> None:
    received: list[Frame] = []

    async def old_bus(ws: ServerConnection) -> None:
        async for frame in ws:
            message = json.loads(frame)
            received.append(message)
            if message["cmd"] == "register":
                await ws.send(json.dumps({"type": "registered", "name": "p", "protocol": 2}))
            else:
                job_id = message["payload"]["job_id"]
                reply = {"type": "accepted", "id": job_id, "ref": message["ref"]}
                await ws.send(json.dumps(reply))

    async with serve(old_bus, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with ProducerClient(f"ws://127.0.0.1:{port}") as producer:
            await asyncio.gather(*(producer.submit(NOOP) for _ in range(3)))
    assert [m["cmd"] for m in received] == ["register", *["job_request"] * 3]


class SlowSocket:
    """Stands in for a connection whose sends wait until ``open`` is set."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.open = asyncio.Event()

    async def send(self, frame: bytes, text: bool = False) -> None:
        await self.open.wait()
        self.sent.append(frame)


async def test_frames_given_while_a_batch_is_sent_follow_it_in_order() -> None:
    ws = SlowSocket()
    sender = TurnSender(cast(Any, ws), batching=True)
    first = [asyncio.create_task(sender.send(b'{"n":%d}' % n)) for n in range(3)]
    await asyncio.sleep(0)  # the first turn's frames are taken: its send waits
    await asyncio.sleep(0)
    later = [asyncio.create_task(sender.send(b'{"n":%d}' % n)) for n in range(3, 5)]
    ws.open.set()
    await asyncio.gather(*first, *later)
    sent = [json.loads(frame) for frame in ws.sent]
    assert [[m["n"] for m in batch["messages"]] for batch in sent] == [[0, 1, 2], [3, 4]]


class CountingSocket:
    """Stands in for a connection: records each frame sent and how many frames the test
    had given the sender by then."""

    def __init__(self) -> None:
        self.given = 0
        self.sent: list[tuple[int, bytes]] = []

    async def send(self, frame: bytes, text: bool = False) -> None:
        self.sent.append((self.given, frame))


async def test_a_full_batch_goes_out_before_the_rest_of_its_turn_is_given() -> None:
    ws = CountingSocket()
    sender = TurnSender(cast(Any, ws), batching=True)
    total = 2 * MAX_BATCH_MESSAGES + 10

    async def give(n: int) -> None:
        ws.given += 1
        await sender.send(b'{"n":%d}' % n)

    await asyncio.gather(*(give(n) for n in range(total)))
    given_at = [given for given, _ in ws.sent]
    batches = [[m["n"] for m in json.loads(frame)["messages"]] for _, frame in ws.sent]
    assert given_at[:2] == [MAX_BATCH_MESSAGES, 2 * MAX_BATCH_MESSAGES], "not at the turn's end"
    assert [n for batch in batches for n in batch] == list(range(total)), "every frame, in order"
    assert [len(batch) for batch in batches] == [MAX_BATCH_MESSAGES, MAX_BATCH_MESSAGES, 10]


async def test_reports_wait_for_a_started_jobs_end_or_the_linger_and_no_longer() -> None:
    outbox = queue_of(Report("started", "a", 1))
    session = session_on(FailingSocket(), outbox, linger_s=30 * unit())
    lingering = asyncio.create_task(session.linger())
    for report in (Report("started", "b", 1), Report("succeeded", "b", 1)):
        await asyncio.sleep(0)
        outbox.append(report)
        session.links.outbox_ready.set()
    await asyncio.sleep(0)
    assert not lingering.done(), "a still runs"
    outbox.append(Report("succeeded", "a", 1))
    session.links.outbox_ready.set()
    await asyncio.wait_for(lingering, 5 * unit())

    started = time.monotonic()
    await session_on(FailingSocket(), queue_of(Report("started", "c", 1)), 0.01).linger()
    assert time.monotonic() - started < 5 * unit(), "held no longer than linger_s"
