"""The journal's two stores in one run: submits/s and end-to-end jobs/s with the bus
journaling in a SQLite file (``--db``) and in PostgreSQL (``--store``, a private server
this figure starts with :class:`~scheduler.bus.pg_server.PostgresServer`, fsync on).

Rounds alternate the stores (SQLite, then PostgreSQL, on a fresh bus and database each
time), so a load drifting on the shared machine weighs on both alike; the ratios are
PostgreSQL's figure over SQLite's within the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import psutil

from bench import ingest, ours
from bench.procs import Procs
from bench.stats import Json, median
from bench.system import Bus, start_bus, start_scheduler
from scheduler.bus.pg_server import PostgresServer

STORES: Final = ("sqlite", "postgresql")


class StoreRuns:
    """Starts each round's bus on a store, and keeps what each round measured."""

    def __init__(self, procs: Procs, workdir: Path, server: PostgresServer, size: int) -> None:
        self.procs = procs
        self.workdir = workdir
        self.server = server
        self.size = size
        self.submit_runs: dict[str, list[Json]] = {kind: [] for kind in STORES}
        self.e2e_runs: dict[str, list[Json]] = {kind: [] for kind in STORES}
        self._count = 0

    async def bus(self, kind: str) -> Bus:
        """A fresh bus journaling in a new SQLite file or a new PostgreSQL database."""
        self._count += 1
        store = self.server.create_database() if kind == "postgresql" else None
        return await start_bus(
            self.procs, self.workdir, f"store-{kind}-{self._count}-bus", store=store
        )

    async def submits(self, kind: str, jobs: int) -> None:
        """Pipelined single submits from one producer, no scheduler: accepted jobs/s."""
        bus = await self.bus(kind)
        try:
            self.submit_runs[kind].append(await ingest.ingest(bus.url, jobs, bulk=False))
        finally:
            self.procs.stop(bus.proc)

    async def e2e(self, kind: str, jobs: int) -> None:
        """No-op jobs through the bus and one scheduler: first submit to last final."""
        bus = await self.bus(kind)
        sched = None
        try:
            sched = await start_scheduler(
                self.procs, self.workdir, bus.url, name=f"store-{kind}-sched", size=self.size
            )
            sched_ps = psutil.Process(sched.pid)
            timeout = 60 + jobs / 20
            self.e2e_runs[kind].append(
                await ours.e2e_round(bus.url, jobs, bus.ps, sched_ps, timeout)
            )
        finally:
            if sched is not None:
                self.procs.stop(sched)
            self.procs.stop(bus.proc)


def figures(runs: dict[str, list[Json]], key: str) -> Json:
    """The median of ``key`` over each store's rounds, and PostgreSQL's over SQLite's."""
    found: Json = {kind: round(median([run[key] for run in runs[kind]]), 1) for kind in STORES}
    found["postgresql_vs_sqlite"] = round(found["postgresql"] / found["sqlite"], 2)
    return found


async def store_figures(
    procs: Procs, workdir: Path, submit_jobs: int, e2e_jobs: int, rounds: int, size: int
) -> Json:
    """Submits/s and end-to-end jobs/s on each store, ``rounds`` alternating rounds each."""
    with PostgresServer() as server:
        runs = StoreRuns(procs, workdir, server, size)
        steps: list[Callable[[str], Awaitable[None]]] = [
            lambda kind: runs.submits(kind, submit_jobs),
            lambda kind: runs.e2e(kind, e2e_jobs),
        ]
        for _ in range(rounds):
            for step in steps:
                for kind in STORES:
                    await step(kind)
    e2e = figures(runs.e2e_runs, "jobs_per_s")
    e2e["bus_cpu_ms_per_job"] = {
        kind: round(median([run["cpu_ms_per_job"]["bus"] for run in runs.e2e_runs[kind]]), 3)
        for kind in STORES
    }
    return {
        "store_submits_per_s": figures(runs.submit_runs, "jobs_per_s") | {"jobs": submit_jobs},
        "store_e2e_jobs_per_s": e2e | {"jobs": e2e_jobs},
    }
