"""The simulator against the live system on the cluster workload, in one bench run.

The cluster figures' fleet (three ``test_scheduler -s 2`` on one bus, ``--steal
urgent``) and their seeded runtimes, as a stream: jobs of priorities 0, 5 and 8 arrive
at random (exponential gaps) at :data:`LOAD` of the slots' capacity, so that jobs wait
for slots, urgent ones evict, queued ones are stolen, and the waits are short enough
for a job's start and exit costs to matter. The live workload runs in rounds (a fresh
bus and schedulers each), each recorded (every event the producer hears, as ``monitor
--json`` prints them); the simulator then replays each round's jobs
(submitted at their recorded ``accepted`` times, with their priorities and runtimes)
on the same fleet, once per cost model: none (the simulator before it had costs), its
defaults, the medians calibrated from this very recording, and each job drawing its
costs from the recording's samples (:data:`DRAWS` simulations per round). The live
figure is the mean over the rounds; how far apart the rounds are is the comparison's
noise floor (``live_spread``).
Waits are counted the same way on both sides
(:class:`~scheduler.simulate.metrics.Recorder` over the events, with the bus's stamps),
per priority.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import click
import msgspec

from bench.cluster import burst_runtimes
from bench.stats import Json
from bench.system import client_token
from scheduler.producer.client import ProducerClient
from scheduler.protocol import JobEvent, JobPayload
from scheduler.protocol_types import FINAL_EVENTS
from scheduler.simulate.costs import (
    DEFAULT_DISPATCH_COST_S,
    DEFAULT_EVICT_COST_S,
    DEFAULT_EXIT_COST_S,
    DEFAULT_START_COST_S,
    calibrate,
)
from scheduler.simulate.engine import Simulation
from scheduler.simulate.fleet import JobCosts, uniform
from scheduler.simulate.metrics import Recorder, WaitStats
from scheduler.simulate.workload import Workload, recorded_jobs
from scheduler.simulate.world import SIM_RULES, Outcome, Settings

PRIORITIES = (0, 5, 8)
"""The priorities of the stream, drawn with :data:`WEIGHTS`: the cluster figures' urgent,
burst and long jobs."""

WEIGHTS = (1, 2, 2)
"""How often each of :data:`PRIORITIES` is drawn."""

LOAD = 0.7
"""The stream's work over the slots' capacity. At 0.8 the least urgent jobs' waits are
chaotic over 300 jobs: half a millisecond more or less per fork moves their median by a
quarter, in the simulator as much as live, so one run cannot be compared with another."""

HEADLINE = "calibrated_spread"
"""The model the figure's ``worst_off`` is for: the costs calibrated from the recording,
each job drawing its own from the recorded samples."""

DRAWS = 5
"""Simulations of the headline model, each with other draws; the median is compared."""

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


def _cell(live: Sequence[float], sim: Sequence[float]) -> Json:
    """One percentile: the live figure (the mean of the rounds) and the simulated one (the
    median of the simulations), in ms, their ratio, and the ranges behind them."""
    mine = statistics.fmean(live)
    theirs = statistics.median(sim) if sim else None
    ratio = None if theirs is None or mine <= 0 else theirs / mine
    cell: Json = {
        "live_ms": round(mine * 1000, 2),
        "sim_ms": None if theirs is None else round(theirs * 1000, 2),
        "ratio": None if ratio is None else round(ratio, 3),
    }
    for name, values in (("live", live), ("sim", sim)):
        if len(values) > 1:
            cell[f"{name}_range_ms"] = [round(min(values) * 1000, 2), round(max(values) * 1000, 2)]
    return cell


def compare(live: Sequence[Sequence[WaitStats]], runs: Sequence[Sequence[WaitStats]]) -> Json:
    """Per priority: the wait p50/p90 of the live ``live`` rounds and of the simulated
    ``runs`` (each round replayed, with other draws of the model's costs), their ratio
    (:func:`_cell`); ``worst_off`` is the ratio furthest from 1, ``within`` whether it is
    within :data:`TOLERANCE`."""
    rows: Json = {}
    ratios: list[float] = []
    priorities = sorted({w.priority for round_ in live for w in round_})
    for priority in priorities:
        mine = [w for round_ in live for w in round_ if w.priority == priority]
        found = [w for run in runs for w in run if w.priority == priority]
        row: Json = {"jobs": sum(w.count for w in mine) // len(mine)}
        for name in ("p50", "p90"):
            row[name] = cell = _cell([getattr(w, name) for w in mine],
                                     [getattr(w, name) for w in found])  # fmt: skip
            ratios.append(cell["ratio"] if cell["ratio"] is not None else float("inf"))
        rows[str(priority)] = row
    worst = round(max((abs(r - 1) for r in ratios), default=0.0), 3)
    return {"by_priority": rows, "worst_off": worst, "within": worst <= TOLERANCE}


def live_spread(live: Sequence[Sequence[WaitStats]]) -> float | None:
    """How far apart the live rounds' wait p50/p90 are, at worst: the largest over the
    smallest of one percentile, minus 1 (the noise floor of a comparison); None with one
    round."""
    if len(live) < 2:
        return None
    worst = 0.0
    for priority in {w.priority for round_ in live for w in round_}:
        for name in ("p50", "p90"):
            values = [getattr(w, name) for r in live for w in r if w.priority == priority]
            if len(values) > 1 and min(values) > 0:
                worst = max(worst, max(values) / min(values) - 1)
    return round(worst, 3)


def figure(
    rounds: Sequence[Sequence[JobEvent]], schedulers: int, size: int, keep: Path | None = None
) -> Json:
    """The comparison for the recorded live ``rounds`` (each written into the directory
    ``keep`` if given): each cost model's waits against the live ones; the headline
    (``worst_off``) is :data:`HEADLINE`'s."""
    recordings = [as_records(events) for events in rounds]
    if keep is not None:
        for index, records in enumerate(recordings, 1):
            text = "".join(json.dumps(r) + "\n" for r in records)
            (keep / f"recorded-{index}.jsonl").write_text(text)
    calibration = calibrate([r for records in recordings for r in records], Settings().latency)
    models: dict[str, list[JobCosts]] = {
        "no_costs": [JobCosts()],
        "defaults": [
            JobCosts(
                DEFAULT_START_COST_S,
                DEFAULT_EXIT_COST_S,
                dispatch=DEFAULT_DISPATCH_COST_S,
                evict=DEFAULT_EVICT_COST_S,
            )
        ],
        "calibrated": [calibration.costs()],
        HEADLINE: [calibration.costs(spread=True, seed=seed) for seed in range(DRAWS)],
    }
    live = [live_waits(events) for events in rounds]
    found: Json = {
        "rounds": len(rounds),
        "jobs": sum(e.event == "accepted" for e in rounds[0]),
        "evictions": [sum(e.event == "evicted" for e in events) for events in rounds],
        "live_spread": live_spread(live),
        "calibration": calibration.as_json(),
    }
    for name, variants in models.items():
        outcomes = [
            simulate(records, schedulers, size, costs)
            for records in recordings
            for costs in variants
        ]
        found[name] = {
            "start_cost_ms": round(variants[0].start * 1000, 3),
            "exit_cost_ms": round(variants[0].exit * 1000, 3),
            "dispatch_cost_ms": round(variants[0].dispatch * 1000, 3),
            "evict_cost_ms": round(variants[0].evict * 1000, 3),
            "evictions": statistics.median(o.counts.get("evicted", 0) for o in outcomes),
            **compare(live, [o.waits for o in outcomes]),
        }
    found["worst_off"] = found[HEADLINE]["worst_off"]
    return found


def lines(found: Json) -> list[str]:
    """The figure's per-priority waits as printable lines, one per model and priority:
    live and simulated p50/p90 (ms) and their ratios."""
    out = []
    for name in ("no_costs", "defaults", "calibrated", HEADLINE):
        model = found[name]
        out.append(f"{name}: worst off {model['worst_off']}")
        for priority, row in model["by_priority"].items():
            cells = [
                f"{p} live {row[p]['live_ms']} sim {row[p]['sim_ms']} ({row[p]['ratio']}x)"
                for p in ("p50", "p90")
            ]
            out.append(f"  priority {priority}: " + ", ".join(cells))
    return out


@click.command()
@click.argument(
    "recordings",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--schedulers", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("-s", "--size", type=click.IntRange(min=1), default=2, show_default=True)
def main(recordings: tuple[Path, ...], schedulers: int, size: int) -> None:
    """The figure again from saved rounds (``recorded-N.jsonl`` of ``scripts/bench --only
    fidelity --keep-logs``), as JSON: pool the rounds of several bench runs."""
    rounds = [
        [msgspec.json.decode(line, type=JobEvent) for line in path.read_bytes().splitlines()]
        for path in recordings
    ]
    found = figure(rounds, schedulers, size)
    click.echo("\n".join(lines(found)), err=True)
    click.echo(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
