"""The simulator against the live system on the cluster workload, in one run.

The cluster figures' fleet (three ``test_scheduler -s 2`` on one bus, ``--steal
urgent``) and their seeded runtimes, as a stream: jobs of priorities 0, 5 and 8 arrive
at random (exponential gaps) at :data:`LOAD` of the slots' capacity, so that jobs wait
for slots, urgent ones evict, queued ones are stolen, and the waits are short enough
for a job's start and exit costs to matter. The live run is recorded (every event the
producer hears, as ``monitor --json`` prints them); the simulator then replays its jobs
(submitted at their recorded ``accepted`` times, with their priorities and runtimes)
on the same fleet, once per cost model: none (the simulator before it had costs), its
defaults, and the costs calibrated from this very recording. Waits are counted the same
way on both sides (:class:`~scheduler.simulate.metrics.Recorder` over the events, with
the bus's stamps), per priority.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.cluster import burst_runtimes
from bench.stats import Json
from bench.system import client_token
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS
from scheduler.simulate.costs import DEFAULT_EXIT_COST_S, DEFAULT_START_COST_S, calibrate
from scheduler.simulate.engine import SIM_RULES, Outcome, Settings, Simulation
from scheduler.simulate.fleet import JobCosts, uniform
from scheduler.simulate.metrics import Recorder, WaitStats
from scheduler.simulate.workload import Workload, recorded_jobs

PRIORITIES = (0, 5, 8)
"""The priorities of the stream, drawn with :data:`WEIGHTS`: the cluster figures' urgent,
burst and long jobs."""

WEIGHTS = (1, 2, 2)
"""How often each of :data:`PRIORITIES` is drawn."""

LOAD = 0.8
"""The stream's work over the slots' capacity."""

TOLERANCE = 0.10
"""How far a simulated wait percentile may be from the live one (as a share of it)."""

Planned = tuple[float, int, float]
"""One job of the stream: seconds after the first submit, priority, runtime."""


def stream(count: int, low: float, high: float, seed: int, slots: int) -> list[Planned]:
    """``count`` jobs with the cluster figures' runtimes (:func:`burst_runtimes`), seeded
    priorities and exponential gaps that make the work :data:`LOAD` of ``slots``."""
    rng = random.Random(seed + 1)
    mean_gap = (low + high) / 2 / (slots * LOAD)
    jobs: list[Planned] = []
    at = 0.0
    for runtime in burst_runtimes(count, low, high, seed):
        jobs.append((at, rng.choices(PRIORITIES, WEIGHTS)[0], runtime))
        at += rng.expovariate(1 / mean_gap)
    return jobs


async def record(url: str, jobs: Sequence[Planned], wait_s: float) -> list[JobEvent]:
    """Submit ``jobs`` at their times (one producer, each submit awaited) and return every
    event of theirs, once each ended; RuntimeError if one did not succeed."""
    events: list[JobEvent] = []
    ended: set[str] = set()
    done = asyncio.Event()
    ids: list[str] = []
    async with ProducerClient(url, name="bench-fidelity", token=client_token("producer")) as client:

        async def collect() -> None:
            async for event in client.events():
                events.append(event)
                if event.event in FINAL_EVENTS:
                    ended.add(event.id)
                    if len(ended) == len(jobs):
                        done.set()

        collector = asyncio.create_task(collect(), name="bench-fidelity-events")
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for at, priority, runtime in jobs:
                await asyncio.sleep(max(0.0, t0 + at - loop.time()))
                payload = JobPayload(priority=priority, runtime=runtime, timeout=30.0)
                ids.append((await client.submit(payload)).id)
            await asyncio.wait_for(done.wait(), wait_s)
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
    finals = {e.id: e.event for e in events if e.event in FINAL_EVENTS}
    if sorted(finals.values()) != ["succeeded"] * len(ids):
        raise RuntimeError(f"not every job of the stream succeeded: {finals}")
    return events


def as_records(events: Sequence[JobEvent]) -> list[dict[str, object]]:
    """``events`` as ``monitor --json`` prints them (dicts), in the bus's time order."""
    ordered = sorted(events, key=lambda e: e.time)
    return [msgspec.to_builtins(e) for e in ordered]


def live_waits(events: Sequence[JobEvent]) -> list[WaitStats]:
    """The waits of the recorded run, counted as the simulator counts its own."""
    recorder = Recorder()
    for event in sorted(events, key=lambda e: e.time):
        recorder.event(event, event.time)
    return recorder.wait_stats()


def simulate(
    records: Sequence[dict[str, object]], schedulers: int, size: int, costs: JobCosts
) -> Outcome:
    """The recorded run's jobs replayed on ``schedulers`` simulated schedulers of
    ``size`` slots with ``costs``, under the live bus's rules."""
    jobs = recorded_jobs(records)
    workload = Workload(lambda: iter(jobs), frozenset({"sleep"}), len(jobs))
    return Simulation(workload, uniform(schedulers, size, 10.0, costs), SIM_RULES).run()


def compare(live: Sequence[WaitStats], simulated: Sequence[WaitStats]) -> Json:
    """Per priority: the live and simulated wait p50/p90 (ms) and simulated over live;
    ``within`` whether every ratio is within :data:`TOLERANCE` of 1."""
    sim = {w.priority: w for w in simulated}
    rows: Json = {}
    ratios: list[float] = []
    for w in live:
        other = sim.get(w.priority)
        row: Json = {"jobs": w.count}
        for name in ("p50", "p90"):
            mine = getattr(w, name)
            theirs = None if other is None else getattr(other, name)
            ratio = None if theirs is None or mine <= 0 else theirs / mine
            row[name] = {
                "live_ms": round(mine * 1000, 2),
                "sim_ms": None if theirs is None else round(theirs * 1000, 2),
                "ratio": None if ratio is None else round(ratio, 3),
            }
            ratios.append(ratio if ratio is not None else float("inf"))
        rows[str(w.priority)] = row
    worst = max((abs(r - 1) for r in ratios), default=0.0)
    return {"by_priority": rows, "worst_off": round(worst, 3), "within": worst <= TOLERANCE}


def figure(
    events: Sequence[JobEvent], schedulers: int, size: int, recording: Path | None = None
) -> Json:
    """The comparison for the recorded ``events`` (written to ``recording`` if given)."""
    records = as_records(events)
    if recording is not None:
        recording.write_text("".join(json.dumps(r) + "\n" for r in records))
    calibration = calibrate(records, Settings().latency)
    models = {
        "no_costs": JobCosts(),
        "defaults": JobCosts(DEFAULT_START_COST_S, DEFAULT_EXIT_COST_S),
        "calibrated": calibration.costs(),
        "calibrated_spread": calibration.costs(spread=True),
    }
    live = live_waits(events)
    found: Json = {
        "jobs": sum(e.event == "accepted" for e in events),
        "evictions": sum(e.event == "evicted" for e in events),
        "calibration": calibration.as_json(),
    }
    for name, costs in models.items():
        outcome = simulate(records, schedulers, size, costs)
        found[name] = {
            "start_cost_ms": round(costs.start * 1000, 3),
            "exit_cost_ms": round(costs.exit * 1000, 3),
            "evictions": outcome.counts.get("evicted", 0),
            **compare(live, outcome.waits),
        }
    return found
