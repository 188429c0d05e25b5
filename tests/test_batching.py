"""Batch frames: the decoder (round trips, bounds, fuzzed), the packing, and a real bus
that batches for the clients that ask and only for them."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st
from test_protocol import json_values
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from scheduler import codec
from scheduler.batch_pack import pack
from scheduler.bus.server import BusServer
from scheduler.connect import register
from scheduler.protocol import (
    Accepted,
    Assign,
    Assignment,
    BusMessage,
    Error,
    JobEvent,
    Register,
    Registered,
    Stop,
)
from scheduler.protocol_types import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES

MESSAGES: list[BusMessage] = [
    Registered(name="s1"),
    Accepted(id="abc", ref=1),
    Error(message="bad", field="payload.priority", ref=3),
    Assign(job=Assignment(id="abc", attempt=1, priority=2, runtime=0.5)),
    Stop(id="abc", attempt=1, reason="cancel"),
    JobEvent(event="started", id="abc", priority=2, state="running", time=1.0),
]


def encoded(messages: list[BusMessage]) -> list[bytes]:
    return [codec.encode(message).encode() for message in messages]


@given(st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=MAX_BATCH_MESSAGES))
def test_a_batch_decodes_into_its_messages_in_order(messages: list[BusMessage]) -> None:
    assert codec.decode_bus_frame(codec.encode_batch(encoded(messages))) == messages


def test_a_single_message_frame_decodes_as_before() -> None:
    for message in MESSAGES:
        assert codec.decode_bus_frame(codec.encode(message)) == [message]


def test_a_bad_message_costs_only_itself_and_a_batch_never_nests() -> None:
    inner = codec.encode_batch(encoded(MESSAGES[:2]))
    frames = [encoded(MESSAGES[:1])[0], b'{"type": "nope"}', inner, encoded(MESSAGES[1:2])[0]]
    first, bad, nested, last = codec.decode_bus_frame(codec.encode_batch(frames))
    assert first == MESSAGES[0] and last == MESSAGES[1]
    assert isinstance(bad, codec.ProtocolError) and bad.message.startswith("batch message:")
    assert isinstance(nested, codec.ProtocolError) and "'batch'" in nested.message


def test_a_batch_past_its_message_bound_is_refused_naming_the_field() -> None:
    frames = encoded([MESSAGES[1]]) * (MAX_BATCH_MESSAGES + 1)
    [error] = codec.decode_bus_frame(codec.encode_batch(frames))
    assert isinstance(error, codec.ProtocolError) and error.field == "messages"
    assert f"length <= {MAX_BATCH_MESSAGES}" in error.message


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_frame_decodes_to_messages_or_errors_and_never_raises(frame: str | bytes) -> None:
    for item in codec.decode_bus_frame(frame):
        assert not isinstance(item, codec.ProtocolError) or item.message


@given(
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["accepted", "event", "batch", "error", "x"])},
            optional={"id": json_values, "message": json_values, "messages": json_values},
        ),
        max_size=8,
    )
    | json_values
)
def test_fuzzed_batches_decode_valid_or_name_what_is_wrong(messages: object) -> None:
    frame = json.dumps({"type": "batch", "messages": messages})
    for item in codec.decode_bus_frame(frame):
        if isinstance(item, codec.ProtocolError):
            assert item.message
        else:
            assert codec.decode_bus(codec.encode(item)) == item


def test_pack_keeps_order_and_bounds_count_and_bytes() -> None:
    small = [(b'{"type":"x","n":%d}' % n, n % 2) for n in range(10)]
    packed = list(pack(small, codec.encode_batch, max_messages=4))
    assert len(packed) == 3 and [weight for _, weight in packed] == [2, 2, 1]
    unpacked = [m for frame, _ in packed for m in json.loads(frame)["messages"]]
    assert unpacked == [json.loads(frame) for frame, _ in small]

    big = (b"[" + b"0," * (MAX_BATCH_BYTES // 2) + b"0]", 7)
    lone = list(pack([small[0], big, small[1]], codec.encode_batch))
    assert lone == [small[0], big, small[1]], "a message past the byte bound travels alone"
    assert list(pack([small[0]], codec.encode_batch)) == [small[0]], "a lone message is not wrapped"
    for frame, _ in pack(small * 2000, codec.encode_batch):
        assert len(frame) <= MAX_BATCH_BYTES


async def producer(bus: BusServer, batch: bool) -> ClientConnection:
    ws = await connect(bus.url)
    register = {"cmd": "register", "type": "producer", "protocol": 2, "batch": batch}
    await ws.send(json.dumps(register))
    first = codec.decode_bus_frame(await ws.recv())
    assert isinstance(first[0], Registered), first
    return ws


async def accepted_refs(ws: ClientConnection, count: int) -> tuple[list[object], int]:
    """Read until ``count`` accepted replies came; their refs, and how many frames held
    more than one message."""
    refs: list[object] = []
    batches = 0
    async with asyncio.timeout(10):
        while len(refs) < count:
            messages = codec.decode_bus_frame(await ws.recv())
            batches += len(messages) > 1
            refs.extend(m.ref for m in messages if isinstance(m, Accepted))
    return refs, batches


async def pipelined_submits(ws: ClientConnection, count: int) -> None:
    for ref in range(count):
        request = {"cmd": "job_request", "payload": {"priority": 5, "runtime": 1}, "ref": ref}
        await ws.send(json.dumps(request))


async def test_a_client_that_asks_gets_one_turn_in_a_batch_and_others_single_frames(
    bus: BusServer,
) -> None:
    batching, plain = await producer(bus, True), await producer(bus, False)
    try:
        await asyncio.gather(pipelined_submits(batching, 50), pipelined_submits(plain, 50))
        refs, batches = await accepted_refs(batching, 50)
        assert refs == list(range(50)), "in order"
        assert batches > 0, "replies and events of one commit share a frame"
        refs, batches = await accepted_refs(plain, 50)
        assert refs == list(range(50)) and batches == 0, "no batch without asking"
    finally:
        await asyncio.gather(batching.close(), plain.close())


async def test_register_keeps_what_follows_registered_in_its_batch() -> None:
    async def fake_bus(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(codec.encode_batch(encoded(MESSAGES[:4])).decode())
        await ws.wait_closed()

    async with serve(fake_bus, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            registration = await register(ws, Register(type="producer", protocol=2, batch=True))
    assert registration.registered == MESSAGES[0]
    assert registration.early == tuple(MESSAGES[1:4]), "each for the client to handle"
