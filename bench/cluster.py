"""Three schedulers behaving as one: a skewed burst spread by stealing, and eviction
across the cluster.

The caller starts the bus and the schedulers as processes (:mod:`bench.system`) and
passes in what this module cannot do itself (starting the late schedulers, reading the
bus's log); everything here talks to the bus through the public producer library.
Times are the bus's ``time.time()`` stamps on events (and on its log lines), so every
span is measured on one clock. The pure helpers at the top are tested without processes.
"""

from __future__ import annotations

import heapq
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

from bench.ours import FullSlots
from bench.stats import Json, summary
from bench.system import NOOP_RUNTIME, client_token
from bench.tracker import Tracker
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload
from scheduler.protocol_stats import StatsReply

BURST_PRIORITY = 5
"""Every job of the burst has this priority: none evicts another, every move is a steal."""

LONG_PRIORITY = 8
"""The priority of the jobs that keep every slot busy in the eviction figure."""

_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


# --- pure helpers ------------------------------------------------------------------------


def burst_runtimes(count: int, low: float, high: float, seed: int) -> list[float]:
    """``count`` runtimes drawn uniformly from ``low``..``high`` seconds (ms resolution),
    the same for the same ``seed``."""
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 3) for _ in range(count)]


def work_left(runtime: float, started: float | None, t0: float) -> float:
    """Seconds of ``runtime`` still to run at ``t0`` for a job that started at
    ``started`` (None: not yet); never below 0."""
    if started is None or started >= t0:
        return runtime
    return max(0.0, runtime - (t0 - started))


def ideal_makespan(remaining: Sequence[float], slots: int) -> float:
    """The lower bound on finishing ``remaining`` work on ``slots`` slots: the work
    spread evenly, or the longest single job if that is longer. ValueError if
    ``slots`` < 1."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    return max(sum(remaining) / slots, max(remaining, default=0.0))


def greedy_makespan(running: Sequence[float], waiting: Sequence[float], slots: int) -> float:
    """The makespan of a zero-overhead global FIFO queue: ``running`` jobs (seconds left)
    hold slots from the start, every other slot is free; each ``waiting`` job, in order,
    takes the slot that frees first. ValueError if more jobs run than there are slots."""
    if len(running) > slots:
        raise ValueError(f"{len(running)} running jobs on {slots} slots")
    free = sorted([*running, *[0.0] * (slots - len(running))])
    for runtime in waiting:
        heapq.heappush(free, heapq.heappop(free) + runtime)
    return max(free, default=0.0)


def refill_gaps(finals: Sequence[float], starts: Sequence[float]) -> list[float]:
    """For one scheduler: each job end (``finals``) paired with the first later start
    (``starts``) not yet paired; the seconds between them. An end with no later start
    (the queue was empty) gives nothing."""
    gaps: list[float] = []
    ordered = sorted(starts)
    j = 0
    for end in sorted(finals):
        while j < len(ordered) and ordered[j] < end:
            j += 1
        if j == len(ordered):
            break
        gaps.append(ordered[j] - end)
        j += 1
    return gaps


def registered_at(log_text: str, name: str) -> float | None:
    """The epoch time of the bus's last ``registered as NAME`` log line (the log's
    local-time stamp, to the millisecond), or None if it has none."""
    pattern = rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) .*: registered as {re.escape(name)} \("
    stamps = re.findall(pattern, log_text, re.MULTILINE)
    if not stamps:
        return None
    return datetime.strptime(stamps[-1], _LOG_TIME).timestamp()


def latest_started(started: Mapping[str, float]) -> str | None:
    """The job that started last (job id -> start stamp): of equally urgent running jobs,
    the one the cluster evicts first. None when ``started`` is empty."""
    return max(started, key=lambda job_id: started[job_id], default=None)


# --- figure 9: a skewed burst ------------------------------------------------------------


async def makespan(
    url: str,
    runtimes: Sequence[float],
    slots: int,
    first: str,
    start_others: Callable[[], Awaitable[list[str]]],
    bus_log: Callable[[], str],
) -> Json:
    """Submit the whole burst while only scheduler ``first`` is connected, then start the
    others (``start_others`` returns their names once registered) and wait for every job.

    The clock starts when the last scheduler registered (the bus's log stamp; the
    producer's clock after ``start_others`` returned if the log has none) and stops at
    the last final event's bus stamp. ``ideal_s`` is the lower bound for the work left
    at that start (runtimes minus what already ran) on all ``slots`` slots;
    ``greedy_s`` what a global FIFO queue with no overhead would take from that state.
    """
    payloads = [
        JobPayload(priority=BURST_PRIORITY, runtime=r, timeout=max(30.0, 4 * r)) for r in runtimes
    ]
    wait_s = 60 + 3 * sum(runtimes) / slots
    async with (
        ProducerClient(url, name="bench-cluster", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        ids = [result.id for result in await client.submit_many(payloads)]
        if None in ids:
            raise RuntimeError("the bus refused part of the burst")
        jobs = [job_id for job_id in ids if job_id is not None]

        def queued_on_first() -> bool:
            assigned = all((job_id, "assigned") in tracker.first for job_id in jobs)
            return assigned and tracker.counts.get("started", 0) >= min(2, len(jobs))

        await tracker.wait(queued_on_first, 30.0, f"the burst assigned to {first}")
        where = {tracker.first[(job_id, "assigned")].event.scheduler for job_id in jobs}
        others = await start_others()
        seen = time.time()
        await tracker.wait(lambda: len(tracker.finals) >= len(jobs), wait_s, "the burst's end")
        stats = await client.stats()
        outcomes = tracker.outcomes(jobs)
    if outcomes != {"succeeded": len(jobs)}:
        raise RuntimeError(f"not every job of the burst succeeded: {outcomes}")
    stamps = [registered_at(bus_log(), name) for name in others]
    t0 = max(s for s in stamps if s is not None) if None not in stamps else seen
    found = _makespan_figures(tracker, jobs, runtimes, slots, t0)
    found.update(_steal_figures(stats, tracker, jobs, first, t0))
    found["t0"] = "bus log: last scheduler registered" if None not in stamps else "producer clock"
    found["burst_all_assigned_to_first"] = where == {first}
    return found


def _makespan_figures(
    tracker: Tracker, jobs: list[str], runtimes: Sequence[float], slots: int, t0: float
) -> Json:
    starts = {job_id: tracker.first[(job_id, "started")].event.time for job_id in jobs}
    end = max(tracker.finals[job_id].event.time for job_id in jobs)
    left = [work_left(r, starts[j], t0) for j, r in zip(jobs, runtimes, strict=True)]
    running = [w for j, w in zip(jobs, left, strict=True) if starts[j] < t0 and w > 0]
    waiting = [w for j, w in zip(jobs, left, strict=True) if starts[j] >= t0]
    ideal = ideal_makespan(left, slots)
    greedy = greedy_makespan(running, waiting, slots)
    span = end - t0
    return {
        "makespan_s": round(span, 3),
        "ideal_s": round(ideal, 3),
        "ratio": round(span / ideal, 3),
        "greedy_s": round(greedy, 3),
        "ratio_vs_greedy": round(span / greedy, 3),
        "jobs": len(jobs),
        "slots": slots,
        "total_work_s": round(sum(runtimes), 3),
        "work_left_at_t0_s": round(sum(left), 3),
        "started_before_t0": sum(s < t0 for s in starts.values()),
        "runtime_s": {"min": min(runtimes), "max": max(runtimes)},
        "started_twice": sum(tracker.latest[(j, "started")].event.time != starts[j] for j in jobs),
    }


def _steal_figures(
    stats: StatsReply, tracker: Tracker, jobs: list[str], first: str, t0: float
) -> Json:
    ran: dict[str, list[str]] = {}
    for job_id in jobs:
        name = tracker.first[(job_id, "started")].event.scheduler or "?"
        ran.setdefault(name, []).append(job_id)
    local: list[float] = []
    stolen: list[float] = []
    for name, mine in ran.items():
        finals = [tracker.finals[j].event.time for j in mine]
        starts = [tracker.first[(j, "started")].event.time for j in mine]
        gaps = refill_gaps([f for f in finals if f >= t0], [s for s in starts if s >= t0])
        (local if name == first else stolen).extend(g * 1000 for g in gaps)
    found: Json = {
        "steals": stats.bus.stolen,
        "steal_attempts": stats.bus.steal_attempts,
        "jobs_per_scheduler": {name: len(mine) for name, mine in sorted(ran.items())},
        "refill_ms": {
            "local_queue": summary(local) if local else None,
            "by_steal": summary(stolen) if stolen else None,
        },
    }
    return found


# --- figure 10: eviction across the cluster ---------------------------------------------


async def eviction(url: str, slots: int, reps: int) -> Json:
    """Keep all ``slots`` slots of the cluster busy with long priority-8 jobs, then time
    urgent (priority 0) no-op arrivals, as :func:`bench.ours.eviction` does on one
    scheduler: the producer's ``time.time()`` just before the submit -> the bus's stamp
    on the urgent job's ``started`` event. Between repetitions: the urgent job ended and
    ``slots`` long jobs run again (the evicted one requeued and started again).

    Also records where each urgent job started, which long job was evicted and on which
    scheduler, and whether that was the long job that started last (the least urgent of
    equals by the cluster's rule).
    """
    urgent = JobPayload(priority=0, runtime=NOOP_RUNTIME)
    long = JobPayload(priority=LONG_PRIORITY, runtime=3600.0, timeout=7200.0)
    samples: list[float] = []
    stopped: str | None = None
    where = _Placements()
    async with (
        ProducerClient(url, name="bench-cluster-evict", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        full = FullSlots(client, tracker, slots, long)
        await full.refill()
        for rep in range(reps):
            running = {j: tracker.latest[(j, "started")].event.time for j in full.jobs}
            expected = latest_started(running)
            sent = time.time()
            job_id = await client.submit(urgent)
            try:
                started = await tracker.wait_event(job_id, "started", 5.0)
            except TimeoutError:
                if not samples:
                    raise
                stopped = f"the urgent job of repetition {rep + 1} did not start within 5 s"
                break
            samples.append((started.event.time - sent) * 1000)
            await tracker.wait_final(job_id, 30.0)
            victim = await _victim(tracker, full.jobs, sent)
            where.add(tracker, started.event.scheduler, victim, expected)
            await full.refill()
    found: Json = {"cluster_eviction_ms": summary(samples), "cluster_eviction": where.figures()}
    if stopped is not None:
        found["cluster_eviction"]["stopped_early"] = stopped
    return found


async def _victim(tracker: Tracker, jobs: list[str], since: float) -> str | None:
    """The long job evicted after ``since`` (bus stamp), waiting a little for its event."""

    def evicted() -> str | None:
        for job_id in jobs:
            seen = tracker.latest.get((job_id, "evicted"))
            if seen is not None and seen.event.time >= since:
                return job_id
        return None

    try:
        await tracker.wait(lambda: evicted() is not None, 5.0, "the eviction's event")
    except TimeoutError:
        return None
    return evicted()


class _Placements:
    """Tallies where urgent jobs started and whom they evicted."""

    def __init__(self) -> None:
        self.urgent_on: dict[str, int] = {}
        self.on_victims_scheduler = 0
        self.victim_started_last = 0
        self.victim_unknown = 0
        self.rounds = 0

    def add(
        self, tracker: Tracker, urgent_on: str | None, victim: str | None, expected: str | None
    ) -> None:
        """Count one repetition."""
        self.rounds += 1
        name = urgent_on or "?"
        self.urgent_on[name] = self.urgent_on.get(name, 0) + 1
        if victim is None:
            self.victim_unknown += 1
            return
        victim_on = tracker.latest[(victim, "evicted")].event.scheduler
        self.on_victims_scheduler += victim_on == urgent_on
        self.victim_started_last += victim == expected

    def figures(self) -> Json:
        """The tallies as JSON."""
        return {
            "rounds": self.rounds,
            "urgent_started_on": dict(sorted(self.urgent_on.items())),
            "urgent_on_the_victims_scheduler": self.on_victims_scheduler,
            "victim_was_the_last_started": self.victim_started_last,
            "victim_unknown": self.victim_unknown,
        }
