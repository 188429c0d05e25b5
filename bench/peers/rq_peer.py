"""RQ: the default ``Worker`` forks a work horse per job, the closest peer to schedbus.

Two worker processes (one per core). Jobs go in with one ``enqueue_many`` pipeline;
the end is when RQ's ``FinishedJobRegistry`` holds them all (polled every 5 ms).
"""

from __future__ import annotations

import sys
import time

from bench.peers.common import (
    PY,
    QUEUE,
    Result,
    Workers,
    job_function,
    load,
    main,
    outcome,
    task_name,
    wait_until,
)

WORKERS = 2


def worker(url: str) -> None:
    """One forking RQ worker on the bench queue."""
    redis, rq = load("redis"), load("rq")
    job_function()  # the job's imports, before the work horses fork
    connection = redis.Redis.from_url(url)
    queue = rq.Queue(QUEUE, connection=connection)
    rq.Worker([queue], connection=connection).work(logging_level="WARNING")


def drive(url: str, jobs: int, workers: Workers) -> Result:
    """Time ``jobs`` no-op jobs through ``WORKERS`` forking RQ workers."""
    redis, rq = load("redis"), load("rq")
    connection = redis.Redis.from_url(url)
    connection.flushall()
    for _ in range(WORKERS):
        workers.start([PY, "-m", "bench.peers.rq_peer", "worker", "--redis", url])
    queue = rq.Queue(QUEUE, connection=connection)
    finished = queue.finished_job_registry
    task = f"bench.peers.common.{task_name()}"

    def count() -> int:
        return int(finished.get_job_count(cleanup=False))

    queue.enqueue_many([rq.Queue.prepare_data(task) for _ in range(WORKERS)])
    wait_until(lambda: count() >= WORKERS, 60, "warm-up jobs", workers=workers)
    t0 = time.perf_counter()
    queue.enqueue_many([rq.Queue.prepare_data(task) for _ in range(jobs)])
    t1 = wait_until(lambda: count() >= WORKERS + jobs, 600, f"{jobs} jobs", workers=workers)
    how = f"{WORKERS} rq.Worker processes (fork per job), enqueue_many, FinishedJobRegistry"
    return outcome(jobs, t1 - t0, how, str(rq.__version__))


if __name__ == "__main__":
    main(sys.argv[1:], drive, worker)
