"""Our figures that need a bus and a scheduler: throughput, latency, eviction, timeouts.

Every function here talks to an already running bus through the public producer
library (:class:`~scheduler.producer.client.ProducerClient`); the caller starts and
stops the processes (:mod:`bench.system`).
"""

from __future__ import annotations

import asyncio
import time

import psutil

from bench.stats import Json, rate, summary
from bench.system import NOOP_RUNTIME, client_token, cpu_seconds
from bench.tracker import Tracker
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobPayload

NOOP = JobPayload(priority=5, runtime=NOOP_RUNTIME)


async def _submit_all(client: ProducerClient, payloads: list[JobPayload]) -> list[str]:
    """Submit every payload without waiting for one reply before the next submit."""
    # ProducerClient.submit sends, then awaits its reply: as tasks, the sends go out
    # back to back and the replies are matched by ref as they arrive.
    return list(await asyncio.gather(*(client.submit(p) for p in payloads)))


async def e2e_round(
    url: str,
    jobs: int,
    bus: psutil.Process,
    scheduler: psutil.Process,
    timeout: float,
    payload: JobPayload = NOOP,
) -> Json:
    """Push ``jobs`` jobs (no-op unless ``payload`` says otherwise) through the bus and
    scheduler as fast as one producer can.

    Returns jobs/s (first submit to the last final event received) and the CPU each
    process spent per job: bus, scheduler, job processes (with the fork server or the warm
    slot processes that ran them), and this producer.
    """
    me = psutil.Process()
    async with (
        ProducerClient(url, name="bench-e2e", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        before = (cpu_seconds(bus), cpu_seconds(scheduler), cpu_seconds(scheduler, True))
        mine = cpu_seconds(me)
        t0 = time.perf_counter()
        ids = await _submit_all(client, [payload] * jobs)
        accepted_s = time.perf_counter() - t0
        await tracker.wait(lambda: len(tracker.finals) >= jobs, timeout, f"{jobs} final events")
        elapsed = max(seen.recv_perf for seen in tracker.finals.values()) - t0
        after = (cpu_seconds(bus), cpu_seconds(scheduler), cpu_seconds(scheduler, True))
        mine = cpu_seconds(me) - mine
        outcomes = tracker.outcomes(ids)
    per_job = [(a - b) * 1000 / jobs for a, b in zip(after, before, strict=True)]
    return {
        "jobs_per_s": rate(jobs, elapsed),
        "seconds": round(elapsed, 3),
        "all_accepted_s": round(accepted_s, 3),
        "outcomes": outcomes,
        "scheduler_rss_mb": round(scheduler.memory_info().rss / 2**20, 1),
        "cpu_ms_per_job": {
            "bus": round(per_job[0], 3),
            "scheduler": round(per_job[1], 3),
            "job_processes": round(per_job[2], 3),
            "producer": round(mine * 1000 / jobs, 3),
        },
    }


async def latency(url: str, jobs: int, warmup: int = 20) -> Json:
    """Submit one no-op job at a time to an idle scheduler and time each step.

    ``submit_to_start_ms``: producer's ``time.time()`` just before the submit is sent ->
    the bus's ``time.time()`` stamp on the job's ``started`` event (the bus stamps it on
    receiving the scheduler's report, sent right after fork() returns). Same machine,
    same clock. ``submit_to_final_ms``: the same send time -> the producer's
    ``time.time()`` on receiving the final event. ``submit_to_accepted_ms``: send ->
    ``accepted`` reply.
    """
    to_start: list[float] = []
    to_final: list[float] = []
    to_accept: list[float] = []
    async with (
        ProducerClient(url, name="bench-latency", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        for i in range(warmup + jobs):
            sent = time.time()
            job_id = await client.submit(NOOP)
            accepted = time.time()
            final = await tracker.wait_final(job_id, 30.0)
            started = tracker.first.get((job_id, "started"))
            if i < warmup or started is None:
                continue
            to_accept.append((accepted - sent) * 1000)
            to_start.append((started.event.time - sent) * 1000)
            to_final.append((final.recv_wall - sent) * 1000)
    return {
        "submit_to_accepted_ms": summary(to_accept),
        "submit_to_start_ms": summary(to_start),
        "submit_to_final_ms": summary(to_final),
    }


async def eviction(url: str, size: int, reps: int) -> Json:
    """Fill every slot with long priority-10 jobs, then time urgent (priority 0) arrivals.

    Each repetition: submit one no-op priority-0 job; latency = its ``started`` event's
    bus stamp minus the producer's ``time.time()`` just before the submit. Then wait
    until it ended and ``size`` long jobs run again (an evicted job goes back to the bus
    and is started again; one that became final meanwhile is replaced). If an urgent job
    does not start within 5 s (say, every long job reached a cap on evictions) the
    repetitions stop there and the result says so.
    """
    urgent = JobPayload(priority=0, runtime=NOOP_RUNTIME)
    samples: list[float] = []
    received: list[float] = []
    stopped: str | None = None
    async with (
        ProducerClient(url, name="bench-evict", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        slots = FullSlots(client, tracker, size)
        await slots.refill()
        for rep in range(reps):
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
            received.append((started.recv_wall - sent) * 1000)
            await tracker.wait_final(job_id, 30.0)
            await slots.refill()
    found: Json = {
        "eviction_ms": summary(samples),
        "eviction_event_received_ms": summary(received),
        "evictions_seen": tracker.counts.get("evicted", 0),
    }
    if stopped is not None:
        found["eviction_stopped_early"] = stopped
    return found


class FullSlots:
    """Keeps ``size`` long jobs (priority 10 unless ``long`` says otherwise) running."""

    LONG = JobPayload(priority=10, runtime=3600.0, timeout=7200.0)

    def __init__(
        self, client: ProducerClient, tracker: Tracker, size: int, long: JobPayload | None = None
    ) -> None:
        self.client = client
        self.tracker = tracker
        self.size = size
        self.long = self.LONG if long is None else long
        self.jobs: list[str] = []

    def _running(self) -> bool:
        return sum(self.tracker.last.get(job_id) == "started" for job_id in self.jobs) >= self.size

    async def refill(self, tries: int = 3) -> None:
        """Replace long jobs that became final, then wait until ``size`` of them run."""
        for _ in range(tries):
            self.jobs = [job_id for job_id in self.jobs if job_id not in self.tracker.finals]
            missing = self.size - len(self.jobs)
            if missing > 0:
                self.jobs += await _submit_all(self.client, [self.long] * missing)
            try:
                await self.tracker.wait(self._running, 10.0, f"{self.size} long jobs running")
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"{self.size} long jobs did not run again within {tries * 10} s")


async def timeouts(url: str, jobs: int, timeout: float) -> Json:
    """Submit ``jobs`` jobs that would sleep 5 s with a ``timeout`` s timeout, all at once.

    ``timeout_overrun_ms``: the final event's ``wall_s`` (the process's life, fork to
    reap, measured by the scheduler) minus the timeout. ``final_after_deadline_ms``:
    the final event's bus stamp minus (its ``started`` stamp + the timeout).
    """
    payload = JobPayload(priority=5, runtime=5.0, timeout=timeout, max_retries=0)
    overrun: list[float] = []
    after_deadline: list[float] = []
    async with (
        ProducerClient(url, name="bench-timeout", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        ids = await _submit_all(client, [payload] * jobs)
        wait_s = 10 + jobs * timeout * 2
        await tracker.wait(lambda: len(tracker.finals) >= jobs, wait_s, f"{jobs} timeouts")
        for job_id in ids:
            final = tracker.finals[job_id].event
            started = tracker.first.get((job_id, "started"))
            if final.event != "timed_out" or final.wall_s is None or started is None:
                continue
            overrun.append((final.wall_s - timeout) * 1000)
            after_deadline.append((final.time - started.event.time - timeout) * 1000)
        outcomes = tracker.outcomes(ids)
    if not overrun:
        raise RuntimeError(f"no job timed out: {outcomes}")
    return {
        "timeout_overrun_ms": summary(overrun),
        "timeout_final_after_deadline_ms": summary(after_deadline),
        "outcomes": outcomes,
    }


async def delayed_lateness(url: str, jobs: int, lead: float = 0.05, warmup: int = 5) -> Json:
    """Submit one delayed no-op job at a time, due ``lead`` seconds after the submit is
    sent, to an idle scheduler; lateness = the bus's ``time.time()`` stamp on its
    ``started`` event minus its ``run_at`` (same machine, same clock). Negative would
    mean early (the bus never releases a job before its time)."""
    lateness: list[float] = []
    async with (
        ProducerClient(url, name="bench-delayed", token=client_token("producer")) as client,
        Tracker(client) as tracker,
    ):
        for i in range(warmup + jobs):
            run_at = time.time() + lead
            job_id = await client.submit(NOOP, run_at=run_at)
            await tracker.wait_final(job_id, 30.0)
            started = tracker.first.get((job_id, "started"))
            if i >= warmup and started is not None:
                lateness.append((started.event.time - run_at) * 1000)
    return {"delayed_start_lateness_ms": summary(lateness)}
