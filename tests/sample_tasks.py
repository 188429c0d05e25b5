"""Task modules for the tests: declared with ``@task`` in both of its forms."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from scheduler.tasks import ATTEMPT_ENV, JOB_ID_ENV, task

PROBE_ENV = "SCHEDBUS_TEST_PROBE"


@task
def double(runtime: float) -> float:
    """Registered under its own name, with no defaults."""
    return runtime * 2


@task(name="job-probe", priority=2, timeout=30)
def probe(runtime: float) -> None:
    """Write the job id and attempt the job process sees to the file named by
    ``SCHEDBUS_TEST_PROBE``."""
    Path(os.environ[PROBE_ENV]).write_text(f"{os.environ[JOB_ID_ENV]} {os.environ[ATTEMPT_ENV]}")


def helper(runtime: float) -> None:
    """Not a task: not declared."""


@task
def add(a: float, b: float) -> float:
    """Return ``a + b``: called with keyword or positional JSON arguments."""
    return a + b


@task
def describe(*items: object, **options: object) -> dict[str, object]:
    """Return what it was called with, as JSON."""
    return {"items": list(items), "options": options}


class TaskFailure(Exception):
    """What :func:`explode` raises: a user-defined exception type."""


@task
def explode(message: str) -> None:
    """Fail with :class:`TaskFailure` carrying ``message``."""
    raise TaskFailure(message)


@task
def too_big(size: int) -> str:
    """Return a string of ``size`` characters (JSON of ``size + 2`` bytes)."""
    return "x" * size


@task
def spawn_grandchildren(linger: float) -> dict[str, int]:
    """Start two grandchildren that would outlive the task by ``linger`` seconds: one
    ``sleep`` program and one forked copy of this process (which holds the job's result
    pipe open). Return their pids, and end at once: the job's end must stop both."""
    program = subprocess.Popen(["sleep", str(linger)])
    forked = os.fork()
    if forked == 0:
        time.sleep(linger)
        os._exit(0)
    return {"program": program.pid, "forked": forked}


@task(priority=1, timeout=1.0)
def nap(seconds: float) -> None:
    """Sleep ``seconds``; its jobs default to priority 1 and a 1 s timeout."""
    time.sleep(seconds)


def _daemon(read_fd: int, report_fd: int) -> int:
    """Daemonize as a classic daemon does (fork, ``setsid``, fork again, the middle
    process exits), ignore SIGTERM, and send the daemon's pid on ``report_fd``. Returns the
    daemon's pid (read from ``read_fd``) in the caller; the daemon itself never returns."""
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(report_fd, f"{os.getpid()}\n".encode())
            time.sleep(600)
        os._exit(0)
    os.waitpid(middle, 0)
    return int(os.read(read_fd, 64).decode())


@task
def escape(pidfile: str, then: str) -> None:
    """Start a ``sleep`` program in a session of its own (``start_new_session=True``) and a
    double-forked ``setsid()`` daemon that ignores SIGTERM; write both pids, their
    session ids and the job's to ``pidfile`` (JSON, written whole), then ``then``:
    ``return``, ``raise``, ``hang`` (sleep 600 s), ``kill`` (SIGKILL itself) or ``exit``
    (``os._exit(0)``, skipping every cleanup)."""
    session = subprocess.Popen(["sleep", "600"], start_new_session=True)
    read_fd, write_fd = os.pipe()
    daemon = _daemon(read_fd, write_fd)
    os.close(read_fd)
    os.close(write_fd)
    partial = Path(pidfile + ".tmp")
    pids = {"session": session.pid, "daemon": daemon}
    sessions = {name: os.getsid(pid) for name, pid in pids.items()}
    report = {"pids": pids, "sessions": sessions, "job_session": os.getsid(0)}
    partial.write_text(json.dumps(report))
    partial.rename(pidfile)
    if then == "raise":
        raise TaskFailure("escape failed on purpose")
    if then == "hang":
        time.sleep(600)
    elif then == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif then == "exit":
        os._exit(0)


@task(memory="64M")
def hog(total_mb: int, step_mb: int, pause: float, hold: float) -> int:
    """Touch ``total_mb`` MB in ``step_mb`` MB steps ``pause`` seconds apart, half of it in
    a forked child (a limit covers the whole tree), then hold it ``hold`` seconds.
    Declares a 64 MB limit. Returns how many MB the job process touched."""
    child = os.fork()
    chunks: list[bytes] = []
    for _ in range(total_mb // step_mb // 2):
        chunks.append(b"\x01" * (step_mb * 1024 * 1024))
        time.sleep(pause)
    time.sleep(hold)
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return len(chunks) * step_mb


@task(cpu=1)
def spin(seconds: float) -> None:
    """Burn ``seconds`` of CPU time, half in a forked child; declares a 1 s CPU limit."""
    child = os.fork()
    end = time.process_time() + seconds / 2
    while time.process_time() < end:
        pass
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)


@task
def gather(tag: str, results: dict[str, object] | None = None) -> dict[str, object]:
    """Return ``tag`` with the results of the jobs it waited for (``pass_results``)."""
    return {"tag": tag, "results": results or {}}
