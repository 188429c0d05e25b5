"""Celery: ``celery worker --pool prefork --concurrency 2`` with Redis as broker and backend.

Processes are forked once and reused (no process per job). Jobs are sent with
``apply_async`` in a loop; the end is when every task's result key exists in Redis
(one MGET every 20 ms). The worker command imports this module (``-A``), which
builds the app from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bench.peers.common import (
    PY,
    QUEUE,
    REDIS_ENV,
    Result,
    Workers,
    job_function,
    load,
    main,
    outcome,
    wait_until,
)

CONCURRENCY = 2


def make_app(url: str) -> Any:
    """The Celery app with the bench's job (:func:`job_function`) as ``bench.job``."""
    celery = load("celery")
    app = celery.Celery("bench", broker=url, backend=url)
    app.conf.task_default_queue = QUEUE
    app.conf.worker_hijack_root_logger = False
    app.task(name="bench.job")(job_function())
    return app


app = make_app(os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/0"))


def drive(url: str, jobs: int, workers: Workers) -> Result:
    """Time ``jobs`` no-op tasks through a prefork worker of ``CONCURRENCY`` processes."""
    redis = load("redis")
    connection = redis.Redis.from_url(url)
    connection.flushall()
    client = make_app(url)
    task = client.tasks["bench.job"]
    workers.start(
        [PY, "-m", "celery", "-A", "bench.peers.celery_peer", "worker", "--pool", "prefork"]
        + ["--concurrency", str(CONCURRENCY), "--loglevel", "WARNING", "-Q", QUEUE]
        + ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    )

    def run(count: int) -> float:
        keys = [f"celery-task-meta-{task.apply_async().id}" for _ in range(count)]

        def finished() -> bool:
            nonlocal keys
            values = connection.mget(keys)
            keys = [key for key, value in zip(keys, values, strict=True) if value is None]
            return not keys

        return wait_until(finished, 600, f"{count} tasks", interval=0.02, workers=workers)

    run(CONCURRENCY)
    t0 = time.perf_counter()
    t1 = run(jobs)
    how = f"celery worker --pool prefork --concurrency {CONCURRENCY}, apply_async, result keys"
    return outcome(jobs, t1 - t0, how, str(load("celery").__version__))


if __name__ == "__main__":
    main(sys.argv[1:], drive)
