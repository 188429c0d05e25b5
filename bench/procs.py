"""Every process the bench starts, each logging to its own file and stopped by its pid.

Children get their own session (so a Ctrl-C typed at the bench reaches only the bench,
which then stops them in order) and are stopped with SIGTERM, then SIGKILL to their
process group after a grace. :meth:`Procs.close` runs on any exit, errors included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil


class ProcError(RuntimeError):
    """A child process did not start or did not say what we waited for."""


@dataclass(eq=False)
class Proc:
    """One started child: its name, Popen handle and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's pid (also its process group and session id)."""
        return self.popen.pid

    def log_text(self) -> str:
        """Everything the child wrote so far (stdout and stderr)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of its log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])


class Procs:
    """Starts children into ``logdir`` and stops every one of them on :meth:`close`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._live: list[Proc] = []
        self._count = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        """Start ``argv`` in its own session with stdout and stderr to ``logdir/NAME.log``."""
        self._count += 1
        log = self.logdir / f"{self._count:02d}-{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self._live.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> int | None:
        """SIGTERM ``proc``, then SIGKILL its process group after ``grace``; return its code.

        Whatever is left in its process group is killed too (by the group id, which is
        the pid of the child we started).
        """
        if proc in self._live:
            self._live.remove(proc)
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.popen.wait()
        _killpg(proc.pid)
        return proc.popen.returncode

    def close(self) -> None:
        """Stop every child still running, most recently started first."""
        for proc in reversed(list(self._live)):
            self.stop(proc)
        reap_descendants()

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reap_descendants() -> list[int]:
    """Kill (by pid) and reap any process this one started that is still alive.

    A backstop: a child that left a process of its own in another session. Returns
    the pids it had to kill.
    """
    killed: list[int] = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
            killed.append(child.pid)
    for pid in killed:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return killed


async def wait_for_log(proc: Proc, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """Wait until ``proc``'s log matches ``pattern``; raise :class:`ProcError` if it exits."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        match = regex.search(proc.log_text())
        if match is not None:
            return match
        if proc.popen.poll() is not None:
            raise ProcError(
                f"{proc.name} exited with {proc.popen.returncode} before logging "
                f"{pattern!r}:\n{proc.tail()}"
            )
        if time.monotonic() > deadline:
            raise ProcError(f"{proc.name} did not log {pattern!r} in {timeout} s:\n{proc.tail()}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot take 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
