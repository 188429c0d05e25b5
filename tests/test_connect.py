"""The one connection loop (scheduler.connect) and the connection options every command
shares: a refused registration is final for every client, the backoff is reset only by
``registered``, a stop ends a try that waits for the bus, each connection closes with 1000."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator

import click
import pytest
from click.testing import CliRunner
from conftest import Commands, unit, wait_until
from websockets.asyncio.server import ServerConnection, serve

from scheduler.auth import Token, TokenTable
from scheduler.bus.server import BusConfig, BusServer
from scheduler.cli_support import bus_url
from scheduler.connect import DEFAULT_URL, Connector, Registration, RegistrationRefused
from scheduler.policy.backoff import Backoff
from scheduler.producer import cli as producer_cli
from scheduler.producer.client import ProducerClient
from scheduler.protocol import Register
from scheduler.tools import jobs, monitor, status
from scheduler.worker import cli as worker_cli
from scheduler.worker import demo
from scheduler.worker.client import SchedulerClient, SchedulerConfig

TOKENS = TokenTable(
    (
        Token("alice", "producer", "t-alice"),
        Token("watcher", "monitor", "t-monitor"),
        Token("runner", "scheduler", "t-scheduler"),
    )
)


@pytest.fixture
async def secured_bus() -> AsyncIterator[BusServer]:
    """A real bus that requires tokens, on 127.0.0.1 and a port the OS picked."""
    async with BusServer(BusConfig(host="127.0.0.1", port=0, tokens=TOKENS)) as server:
        yield server


def refusals(caplog: pytest.LogCaptureFixture) -> int:
    """How many registrations the bus has refused for a bad token so far."""
    return sum("refused frame: invalid token" in r.getMessage() for r in caplog.records)


async def test_a_monitor_with_a_wrong_token_stops_at_the_refusal(
    secured_bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    watching = asyncio.create_task(monitor.watch(secured_bus.url, None, "wrong", as_json=False))
    done, _ = await asyncio.wait({watching}, timeout=3 * unit())
    attempts = refusals(caplog)
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    # It used to reset its backoff right after sending `register`, so it came back
    # ~13 times a second, forever.
    assert attempts == 1
    assert watching in done
    error = watching.exception()
    assert isinstance(error, RegistrationRefused)
    assert (error.field, str(error)) == ("token", "invalid token")


@pytest.mark.parametrize(
    "command",
    [
        ("scheduler.monitor",),
        ("scheduler.test_scheduler",),
        ("scheduler.producer", "--count", "1", "-p", "0"),
        ("scheduler.jobs", "show", "x"),
        ("scheduler.status",),
    ],
    ids=lambda command: command[0],
)
async def test_every_command_exits_1_naming_the_refusal(
    secured_bus: BusServer, commands: Commands, command: tuple[str, ...]
) -> None:
    module, *rest = command
    proc = await commands.start(module, "--bus", secured_bus.url, "--token", "bad", *rest)
    await asyncio.wait_for(proc.wait(), 20 * unit())
    assert proc.returncode == 1
    assert f"{secured_bus.url}" in commands.log_of(proc)
    assert "invalid token" in commands.log_of(proc)


async def test_every_client_raises_registration_refused_for_a_bad_token(
    secured_bus: BusServer,
) -> None:
    producer = ProducerClient(secured_bus.url, token="bad", connect_timeout=10 * unit())
    with pytest.raises(RegistrationRefused, match="invalid token"):
        await producer.connect()
    await producer.close()
    config = SchedulerConfig(bus_url=secured_bus.url, token="t-alice")
    with pytest.raises(RegistrationRefused, match="a producer token may not register as a"):
        await asyncio.wait_for(SchedulerClient(config).run(), 10 * unit())


async def test_the_right_tokens_register_every_client(secured_bus: BusServer) -> None:
    async with ProducerClient(secured_bus.url, token="t-alice") as producer:
        assert producer.name == "producer-1"
    connector = Connector(secured_bus.url)
    message = Register(type="monitor", protocol=2, token="t-monitor")
    registration = await connector.connect(message, asyncio.Event())
    assert registration is not None and registration.registered.name == "monitor-1"
    await registration.ws.close()


class ClosingBus:
    """A WebSocket server that takes each ``register`` and closes, never registering:
    what a bus looks like to a client it keeps refusing without saying why."""

    def __init__(self) -> None:
        self.registers = 0
        self.answer = False
        """Whether to answer ``registered`` (and then close) instead of closing at once."""

    async def handler(self, ws: ServerConnection) -> None:
        await ws.recv()
        self.registers += 1
        if self.answer:
            await ws.send(json.dumps({"type": "registered", "name": "m", "protocol": 2}))
        await ws.close()


async def test_only_a_registration_resets_the_backoff() -> None:
    fake = ClosingBus()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        delays: list[float] = []
        stop = asyncio.Event()

        async def pause(delay: float) -> None:
            delays.append(delay)
            if len(delays) == 5:
                fake.answer = True
            if len(delays) == 7:
                stop.set()

        async def serve_nothing(registration: Registration) -> None:
            await registration.ws.wait_closed()

        connector = Connector(f"ws://127.0.0.1:{port}", backoff=Backoff(rng=random.Random(1)))
        message = Register(type="monitor", protocol=2)
        await asyncio.wait_for(
            connector.run(lambda: message, serve_nothing, stop=stop, pause=pause), 10 * unit()
        )
    assert fake.registers == 7
    # Delays grow while the bus closes before `registered` (each is drawn in [d/2, d])...
    assert [d >= 0.1 * 2**k / 2 for k, d in enumerate(delays[:5])] == [True] * 5
    # ...and start over once it has registered us.
    assert delays[5] <= 0.1 and delays[6] <= 0.1


async def test_a_stop_ends_a_try_that_waits_for_registered() -> None:
    got_register = asyncio.Event()

    async def silent(ws: ServerConnection) -> None:
        await ws.recv()
        got_register.set()
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stop = asyncio.Event()
        connector = Connector(f"ws://127.0.0.1:{port}")

        async def never(registration: Registration) -> None:
            raise AssertionError("the silent bus registered us")

        running = asyncio.create_task(
            connector.run(lambda: Register(type="monitor", protocol=2), never, stop=stop)
        )
        await asyncio.wait_for(got_register.wait(), 5 * unit())
        stop.set()
        await asyncio.wait_for(running, 5 * unit())


async def test_messages_before_registered_are_handed_over_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def early(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send("not json")
        await ws.send(json.dumps({"type": "error", "message": "size: bad", "field": "size"}))
        await ws.send(json.dumps({"type": "stop", "id": "j", "attempt": 1, "reason": "x"}))
        await ws.send(json.dumps({"type": "registered", "name": "s", "protocol": 2}))
        await ws.wait_closed()

    async with serve(early, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        connector = Connector(f"ws://127.0.0.1:{port}", blocking_resolve=True)
        registration = await connector.connect(Register(type="scheduler", protocol=2))
        assert registration is not None
        await registration.ws.close()
    assert [type(m).__name__ for m in registration.early] == ["Stop"]
    assert "ignoring a bad frame from the bus" in caplog.text
    assert "the bus refused a frame: size: bad" in caplog.text


async def test_an_unreachable_bus_is_retried_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "scheduler.connect")
    stop = asyncio.Event()
    connector = Connector("ws://127.0.0.1:9", blocking_resolve=True)

    async def never(registration: Registration) -> None:
        raise AssertionError("nothing listens on port 9")

    running = asyncio.create_task(
        connector.run(lambda: Register(type="monitor", protocol=2), never, stop=stop)
    )
    await wait_until(lambda: caplog.text.count("cannot reach the bus") >= 2, 5 * unit(), "2 tries")
    stop.set()
    await asyncio.wait_for(running, 5 * unit())


COMMANDS = {
    "worker": worker_cli.cli,
    "test_scheduler": demo.cli,
    "producer": producer_cli.cli,
    "monitor": monitor.cli,
    "jobs": jobs.cli,
    "status": status.cli,
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_shares_one_definition_of_the_connection_options(name: str) -> None:
    params = {p.name: p for p in COMMANDS[name].params if isinstance(p, click.Option)}
    bus = params["url"]
    assert (bus.opts, bus.default, bus.envvar, bus.callback) == (
        ["--bus"],
        DEFAULT_URL,
        "SCHEDBUS_URL",
        bus_url,
    )
    for option, flag in [
        ("token", "--token"),
        ("token_file", "--token-file"),
        ("cafile", "--cafile"),
    ]:
        assert params[option].opts == [flag]
    assert params["token"].envvar == "SCHEDBUS_TOKEN"


def test_a_token_longer_than_a_register_carries_is_a_usage_error() -> None:
    result = CliRunner().invoke(monitor.cli, ["--token", "t" * 201])
    assert result.exit_code == 2
    assert "Invalid value for '--token'" in result.output
    assert "must be at most 200 characters long" in result.output
