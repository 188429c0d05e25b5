"""Keeping a job's whole process tree together and taking it down.

A job process is made a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): a
descendant whose parent dies (a daemon that double-forks and calls ``setsid()``, a child
started with ``start_new_session=True`` that outlives its parent) is re-parented to the job
process instead of init, so it stays in the job's tree whatever it does with sessions and
process groups. The tree is found by parent pid in ``/proc``
(:mod:`scheduler.worker.proc_stat`; this kernel may lack
``/proc/PID/task/TID/children``), and is stopped by freezing it (:class:`Freezer`:
SIGSTOP, pass after pass until a pass finds nobody new, so nothing forks while it is being
killed) and then killing every member with SIGKILL.

The scheduler process may be a subreaper too (:mod:`scheduler.worker.orphans`): what a job
process leaves behind when it dies comes back to the scheduler, which freezes and kills it
the same way.

Works without privileges on Linux. A process that leaves the tree through a setuid helper
(it cannot be signalled) or is re-parented by ptrace is beyond reach.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from scheduler.worker.lazy_log import lazy_logger
from scheduler.worker.proc_stat import ProcStat, descendants, proc_table, read_stat

__all__ = [
    "Freezer",
    "Signalled",
    "has_children",
    "kill_tree",
    "last_pid",
    "reap_children",
    "set_child_subreaper",
    "signal_tree",
]

log = lazy_logger(__name__)

PR_SET_CHILD_SUBREAPER: Final = 36
LAST_PID: Final = "/proc/sys/kernel/ns_last_pid"
"""The pid the kernel handed out last (needs ``CONFIG_CHECKPOINT_RESTORE``)."""
SETTLE_S: Final = 1.0
"""How long a frozen process may take to be seen stopped (one in uninterruptible sleep
stops only once out of it); then it is killed anyway."""
_STILL: Final = frozenset("TtZX")
"""``/proc/PID/stat`` states of a process that runs no more: stopped, traced, dead."""

# No use_errno: saving and restoring errno around every call would cost a freshly forked
# job about 20 fresh pages; a failed call's errno is read right after it instead.
_libc = ctypes.CDLL(None)
_libc.prctl.restype = ctypes.c_int
_libc.waitid.restype = ctypes.c_int
_errno = _libc.__errno_location
_errno.restype = ctypes.POINTER(ctypes.c_int)
# Arguments typed once here: a forked job process makes these calls, and every fresh
# page costs it a copy.
_SET_SUBREAPER = (
    ctypes.c_int(PR_SET_CHILD_SUBREAPER),
    ctypes.c_ulong(1),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
)
_SIGINFO_BYTES: Final = 128
_ANY_CHILD = (
    ctypes.c_int(os.P_ALL),
    ctypes.c_uint(0),
    ctypes.create_string_buffer(_SIGINFO_BYTES),
    ctypes.c_int(os.WEXITED | os.WNOHANG | os.WNOWAIT),
)


def prctl(what: str, arguments: tuple[ctypes._SimpleCData[int], ...]) -> None:
    """``prctl(*arguments)``; ``OSError`` naming ``what`` if the kernel refuses."""
    if _libc.prctl(*arguments) != 0:
        errno = _errno()[0]
        raise OSError(errno, f"prctl({what}): {os.strerror(errno)}")


def set_child_subreaper() -> None:
    """Make the calling process a child subreaper: orphaned descendants come back to it.

    Raises ``OSError`` if the kernel refuses.
    """
    prctl("PR_SET_CHILD_SUBREAPER", _SET_SUBREAPER)


def has_children() -> bool:
    """Whether the calling process has any child, live or zombie: one ``waitid`` that
    reaps nothing. Through ctypes, which fails with a return value where ``os.waitid``
    raises: the exception (its message decoded from ``strerror``) cost a job process
    that left no child, the usual case, about 40 fresh pages."""
    failed: int = _libc.waitid(*_ANY_CHILD)
    return failed == 0


def _send(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone already, or a setuid program we may not signal


def _send_pidfd(pidfd: int, sig: int) -> bool:
    """Signal the process behind ``pidfd``; whether it was there to be signalled."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def last_pid() -> int | None:
    """The pid the kernel handed out last in this pid namespace (pids are handed out in
    increasing order, wrapping round); None if this kernel does not say."""
    try:
        fd = os.open(LAST_PID, os.O_RDONLY)
    except OSError:
        return None
    try:
        return int(os.read(fd, 32))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _listed_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _handed_out(pid: int, after: int, upto: int) -> bool:
    """Whether ``pid`` was handed out after ``after`` and up to ``upto`` (pids wrap round)."""
    if after <= upto:
        return after < pid <= upto
    return pid > after or pid <= upto


@dataclass(slots=True)
class Signalled:
    """What :func:`signal_tree` reached: ``(pid, pidfd)`` of each descendant it signalled
    (the pidfds are the caller's, see :meth:`kill`), and :func:`last_pid` from just before
    it looked (None if unknown): whatever the tree forked since has a later pid."""

    mark: int | None
    held: list[tuple[int, int]] = field(default_factory=list)

    def kill(
        self,
        parents: Iterable[int] = (),
        *,
        adopter: int | None = None,
        spare: Callable[[int], bool] = lambda pid: False,
    ) -> Freezer:
        """Freeze what is left of the tree and SIGKILL it all, then close the pidfds;
        return the freezer (its members are what was killed).

        The members are the signalled descendants still alive, the children of
        ``parents``, and (for :class:`Freezer`) everything they forked since, however
        often it re-forked; with ``adopter`` (a subreaper the tree's orphans went to, the
        scheduler) also each child of it that ``spare`` does not claim.
        """
        freezer = Freezer(parents, adopter=adopter, spare=spare, since=self.mark)
        try:
            for pid, pidfd in self.held:
                freezer.stop_pidfd(pid, pidfd)
            freezer.freeze()
        finally:
            freezer.kill()
            self.close()
        return freezer

    def close(self) -> None:
        """Close the pidfds (nothing is signalled)."""
        for _, pidfd in self.held:
            os.close(pidfd)
        self.held = []


def signal_tree(root: int, sig: int) -> Signalled:
    """Send ``sig`` to ``root``'s process group and to every descendant of ``root``,
    whatever session or group it is in (a descendant in the group gets it once more).

    Returns a pidfd for each descendant signalled, for :meth:`Signalled.kill` to kill it
    later even if it has left the tree by then (its parent died and nobody above it is a
    subreaper), with the mark from which to look for what the tree forks meanwhile.
    """
    mark = last_pid()
    held = _open_pidfds(descendants(root, proc_table()))
    try:
        os.killpg(root, sig)
    except ProcessLookupError:
        _send([root], sig)  # not yet the leader of its own group
    for _, pidfd in held:
        _send_pidfd(pidfd, sig)
    return Signalled(mark, held)


def _open_pidfds(pids: Iterable[int]) -> list[tuple[int, int]]:
    held = []
    for pid in pids:
        try:
            held.append((pid, os.pidfd_open(pid)))
        except OSError:
            pass  # gone, or out of descriptors: a kill of the tree still finds it there
    return held


class Freezer:
    """Stops a set of processes and everything they fork with SIGSTOP, then kills them all.

    A process is a member if it was stopped here (:meth:`stop_pid`, :meth:`stop_pidfd`),
    if its parent is a member or one of ``parents``, or if its parent is ``adopter`` (a
    subreaper, which the members' orphans go to) and ``spare`` does not claim it.

    :meth:`freeze` reads ``/proc`` pass after pass and stops each member the moment it
    reads it, until a pass finds nobody new. A fork already under way when SIGSTOP comes
    still completes (only a fatal signal undoes it), so before each pass the freezer waits
    until every member it stopped is seen stopped (or dead), which it is only once back
    from any fork: its children are in ``/proc`` by then, with pids handed out after its
    own. A pass therefore reads only the pids handed out since the oldest member stopped
    by the pass before (:func:`last_pid`; pids wrap round), and after a pass that finds
    nobody new, nothing can fork its way out, however fast it re-forks (each parent
    exiting at once). The first pass reads every process unless ``since`` (a
    :func:`last_pid` taken before an earlier complete look, such as
    :func:`signal_tree`'s) is given.
    """

    def __init__(
        self,
        parents: Iterable[int] = (),
        *,
        adopter: int | None = None,
        spare: Callable[[int], bool] = lambda pid: False,
        since: int | None = None,
    ) -> None:
        """A freezer that has stopped nothing yet."""
        self.members: set[int] = set()
        """Every process stopped (zombies included: signalled, but they are past it)."""
        self.adopted: list[int] = []
        """The members that are children of ``adopter``: theirs to reap."""
        self.zombies = 0
        """How many members were found dead already (not yet reaped)."""
        self._parents = set(parents)
        self._adopter = adopter
        self._spare = spare
        self._since = since
        self._first = True
        self._fresh: list[int] = []
        """Stopped since the last pass began: not yet seen stopped."""
        self._pidfds: dict[int, int] = {}
        self._recheck: set[int] = set()
        self._rechecked: set[int] = set()

    def stop_pid(self, pid: int) -> None:
        """Stop ``pid`` (a child of a stopped process, or of this one: its pid stays its
        own until it is reaped) and make it a member."""
        _send([pid], signal.SIGSTOP)
        self.members.add(pid)
        self._fresh.append(pid)

    def stop_pidfd(self, pid: int, pidfd: int) -> None:
        """Stop the process ``pid`` behind ``pidfd`` and make it a member if it is still
        there; :meth:`kill` kills it through ``pidfd`` (which stays the caller's)."""
        if _send_pidfd(pidfd, signal.SIGSTOP):
            self._pidfds[pid] = pidfd
            self.members.add(pid)
            self._fresh.append(pid)

    def freeze(self) -> int:
        """Stop every member, pass after pass, until a pass finds nobody new; return how
        many members there are."""
        while self._pass():
            pass
        return len(self.members)

    def kill(self) -> None:
        """SIGKILL every member."""
        for pid in self.members:
            pidfd = self._pidfds.get(pid)
            if pidfd is None:
                _send([pid], signal.SIGKILL)
            else:
                _send_pidfd(pidfd, signal.SIGKILL)

    def _pass(self) -> bool:
        """One look; whether it found anyone new, or must look again at someone."""
        fresh, self._fresh = self._fresh, []
        self._settle(fresh)
        now = last_pid()
        low = self._low(fresh, now)
        self._first = False
        if low is None or now is None:
            pids = _listed_pids()
        else:
            pids = [pid for pid in _listed_pids() if _handed_out(pid, low, now)]
            pids.extend(self._recheck)
        if now is not None:
            pids.sort(key=lambda pid: (pid <= now, pid))  # in the order handed out
        table: dict[int, ProcStat] = {}
        for pid in pids:
            stat = read_stat(pid)
            if stat is not None:
                table[pid] = stat
                self._take(pid, stat)
        while self._second_look(table):
            pass  # a child read before its parent was found (pids wrapped round)
        self._recheck = self._to_recheck(table, low, now)
        return bool(self._fresh or self._recheck)

    def _low(self, fresh: list[int], now: int | None) -> int | None:
        """The pid after which this pass looks (None: at every pid): the children of the
        members stopped since the last pass have later pids."""
        if now is None or (self._first and self._since is None):
            return None
        marks = [pid - 1 for pid in fresh]
        if self._first and self._since is not None:
            marks.append(self._since)
        if not marks:
            return now  # nobody new: only the pids to read again
        return min(marks, key=lambda pid: (pid <= now, pid))

    def _settle(self, pids: list[int]) -> None:
        """Wait until each of ``pids`` is seen stopped or dead (a fork it was in is then
        complete), for at most :data:`SETTLE_S`."""
        deadline = time.monotonic() + SETTLE_S
        while pids := [pid for pid in pids if self._running(pid)]:
            if time.monotonic() >= deadline:
                log.warning("processes %s do not stop; killing them anyway", pids)
                return
            time.sleep(0.0002)

    def _running(self, pid: int) -> bool:
        pidfd = self._pidfds.get(pid)
        if pidfd is not None and select.select([pidfd], [], [], 0)[0]:
            return False  # exited (its pid may be someone else's by now)
        stat = read_stat(pid)
        return stat is not None and stat.state not in _STILL

    def _to_recheck(
        self, table: Mapping[int, ProcStat], low: int | None, now: int | None
    ) -> set[int]:
        """The pids to read again next pass: a parent handed out lately that was gone when
        read has its children re-parented by now, and they may be older than the next
        pass's pids (once is enough: a parent's exit re-parents its children at once)."""
        if low is None or now is None:
            return set()
        again = {
            pid
            for pid, stat in table.items()
            if pid not in self.members
            and pid not in self._rechecked
            and stat.ppid > 0
            and stat.ppid not in table
            and _handed_out(stat.ppid, low, now)
        }
        self._rechecked |= again
        return again

    def _take(self, pid: int, stat: ProcStat) -> bool:
        """Stop ``pid`` if it is a member not yet stopped; whether it was."""
        if pid in self.members:
            return False
        adopted = stat.ppid == self._adopter and not self._spare(pid)
        if not adopted and stat.ppid not in self.members and stat.ppid not in self._parents:
            return False
        self.stop_pid(pid)
        if adopted:
            self.adopted.append(pid)
        if stat.state == "Z":
            self.zombies += 1
        return True

    def _second_look(self, table: Mapping[int, ProcStat]) -> bool:
        found = False
        for pid, stat in table.items():
            found = self._take(pid, stat) or found
        return found


def kill_tree(root: int, *, include_root: bool) -> int:
    """SIGKILL every descendant of ``root`` (and ``root`` if ``include_root``); return how many.

    The tree is frozen first (:class:`Freezer`), so a member forking meanwhile cannot leave
    a child behind. A descendant whose parent dies meanwhile stays in the tree only if
    ``root`` is a subreaper (job processes are).
    """
    freezer = Freezer([root])
    try:
        if include_root:
            freezer.stop_pid(root)
        freezer.freeze()
    finally:
        freezer.kill()
    return len(freezer.members)


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
