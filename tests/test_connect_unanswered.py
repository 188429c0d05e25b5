"""A client gives up a bus that stops answering (a frozen bus) and says so, so that it
tries the next bus of its list first (:func:`scheduler.connect.unanswered`)."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from scheduler.connect import unanswered


async def test_a_bus_that_stops_answering_pings_is_told_from_one_that_closes() -> None:
    connections: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, close_timeout=0.1) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with connect(url, ping_interval=0.05, ping_timeout=0.1, close_timeout=0.1) as ws:
            while not connections:
                await asyncio.sleep(0.01)
            # The bus's process stops reading, as a frozen one does: pings go unanswered.
            connections[0].transport.pause_reading()
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert unanswered(ws)
        connections[0].transport.abort()
        async with connect(url) as ws:
            await ws.close()
            assert not unanswered(ws)
