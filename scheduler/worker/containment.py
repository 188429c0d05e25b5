"""Keeping a job's whole process tree together, measuring it and taking it down.

A job process is made a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): a
descendant whose parent dies (a daemon that double-forks and calls ``setsid()``, a child
started with ``start_new_session=True`` that outlives its parent) is re-parented to the job
process instead of init, so it stays in the job's tree whatever it does with sessions and
process groups. The tree is found by parent pid in ``/proc`` (this kernel may lack
``/proc/PID/task/TID/children``), and is stopped by freezing it (SIGSTOP, repeated until a
pass finds nobody new, so nothing forks while it is being killed) and then killing every
member with SIGKILL.

The scheduler process may be a subreaper too (:meth:`OrphanReaper.enable`): what a job
process leaves behind when it dies comes back to the scheduler, which kills and reaps every
such adopted process that is not one of its own live job processes.

Works without privileges on Linux. A process that leaves the tree through a setuid helper
(it cannot be signalled) or is re-parented by ptrace is beyond reach.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "OrphanReaper",
    "ProcStat",
    "descendants",
    "has_children",
    "kill_pidfds",
    "kill_tree",
    "memory_of",
    "proc_table",
    "reap_children",
    "set_child_subreaper",
    "signal_tree",
    "tree_usage",
]

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER: Final = 36
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
LAZY_SWEEP_S: Final = 1.0
"""How soon after a job that exited by itself the scheduler looks for what it left."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.restype = ctypes.c_int
# Typed once here: a forked job process sets this, and every fresh page costs it a copy.
_SET_SUBREAPER = (
    ctypes.c_int(PR_SET_CHILD_SUBREAPER),
    ctypes.c_ulong(1),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
)


def set_child_subreaper() -> None:
    """Make the calling process a child subreaper: orphaned descendants come back to it.

    Raises ``OSError`` if the kernel refuses.
    """
    if _libc.prctl(*_SET_SUBREAPER) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """What ``/proc/PID/stat`` says of one process: its parent, state letter and CPU
    seconds (its own plus those of the children it waited for)."""

    ppid: int
    state: str
    cpu_s: float


def _read_stat(pid: str) -> ProcStat | None:
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
    if len(fields) < 15:
        return None
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ProcStat(ppid=int(fields[1]), state=fields[0].decode(), cpu_s=ticks / CLOCK_TICKS)


def proc_table() -> dict[int, ProcStat]:
    """Every process this one can see, by pid (about 1 ms per 70 processes)."""
    table: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _read_stat(entry)) is not None:
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


def has_children() -> bool:
    """Whether the calling process has any child, live or zombie (one syscall, no /proc)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _send(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or a setuid program we may not signal


def signal_tree(root: int, sig: int) -> list[int]:
    """Send ``sig`` to ``root``'s process group and to every descendant of ``root``,
    whatever session or group it is in (a descendant in the group gets it once more).

    Returns a pidfd for each descendant signalled, for :func:`kill_pidfds` to kill it
    later even if it has left the tree by then (its parent died and nobody above it is a
    subreaper); the caller owns them.
    """
    held = _open_pidfds(descendants(root, proc_table()))
    try:
        os.killpg(root, sig)
    except ProcessLookupError:
        _send([root], sig)  # not yet the leader of its own group
    for pidfd in held:
        _send_pidfd(pidfd, sig)
    return held


def _open_pidfds(pids: Iterable[int]) -> list[int]:
    held = []
    for pid in pids:
        try:
            held.append(os.pidfd_open(pid))
        except OSError:
            pass  # gone, or out of descriptors: a kill of the tree still finds it there
    return held


def _send_pidfd(pidfd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_pidfds(pidfds: Iterable[int]) -> None:
    """SIGKILL every process behind ``pidfds`` that still lives, and close them all."""
    for pidfd in pidfds:
        _send_pidfd(pidfd, signal.SIGKILL)
        os.close(pidfd)


def kill_tree(root: int, *, include_root: bool) -> int:
    """SIGKILL every descendant of ``root`` (and ``root`` if ``include_root``); return how many.

    The tree is frozen first: SIGSTOP to everyone found, then another look, until a look
    finds nobody new, so a member forking meanwhile cannot leave a child behind. A
    descendant whose parent dies meanwhile stays in the tree only if ``root`` is a
    subreaper (job processes are).
    """
    frozen: set[int] = set()
    if include_root:
        _send([root], signal.SIGSTOP)
        frozen.add(root)
    try:
        while True:
            fresh = [pid for pid in descendants(root, proc_table()) if pid not in frozen]
            if not fresh:
                break
            _send(fresh, signal.SIGSTOP)
            frozen.update(fresh)
    finally:
        _send(frozen, signal.SIGKILL)
    return len(frozen)


def reap_children(timeout: float) -> bool:
    """Reap every child of the calling process until it has none; give up after
    ``timeout`` seconds (a child it could not kill). Returns whether none is left.

    For a job process at its end, whose children are all its own killed leftovers by
    then: nobody else waits for them.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)


class OrphanReaper:
    """Kills and reaps what this process adopts as a child subreaper.

    ``is_job(pid)`` tells the process's own live job processes, which are never touched.
    Every other child is an adopted orphan: its tree is killed and it is reaped by pid
    (never ``waitpid(-1)``, which could take a job's exit status). Does nothing until
    :meth:`enable`; call only from the event loop's thread.
    """

    def __init__(self, is_job: Callable[[int], bool]) -> None:
        """An idle reaper; nothing is looked at until :meth:`enable`."""
        self._is_job = is_job
        self.enabled = False
        self._adopted: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._urgent = False

    def enable(self) -> None:
        """Make this process a child subreaper and start looking after its orphans."""
        set_child_subreaper()
        self.enabled = True

    def sweep_soon(self, *, urgent: bool) -> None:
        """Look for adopted orphans on the next loop pass if ``urgent`` (a job was killed
        or died by a signal), else within :data:`LAZY_SWEEP_S` (a job exited by itself,
        after killing its own leftovers; this catches one that skipped that)."""
        if not self.enabled or (self._timer is not None and (self._urgent or not urgent)):
            return
        if self._timer is not None:
            self._timer.cancel()
        import asyncio  # here: job processes and the fork server never load it

        loop = asyncio.get_running_loop()
        self._urgent = urgent
        self._timer = loop.call_later(0 if urgent else LAZY_SWEEP_S, self.sweep)

    def sweep(self) -> None:
        """Kill and start reaping every child of this process that is not a live job."""
        self._timer = None
        me = os.getpid()
        for pid, stat in proc_table().items():
            if stat.ppid == me and pid not in self._adopted and not self._is_job(pid):
                self._adopt(pid)

    def _adopt(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError as exc:
            # Out of descriptors: kill it anyway; a later sweep reaps it.
            log.warning("cannot watch adopted pid %d: %s", pid, exc)
            kill_tree(pid, include_root=True)
            return
        killed = kill_tree(pid, include_root=True)
        log.info("killed %d process(es) left behind by a job (adopted pid %d)", killed, pid)
        self._adopted[pid] = pidfd
        import asyncio

        asyncio.get_running_loop().add_reader(pidfd, self._reap, pid)

    def _reap(self, pid: int) -> None:
        pidfd = self._adopted.pop(pid)
        import asyncio

        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        # Its own children, killed with it, are ours now: reap them too.
        self.sweep_soon(urgent=True)
