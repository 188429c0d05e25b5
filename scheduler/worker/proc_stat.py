"""What ``/proc`` says of processes: one process's ``stat`` line (:class:`ProcStat`), every
visible process by pid, a process's descendants by parent pid, and the memory and CPU of
a whole tree.

:mod:`scheduler.worker.containment` finds the tree it stops through these; the scheduler
samples its jobs' limits with :func:`proc_table` and :func:`tree_usage`
(:mod:`scheduler.worker.run_timers`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """What ``/proc/PID/stat`` says of one process: its parent, state letter, CPU
    seconds (its own plus those of the children it waited for) and when it started (clock
    ticks after boot: with the pid, it names one process)."""

    ppid: int
    state: str
    cpu_s: float
    started: int


def read_stat(pid: str | int) -> ProcStat | None:
    """``/proc/PID/stat`` of process ``pid``; None if it is gone or cannot be read."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None  # gone since the directory was listed
    try:
        data = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 20:
        return None
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ProcStat(
        ppid=int(fields[1]),
        state=fields[0].decode(),
        cpu_s=ticks / CLOCK_TICKS,
        started=int(fields[19]),  # field 22: fields[0] is field 3, the first after the name
    )


def proc_table() -> dict[int, ProcStat]:
    """Every process this one can see, by pid (about 1 ms per 70 processes)."""
    table: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(entry)) is not None:
            table[int(entry)] = stat
    return table


def descendants(root: int, table: Mapping[int, ProcStat]) -> list[int]:
    """The pids below ``root`` in ``table`` (children first, then theirs), ``root`` excluded."""
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: list[int] = []
    frontier = [root]
    while frontier:
        below = [child for parent in frontier for child in children.get(parent, ())]
        found.extend(below)
        frontier = below
    return found


def memory_of(pid: int) -> int:
    """The proportional resident memory (Pss) of ``pid`` in bytes: its resident pages, each
    shared page divided by the number of processes sharing it (so the pages a forked job
    still shares with the scheduler count for half). 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_usage(root: int, table: Mapping[int, ProcStat]) -> tuple[int, float] | None:
    """Memory in bytes (:func:`memory_of`) and CPU seconds of ``root`` and every descendant
    in ``table`` (CPU includes descendants already waited for); None if ``root`` is not in
    it."""
    if root not in table:
        return None
    members = [root, *descendants(root, table)]
    return sum(map(memory_of, members)), sum(table[pid].cpu_s for pid in members)
