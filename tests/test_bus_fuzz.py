"""Fuzz a real bus with >= 10,000 mutated frames of every kind, from every role.

A seeded generator mutates valid frames of every message kind (a field dropped, set to a
hostile value — huge integers, out-of-range floats, deep nesting, wrong types —, an
unknown field, another cmd) and adds garbage: truncated JSON, non-objects, binary frames,
invalid UTF-8 in a text frame, frames past the size limit. Each role sends its share:
producers and schedulers of both protocols, a monitor, a connection that never registers,
and fresh connections that register with a mutated frame. Afterwards the bus must be
alive and run a normal job end to end, every frame a v2 client sent that the protocol
refuses must have had an error reply, every connection the bus closed must carry a code
and a reason, no traceback may be logged, and the bus's memory must stay bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from conftest import unit
from test_bus import client, next_event, recv, register, report, submit
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from scheduler.auth import TokenRole, TokenTable
from scheduler.bus.config import BusConfig
from scheduler.bus.server import BusServer
from scheduler.codec import ProtocolError, decode_client, says_v2
from scheduler.protocol import Register
from scheduler.protocol_types import MAX_FRAME_BYTES

FRAMES = 10_000
CHUNK = 25
SEED = 20261129

DEEP = "[" * 1000 + "]" * 1000
HUGE = "1" + "0" * 400
NASTY: tuple[object, ...] = (
    None,
    True,
    -1,
    0,
    2**31,
    2**53,
    2**63,
    2**70,
    -(2**70),
    1e308,
    -1e308,
    0.5,
    "",
    "x" * 300,
    "caf\u00e9 \u2603",
    [],
    {},
    [1, "a", None],
    {"k": {"k": {"k": [1]}}},
    "@@DEEP@@",
    "@@HUGE@@",
    "@@BIGFLOAT@@",
)
"""Values a mutation puts in a field; ``@@...@@`` become raw JSON no Python value gives."""

TEMPLATES: dict[str, dict[str, Any]] = {
    "register": {"cmd": "register", "type": "producer", "protocol": 2, "name": "fz"},
    "job_request": {
        "cmd": "job_request",
        "ref": 1,
        "payload": {"priority": 3, "runtime": 0.5, "task": "sleep", "args": {"a": 1}},
    },
    "submit_many": {
        "cmd": "submit_many",
        "ref": 2,
        "jobs": [{"priority": 1, "runtime": 1}, {"task": "other", "args": [1, 2]}],
    },
    "cancel": {"cmd": "cancel", "id": "nope", "ref": 3},
    "watch": {"cmd": "watch", "ids": ["a", "b"], "ref": 4},
    "vacuum": {"cmd": "vacuum", "older_than_s": 3600, "ref": 5},
    "stats": {"cmd": "stats", "ref": 6},
    "report": {
        "cmd": "report",
        "event": "succeeded",
        "id": "nope",
        "attempt": 1,
        "evictions": 0,
        "wall_s": 0.1,
        "result": {"r": [1]},
    },
    "heartbeat": {"cmd": "heartbeat", "running": 1, "queued": 2},
}


def _raw(text: str) -> str:
    return (
        text.replace('"@@DEEP@@"', DEEP)
        .replace('"@@HUGE@@"', HUGE)
        .replace('"@@BIGFLOAT@@"', "1e999")
    )


def _mutate(rng: random.Random, frame: dict[str, Any]) -> None:
    """Change one thing in ``frame`` (or in its payload), in place."""
    target = frame
    if isinstance(frame.get("payload"), dict) and rng.random() < 0.5:
        target = frame["payload"]
    keys = list(target)
    choice = rng.random()
    if choice < 0.55 and keys:
        target[rng.choice(keys)] = rng.choice(NASTY)
    elif choice < 0.7 and keys:
        del target[rng.choice(keys)]
    elif choice < 0.85:
        target[rng.choice(["extra", "ref", "protocol", "token", "held", "size"])] = rng.choice(
            NASTY
        )
    else:
        frame["cmd"] = rng.choice([*TEMPLATES, "bogus", 7, None])


Frame = str | bytes
"""A text frame (str) or a binary frame (bytes)."""


def garbage(rng: random.Random) -> Frame:
    """A frame that is not a message: truncated, not an object, binary, deep, huge."""
    kind = rng.randrange(7)
    valid = json.dumps(TEMPLATES[rng.choice(list(TEMPLATES))])
    if kind == 0:
        return valid[: rng.randrange(len(valid))]
    if kind == 1:
        return rng.choice(["[]", "1", '"x"', "null", "true", "{}", "", " ", "{" * 20, "\u2603"])
    if kind == 2:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 3:
        return rng.choice(["[" * 100_000, '{"a":' * 5000, DEEP, '{"cmd": "stats", "x": ' + DEEP])
    if kind == 4:
        return '{"cmd": "heartbeat", "running": ' + HUGE + "}"
    if kind == 5:
        return valid.replace("1", "1" * rng.randrange(20, 40), 1)
    return json.dumps({"cmd": "job_request", "payload": {"args": ["y" * 200] * 1000}})


def mutated(rng: random.Random) -> Frame:
    """One fuzzed frame: mostly a mutated message, sometimes garbage."""
    if rng.random() < 0.15:
        return garbage(rng)
    frame = json.loads(json.dumps(TEMPLATES[rng.choice(list(TEMPLATES))]))
    for _ in range(rng.randrange(1, 4)):
        _mutate(rng, frame)
    return _raw(json.dumps(frame))


def refused_by_protocol(frame: Frame) -> bool:
    """Whether the wire module refuses ``frame`` (a v2 client must get an error reply)."""
    if isinstance(frame, bytes):
        return True
    try:
        decode_client(frame)
    except ProtocolError:
        return True
    return False


def registers(frame: Frame) -> bool:
    """Whether ``frame`` is a valid register (it would register an unregistered client)."""
    try:
        return isinstance(frame, str) and isinstance(decode_client(frame), Register)
    except ProtocolError:
        return False


def expects_error(role: Role, frame: Frame) -> bool:
    """Whether the bus must answer ``frame`` from ``role`` with an error: every frame the
    protocol refuses from a v2 client, and every frame of an unregistered client that says
    ``"protocol": 2`` (it must register first)."""
    if role.register is None:
        return isinstance(frame, str) and says_v2(frame)
    return role.replies and refused_by_protocol(frame)


@dataclass
class Role:
    """One fuzzing connection: how it registers, and what it has seen."""

    name: str
    register: str | None
    """The register frame it sends first (None: it never registers)."""
    replies: bool
    """Whether the bus answers its frames (v2, or a frame that says protocol 2)."""
    ws: ClientConnection | None = None
    inbox: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    """What the bus sent, then None once the connection is closed."""
    reader: asyncio.Task[None] | None = None
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    sent: int = 0
    expected_errors: int = 0
    errors: int = 0


async def _read(role: Role, ws: ClientConnection) -> None:
    try:
        async for frame in ws:
            role.inbox.put_nowait(frame)
    except ConnectionClosed:
        pass
    finally:
        role.inbox.put_nowait(None)


async def open_role(bus: BusServer, role: Role) -> None:
    """(Re)connect ``role`` and register it as it does."""
    ws = await connect(bus.url, compression=None, proxy=None, max_size=None)
    role.ws = ws
    role.inbox = asyncio.Queue()
    if role.register is not None:
        await ws.send(role.register)
        if role.replies:
            assert (await asyncio.wait_for(ws.recv(), 5 * unit())) is not None
    role.reader = asyncio.create_task(_read(role, ws))


async def close_role(role: Role) -> None:
    if role.ws is not None:
        await role.ws.close()
    if role.reader is not None:
        await role.reader


async def barrier(role: Role, n: int) -> None:
    """Wait for the reply to a barrier frame (or the end of the connection), counting the
    error replies before it."""
    assert role.ws is not None
    ref = f"barrier-{n}"
    await role.ws.send(json.dumps({"cmd": "barrier", "protocol": 2, "ref": ref}))
    async with asyncio.timeout(10 * unit()):
        while (raw := await role.inbox.get()) is not None:
            frame = json.loads(raw)
            if frame.get("ref") == ref:
                return
            role.errors += frame.get("type") == "error"


async def send_chunk(bus: BusServer, role: Role, frames: list[Frame], n: int) -> None:
    """Send ``frames`` from ``role``; if the bus closes the connection, note its code and
    reason and reconnect."""
    assert role.ws is not None
    try:
        for frame in frames:
            if isinstance(frame, str) and frame.startswith("@@BADUTF8@@"):
                await role.ws.send(b"\xff\xfe invalid", text=True)
            else:
                await role.ws.send(frame)
            role.sent += 1
            role.expected_errors += expects_error(role, frame)
        if role.replies:
            await barrier(role, n)
            return
        await role.ws.ping()
    except ConnectionClosed:
        pass
    if role.ws.close_code is None:
        return
    role.closes.append((role.ws.close_code, role.ws.close_reason))
    await close_role(role)
    # Errors for frames sent after the bus closed never come: do not expect them.
    role.expected_errors = role.errors
    await open_role(bus, role)


def roles(tokens: TokenTable | None) -> list[Role]:
    """The fuzzing connections; on a bus with ``tokens``, each v2 one presents its role's."""

    def v2(kind: TokenRole, extra: str = "") -> str:
        token = None if tokens is None else tokens.for_role(kind)
        proof = "" if token is None else f', "token": "{token.token}"'
        return f'{{"cmd": "register", "type": "{kind}", "protocol": 2{proof}{extra}}}'

    return [
        Role("producer-v1", '{"cmd": "register", "type": "producer"}', replies=False),
        Role("producer-v2", v2("producer"), replies=True),
        Role("scheduler-v1", '{"cmd": "register", "type": "scheduler"}', replies=False),
        Role(
            "scheduler-v2",
            v2("scheduler", ', "name": "fz-s", "size": 3, "tasks": ["sleep"]'),
            replies=True,
        ),
        Role("monitor", v2("monitor"), replies=True),
        Role("unregistered", None, replies=True),
    ]


async def register_attempts(bus: BusServer, rng: random.Random, count: int) -> None:
    """Fresh connections, each registering with a mutated register frame."""
    for _ in range(count):
        frame = json.loads(json.dumps(TEMPLATES["register"]))
        frame["type"] = rng.choice(["producer", "scheduler", "monitor", "admin", 3])
        _mutate(rng, frame)
        text = _raw(json.dumps(frame))
        async with client(bus) as ws:
            await ws.send(text)
            if registers(text) and decode_client(text).protocol == 1:  # type: ignore[union-attr]
                await ws.ping()  # a v1 client is answered nothing
                continue
            try:
                await ws.send('{"cmd": "barrier", "protocol": 2, "ref": "b"}')
                while (reply := await recv(ws)).get("ref") != "b":
                    assert reply["type"] in ("registered", "error", "assign", "event"), reply
            except ConnectionClosed:
                # A register the bus refuses (a bad token) is answered, then closed: 1008.
                assert ws.close_code == 1008 and ws.close_reason, (ws.close_code, text)


def pick(rng: random.Random, role: Role) -> Frame:
    """A fuzzed frame for ``role``; the unregistered one never sends a valid register."""
    while True:
        frame = mutated(rng)
        if role.register is not None or not registers(frame):
            return frame


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


@pytest.fixture(params=["open", "tokens"])
async def fuzzed_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusServer]:
    """A real bus on 127.0.0.1: open (the library's default), or with a token per role
    (as ``python -m scheduler.bus`` always runs)."""
    tokens = TokenTable.generate() if request.param == "tokens" else None
    async with BusServer(BusConfig(host="127.0.0.1", port=0, tokens=tokens)) as server:
        yield server


def token_of(bus: BusServer, role: TokenRole) -> dict[str, str]:
    """The ``token`` field ``role`` registers with on ``bus`` (none on an open bus)."""
    tokens = bus.config.tokens
    token = None if tokens is None else tokens.for_role(role)
    return {} if token is None else {"token": token.token}


async def test_ten_thousand_fuzzed_frames_from_every_role_never_hurt_the_bus(
    fuzzed_bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    bus = fuzzed_bus
    rng = random.Random(SEED)
    fuzzers = roles(bus.config.tokens)
    for role in fuzzers:
        await open_role(bus, role)
    before = rss()
    n = 0
    while sum(role.sent for role in fuzzers) < FRAMES:
        role = fuzzers[n % len(fuzzers)]
        frames = [pick(rng, role) for _ in range(CHUNK)]
        if n % 97 == 0:
            frames.append("x" * (MAX_FRAME_BYTES + 1))
        if n % 89 == 0:
            frames.append("@@BADUTF8@@")
        await send_chunk(bus, role, frames, n)
        n += 1
    await register_attempts(bus, rng, 200)
    grown = rss() - before

    for role in fuzzers:
        assert role.errors >= role.expected_errors, (role.name, role.errors, role.expected_errors)
        for code, reason in role.closes:
            # 1007 invalid UTF-8, 1008 not registered in time, 1009 too big, 4000 the
            # fuzzing scheduler sends no heartbeats and loses its lease.
            assert code in (1007, 1008, 1009, 4000) and reason, (role.name, code, reason)
        await close_role(role)
    assert sum(role.sent for role in fuzzers) >= FRAMES
    assert {c for role in fuzzers for c, _ in role.closes} >= {1007, 1009}

    # Still serving: a normal job end to end.
    async with client(bus) as scheduler, client(bus) as producer:
        scheduler_token, producer_token = token_of(bus, "scheduler"), token_of(bus, "producer")
        await register(
            scheduler, "scheduler", name="after-fuzz", size=1, tasks=["after"], **scheduler_token
        )
        await register(producer, "producer", **producer_token)
        job_id = await submit(producer, task="after", runtime=1)
        assign = await recv(scheduler)
        while assign.get("type") != "assign" or assign["job"]["id"] != job_id:
            assign = await recv(scheduler)
        await report(scheduler, "started", job_id, assign["job"]["attempt"])
        await report(scheduler, "succeeded", job_id, assign["job"]["attempt"], result=1)
        assert (await next_event(producer, "succeeded"))["result"] == 1

    assert "Traceback" not in caplog.text and "handler failed" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
    assert grown < 200 * 1024 * 1024, f"the process grew {grown / 2**20:.0f} MB"
