"""How the bus uses Python's cyclic garbage collector.

Reference counting frees almost everything the bus makes: a job's records, frames and
journal rows hold no reference cycles (a 10,000-job run leaves under 800 objects for the
collector to free). The collector still walks what is alive: with CPython's default
threshold (a young-generation pass every 700 net allocations: one every 35 to 70 jobs
in the fleet bench) it keeps walking the records of jobs in flight, promotes them to the
older generations and so brings on full passes, whose cost grows with everything the
bus holds (its connections, its queue). :func:`collect_less_often` spaces the passes out;
:func:`paused_gc` stops them while a journal is reloaded.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

YOUNG_THRESHOLD: Final = 10_000
"""Net allocations between two passes over the youngest generation."""


def collect_less_often() -> None:
    """Run a young-generation pass every :data:`YOUNG_THRESHOLD` net allocations instead
    of CPython's default (700 in 3.11 and 3.12), the older generations' thresholds unchanged.

    Measured with ``bench.fanout`` schedulers (``python -m bench.run --only fleet``): the
    collector took 5 µs of the bus's CPU per job with one scheduler connected and 27-33 µs
    with 1,000; with this threshold, about 2 µs. For the process's lifetime: the bus
    calls it once, at start."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (reference counting still frees memory).

    For reloading a journal: building a million job records would otherwise run a full
    collection every so often, each walking every record built so far (a third of the
    reload's time at a million queued jobs). The records hold no reference cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
