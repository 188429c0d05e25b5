"""Forking jobs from the fork server against forking them from the scheduler, in one run.

``python -m bench.fork_paths [--jobs N] [--rounds R]``: one bus; per round, a fresh
``test_scheduler -s 5`` on each path in turn (fork server first, then
``--no-fork-server``, alternating), each running N no-op jobs end to end
(:func:`bench.ours.e2e_round`). Per path, the medians over the rounds of: jobs/s; the
forking process's resident size (VmRSS: the fork server, or the scheduler) and its minor
page faults per job (copy-on-write after each fork); the minor faults per job of the jobs
(``cminflt`` of the process that reaps them); CPU ms per job of the scheduler and of the
fork server. The machine may be shared: compare the paths by their ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
import psutil

from bench import ours
from bench.procs import Proc, Procs, wait_for_log
from bench.stats import Json, median
from bench.system import PYTHON, Bus, start_bus

PATHS: dict[str, list[str]] = {"fork_server": [], "scheduler": ["--no-fork-server"]}


def _stat(pid: int) -> tuple[int, int]:
    """Minor faults of ``pid`` and of the children it reaped (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[7]), int(fields[8])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _forker(scheduler: psutil.Process) -> psutil.Process:
    """The process that forks the jobs: the scheduler's fork server, else the scheduler."""
    for child in scheduler.children():
        if "scheduler.worker.forkserver" in " ".join(child.cmdline()):
            return child
    return scheduler


async def _round(procs: Procs, work: Path, bus: Bus, path: str, jobs: int, n: int) -> Json:
    url = bus.url
    argv = [PYTHON, "-m", "scheduler.test_scheduler", "-s", "5", "-t", "10", "--bus", url]
    argv += ["--name", f"{path}-{n}", "--no-job-logs", *PATHS[path]]
    proc: Proc = procs.start(f"{path}-{n}", argv, cwd=work)
    try:
        await wait_for_log(proc, r"(?i)registered")
        scheduler = psutil.Process(proc.pid)
        await ours.e2e_round(url, 100, bus.ps, scheduler, 60)  # warm-up
        forker = _forker(scheduler)
        faults = _stat(forker.pid)
        cpu = (scheduler.cpu_times(), forker.cpu_times())
        result = await ours.e2e_round(url, jobs, bus.ps, scheduler, 60 + jobs / 20)
        after = _stat(forker.pid)
        cpu_after = (scheduler.cpu_times(), forker.cpu_times())
        rss = _rss_kb(forker.pid)
    finally:
        procs.stop(proc)

    def ms(before: Any, end: Any) -> float:
        return round(float(end.user + end.system - before.user - before.system) * 1000 / jobs, 3)

    return {
        "jobs_per_s": result["jobs_per_s"],
        "forker_rss_mb": round(rss / 1024, 1),
        "forker_faults_per_job": round((after[0] - faults[0]) / jobs, 1),
        "job_faults_per_job": round((after[1] - faults[1]) / jobs, 1),
        "scheduler_cpu_ms_per_job": ms(cpu[0], cpu_after[0]),
        "fork_server_cpu_ms_per_job": 0.0 if forker.pid == proc.pid else ms(cpu[1], cpu_after[1]),
    }


async def run(jobs: int, rounds: int, work: Path) -> Json:
    """Every round on both paths, alternating; the per-path medians and the ratios."""
    with Procs(work) as procs:
        bus = await start_bus(procs, work, "bus")
        runs: dict[str, list[Json]] = {path: [] for path in PATHS}
        for n in range(rounds):
            for path in PATHS if n % 2 == 0 else reversed(PATHS):
                result = await _round(procs, work, bus, path, jobs, n)
                click.echo(f"round {n} {path}: {json.dumps(result)}", err=True)
                runs[path].append(result)
    medians = {
        path: {key: median([r[key] for r in results]) for key in results[0]}
        for path, results in runs.items()
    }
    ratios = {
        key: round(medians["fork_server"][key] / medians["scheduler"][key], 2)
        for key in ("jobs_per_s", "forker_rss_mb", "job_faults_per_job")
        if medians["scheduler"][key]
    }
    return {"jobs": jobs, "rounds": rounds, "medians": medians, "fork_server_vs_scheduler": ratios}


@click.command()
@click.option("--jobs", default=1000, show_default=True, help="No-op jobs per round.")
@click.option("--rounds", default=4, show_default=True, help="Rounds per path.")
def cli(jobs: int, rounds: int) -> None:
    """Measure both ways of forking jobs in one run (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="schedbus-forkpaths-"))
    os.environ["XDG_STATE_HOME"] = str(work / "state")
    click.echo(json.dumps(asyncio.run(run(jobs, rounds, work)), indent=2))


if __name__ == "__main__":
    cli()
