"""Our system as production runs it: the bus and schedulers as separate processes.

Each is started through its public command (``python -m scheduler.bus --port 0``,
``python -m scheduler.test_scheduler``) on 127.0.0.1, in a scratch directory, and is
ready once its log says so. Options that name a file to keep state in (a journal, say)
are found in the command's ``--help`` and pointed into the scratch directory, so a
bench run never reads or leaves state anywhere else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil

from bench.procs import Proc, Procs, wait_for_log
from scheduler.auth import TokenRole, token_for

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (``bench`` is importable from there)."""

PYTHON = sys.executable
"""The package's interpreter (``.venv``): the bench itself runs in it."""

NOOP_RUNTIME = 1e-6
"""The ``sleep`` task's runtime for a no-op job (a runtime must be > 0)."""

_STATE_OPTION = re.compile(
    r"^\s*(?:-\w,\s*)?(--[a-z][\w-]*)\s+(?:PATH|FILE|FILENAME|DIRECTORY|DIR)\b", re.MULTILINE
)
_STATE_WORDS = ("db", "journal", "database", "state", "data", "outbox", "store", "sqlite")


@dataclass(eq=False)
class Bus:
    """A running bus: its process, URL and psutil handle."""

    proc: Proc
    url: str
    ps: psutil.Process


def state_options(help_text: str, workdir: Path) -> list[str]:
    """``[--opt, path, ...]`` for every option of ``help_text`` that names a state file.

    An option counts when click shows it with a PATH/FILE/DIRECTORY metavar and its name
    mentions a journal, a database or state; each gets its own path under ``workdir``.
    """
    argv: list[str] = []
    for match in _STATE_OPTION.finditer(help_text):
        option = match.group(1)
        if any(word in option for word in _STATE_WORDS):
            argv += [option, str(workdir / option.strip("-").replace("-", "_"))]
    return argv


@cache
def _help(module: str) -> str:
    done = subprocess.run(
        [PYTHON, "-m", module, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` (pairs of option and value) without ``option`` and its value."""
    pairs = zip(argv[::2], argv[1::2], strict=True)
    return [word for pair in pairs if pair[0] != option for word in pair]


def known_options(help_text: str, wanted: Mapping[str, str]) -> list[str]:
    """``[--opt, value, ...]`` for the options of ``wanted`` that ``help_text`` lists."""
    argv: list[str] = []
    for option, value in wanted.items():
        if re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text):
            argv += [option, value]
    return argv


async def start_bus(
    procs: Procs,
    workdir: Path,
    name: str = "bus",
    options: Mapping[str, str] | None = None,
    ready_timeout: float = 20.0,
    store: str | None = None,
) -> Bus:
    """Start ``python -m scheduler.bus --port 0`` and return it once it listens.

    ``options`` are passed only if the bus's ``--help`` lists them (an older or newer bus
    may not have them). With a ``store`` (a ``postgresql://`` URL) the bus journals there
    (``--store``) instead of in a file of its scratch directory.
    """
    state = workdir / name
    state.mkdir(parents=True, exist_ok=True)
    help_text = _help("scheduler.bus")
    argv = [PYTHON, "-m", "scheduler.bus", "--host", "127.0.0.1", "--port", "0"]
    files = state_options(help_text, state)
    if store is not None:
        files = _without(files, "--db") + ["--store", store]
    argv += files + known_options(help_text, options or {})
    proc = procs.start(name, argv, cwd=state)
    match = await wait_for_log(proc, r"bus listening on (ws://\S+)", ready_timeout)
    return Bus(proc, match.group(1), psutil.Process(proc.pid))


async def start_scheduler(
    procs: Procs,
    workdir: Path,
    url: str,
    *,
    name: str = "sched",
    size: int = 5,
    timeout: float = 10.0,
    options: Sequence[str] = (),
) -> Proc:
    """Start ``python -m scheduler.test_scheduler -s SIZE`` (with ``options`` too, such as
    ``--warm N``) and return it once registered. It runs with ``--quiet`` where it has it:
    no log line per job that starts or succeeds, as the peers run (Celery at WARNING,
    Dramatiq logs no line per message)."""
    state = workdir / name
    state.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", "scheduler.test_scheduler", "-s", str(size), "-t", str(timeout)]
    argv += ["--bus", url, "--name", name, *options]
    help_text = _help("scheduler.test_scheduler")
    argv += ["--quiet"] if "--quiet" in help_text else []
    argv += state_options(help_text, state)
    proc = procs.start(name, argv, cwd=state)
    await wait_for_log(proc, r"(?i)registered")
    return proc


async def start_worker(
    procs: Procs,
    workdir: Path,
    url: str,
    name: str,
    size: int,
    tasks: str,
    extra: Sequence[str] = (),
) -> Proc:
    """Start ``python -m scheduler.worker --tasks TASKS -s SIZE`` plus ``extra`` options
    (the repository root on its path, for the bench's task modules); return it once
    registered."""
    state = workdir / name
    state.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", "scheduler.worker", "--tasks", tasks, "-s", str(size)]
    argv += ["--bus", url, "--name", name, *extra]
    argv += state_options(_help("scheduler.worker"), state)
    proc = procs.start(name, argv, cwd=state, env={"PYTHONPATH": str(ROOT)})
    await wait_for_log(proc, r"(?i)registered")
    return proc


def cpu_seconds(ps: psutil.Process, children: bool = False) -> float:
    """User + system CPU seconds of ``ps``; with ``children``, of every process below it:
    those it reaped, and its live children (a fork server, warm slot processes) with what
    they reaped (the jobs a fork server forked). A child that ends and is reaped between
    two readings moves from one part to the other, so differences stay true."""
    times = ps.cpu_times()
    if not children:
        return float(times.user + times.system)
    total = float(times.children_user + times.children_system)
    for child in ps.children():
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def client_token(role: TokenRole) -> str | None:
    """The token of ``role`` in the token file the bench's buses share (under
    ``$XDG_STATE_HOME``, which :mod:`bench.run` points at its scratch directory); None
    when there is none (a bus that takes no tokens)."""
    return token_for(role)
