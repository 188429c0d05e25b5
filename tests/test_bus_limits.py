"""The bus's memory and connection bounds, against real sockets: backlogs in bytes per
client and in total (largest laggard first), the register deadline, the connection cap,
and how disconnects are logged."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from conftest import unit, wait_until
from test_bus import V1_JOB, bus_with, client, recv, register, report, submit
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.frames import CloseCode

from scheduler.bus.server import BusServer


def timeout() -> float:
    return 5 * unit()


@asynccontextmanager
async def deaf(bus: BusServer) -> AsyncIterator[ClientConnection]:
    """A connection that never reads, with a small receive buffer so the bus's backlog for
    it grows in the bus and not in the kernel."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bus.port))
    ws = await connect(bus.url, sock=sock, compression=None, proxy=None, max_queue=1)
    try:
        yield ws
    finally:
        ws.transport.abort()
        await ws.wait_closed()


EVENT_BYTES = 60_000


async def test_non_reading_monitors_are_dropped_largest_first_within_the_total_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    total = 2_000_000
    async with (
        bus_with(max_backlog_bytes=100 * total, max_total_backlog_bytes=total) as bus,
        client(bus) as producer,
        client(bus) as scheduler,
        client(bus) as v1,
        AsyncExitStack() as monitors,
    ):
        await register(producer, "producer")
        await register(scheduler, "scheduler")
        await v1.send('{"cmd": "register", "type": "producer"}')
        await v1.send(V1_JOB)
        job_id = (await recv(scheduler))["job"]["id"]
        bulky: dict[str, Any] = {"error": "x" * EVENT_BYTES}
        names: list[str] = []
        peak = 0
        for rounds in range(3000):
            if rounds % 50 == 0 and len(names) < 4:
                # Monitors join one after another: the earlier, the larger its backlog.
                await register(await monitors.enter_async_context(deaf(bus)), "monitor")
                names.append(f"monitor-{len(names) + 1}")
            if len(names) == 4 and bus.monitor_count() <= 2:
                break
            await report(scheduler, "started", job_id, 1, **bulky)
            if rounds % 25 == 0:  # ingest keeps working meanwhile
                await submit(producer, task="unserved")
                assert (await recv(producer))["event"] == "accepted"
            peak = max(peak, bus.backlog_bytes())
        assert bus.monitor_count() <= 2, "no monitor was dropped"
        assert peak <= total
        dropped = [
            r.getMessage().partition(":")[0]
            for r in caplog.records
            if "total backlog passed" in r.getMessage()
        ]
        assert dropped[:2] == ["monitor-1", "monitor-2"], caplog.text
        assert f"the bus's total backlog passed {total} bytes; largest first" in caplog.text
        await submit(producer, task="unserved")


async def test_a_connection_that_does_not_register_in_time_is_closed_with_a_reason() -> None:
    async with bus_with(register_timeout=0.3 * unit()) as bus:
        async with client(bus) as registered, client(bus) as idle, client(bus) as chatty:
            await register(registered, "monitor")
            await chatty.send('{"cmd": "stats", "protocol": 2}')
            assert (await recv(chatty))["message"] == "register first"
            for ws in (idle, chatty):
                await asyncio.wait_for(ws.wait_closed(), timeout())
                assert ws.close_code == CloseCode.POLICY_VIOLATION
                assert ws.close_reason == f"register within {0.3 * unit():g} s"
            assert registered.close_code is None
            await registered.send('{"cmd": "stats"}')
            assert (await recv(registered))["type"] == "stats"


async def test_connections_past_the_cap_are_refused_with_503_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with bus_with(max_connections=3) as bus, AsyncExitStack() as stack:
        first = await stack.enter_async_context(client(bus))
        for _ in range(2):
            await stack.enter_async_context(client(bus))
        await wait_until(lambda: bus.connection_count() == 3, timeout(), "3 connections")
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await stack.enter_async_context(client(bus))
            assert refused.value.response.status_code == 503
        lines = [r for r in caplog.records if "connections open (max connections 3)" in r.message]
        assert len(lines) == 1, caplog.text
        await first.close()
        await wait_until(lambda: bus.connection_count() == 2, timeout(), "one closed")
        again = await stack.enter_async_context(client(bus))
        assert await register(again, "producer")


async def test_normal_disconnects_are_info_and_error_codes_warnings(
    bus: BusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.bus")
    async with client(bus) as gone, client(bus) as away, client(bus) as broken:
        await register(gone, "producer", name="gone")
        await register(away, "producer", name="away")
        await register(broken, "producer", name="broken")
        gone.transport.abort()  # the client just goes away: no close frame
        await away.close(CloseCode.GOING_AWAY)
        await broken.close(CloseCode.INTERNAL_ERROR, "crashed")
        await wait_until(lambda: not bus.connection_count(), timeout(), "all three left")
    levels = {
        r.getMessage().partition(":")[0]: r.levelno
        for r in caplog.records
        if r.name == "scheduler.bus.server" and "connection closed" in r.getMessage()
    }
    assert levels == {"gone": logging.INFO, "broken": logging.WARNING}, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "away" in r.message]
