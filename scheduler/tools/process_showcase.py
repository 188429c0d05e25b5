"""Showcase of ``scheduler.process``: ``python -m scheduler.test_process [--run] [--tree] ...``.

Each demo starts real job processes and prints one line per step with the
figures of the result: exit code, outcome, wall time, CPU time and peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import click
import psutil

from scheduler.worker.process import JobProcess, ProcessResult

_TIMEOUT_S = 1.0
_GRACE_S = 0.5
_READY_TIMEOUT_S = 5.0


def _work(n: int) -> None:
    """Job: burn some CPU."""
    sum(i * i for i in range(n))


def _sleep(seconds: float) -> None:
    """Job: sleep, then exit 0."""
    time.sleep(seconds)


def _ignore_term(ready_fd: int) -> None:
    """Job: ignore SIGTERM, say so on ``ready_fd``, then sleep."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(ready_fd, b"ready\n")
    time.sleep(30)


def _spawn_grandchild(ready_fd: int) -> None:
    """Job: start ``sleep 30``, write its pid on ``ready_fd``, then sleep."""
    grandchild = subprocess.Popen(["sleep", "30"])
    os.write(ready_fd, f"{grandchild.pid}\n".encode())
    time.sleep(30)


def _describe(step: str, job: JobProcess, result: ProcessResult, note: str = "") -> str:
    """Return one report line for ``result``."""
    return (
        f"{step:<10} pid {job.pid:<7} exit {result.exit_code!s:>4}  {result.outcome:<9}"
        f"  wall {result.wall_s * 1000:7.1f} ms  cpu {result.cpu_s * 1000:6.1f} ms"
        f"  rss {result.max_rss_kb / 1024:5.1f} MB  {note}"
    ).rstrip()


@contextlib.asynccontextmanager
async def _started(
    target: Callable[..., object], *args: object, grace: float = 2.0
) -> AsyncIterator[JobProcess]:
    """Start a job; stop it on the way out if it is still running."""
    job = JobProcess(target, args, grace=grace)
    job.start()
    try:
        yield job
    finally:
        if not job.done:
            await job.stop(grace=0)


@contextlib.contextmanager
def _pipe() -> Iterator[tuple[int, int]]:
    """Yield ``(read_fd, write_fd)`` and close both afterwards."""
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def _read_line(fd: int) -> str:
    """Wait (without blocking the loop) for a short line written to ``fd`` and return it."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(readable, _READY_TIMEOUT_S)
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 4096).decode().strip()


async def _demo_run() -> None:
    async with _started(_work, 2_000_000) as job:
        result = await job.wait()
    click.echo(_describe("run", job, result))


async def _demo_callback() -> None:
    fired = asyncio.Event()
    seen: list[ProcessResult] = []

    def on_done(result: ProcessResult) -> None:
        seen.append(result)
        fired.set()

    async with _started(_sleep, 0.1) as job:
        job.add_done_callback(on_done)
        await asyncio.wait_for(fired.wait(), _READY_TIMEOUT_S)
    click.echo(_describe("callback", job, seen[0], f"fired {len(seen)} time(s)"))


async def _demo_timeout() -> None:
    async with _started(_sleep, 30.0, grace=_GRACE_S) as job:
        deadline = time.monotonic() + _TIMEOUT_S
        result = await job.wait(timeout=_TIMEOUT_S)
        late_ms = (time.monotonic() - deadline) * 1000
    note = f"timeout {_TIMEOUT_S:.0f} s; reaped {late_ms:.2f} ms past the deadline"
    click.echo(_describe("timeout", job, result, note))


async def _demo_terminate() -> None:
    with _pipe() as (read_fd, write_fd):
        async with _started(_ignore_term, write_fd, grace=_GRACE_S) as job:
            await _read_line(read_fd)
            asked = time.monotonic()
            result = await job.stop()
            took_ms = (time.monotonic() - asked) * 1000
    note = (
        f"SIGTERM ignored, SIGKILL after {_GRACE_S * 1000:.0f} ms grace; stop took {took_ms:.1f} ms"
    )
    click.echo(_describe("terminate", job, result, note))


async def _demo_tree() -> None:
    with _pipe() as (read_fd, write_fd):
        async with _started(_spawn_grandchild, write_fd) as job:
            grandchild = psutil.Process(int(await _read_line(read_fd)))
            result = await job.stop()
    gone = await _wait_gone(grandchild, _READY_TIMEOUT_S)
    click.echo(_describe("tree", job, result, f"grandchild {grandchild.pid} gone: {gone}"))
    if not gone:
        grandchild.kill()
        raise click.ClickException("stopping the job left its grandchild running")


async def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Poll until ``proc`` has exited (a zombie counts) or ``timeout`` passes; True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.01)
    return False


DEMOS: dict[str, Callable[[], Awaitable[None]]] = {
    "run": _demo_run,
    "callback": _demo_callback,
    "timeout": _demo_timeout,
    "terminate": _demo_terminate,
    "tree": _demo_tree,
}


async def _run_demos(names: list[str]) -> None:
    for name in names:
        await DEMOS[name]()


@click.command()
@click.option("--run", "selected", flag_value="run", multiple=True, help="Start a job, await it.")
@click.option(
    "--callback", "selected", flag_value="callback", multiple=True, help="A done-callback fires."
)
@click.option(
    "--timeout",
    "selected",
    flag_value="timeout",
    multiple=True,
    help=f"A job overruns a {_TIMEOUT_S:.0f} s timeout and is stopped.",
)
@click.option(
    "--terminate",
    "selected",
    flag_value="terminate",
    multiple=True,
    help="Stop a job that ignores SIGTERM: SIGKILL after the grace.",
)
@click.option(
    "--tree",
    "selected",
    flag_value="tree",
    multiple=True,
    help="Stop a job that spawned a grandchild: none is left.",
)
@click.option("-d", "--debug", is_flag=True, help="Log debug messages.")
def cli(selected: tuple[str, ...], debug: bool) -> None:
    """Run demos of the job process wrapper (all of them when none is selected)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    names = [name for name in DEMOS if name in selected] or list(DEMOS)
    asyncio.run(_run_demos(names))
