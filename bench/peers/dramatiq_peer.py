"""Dramatiq: ``dramatiq MODULE --processes 2`` (8 threads each, the default), Redis broker.

Processes are forked once and reused (no process per job). Messages are sent with
``actor.send()`` in a loop; the end is ``broker.join(queue)`` returning (the queue and
its unacknowledged set are empty), checked every 5 ms. The worker command imports
this module, which builds the broker from ``BENCH_REDIS_URL``.
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
    ROOT,
    Result,
    Workers,
    job_function,
    load,
    main,
    outcome,
)

PROCESSES = 2


def make_broker(url: str) -> tuple[Any, Any]:
    """The Redis broker, set as Dramatiq's global one, and the bench actor on it."""
    dramatiq, brokers = load("dramatiq"), load("dramatiq.brokers.redis")
    broker = brokers.RedisBroker(url=url)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(actor_name="job", queue_name=QUEUE)(job_function())
    return broker, actor


broker, actor = make_broker(os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/0"))


def drive(url: str, jobs: int, workers: Workers) -> Result:
    """Time ``jobs`` no-op messages through ``PROCESSES`` Dramatiq worker processes."""
    redis = load("redis")
    redis.Redis.from_url(url).flushall()
    client, task = make_broker(url)
    workers.start(
        [PY, "-m", "dramatiq", "bench.peers.dramatiq_peer", "--processes", str(PROCESSES)]
        + ["--path", str(ROOT), "--queues", QUEUE]
    )

    def run(count: int) -> float:
        for _ in range(count):
            task.send()
        client.join(QUEUE, interval=5, timeout=600_000)
        return time.perf_counter()

    run(PROCESSES)
    t0 = time.perf_counter()
    t1 = run(jobs)
    how = f"dramatiq --processes {PROCESSES} (8 threads each), actor.send, broker.join"
    return outcome(jobs, t1 - t0, how, str(load("dramatiq").__version__))


if __name__ == "__main__":
    main(sys.argv[1:], drive)
