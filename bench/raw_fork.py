"""The physical limit: a plain loop forking one process per no-op job, ``concurrency`` at once.

Run as ``python -m bench.raw_fork --jobs N --concurrency C`` in a fresh interpreter (as
lean as a scheduler process); prints one JSON object. Each job is a fork-context
``multiprocessing.Process`` running ``time.sleep(1e-6)`` (what the ``sleep`` task does
for a no-op job); the loop starts a new one as soon as one is joined.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import resource
import sys
import time
from multiprocessing.process import BaseProcess

NOOP_RUNTIME = 1e-6


def noop() -> None:
    """The job: what the built-in ``sleep`` task does with a no-op runtime."""
    time.sleep(NOOP_RUNTIME)


def run(jobs: int, concurrency: int) -> dict[str, float]:
    """Fork ``jobs`` processes, ``concurrency`` at a time; return jobs/s, seconds, CPU per
    job of this process and of the children, and this process's peak RSS."""
    ctx = multiprocessing.get_context("fork")
    running: dict[int, BaseProcess] = {}
    started = done = 0
    t0 = time.perf_counter()
    while done < jobs:
        while len(running) < concurrency and started < jobs:
            process: BaseProcess = ctx.Process(target=noop)
            process.start()
            running[process.sentinel] = process
            started += 1
        for sentinel in multiprocessing.connection.wait(list(running)):
            assert isinstance(sentinel, int)
            process = running.pop(sentinel)
            process.join()
            process.close()
            done += 1
    elapsed = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "jobs_per_s": round(jobs / elapsed, 1),
        "seconds": round(elapsed, 3),
        "parent_cpu_ms_per_job": round((own.ru_utime + own.ru_stime) * 1000 / jobs, 3),
        "child_cpu_ms_per_job": round((children.ru_utime + children.ru_stime) * 1000 / jobs, 3),
        "parent_rss_mb": round(_peak_rss_kb() / 1024, 1),
    }


def _peak_rss_kb() -> int:
    # Not ru_maxrss: Linux carries it over from before exec(), i.e. from the bench process.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    """``--jobs N --concurrency C``: run and print the result as JSON."""
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    jobs = int(args.get("--jobs", "2000"))
    concurrency = int(args.get("--concurrency", "5"))
    print(json.dumps(run(jobs, concurrency)))


if __name__ == "__main__":
    main(sys.argv[1:])
