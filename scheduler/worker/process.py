"""Async wrapper over a forked ``multiprocessing.Process`` running one job.

Each job runs in its own session and process group, and is a child subreaper
(:mod:`scheduler.worker.containment`): a descendant that leaves the group or the session
(``start_new_session=True``, a daemon's double fork and ``setsid()``) is re-parented to
the job process, so it stays in the job's tree. Stopping a job signals that whole tree;
a job that ends by itself kills what it leaves behind before it exits; one that dies by
a signal leaves its descendants to the scheduler, which kills them too if it was made a
subreaper with :func:`~scheduler.worker.orphans.contain_orphans`. A stopped job, or one
that died by a signal, is reported ended only once all that is left of its tree is
frozen and killed.

Its exit is awaited through a pidfd registered with the event loop: no thread per process
and no thread at all in this module, because the scheduler forks from its event loop
thread and forking while other threads run is unsafe.
"""

from __future__ import annotations

# The C half of ``signal``: its ``signal.signal`` wrapper turns the old handler
# into an enum by raising and catching ValueError when it is a function, which
# costs ~0.2 ms of copy-on-write page faults in a freshly forked child; and its
# ``pthread_sigmask`` wrapper turns every signal of the old mask into an enum.
import _signal  # type: ignore[import-not-found]  # no stub; part of CPython
import asyncio
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from scheduler.policy.closing import Outcome
from scheduler.worker import containment
from scheduler.worker.cgroups import JobCgroups
from scheduler.worker.child import RESET_SIGNALS, child_main, job_stdin, socket_fds
from scheduler.worker.orphans import REAPER, keep_child, kill_orphans, release_child

__all__ = ["JobProcess", "Outcome", "ProcessResult"]

log = logging.getLogger(__name__)

_FORK = multiprocessing.get_context("fork")


CGROUP_REMOVE_TRIES = 250
"""How many times (20 ms apart) a killed job cgroup is looked at until it is empty."""


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """How a job process ended.

    ``exit_code`` follows multiprocessing: 0 ok, >0 exit status, -N killed by
    signal N; None only if something else in this process reaped it first.
    ``cpu_s`` and ``max_rss_kb`` cover the job process and the children it
    waited for (``wait4`` rusage).
    """

    exit_code: int | None
    outcome: Outcome
    wall_s: float
    cpu_s: float
    max_rss_kb: int
    lost: str | None = None
    """Why the job's end is not known (its fork server died), else None."""
    record: bytes | None = None
    """What the job left for its scheduler (:mod:`~scheduler.worker.task_result`), when
    its launcher carried it back (warm mode) rather than a result pipe; else None."""


class EndsInFuture:
    """``done`` and ``result`` of a job whose end sets ``_future`` (None until it starts)."""

    _future: asyncio.Future[ProcessResult] | None
    _loop: asyncio.AbstractEventLoop | None

    @property
    def done(self) -> bool:
        """True once the job has ended."""
        return self._future is not None and self._future.done()

    @property
    def result(self) -> ProcessResult | None:
        """The result once the job has ended, else None."""
        if self._future is None or not self._future.done():
            return None
        return self._future.result()

    def _call_back(
        self,
        callbacks: list[Callable[[ProcessResult], None]],
        result: ProcessResult,
        what: str,
    ) -> None:
        """Call each done callback with ``result``; one that raises goes to the loop's
        exception handler (naming ``what``) and the others still run."""
        for callback in callbacks:
            try:
                callback(result)
            except Exception as exc:
                assert self._loop is not None
                self._loop.call_exception_handler(
                    {"message": f"a done callback of {what} failed", "exception": exc}
                )


class JobProcess(EndsInFuture):
    """One job run in a forked child process, in its own process group.

    ``start``, ``wait``, ``stop`` and ``add_done_callback`` must be called from
    the thread running the event loop that was running when ``start`` was called.
    The kernel's parent-death signal follows the thread that forked, so that
    thread must outlive the job (the event loop thread does).
    """

    def __init__(
        self,
        target: Callable[..., object],
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        name: str | None = None,
        grace: float = 2.0,
        cgroups: JobCgroups | None = None,
        keep_fds: tuple[int, ...] = (),
    ) -> None:
        """Store what to run; nothing is started until ``start``.

        ``grace`` is how long ``stop`` and a ``wait`` timeout let the job react
        to SIGTERM before the whole tree gets SIGKILL. With ``cgroups`` the job runs in
        a cgroup of its own made there, killed whole and removed once the job is reaped.
        ``keep_fds`` are sockets the child keeps open (every other inherited socket is
        pointed at /dev/null in it).
        """
        self._target = target
        self._args = args
        self._kwargs = dict(kwargs or {})
        self._name = name
        self._grace = grace
        self._cgroups = cgroups
        self._keep_fds = keep_fds
        self._cgroup: Path | None = None
        self._pid: int | None = None
        self._pidfd = -1
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[ProcessResult] | None = None
        self._started_at = 0.0
        self._stop_outcome: Outcome | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._signalled: containment.Signalled | None = None
        """The descendants the stop's SIGTERM went to (pidfds): frozen and killed with
        whatever the tree forked since when the job is reaped, wherever they are by then."""
        self._callbacks: list[Callable[[ProcessResult], None]] = []

    def start(self) -> None:
        """Fork the job process and watch for its exit on the running event loop.

        Sets ``pid``. Raises RuntimeError if already started or if no event loop
        is running in this thread; OSError if the process cannot be forked or
        watched (a process it could not watch is killed and reaped first).
        """
        if self._proc is not None:
            raise RuntimeError("JobProcess already started")
        loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        if self._cgroups is not None:
            self._cgroup = self._cgroups.make()
        try:
            pid, pidfd = self._launch()
        except BaseException:
            if self._cgroup is not None:
                JobCgroups.remove(self._cgroup)
            raise
        self._pid, self._loop = pid, loop
        if pidfd < 0:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                # Typically out of descriptors: a job nobody watches must not run on.
                self._abandon(pid)
                self._drop_cgroup(CGROUP_REMOVE_TRIES)
                raise
        self._pidfd = pidfd
        keep_child(pid)
        self._future = loop.create_future()
        loop.add_reader(self._pidfd, self._exited)
        log.debug("started job %s pid %d", self._name, pid)

    # How the job process is made, watched and reaped: forked from this process here; a
    # subclass may have another process fork it (scheduler.worker.forkserver_link).

    def _launch(self) -> tuple[int, int]:
        """Start the job process; return its pid and a pidfd of it (-1: open one here)."""
        proc = self._fork()
        assert proc.pid is not None
        self._proc = proc
        return proc.pid, -1

    def _abandon(self, pid: int) -> None:
        """Kill and reap the job process ``pid`` that could not be watched."""
        containment.kill_tree(pid, include_root=True)
        assert self._proc is not None
        self._proc.join()
        self._proc.close()

    def _collect(self, pid: int) -> ProcessResult:
        """Reap the exited job process ``pid``; its result with ``outcome`` and ``wall_s``
        yet to be filled in."""
        exit_code, cpu_s, max_rss_kb = _reap(pid)
        assert self._proc is not None
        # We reaped it ourselves. Any returncode marks it ended for multiprocessing,
        # so close() releases its sentinel pipes instead of calling waitpid() on a
        # pid that may be reused; the object is closed at once, nobody reads it.
        self._proc._popen.returncode = -1 if exit_code is None else exit_code  # type: ignore[attr-defined]
        self._proc.close()
        return ProcessResult(exit_code, "exited", 0.0, cpu_s, max_rss_kb)

    def _fork(self) -> multiprocessing.process.BaseProcess:
        """Fork the job process with the signals that could stop it blocked meanwhile."""
        old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, RESET_SIGNALS)
        stdin = sys.stdin
        child_stdin = job_stdin() if stdin is not None else None
        try:
            # Listed here, not in the child: a process's first look into /proc costs
            # ~0.1 ms, and nothing can open a socket between here and the fork.
            sockets = [fd for fd in socket_fds() if fd not in self._keep_fds]
            proc = _FORK.Process(
                target=child_main,
                args=(
                    os.getpid(),
                    old_mask,
                    sockets,
                    child_stdin,
                    self._target,
                    self._args,
                    self._kwargs,
                    None if self._cgroup is None else str(self._cgroup),
                ),
                name=self._name,
            )
            if child_stdin is not None:
                # multiprocessing would replace sys.stdin with a new reader of /dev/null
                # in the child (~0.1 ms there); it leaves a None alone, and child_main
                # puts in a reader built once, here.
                sys.stdin = None
            proc.start()
        finally:
            sys.stdin = stdin
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        # multiprocessing reaps finished children it tracks on every later
        # Process.start(); that would steal this child's status and rusage.
        multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
        return proc

    def _drop_cgroup(self, tries: int) -> None:
        """Kill the job's cgroup, and remove it once empty (looking again 20 ms later)."""
        cgroup = self._cgroup
        if cgroup is None:
            return
        try:
            JobCgroups.kill(cgroup)
            removed = JobCgroups.remove(cgroup)
        except OSError as exc:
            log.warning("cannot kill or remove job cgroup %s: %s", cgroup, exc)
            return
        if removed:
            self._cgroup = None
        elif tries > 1 and self._loop is not None:
            self._loop.call_later(0.02, self._drop_cgroup, tries - 1)
        else:
            log.warning("job cgroup %s is still not empty; left for the next start", cgroup)

    @property
    def pid(self) -> int:
        """The job process id (also its process group id); RuntimeError before ``start``."""
        if self._pid is None:
            raise RuntimeError("JobProcess not started")
        return self._pid

    @property
    def cpu_base(self) -> float:
        """CPU seconds its process had used before the job: none, it was forked for it."""
        return 0.0

    async def wait(self, timeout: float | None = None) -> ProcessResult:
        """Wait for the job to end and return its result.

        If ``timeout`` seconds pass first, stop the whole tree (SIGTERM, then
        SIGKILL after the grace) and return once it is reaped, with outcome
        ``"timed_out"``. Cancelling the caller leaves the job running.
        """
        future = self._started_future()
        if timeout is not None and not future.done():
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                self._terminate("timed_out", self._grace)
        return await asyncio.shield(future)

    def time_out(self) -> None:
        """Stop the whole tree now (SIGTERM, then SIGKILL after the grace) as a timeout.

        What ``wait(timeout)`` does when its time is up, for a caller that keeps the
        deadlines itself: the outcome is ``"timed_out"`` unless the job ended first or
        a stop was already under way. Returns at once; nothing if already reaped.
        """
        self._started_future()
        self._terminate("timed_out", self._grace)

    async def stop(self, grace: float | None = None) -> ProcessResult:
        """Stop the whole tree (SIGTERM, SIGKILL after ``grace``) and return the result.

        ``grace`` defaults to the one given to the constructor; if a stop is
        already under way, a shorter ``grace`` brings its SIGKILL forward. The
        outcome is ``"stopped"`` unless the job had already ended by itself
        (``"exited"``) or a timeout was already stopping it (``"timed_out"``).
        """
        future = self._started_future()
        self._terminate("stopped", self._grace if grace is None else grace)
        return await asyncio.shield(future)

    def add_done_callback(self, callback: Callable[[ProcessResult], None]) -> None:
        """Call ``callback(result)`` once from the event loop when the job is reaped.

        When the loop sees the job exit, it is called right after the reaping, in the
        same loop callback. If the job is already reaped, or a ``stop``, a timeout or
        ``time_out`` finds it exited and reaps it, the call is scheduled with
        ``loop.call_soon`` instead. An exception it raises goes to the loop's exception
        handler.
        """
        future = self._started_future()
        if future.done():
            assert self._loop is not None
            self._loop.call_soon(self._call_back, [callback], future.result(), self._who)
        else:
            self._callbacks.append(callback)

    @property
    def _who(self) -> str:
        return f"pid {self._pid}"

    def _started_future(self) -> asyncio.Future[ProcessResult]:
        if self._future is None:
            raise RuntimeError("JobProcess not started")
        return self._future

    def _terminate(self, outcome: Outcome, grace: float) -> None:
        if self.done:
            return
        if self._stop_outcome is None:
            if self._has_exited():
                # Not inline: the caller (a stop, a timeout) must not find its own
                # state changed under it by a done callback.
                result = self._finish()
                assert self._loop is not None
                self._loop.call_soon(self._call_back, self._take_callbacks(), result, self._who)
                return
            self._stop_outcome = outcome
            log.debug("stopping pid %d (%s): SIGTERM", self.pid, outcome)
            self._signalled = containment.signal_tree(self.pid, signal.SIGTERM)
        self._schedule_kill(grace)

    def _schedule_kill(self, grace: float) -> None:
        # A second stop with a shorter grace (e.g. shutdown during a timeout) hurries the kill.
        assert self._loop is not None
        when = self._loop.time() + grace
        if self._kill_timer is None or when < self._kill_timer.when():
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            self._kill_timer = self._loop.call_at(when, self._kill)

    def _kill(self) -> None:
        log.debug("pid %d outlived its grace: SIGKILL", self.pid)
        containment.kill_tree(self.pid, include_root=True)

    def _has_exited(self) -> bool:
        # Peeks without reaping: the zombie keeps the pid and group id ours
        # until _finish has signalled the group.
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        try:
            return os.waitid(os.P_PIDFD, self._pidfd, flags) is not None
        except ChildProcessError:
            return True

    def _exited(self) -> None:
        """The pidfd is readable: reap the job, then call the done callbacks at once."""
        result = self._finish()
        self._call_back(self._take_callbacks(), result, self._who)

    def _take_callbacks(self) -> list[Callable[[ProcessResult], None]]:
        callbacks, self._callbacks = self._callbacks, []
        return callbacks

    def _finish(self) -> ProcessResult:
        """Reap the exited job and set the result; the done callbacks are the caller's."""
        assert self._loop is not None and self._future is not None
        pid = self.pid
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        # The leader is a zombie, so the group id cannot have been reused yet:
        # this only kills what the job left behind.
        _signal_group(pid, signal.SIGKILL)
        self._kill_signalled()
        self._drop_cgroup(CGROUP_REMOVE_TRIES)
        reaped = self._collect(pid)
        exit_code = reaped.exit_code
        release_child(pid)
        if self._stop_outcome is None and (exit_code is None or exit_code < 0):
            # It died by a signal: its descendants are ours now; kill them before it is
            # reported.
            kill_orphans()
        else:
            # A stopped one's were killed above, its zombies are ours to reap now; one that
            # exited killed its own, unless it skipped that with os._exit.
            REAPER.sweep_soon(urgent=self._stop_outcome is not None)
        wall_s = time.monotonic() - self._started_at
        outcome = self._stop_outcome or "exited"
        result = replace(reaped, outcome=outcome, wall_s=wall_s)
        log.debug("reaped pid %d: %s", pid, result)
        self._future.set_result(result)
        return result

    def _kill_signalled(self) -> None:
        """After a stop: freeze and kill what is left of the tree, however it re-forks.

        A descendant that ignored the SIGTERM and outlived the job process has been
        re-parented (to us if we are a subreaper, else to init): it is reached through
        its pidfd, what the tree forked since through ``/proc``, and with us a subreaper
        every orphan we adopted meanwhile. All of it is SIGKILLed before the job is
        reported, so nothing of it can run or fork on after its end.
        """
        signalled, self._signalled = self._signalled, None
        if signalled is None:
            return
        adopter = os.getpid() if REAPER.enabled else None
        freezer = signalled.kill(adopter=adopter, spare=REAPER.is_job)
        REAPER.reap(freezer.adopted)


def _reap(pid: int) -> tuple[int | None, float, int]:
    """Reap the exited ``pid``; return its exit code, CPU seconds and peak RSS in KiB."""
    try:
        # Cannot block: this runs only once the process has exited.
        _, status, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        log.warning("pid %d was reaped by someone else: exit status lost", pid)
        return None, 0.0, 0
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the group led by ``pid``, or to ``pid`` alone if it has no group yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        # Not yet past os.setsid() in _child_main: it has spawned nothing yet.
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
