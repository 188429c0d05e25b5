"""Profiles running processes with py-spy (from ``.venv-bench``) and sums up where CPU goes.

py-spy attaches by pid (``record --nonblocking``: it samples without pausing the target)
and writes collapsed stacks (``--format raw``), one line per distinct stack:
``frame;frame;...;leaf COUNT``, each frame ``function (file:line)``. Idle threads are not
sampled, so samples stand for CPU time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench.procs import Proc, Procs
from bench.stats import Json

PY_SPY = Path(__file__).resolve().parents[1] / ".venv-bench" / "bin" / "py-spy"

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

COMPONENTS: tuple[tuple[str, str, str], ...] = (
    # (label, file path fragment, function name or "" for any)
    ("fork: JobProcess.start", "scheduler/worker/process.py", "JobProcess.start"),
    (
        "fork request to the fork server",
        "scheduler/worker/forkserver_launcher.py",
        "ServedJobProcess._launch",
    ),
    ("reap: JobProcess._finish", "scheduler/worker/process.py", "JobProcess._finish"),
    ("executor (all)", "scheduler/worker/executor.py", ""),
    ("warm slots (all)", "scheduler/worker/warm.py", ""),
    ("job feed: progress and output (all)", "scheduler/worker/job_feed.py", ""),
    ("scheduler session (all)", "scheduler/worker/session.py", ""),
    ("policy core (all)", "scheduler/policy/", ""),
    ("protocol encode/decode", "scheduler/codec.py", ""),
    ("batch packing", "scheduler/batch_pack.py", ""),
    ("websockets (all)", "websockets/", ""),
    (
        "socket writes: transport.write",
        "asyncio/selector_events.py",
        "_SelectorSocketTransport.write",
    ),
    ("logging (all)", "logging/", ""),
    ("bus shell: server.py", "scheduler/bus/server.py", ""),
    ("bus requests (all)", "scheduler/bus/requests.py", ""),
    ("bus hub (all)", "scheduler/bus/hub.py", ""),
    ("bus metrics (all)", "scheduler/bus/metrics.py", ""),
    ("journal", "scheduler/bus/journal.py", ""),
    ("journal writer thread (commits, fsync waits)", "scheduler/bus/journal_writer.py", ""),
    ("sqlite3", "sqlite3/", ""),
)
"""Named parts of the code whose inclusive share of the busy samples is reported."""

_IDLE_LEAVES = ("EpollSelector.select", "select", "poll", "epoll", "ThreadWriter._serve")
"""Leaf functions of a thread waiting for I/O (or, the journal writer, for its queue):
such samples are idle, not CPU."""

_TRUNK_PCT = 90.0
"""Frames on at least this share of the busy samples are the trunk (main, the loop)."""


def start(procs: Procs, pid: int, out: Path, rate: int = 250) -> Proc:
    """Attach py-spy to ``pid``; it records until :func:`stop`."""
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return procs.start(f"py-spy-{pid}", argv)


def stop(procs: Procs, proc: Proc, timeout: float = 20.0) -> None:
    """Ask py-spy to stop (SIGINT: it then writes its output) and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout)
    procs.stop(proc)


def parse_frame(frame: str) -> tuple[str, str]:
    """``"send (websockets/asyncio/connection.py:42)"`` -> ``("send", "websockets/...py")``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match.group("func"), match.group("file")


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks as (frames root first, samples); lines that do not parse are skipped."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def _label(frame: str) -> str:
    func, file = parse_frame(frame)
    short = "/".join(file.split("/")[-2:]) if file else "?"
    return f"{func} ({short})"


def _matches(frame: str, fragment: str, func: str) -> bool:
    name, file = parse_frame(frame)
    return fragment in file and (not func or name == func)


def summarize(text: str, top: int = 12) -> Json:
    """Shares of the busy samples: the ``top`` functions by self and by inclusive time
    (the trunk every stack shares left out) and :data:`COMPONENTS`.

    Samples whose leaf waits in ``select`` are idle and counted apart (``idle_pct``).
    """
    stacks = parse_collapsed(text)
    total = sum(count for _, count in stacks)
    busy_stacks = [(f, c) for f, c in stacks if parse_frame(f[-1])[0] not in _IDLE_LEAVES]
    busy = sum(count for _, count in busy_stacks)
    if busy == 0:
        return {"samples": total, "busy_samples": 0}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for frames, count in busy_stacks:
        own[_label(frames[-1])] += count
        for label in {_label(frame) for frame in frames}:
            inclusive[label] += count
        for name, fragment, func in COMPONENTS:
            if any(_matches(frame, fragment, func) for frame in frames):
                parts[name] += count
    branches = Counter({k: v for k, v in inclusive.items() if 100 * v / busy < _TRUNK_PCT})

    def shares(counter: Counter[str], n: int) -> dict[str, float]:
        return {k: round(100 * v / busy, 1) for k, v in counter.most_common(n)}

    return {
        "samples": total,
        "idle_pct": round(100 * (total - busy) / total, 1),
        "self_pct": shares(own, top),
        "inclusive_pct": shares(branches, top),
        "components_pct": shares(parts, len(COMPONENTS)),
    }
