"""The simulator's speed: simulated jobs per second through the real dispatch core and
runners (``python -m scheduler.simulate``), in a fresh interpreter, and how long a
million jobs on 100 schedulers take."""

from __future__ import annotations

import asyncio
import json

from bench.stats import Json
from bench.system import PYTHON

SIM_SCHEDULERS = 100
"""Schedulers in the simulated fleet (5 slots each)."""


def command(jobs: int) -> list[str]:
    """The simulate command of the figure: ``jobs`` producer jobs (runtimes 3-15 s, one
    every 10 ms on average) on :data:`SIM_SCHEDULERS` schedulers of 5 slots, as JSON."""
    return [
        PYTHON, "-m", "scheduler.simulate", "--count", str(jobs), "-g", "-p", "0.01",
        "--sigma", "0.005", "--schedulers", str(SIM_SCHEDULERS), "-s", "5", "--json",
    ]  # fmt: skip


def figure(summary: Json) -> Json:
    """The figure from the simulator's ``--json`` summary."""
    sim = summary["simulation"]
    return {
        "jobs": summary["jobs"],
        "schedulers": SIM_SCHEDULERS,
        "jobs_per_s": round(sim["jobs_per_s"]),
        "jobs_per_cpu_s": round(sim["jobs_per_cpu_s"]),
        "events": sim["events"],
        "core": sim["core"],
    }


def million_command(jobs: int) -> list[str]:
    """The simulate command of the million figure, as a user types it: ``jobs`` producer
    jobs (one every 20 ms on average, the fleet about 90% busy) on
    :data:`SIM_SCHEDULERS` schedulers of 5 slots, default costs, as JSON."""
    return [
        PYTHON, "-m", "scheduler.simulate", "--count", str(jobs), "-g", "-p", "0.02",
        "--sigma", "0.01", "--schedulers", str(SIM_SCHEDULERS), "--json",
    ]  # fmt: skip


def million_figure(summary: Json) -> Json:
    """The million figure from the simulator's ``--json`` summary: the run's wall and CPU
    seconds, and the wall seconds scaled to 1,000,000 jobs (the same when it ran them)."""
    sim = summary["simulation"]
    return {
        "jobs": summary["jobs"],
        "schedulers": SIM_SCHEDULERS,
        "wall_s": round(sim["seconds"], 1),
        "cpu_s": round(sim["cpu_seconds"], 1),
        "wall_s_at_1m": round(sim["seconds"] * 1_000_000 / summary["jobs"], 1),
        "core": sim["core"],
    }


async def _summary(argv: list[str]) -> Json:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"simulate exited {process.returncode}: {err.decode()[-300:]}")
    summary: Json = json.loads(out)
    return summary


async def simulated_jobs_per_s(jobs: int) -> Json:
    """Run :func:`command` and return :func:`figure`; RuntimeError if it fails."""
    return {"simulated_jobs_per_s": figure(await _summary(command(jobs)))}


async def simulated_million(jobs: int) -> Json:
    """Run :func:`million_command` and return :func:`million_figure`; RuntimeError if it
    fails."""
    return {"simulated_million": million_figure(await _summary(million_command(jobs)))}
