"""What a forked job process does before and after its task: isolate itself, arm the
parent-death signal, release the scheduler's descriptors, and kill what it leaves behind.

Kept apart from :mod:`scheduler.worker.process` (the scheduler's side) because all of
this runs in the child, right after the fork, where every fresh page costs: names are
resolved once here, at import, in the scheduler.
"""

from __future__ import annotations

# The C half of ``signal``: its ``signal.signal`` wrapper turns the old handler
# into an enum by raising and catching ValueError when it is a function, which
# costs ~0.2 ms of copy-on-write page faults in a freshly forked child; and its
# ``pthread_sigmask`` wrapper turns every signal of the old mask into an enum.
import _signal  # type: ignore[import-not-found]  # no stub; part of CPython
import ctypes
import os
import signal
import stat
import sys
from collections.abc import Callable
from types import FrameType
from typing import Final, TextIO

from scheduler.worker import cgroups, containment

_PR_SET_PDEATHSIG = 1
# Sent by the kernel to a job when the scheduler thread that forked it dies,
# whatever killed the scheduler; its handler takes the whole job tree down.
_DEATH_SIGNAL = signal.SIGRTMIN + 1
# Blocked across fork so that a stop arriving before the child has reset them
# cannot run the scheduler's handlers in the child (asyncio's handlers write to
# a wakeup fd the child shares with the scheduler).
RESET_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})

# prctl(PR_SET_PDEATHSIG, signal, 0, 0) with its arguments typed once, here: typing
# them through ``argtypes`` at every call costs a forked child more fresh pages.
_SET_DEATH_SIGNAL = (
    ctypes.c_int(_PR_SET_PDEATHSIG),
    ctypes.c_ulong(_DEATH_SIGNAL),
    ctypes.c_ulong(0),
    ctypes.c_ulong(0),
)

LEFTOVER_REAP_S = 1.0
"""How long a job process that ended waits for the leftovers it killed to be gone."""

_BATCH_PRIORITY: Final = os.sched_param(0)
"""``SCHED_BATCH``'s only priority, made once here rather than in every child."""


def child_main(
    parent_pid: int,
    sigmask: set[int],
    sockets: list[int],
    stdin: TextIO | None,
    target: Callable[..., object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    cgroup: str | None = None,
    *,
    signals_ready: bool = False,
    devnull: int = -1,
) -> None:
    """Isolate the freshly forked job process, then run ``target(*args, **kwargs)``.

    ``sockets`` are the inherited socket descriptors (:func:`socket_fds` just before
    the fork); ``stdin``, if not None, becomes ``sys.stdin``, reading descriptor 0
    pointed at /dev/null (as multiprocessing does it otherwise); ``cgroup``, if not
    None, is the job cgroup it moves into before anything else can start.

    The fork server, which has set up :func:`job_signals` in itself, passes
    ``signals_ready=True``, and ``devnull``, a descriptor of /dev/null it keeps open:
    the sockets are pointed at it (then closed here) rather than at one opened here.
    Each step skipped saves the job fresh pages.
    """
    if not signals_ready:
        _default_handlers()
    if cgroup is not None:
        cgroups.join(cgroup)
    os.setsid()
    containment.set_child_subreaper()
    run_as_batch()
    if not signals_ready:
        _signal.signal(_DEATH_SIGNAL, _kill_own_tree)
    containment.prctl("PR_SET_PDEATHSIG", _SET_DEATH_SIGNAL)
    if os.getppid() != parent_pid:
        # The scheduler died before the death signal was armed.
        os.killpg(0, signal.SIGKILL)
    release_fds(sockets, stdin is not None, devnull)
    if stdin is not None:
        sys.stdin = stdin
    _signal.pthread_sigmask(_signal.SIG_SETMASK, sigmask)
    reseed_inherited_random()
    try:
        target(*args, **kwargs)
    finally:
        _end_leftovers()


def run_as_batch() -> None:
    """Schedule this process, and every process it starts, as batch work
    (``SCHED_BATCH``): its share of the CPU is unchanged, but its wake-ups no longer
    preempt the process running, so a job waking up does not interrupt its scheduler, the
    bus or the fork server in the middle of a loop turn. A kernel or a seccomp profile
    that refuses it leaves the job under the default policy."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, _BATCH_PRIORITY)
    except OSError:
        pass


def job_signals() -> None:
    """Give this process the signal handling of a job process, for the processes it
    forks to inherit: the default handlers of :data:`RESET_SIGNALS`, no wakeup fd, and
    the handler of the parent-death signal, which takes the job's tree down. Only for a
    process that forks jobs and nothing else (the fork server): that handler kills the
    whole process group of whatever process receives the signal."""
    _default_handlers()
    _signal.signal(_DEATH_SIGNAL, _kill_own_tree)


def _default_handlers() -> None:
    """The default handlers of :data:`RESET_SIGNALS`, and no wakeup fd."""
    signal.set_wakeup_fd(-1)
    for signum in RESET_SIGNALS:
        _signal.signal(signum, _signal.SIG_DFL)


def reseed_inherited_random() -> None:
    """Give this freshly forked process random state of its own where a library it
    inherited does not: numpy's global generator (``numpy.random.rand()`` and the
    like), seeded once when ``numpy.random`` is imported and never again in a forked
    child. Without this, every job forked after a task module imported it would draw
    the same numbers. Python's :mod:`random` reseeds itself in a forked child; numpy's
    ``default_rng()`` seeds from the OS at each call. Imports nothing."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def _end_leftovers() -> None:
    """Kill and reap every descendant of this job process: the job has ended."""
    if containment.has_children():
        containment.kill_tree(os.getpid(), include_root=False)
        containment.reap_children(LEFTOVER_REAP_S)


def _kill_own_tree(signum: int, frame: FrameType | None) -> None:
    """Death-signal handler: SIGKILL the job's whole tree, its group and itself included."""
    try:
        containment.kill_tree(os.getpid(), include_root=False)
    finally:
        os.killpg(0, signal.SIGKILL)


def socket_fds() -> list[int]:
    """The descriptors of this process that are sockets."""
    sockets = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                sockets.append(fd)
        except OSError:
            continue  # the descriptor listdir used, closed by now
    return sockets


def release_fds(sockets: list[int], stdin: bool, devnull: int = -1) -> None:
    """Point the inherited ``sockets``, and descriptor 0 if ``stdin``, at /dev/null:
    at ``devnull`` if it is a descriptor of it (then closed), else at one opened here.

    The descriptor numbers stay taken, so a leftover socket object of the
    scheduler that is collected in the child cannot close a file the job has
    since opened under the same number.
    """
    fds = [*sockets, 0] if stdin else sockets
    if devnull < 0:
        if not fds:
            return
        devnull = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        if fd != devnull:
            os.dup2(devnull, fd, False)  # not inheritable; positional: cheaper in a fresh child
    if devnull not in fds:  # it is descriptor 0 if that one was closed
        os.close(devnull)


_stdin: TextIO | None = None


def job_stdin() -> TextIO | None:
    """The ``sys.stdin`` of job processes: a text reader of descriptor 0, which is /dev/null
    in them; None if this process has no descriptor 0 to build it on."""
    global _stdin
    if _stdin is None:
        try:
            # Never read here: each job process reads its own copy, from /dev/null.
            _stdin = open(0, encoding="utf-8", closefd=False)
        except OSError:
            return None
    return _stdin
