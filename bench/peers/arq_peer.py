"""arq: one asyncio worker process running jobs as coroutines (no process per job).

The worker runs with ``poll_delay=0.01`` (the default 0.5 s caps it at 20 jobs/s) and
the default ``max_jobs=10``. Jobs are enqueued 100 at a time with ``asyncio.gather``;
the end is when every job's result key exists (one MGET every 20 ms).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.peers.common import (
    PY,
    Result,
    Workers,
    heavy,
    job_function,
    load,
    main,
    outcome,
    task_name,
)

POLL_DELAY_S = 0.01
CHUNK = 100


async def noop(ctx: dict[str, Any]) -> None:
    """The job, as arq runs it: a coroutine."""


async def heavy_job(ctx: dict[str, Any]) -> None:
    """The realistic job, run on the worker's event loop as arq runs any coroutine."""
    heavy()


def worker(url: str) -> None:
    """One arq worker serving :func:`noop`."""
    arq_worker, connections = load("arq.worker"), load("arq.connections")
    job_function()  # the job's imports, at start
    settings = connections.RedisSettings.from_dsn(url)
    arq_worker.Worker(
        functions=[noop, heavy_job],
        redis_settings=settings,
        poll_delay=POLL_DELAY_S,
        handle_signals=True,
    ).run()


async def _drive(url: str, jobs: int, workers: Workers) -> Result:
    arq, connections = load("arq"), load("arq.connections")
    function = "noop" if task_name() == "noop" else "heavy_job"
    pool = await arq.create_pool(connections.RedisSettings.from_dsn(url))
    await pool.flushall()
    workers.start([PY, "-m", "bench.peers.arq_peer", "worker", "--redis", url])

    async def run(count: int) -> float:
        ids: list[str] = []
        for first in range(0, count, CHUNK):
            batch = [pool.enqueue_job(function) for _ in range(min(CHUNK, count - first))]
            ids += [job.job_id for job in await asyncio.gather(*batch)]
        keys = [f"arq:result:{job_id}" for job_id in ids]
        deadline = time.monotonic() + 600
        while keys:
            values = await pool.mget(*keys)
            keys = [key for key, value in zip(keys, values, strict=True) if value is None]
            if keys:
                workers.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(keys)} arq jobs unfinished")
                await asyncio.sleep(0.02)
        return time.perf_counter()

    await run(2)
    t0 = time.perf_counter()
    t1 = await run(jobs)
    await pool.aclose()
    how = f"1 arq worker process, max_jobs 10, poll_delay {POLL_DELAY_S} s, result keys"
    return outcome(jobs, t1 - t0, how, str(getattr(arq, "VERSION", "?")))


def drive(url: str, jobs: int, workers: Workers) -> Result:
    """Time ``jobs`` no-op coroutine jobs through one arq worker."""
    result: Result = asyncio.run(_drive(url, jobs, workers))
    return result


if __name__ == "__main__":
    main(sys.argv[1:], drive, worker)
