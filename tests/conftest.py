"""Shared test helpers: the time unit, a real bus on an ephemeral loopback port, and
real processes started through the commands people use."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings

from scheduler.auth import TokenRole, token_for
from scheduler.bus.config import BusConfig
from scheduler.bus.journal import Journal
from scheduler.bus.server import BusServer
from scheduler.bus.store import Store
from scheduler.bus.store_sqlite import SqliteStore

# The private PostgreSQL server's fixtures, for every test module.
from postgres_server import postgres_dsn as postgres_dsn  # isort: skip
from postgres_server import postgres_server as postgres_server  # isort: skip

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis's timing checks (a per-example deadline, "input generation is slow") measure the
# machine, not the code: the suite runs in parallel on shared cores, so they are off. Every
# property is still checked on every example.
settings.register_profile("schedbus", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("schedbus")


def store_of(journal: Journal) -> Store:
    """The store behind ``journal`` (for tests that watch what it is asked)."""
    return journal._store


def sqlite_store(journal: Journal) -> SqliteStore:
    """The SQLite store behind ``journal`` (for tests that reach its connections)."""
    store = store_of(journal)
    assert isinstance(store, SqliteStore)
    return store


def count_reads(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the name of each job read ``journal`` asks of its store (``get_row``,
    ``get_rows``), in order."""
    store = store_of(journal)
    reads: list[str] = []
    for name in ("get_row", "get_rows"):
        real = getattr(store, name)

        def counted(*args: object, _name: str = name, _real: Any = real) -> object:
            reads.append(_name)
            return _real(*args)

        monkeypatch.setattr(store, name, counted)
    return reads


def unit() -> float:
    """One test time unit in seconds; slow CI raises ``SCHEDBUS_TEST_UNIT``."""
    return float(os.environ.get("SCHEDBUS_TEST_UNIT", "1.0"))


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail naming ``what`` after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


@pytest.fixture(autouse=True)
def private_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point ``XDG_STATE_HOME`` at a fresh directory for every test, so that nothing a test
    runs (a bus's token file, a default journal) touches the user's own state."""
    state = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
async def bus() -> AsyncIterator[BusServer]:
    """A real bus in this test's event loop, on 127.0.0.1 and a port the OS picked."""
    async with BusServer(BusConfig(host="127.0.0.1", port=0)) as server:
        yield server


class Commands:
    """Starts ``python -m ...`` commands as real child processes, and kills every one of
    them and everything below it, by pid, when the test ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.state = logs / "state"
        """``XDG_STATE_HOME`` of every command started here: the bus writes its token file
        there and the clients read it, apart from the user's own state."""
        self.started: list[asyncio.subprocess.Process] = []
        self.log_paths: dict[int, Path] = {}

    async def start(
        self, *args: str, stdout: int = asyncio.subprocess.DEVNULL
    ) -> asyncio.subprocess.Process:
        """Run ``python -m ARGS...`` from the repo root; its stderr goes to :meth:`log_of`."""
        log = self.logs / f"{len(self.started)}-{args[0]}.log"
        with log.open("w") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *args,
                cwd=ROOT,
                stdout=stdout,
                stderr=stderr,
                env=os.environ | {"PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(self.state)},
            )
        self.log_paths[proc.pid] = log
        self.started.append(proc)
        return proc

    async def run(self, *args: str, timeout: float) -> tuple[int, str]:
        """Run a command to its end; return its exit code and stdout."""
        proc = await self.start(*args, stdout=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, stdout.decode()

    def log_of(self, proc: asyncio.subprocess.Process) -> str:
        """What ``proc`` has written to stderr so far."""
        return self.log_paths[proc.pid].read_text()

    async def kill_all(self) -> None:
        """SIGKILL every process started here and everything below it."""
        for proc in self.started:
            for member in family_of(proc.pid):
                try:
                    member.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            await asyncio.wait_for(proc.wait(), 10)


def family_of(pid: int) -> list[psutil.Process]:
    """``pid`` and every process below it that is still alive."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def is_fork_server(process: psutil.Process) -> bool:
    """Whether ``process`` is a scheduler's fork server (its jobs share its command line)."""
    try:
        parent = process.parent()
        return _runs_fork_server(process) and not (parent and _runs_fork_server(parent))
    except psutil.Error:
        return False


def _runs_fork_server(process: psutil.Process) -> bool:
    return "scheduler.worker.forkserver" in " ".join(process.cmdline())


def jobs_of(pid: int) -> list[psutil.Process]:
    """The job processes of the scheduler ``pid``: its children that are not its fork
    server, and the children of its fork server."""
    jobs = []
    for child in psutil.Process(pid).children():
        if is_fork_server(child):
            jobs.extend(child.children())
        else:
            jobs.append(child)
    return jobs


@pytest.fixture
async def commands(tmp_path: Path) -> AsyncIterator[Commands]:
    """Real child processes that are killed by pid when the test ends."""
    tracker = Commands(tmp_path)
    try:
        yield tracker
    finally:
        await tracker.kill_all()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a bus that must restart on
    the same port, so that its clients find it again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BusProcess:
    """``python -m scheduler.bus`` as a real process on a fixed port and journal file (or a
    ``postgresql://`` store), so a test can SIGKILL it and start it again where its
    clients expect it."""

    def __init__(self, commands: Commands, db: Path | str, *options: str) -> None:
        self.commands = commands
        self.db = db
        self.options = options
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the bus and wait until it listens."""
        self.proc = await self.commands.start(
            "scheduler.bus", "--port", str(self.port), *self.journal_options(), *self.options
        )
        proc = self.proc
        await wait_until(
            lambda: "bus listening" in self.commands.log_of(proc), 20 * unit(), "the bus listens"
        )

    def journal_options(self) -> tuple[str, str]:
        """``--store DSN`` for a PostgreSQL URL, else ``--db PATH``."""
        where = str(self.db)
        return ("--store", where) if where.startswith("postgresql://") else ("--db", where)

    def token(self, role: TokenRole) -> str:
        """The token for ``role`` in the token file the bus created."""
        token = token_for(role, self.commands.state / "schedbus" / "tokens.json")
        assert token is not None, "the bus has not created its token file"
        return token

    async def kill(self) -> None:
        """SIGKILL the bus and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
