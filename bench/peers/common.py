"""What every peer driver shares (runs in ``.venv-bench``; standard library only).

A driver is ``python -m bench.peers.NAME drive --redis URL --jobs N --out PATH``: it
empties Redis, starts the peer's workers (each by its own command, as people run them),
warms them up with one job per worker process, then times ``jobs`` no-op jobs from the
first enqueue until it sees the last one finished, writes one JSON object to ``PATH``
and stops every worker by pid. ``python -m bench.peers.NAME worker --redis URL`` is a
worker, for peers that have no worker command of their own.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: workers run there so ``bench.peers`` is importable."""

PY = sys.executable
NOOP_RUNTIME = 1e-6
QUEUE = "bench"
REDIS_ENV = "BENCH_REDIS_URL"
TASK_ENV = "BENCH_TASK"
"""Which job the workers run: ``noop`` or ``heavy`` (set by ``drive --task``)."""
TASKS = ("noop", "heavy")

Result = dict[str, Any]
Drive = Callable[[str, int, "Workers"], Result]


def load(name: str) -> Any:
    """Import a peer library; it is typed loosely (``Any``) on purpose."""
    return importlib.import_module(name)


def noop() -> None:
    """The job: what schedbus's ``sleep`` task does for a no-op job."""
    time.sleep(NOOP_RUNTIME)


def heavy() -> None:
    """The realistic job: :func:`bench.heavy_work.work` (numpy, about 5 ms of CPU)."""
    from bench.heavy_work import work

    work()


def task_name() -> str:
    """The job the workers of this run serve (``$BENCH_TASK``, default ``noop``)."""
    name = os.environ.get(TASK_ENV, "noop")
    if name not in TASKS:
        raise SystemExit(f"{TASK_ENV}={name!r}: choose from {', '.join(TASKS)}")
    return name


def job_function() -> Callable[[], None]:
    """The function of :func:`task_name`; for ``heavy``, numpy is imported now (as a worker
    that imports its tasks at start does)."""
    if task_name() == "heavy":
        import bench.heavy_work  # noqa: F401  (the import is the point)

        return heavy
    return noop


class Workers:
    """Worker processes started by a driver, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, redis_url: str) -> None:
        self.env = {**os.environ, REDIS_ENV: redis_url, "PYTHONPATH": str(ROOT)}
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start one worker command in the repository root; its output goes to ours."""
        proc = subprocess.Popen(list(argv), cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every worker, wait up to ``grace`` for all, then SIGKILL the rest."""
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise RuntimeError if a worker has exited (it would never finish the jobs)."""
        for proc in self._procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {proc.args!r} exited with {proc.returncode}")


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.005,
    workers: Workers | None = None,
) -> float:
    """Poll ``check`` every ``interval`` s; return ``perf_counter()`` when it first holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        if workers is not None:
            workers.check_alive()
        time.sleep(interval)
    return time.perf_counter()


def parse(argv: Sequence[str]) -> tuple[str, Mapping[str, str]]:
    """``COMMAND --key value ...`` -> (command, {key: value})."""
    if not argv:
        raise SystemExit("usage: COMMAND [--key value ...]")
    rest = argv[1:]
    return argv[0], {k.removeprefix("--"): v for k, v in zip(rest[::2], rest[1::2], strict=False)}


def main(argv: Sequence[str], drive: Drive, worker: Callable[[str], None] | None = None) -> None:
    """Run ``drive`` (writing its result to ``--out``) or ``worker`` as ``argv`` says."""
    command, args = parse(argv)
    url = args.get("redis") or os.environ[REDIS_ENV]
    if command == "worker" and worker is not None:
        worker(url)
        return
    if command != "drive":
        raise SystemExit(f"unknown command {command!r}")
    # The workers inherit the environment: they serve the same job.
    os.environ[TASK_ENV] = args.get("task", "noop")
    task_name()
    # SIGTERM (the bench stopping us) unwinds through Workers.__exit__: workers stop too.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with Workers(url) as workers:
        result = drive(url, int(args["jobs"]), workers)
    Path(args["out"]).write_text(json.dumps(result))


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def outcome(jobs: int, elapsed: float, how: str, version: str) -> Result:
    """The result object every driver writes."""
    return {
        "jobs_per_s": round(jobs / elapsed, 1),
        "seconds": round(elapsed, 3),
        "jobs": jobs,
        "how": how,
        "version": version,
        "task": task_name(),
    }
