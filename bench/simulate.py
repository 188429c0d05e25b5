"""The simulator's speed: simulated jobs per second through the real dispatch core and
runners (``python -m scheduler.simulate``), in a fresh interpreter."""

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
    }


async def simulated_jobs_per_s(jobs: int) -> Json:
    """Run :func:`command` and return :func:`figure`; RuntimeError if it fails."""
    process = await asyncio.create_subprocess_exec(
        *command(jobs), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"simulate exited {process.returncode}: {err.decode()[-300:]}")
    return {"simulated_jobs_per_s": figure(json.loads(out))}
