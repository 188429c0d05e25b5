"""A scheduler cut off from the bus without any reset (a pulled cable, a dropped route, a
firewall that drops: the TCP connection stays up and nothing arrives) stops its jobs before
the bus gives them to another scheduler, as README's "What a partition or a freeze can
cause" promises.

Its keepalive (a 5 s ping with a 5 s timeout) would notice the cut only after the lease:
while its connection is believed up, the scheduler stops its jobs at its fence, a stop
margin before the lease may end when no heartbeat has been answered (policy/fence.py),
and gives the connection up. Without that, the two attempts ran at once for about 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psutil
from conftest import Commands, jobs_of, unit, wait_until
from test_bus import client, next_event, register, submit

from scheduler.bus.config import BusConfig, bus_rules
from scheduler.bus.server import BusServer


class SilentCut:
    """A TCP relay on 127.0.0.1 to ``port`` that can stop forwarding without closing
    anything: a network partition that resets no connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.cut.is_set():
                    await asyncio.Future()  # hold everything, close nothing
                writer.write(data)
                await writer.drain()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, upstream_writer]
        self.tasks += [
            asyncio.create_task(self._pipe(reader, upstream_writer)),
            asyncio.create_task(self._pipe(upstream_reader, writer)),
        ]

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Relay until the block ends; yield the URL to give the cut-off client."""
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        try:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            for task in self.tasks:
                task.cancel()
            for writer in self.writers:
                writer.transport.abort()


def live(pids: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in pids if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def test_a_silently_cut_off_scheduler_stops_its_job_before_it_runs_elsewhere(
    commands: Commands,
) -> None:
    # The shortest lease that leaves a scheduler's 2 s grace between its fence and the
    # lease's end, with two 1 s heartbeats before the fence; the keepalive (5 s + 5 s) is
    # longer.
    lease = 4.0 * unit()
    config = BusConfig(host="127.0.0.1", port=0, rules=bus_rules(lease=lease, steal="off"))
    async with BusServer(config) as bus, client(bus) as producer:
        await register(producer, "producer")
        relay = SilentCut(bus.port)
        async with relay.serve() as cut_url:
            cut_off = await commands.start(
                "scheduler.test_scheduler", "--bus", cut_url, "--name", "B", "-s", "1", "-t", "60"
            )
            await wait_until(lambda: "B" in bus.scheduler_names(), 20 * unit(), "B registers")
            job = await submit(producer, runtime=60 * unit())
            first: dict[str, Any] = await next_event(producer, "started")
            assert (first["id"], first["scheduler"]) == (job, "B")
            await commands.start(
                "scheduler.test_scheduler", "--bus", bus.url, "--name", "A", "-s", "1", "-t", "60"
            )
            await wait_until(lambda: "A" in bus.scheduler_names(), 20 * unit(), "A registers")
            # psutil scans /proc: off the loop that runs the bus, which must keep answering.
            old_attempt = await asyncio.to_thread(jobs_of, cut_off.pid)
            assert old_attempt, "B runs attempt 1"
            relay.cut.set()
            again = await asyncio.wait_for(next_event(producer, "started"), 3 * lease + 5 * unit())
            assert (again["scheduler"], again["attempt"]) == ("A", 2)
            assert not live(old_attempt), "attempt 1 still runs on B while attempt 2 runs on A"
    fenced = commands.log_of(cut_off)
    assert fenced.count("no answer from the bus for") == 1, fenced
    assert "stopping 1 jobs" in fenced and "giving this connection up" in fenced, fenced
