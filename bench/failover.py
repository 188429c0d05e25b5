"""The failover figure: from the leader's SIGKILL to the first assignment by the next.

Two buses share one journal on a private PostgreSQL server
(:class:`~scheduler.bus.pg_server.PostgresServer`); one scheduler and one producer are
given both URLs. Each round: SIGKILL the leader, submit one job at once (the producer
re-sends it until a bus accepts it), and time until the producer hears that the job was
assigned. Then the killed bus is started again, as a standby, for the next round. The
time covers the standby noticing the lock is free (it tries every 0.5 s), bumping the
epoch, reloading the journal, the scheduler and producer finding the new leader, and
the assignment's commit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from bench.procs import Proc, Procs, free_port, wait_for_log
from bench.stats import Json, summary
from bench.system import PYTHON, client_token, start_scheduler
from scheduler.bus.pg_server import PostgresServer
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload


class _Pair:
    """The two buses of the figure, each on a fixed port so it can come back there."""

    def __init__(self, procs: Procs, workdir: Path, dsn: str) -> None:
        self.procs = procs
        self.workdir = workdir
        self.dsn = dsn
        self.ports = [free_port(), free_port()]
        self.live: dict[int, Proc] = {}
        self.starts = 0

    @property
    def urls(self) -> str:
        return ",".join(f"ws://127.0.0.1:{port}" for port in self.ports)

    async def start(self, port: int) -> None:
        """Start the bus of ``port`` and wait until it stands by (or leads)."""
        self.starts += 1
        state = self.workdir / f"bus-{port}"
        state.mkdir(parents=True, exist_ok=True)
        # No --db: the journal is the store; the token file is the run's shared one.
        argv = [PYTHON, "-m", "scheduler.bus", "--port", str(port), "--store", self.dsn]
        proc = self.procs.start(f"failover-bus-{self.starts}", argv, cwd=state)
        await wait_for_log(proc, r"bus standing by")
        self.live[port] = proc

    async def leader(self) -> int:
        """The port of the bus that leads, once one does."""
        while True:
            for port, proc in self.live.items():
                if "bus listening" in proc.log_text():
                    return port
            await asyncio.sleep(0.01)

    def kill(self, port: int) -> None:
        """SIGKILL the bus of ``port`` and reap it."""
        proc = self.live.pop(port)
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait()
        self.procs.stop(proc)


async def failover_times(procs: Procs, workdir: Path, failovers: int) -> Json:
    """Time ``failovers`` failovers (see the module); the figure's results."""
    with PostgresServer() as server:
        pair = _Pair(procs, workdir, server.create_database())
        for port in pair.ports:
            await pair.start(port)
        await pair.leader()
        sched = await start_scheduler(procs, workdir, pair.urls, name="failover-sched", size=2)
        try:
            times = await _rounds(pair, failovers)
        finally:
            procs.stop(sched)
            for proc in list(pair.live.values()):
                procs.stop(proc)
    return {"failover_s": summary(times) | {"buses": 2}}


async def _rounds(pair: _Pair, failovers: int) -> list[float]:
    """Run the rounds; each one's seconds from SIGKILL to the assignment heard."""
    times: list[float] = []
    async with ProducerClient(pair.urls, token=client_token("producer")) as client:
        assigned: dict[str, float] = {}

        async def listen() -> None:
            async for event in client.events():
                if event.event in ("assigned", "started"):
                    assigned.setdefault(event.id, time.monotonic())

        listening = asyncio.create_task(listen())
        try:
            for _ in range(failovers):
                leader = await pair.leader()
                killed = time.monotonic()
                pair.kill(leader)
                job = await client.submit(JobPayload(priority=0, runtime=0.001))
                while job.id not in assigned:
                    await asyncio.sleep(0.005)
                times.append(assigned[job.id] - killed)
                await pair.start(leader)
        finally:
            listening.cancel()
    return times
