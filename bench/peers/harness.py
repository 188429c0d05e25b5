"""Runs the peer drivers against a local ``redis-server`` (runs in the package's ``.venv``).

Redis listens on 127.0.0.1 on a free port, keeps nothing on disk, and is stopped by
pid at the end. ``redis-server`` is installed from Debian's packages when missing (as
root). Each peer's driver runs in ``.venv-bench`` with a time limit; a peer that cannot
be imported, started or finished is reported as ``{"skipped": reason}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import Proc, Procs, free_port, wait_for_log
from bench.stats import Json, ratio

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
PEERS: dict[str, str] = {"rq": "rq", "arq": "arq", "celery": "celery", "dramatiq": "dramatiq"}
"""Peer name -> the module that must import in ``.venv-bench``."""


def ensure_redis_server() -> str:
    """The path of ``redis-server``, installing Debian's package if need be.

    Raises RuntimeError with the reason when it is missing and cannot be installed.
    """
    found = shutil.which("redis-server")
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    print("bench: installing redis-server (apt-get)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "redis-server"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    found = shutil.which("redis-server")
    if found is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"could not install redis-server: {tail[0]}")
    return found


def import_problem(python: Path, module: str) -> str | None:
    """None if ``module`` imports in ``python``'s environment, else the error's last line."""
    done = subprocess.run(
        [str(python), "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"import {module} failed"


async def start_redis(procs: Procs, workdir: Path, server: str) -> tuple[Proc, str]:
    """Start ``redis-server`` on 127.0.0.1 (no persistence); return it and its URL."""
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"]
    proc = procs.start("redis", argv, cwd=workdir)
    await wait_for_log(proc, r"Ready to accept connections")
    return proc, f"redis://127.0.0.1:{port}/0"


async def _drive(
    procs: Procs, workdir: Path, name: str, url: str, jobs: int, limit: float, task: str
) -> Json:
    out = workdir / f"peer-{name}-{task}.json"
    argv = [str(PEER_PYTHON), "-m", f"bench.peers.{name}_peer", "drive"]
    argv += ["--redis", url, "--jobs", str(jobs), "--out", str(out), "--task", task]
    proc = procs.start(f"peer-{name}", argv, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + limit
    while proc.popen.poll() is None:
        if time.monotonic() > deadline:
            procs.stop(proc)
            return {"skipped": f"did not finish {jobs} jobs within {limit:.0f} s"}
        await asyncio.sleep(0.05)
    procs.stop(proc)
    if proc.popen.returncode != 0 or not out.exists():
        last = proc.tail(3).replace("\n", " | ") or "no output"
        return {"skipped": f"driver failed (exit {proc.popen.returncode}): {last}"}
    result: Json = json.loads(out.read_text())
    return result


async def run_peers(
    procs: Procs,
    workdir: Path,
    jobs: int,
    ours: float | None,
    task: str = "noop",
    limit: float = 120.0,
    warm: float | None = None,
) -> Json:
    """``{peer: {jobs_per_s, ours_ratio, how, ...} | {skipped}}`` for every peer, each
    running ``jobs`` of ``task`` (:data:`bench.peers.common.TASKS`), with ``warm_ratio``
    too when ``warm`` (our warm mode's jobs/s) is given."""
    if not PEER_PYTHON.exists():
        reason = f"{PEER_PYTHON.parent.parent.name} is not set up (scripts/bench creates it)"
        return {name: {"skipped": reason} for name in PEERS}
    try:
        server = ensure_redis_server()
    except RuntimeError as exc:
        return {name: {"skipped": str(exc)} for name in PEERS}
    redis, url = await start_redis(procs, workdir, server)
    results: Json = {}
    try:
        for name, module in PEERS.items():
            problem = import_problem(PEER_PYTHON, module)
            if problem is not None:
                results[name] = {"skipped": f"cannot import {module}: {problem}"}
                continue
            result = await _drive(procs, workdir, name, url, jobs, limit, task)
            if "jobs_per_s" in result:
                result["ours_ratio"] = ratio(ours, result["jobs_per_s"])
                if warm is not None:
                    result["warm_ratio"] = ratio(warm, result["jobs_per_s"])
            results[name] = result
    finally:
        procs.stop(redis)
    return results
