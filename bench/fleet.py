"""How the bus's cost grows with the fleet: dispatch CPU per job against the number of
connected schedulers, many queued jobs (memory, reload after a restart), and many
producers at once.

The caller starts and stops the processes (:mod:`bench.run`, :mod:`bench.system`);
the functions here talk to a running bus. The pure helpers at the top are tested
without processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import psutil

from bench.ingest import LeanProducer, bulk_frames, single_frames
from bench.stats import Json, median, rate
from bench.system import client_token, cpu_seconds
from scheduler.producer.client import ProducerClient

FILL_WINDOW = 20
"""``submit_many`` frames (of 1000 jobs) in flight at once while :func:`fill` queues jobs."""

IDLE_WINDOW_S = 1.0
"""How long the bus's idle CPU (heartbeats of the connected schedulers) is measured."""


# --- pure helpers ------------------------------------------------------------------------


def net_cpu_us_per_job(cpu_s: float, idle_share: float, elapsed_s: float, jobs: int) -> float:
    """The bus's CPU per job in microseconds once its idle cost (``idle_share`` of a
    core: heartbeats, timers) over ``elapsed_s`` is taken out; never below 0."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    return round(max(0.0, cpu_s - idle_share * elapsed_s) * 1e6 / jobs, 1)


def scaling_ratio(by_count: Mapping[int, float]) -> float | None:
    """The value at the largest count over the value at the smallest, to 2 decimals;
    None with fewer than two counts or a zero at the smallest."""
    if len(by_count) < 2:
        return None
    low, high = by_count[min(by_count)], by_count[max(by_count)]
    return round(high / low, 2) if low > 0 else None


def paired_ratio(rounds: Mapping[int, Sequence[float]]) -> float | None:
    """The median over rounds of :func:`scaling_ratio` within each round (the counts'
    lists are in round order, one value per round each): a drift of the machine's load
    between rounds moves both ends of a round's ratio alike. None if any round has no
    ratio (see :func:`scaling_ratio`); ValueError if the counts have unequal rounds."""
    lengths = {len(values) for values in rounds.values()}
    if len(lengths) != 1:
        raise ValueError(f"every count needs as many rounds, not {sorted(lengths)}")
    ratios = [
        scaling_ratio({count: values[i] for count, values in rounds.items()})
        for i in range(lengths.pop())
    ]
    known = [r for r in ratios if r is not None]
    return round(median(known), 2) if known and len(known) == len(ratios) else None


def split_jobs(jobs: int, parts: int) -> list[int]:
    """``jobs`` split into ``parts`` near-equal shares (the first ones one larger)."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, not {parts}")
    base, extra = divmod(jobs, parts)
    return [base + (i < extra) for i in range(parts)]


# --- dispatch CPU against the number of schedulers ----------------------------------------


async def idle_share(bus: psutil.Process, seconds: float = IDLE_WINDOW_S) -> float:
    """The share of one core the bus uses over ``seconds`` with no job moving."""
    cpu0, t0 = cpu_seconds(bus), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds(bus) - cpu0) / (time.perf_counter() - t0)


def dispatch_row(schedulers: int, rounds: Sequence[Json], idle: float) -> Json:
    """One point of the scaling curve from :func:`bench.fanout.measure`'s results, one
    per round: their medians, and each round's CPU per job (as measured, and net of the
    bus's ``idle`` share of a core)."""
    if not rounds:
        raise ValueError("a point needs at least one round")
    gross: list[float] = []
    net: list[float] = []
    for found in rounds:
        jobs = int(found["jobs"])
        cpu_us = float(found["bus_cpu_us_per_job"])
        elapsed = jobs / float(found["dispatch_jobs_per_s"])
        gross.append(cpu_us)
        net.append(net_cpu_us_per_job(cpu_us * jobs / 1e6, idle, elapsed, jobs))
    return {
        "schedulers": schedulers,
        "jobs": int(rounds[0]["jobs"]),
        "rounds": len(rounds),
        "dispatch_jobs_per_s": median([float(r["dispatch_jobs_per_s"]) for r in rounds]),
        "bus_cpu_us_per_job": median(gross),
        "bus_cpu_us_per_job_rounds": gross,
        "bus_idle_cpu_share": round(idle, 3),
        "bus_cpu_us_per_job_net_of_idle": median(net),
        "bus_cpu_us_per_job_net_of_idle_rounds": net,
    }


def dispatch_summary(rows: Sequence[Json]) -> Json:
    """The curve, and the ratio of the largest fleet to the smallest (goal: <= 1.5): the
    median of the rounds' ratios (see :func:`paired_ratio`)."""
    gross = {int(r["schedulers"]): r["bus_cpu_us_per_job_rounds"] for r in rows}
    net = {int(r["schedulers"]): r["bus_cpu_us_per_job_net_of_idle_rounds"] for r in rows}
    return {
        "points": list(rows),
        "cpu_ratio_largest_vs_1": paired_ratio(gross),
        "cpu_ratio_net_of_idle": paired_ratio(net),
    }


# --- many queued jobs ---------------------------------------------------------------------


async def fill(url: str, bus: psutil.Process, jobs: int) -> Json:
    """Queue ``jobs`` no-op jobs (``submit_many`` of 1000) on a bus with no scheduler for
    them; the bus's RSS before and after, bytes per job, and the accepted rate."""
    frames = bulk_frames(jobs)
    producer = await LeanProducer.open(url, "bench-million")
    try:
        await asyncio.sleep(0.3)
        empty = bus.memory_info().rss
        t0 = time.perf_counter()
        # A window of frames at a time: a client that runs far ahead of the bus's replies
        # stops answering its pings in time on a busy machine, and the bus drops it.
        for first in range(0, len(frames), FILL_WINDOW):
            window = frames[first : first + FILL_WINDOW]
            await producer.send_all([f for f, _ in window], sum(n for _, n in window), 120.0)
        accepted_per_s = rate(jobs, time.perf_counter() - t0)
        await asyncio.sleep(0.5)
        full = bus.memory_info().rss
    finally:
        await producer.close()
    return {
        "jobs": jobs,
        "rss_mb_at_1m": round((empty + (full - empty) * 1_000_000 / jobs) / 2**20, 1),
        "rss_empty_mb": round(empty / 2**20, 1),
        "rss_queued_mb": round(full / 2**20, 1),
        "bytes_per_job": round((full - empty) / jobs, 1),
        "submit_many_jobs_per_s": accepted_per_s,
    }


async def ready_after_restart(url: str, started: float, timeout: float) -> Json:
    """Once a restarted bus listens at ``url``: the seconds from its start
    (``started``, ``perf_counter``) until a producer is registered, and until it answers
    ``stats`` (with how many jobs it holds queued)."""
    async with ProducerClient(url, name="bench-reload", token=client_token("producer")) as client:
        registered = time.perf_counter() - started
        stats = await asyncio.wait_for(client.stats(), timeout)
        answered = time.perf_counter() - started
    return {
        "restart_to_registered_s": round(registered, 2),
        "restart_to_stats_s": round(answered, 2),
        "queued_after_restart": stats.bus.queued,
    }


# --- many producers at once ---------------------------------------------------------------


async def ingest_many(url: str, jobs: int, producers: int, bulk: bool) -> Json:
    """Jobs/s accepted from ``producers`` lean connections sending at once (pipelined
    single submits, or ``submit_many`` frames): all ``jobs`` over the time from the
    first send to the last reply."""
    shares = split_jobs(jobs, producers)
    links = [await LeanProducer.open(url, f"bench-ingest-{i}") for i in range(producers)]
    try:
        if bulk:
            frames = [[f for f, _ in bulk_frames(n)] for n in shares]
        else:
            frames = [single_frames(n) for n in shares]
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                link.send_all(mine, n, 120.0 + jobs / 500)
                for link, mine, n in zip(links, frames, shares, strict=True)
            )
        )
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(link.close() for link in links))
    return {"jobs_per_s": rate(jobs, elapsed), "jobs": jobs, "producers": producers}
