"""Warm mode (``--warm N``): each slot keeps a process that runs jobs one after another.

A slot process is a :class:`~scheduler.worker.process.JobProcess` whose target is
:func:`~scheduler.worker.warm_slot.slot_main`: it is forked, isolated and contained
exactly as a job process is (its own session and process group, a child subreaper, the
parent-death signal), and then waits on a control socket for jobs. For each job the
scheduler sends the pickled target and arguments, and the job's descriptors (every
keyword argument named ``*_fd`` holding one: the progress pipe, a held job's go pipe)
with ``SCM_RIGHTS``; a keyword argument named ``*_fd`` holding
:data:`~scheduler.worker.launch.OWN_RESULT_FD` gets the slot's own result pipe instead.
The slot process runs the job, re-points its stdout and stderr back, kills and reaps
whatever the job left behind, closes the job's descriptors and answers with one message:
the job's exit status, CPU seconds and peak resident memory, its own memory now, and
what the job wrote to the result pipe (its record, which the job's
:class:`~scheduler.worker.process.ProcessResult` carries back: no pipe per job).

Whatever stops a job (its timeout, an eviction, a cancel, a limit, a shutdown) stops its
slot process's whole tree as it stops a job process; a job that kills its slot process
(``os._exit``, a segfault) is reported with that exit status. Either way a fresh process
takes the slot at the next job. A slot process is also replaced after ``max_jobs`` jobs
or when it holds more than ``max_rss`` after one (:mod:`scheduler.policy.warm`).

What a job leaves in its slot process (imported modules, module globals, caches, the
working directory, environment variables) is still there for the next job it runs: the
isolation between jobs of one slot is that of Celery's prefork pool, not of a process
per job.
"""

from __future__ import annotations

import array
import asyncio
import logging
import pickle
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

from scheduler.policy.closing import Outcome
from scheduler.policy.warm import WarmLimits, recycle
from scheduler.worker.cgroups import JobCgroups
from scheduler.worker.launch import OWN_RESULT_FD
from scheduler.worker.process import EndsInFuture, JobProcess, ProcessResult
from scheduler.worker.warm_slot import DONE, HEADER, MAX_FDS, slot_main

__all__ = ["WarmJob", "WarmPool"]

log = logging.getLogger(__name__)

RECV_BYTES: Final = 64 * 1024
"""Most bytes read from a slot process's control socket at once (a record may be 128 KiB)."""


class _Slot:
    """One slot process and the scheduler's end of its control socket."""

    def __init__(self, pool: WarmPool, job: WarmJob) -> None:
        """Fork the slot process for ``job`` (OSError if it cannot be made)."""
        self._pool = pool
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock: socket.socket | None = ours
        self.job: WarmJob | None = None
        self.jobs_run = 0
        self.cpu_s = 0.0
        """The slot process's CPU seconds when its last job ended."""
        self.doomed = False
        """Whether it is being stopped: it takes no other job, even if its job ends first."""
        self._buffer = b""
        with theirs:
            self.process = JobProcess(
                slot_main,
                (theirs.fileno(), job.fds),
                name="warm-slot",
                grace=job.grace,
                cgroups=job.cgroups,
                keep_fds=(theirs.fileno(),),
            )
            try:
                self.process.start()
            except BaseException:
                ours.close()
                raise
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)
        self.process.add_done_callback(self._died)

    def send(self, job: WarmJob, payload: bytes) -> None:
        """Hand ``job`` to the idle slot process (OSError if it is gone)."""
        if self._sock is None:
            raise BrokenPipeError("the slot process is gone")
        data = HEADER.pack(len(payload)) + payload
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", job.fds))]
        sent = self._sock.sendmsg([data], fds, socket.MSG_NOSIGNAL)
        if sent < len(data):
            # Blocking, and short: the slot process is reading, it is idle.
            self._sock.sendall(memoryview(data)[sent:], socket.MSG_NOSIGNAL)
        self.job = job

    def retire(self) -> None:
        """Close the control socket: the idle slot process exits and is reaped."""
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(RECV_BYTES)
        except OSError:
            data = b""
        if not data:
            self.retire()  # it exited: its reaping reports the job
            return
        self._buffer += data
        done = self._take_done()
        if done is not None:
            self._job_done(*done)

    def _take_done(self) -> tuple[tuple[int, float, float, int, int, int], bytes] | None:
        """The ``DONE`` message at the head of what the slot process sent, and the job's
        record after it, taken out; None until all of it came."""
        if len(self._buffer) < DONE.size:
            return None
        fields = DONE.unpack_from(self._buffer)
        end = DONE.size + fields[-1]
        if len(self._buffer) < end:
            return None
        record, self._buffer = self._buffer[DONE.size : end], self._buffer[end:]
        return fields, record

    def _job_done(self, fields: tuple[int, float, float, int, int, int], record: bytes) -> None:
        job, self.job = self.job, None
        exit_code, cpu_s, slot_cpu_s, peak_kb, rss_kb, _ = fields
        self.jobs_run += 1
        self.cpu_s = slot_cpu_s
        if self.doomed or recycle(self._pool.limits, self.jobs_run, rss_kb * 1024):
            log.debug("retiring slot pid %d after %d jobs", self.process.pid, self.jobs_run)
            self.retire()
        else:
            self._pool.idle.append(self)
        if job is not None:
            job.finished(exit_code, "exited", cpu_s, peak_kb, record)

    def _died(self, result: ProcessResult) -> None:
        """The slot process is reaped: report its job, with a record it left if any."""
        self._pool.forget(self)
        if self._sock is not None:
            self._drain()
        job, self.job = self.job, None
        if job is None:
            return
        done = self._take_done()
        if done is not None:
            (exit_code, cpu_s, _, peak_kb, _, _), record = done
            job.finished(exit_code, "exited", cpu_s, peak_kb, record)
        else:
            cpu_s = max(0.0, result.cpu_s - self.cpu_s)
            job.finished(result.exit_code, result.outcome, cpu_s, result.max_rss_kb)

    def _drain(self) -> None:
        """Read what the dead slot process left in the socket, then close it."""
        assert self._sock is not None
        self._sock.setblocking(False)
        try:
            while data := self._sock.recv(4096):
                self._buffer += data
        except OSError:
            pass  # nothing more (BlockingIOError), or reset
        self.retire()


class WarmPool:
    """The warm-mode launcher: hands out :class:`WarmJob` s run by reused slot processes.

    Keeps the slot processes that are idle between jobs; :meth:`close` stops them.
    """

    fresh_per_job = False
    carries_records = True

    def __init__(self, limits: WarmLimits) -> None:
        """An empty pool; slot processes are forked as jobs need them."""
        self.limits = limits
        self.idle: list[_Slot] = []
        self._live: set[_Slot] = set()

    def job(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        *,
        name: str | None,
        grace: float,
        cgroups: JobCgroups | None,
    ) -> WarmJob:
        """A job that runs ``target(*args, **kwargs)`` in a slot process once started."""
        return WarmJob(self, target, args, kwargs, name=name, grace=grace, cgroups=cgroups)

    def slot_for(self, job: WarmJob, payload: bytes) -> _Slot:
        """Give ``job`` to an idle slot process, or to a freshly forked one if none is idle
        (or the idle ones are gone); OSError if none can be made."""
        while self.idle:
            slot = self.idle.pop()
            try:
                slot.send(job, payload)
            except OSError as exc:
                log.debug("idle slot pid %d is gone: %s", slot.process.pid, exc)
                slot.retire()
                continue
            return slot
        slot = _Slot(self, job)
        self._live.add(slot)
        try:
            slot.send(job, payload)
        except OSError:
            slot.retire()
            raise
        return slot

    def forget(self, slot: _Slot) -> None:
        """``slot``'s process is reaped: it serves no more jobs."""
        self._live.discard(slot)
        if slot in self.idle:
            self.idle.remove(slot)

    async def ready(self) -> None:
        """Nothing to wait for: slot processes are forked as jobs come."""

    async def close(self) -> None:
        """Stop every slot process (whole trees, at once); return once all are reaped."""
        slots = list(self._live)
        self.idle.clear()
        await asyncio.gather(*(slot.process.stop(grace=0) for slot in slots))


class WarmJob(EndsInFuture):
    """One job run by a slot process of a :class:`WarmPool`: the interface of
    :class:`~scheduler.worker.process.JobProcess` (``start``, ``pid``, ``result``,
    ``time_out``, ``stop``, ``add_done_callback``), with the same guarantees.

    ``pid`` is the slot process's, which leads the process group every process of the job
    is in. The result's ``cpu_s`` and ``max_rss_kb`` are the job's own: see
    :func:`slot_main` for how they are measured.
    """

    def __init__(
        self,
        pool: WarmPool,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        *,
        name: str | None = None,
        grace: float = 2.0,
        cgroups: JobCgroups | None = None,
    ) -> None:
        """Store what to run; nothing is sent until ``start``. Every keyword argument named
        ``*_fd`` holding an int is a descriptor, sent to the slot process with the job."""
        self._pool = pool
        self._target = target
        self._args = args
        self._fd_names: list[str] = []
        self.fds: list[int] = []
        """The job's descriptors, sent to the slot process with it."""
        self._own_result: list[str] = []
        self._kwargs: dict[str, object] = {}
        for key, value in kwargs.items():
            if key.endswith("_fd") and isinstance(value, int) and value >= 0:
                self._fd_names.append(key)
                self.fds.append(value)
            elif key.endswith("_fd") and isinstance(value, int) and value == OWN_RESULT_FD:
                self._own_result.append(key)
            else:
                self._kwargs[key] = value
        self.name = name
        self.grace = grace
        self.cgroups = cgroups
        self._slot: _Slot | None = None
        self._cpu_base = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[ProcessResult] | None = None
        self._started_at = 0.0
        self._callbacks: list[Callable[[ProcessResult], None]] = []
        self._stopping: asyncio.Task[ProcessResult] | None = None

    def start(self) -> None:
        """Hand the job to a slot process (forking one if none is idle).

        Raises RuntimeError if already started or no event loop runs in this thread;
        OSError if the job cannot be pickled or no slot process can take it.
        """
        if self._future is not None:
            raise RuntimeError("WarmJob already started")
        if len(self.fds) > MAX_FDS:
            raise OSError(f"a warm job takes at most {MAX_FDS} descriptors, not {len(self.fds)}")
        loop = asyncio.get_running_loop()
        try:
            message = (self._target, self._args, self._kwargs, self._fd_names, self._own_result)
            payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise OSError(f"cannot send the job to a warm process: {exc}") from exc
        self._started_at = time.monotonic()
        self._slot = self._pool.slot_for(self, payload)
        self._cpu_base = self._slot.cpu_s
        self._loop = loop
        self._future = loop.create_future()
        log.debug("job %s sent to slot pid %d", self.name, self._slot.process.pid)

    @property
    def pid(self) -> int:
        """The slot process's id (its process group id); RuntimeError before ``start``."""
        if self._slot is None:
            raise RuntimeError("WarmJob not started")
        return self._slot.process.pid

    @property
    def cpu_base(self) -> float:
        """The slot process's CPU seconds (its own and its reaped children's) when its
        previous job ended: earlier jobs' CPU, which a CPU limit of this job leaves out."""
        return self._cpu_base

    def time_out(self) -> None:
        """Stop the slot process's whole tree now as a timeout (SIGTERM, SIGKILL after the
        grace); nothing if the job has ended."""
        slot = self._started_slot()
        if not self.done:
            slot.doomed = True
            slot.process.time_out()

    async def stop(self, grace: float | None = None) -> ProcessResult:
        """Stop the slot process's whole tree (SIGTERM, SIGKILL after ``grace``) and return
        the job's result; a job that ended already keeps its result."""
        slot = self._started_slot()
        future = self._future
        assert future is not None
        if not future.done():
            slot.doomed = True
            self._stopping = asyncio.ensure_future(slot.process.stop(grace))
        if self._stopping is not None:
            # The slot's reaping reports the job, possibly only right after this stop.
            await asyncio.shield(self._stopping)
        return await asyncio.shield(future)

    def add_done_callback(self, callback: Callable[[ProcessResult], None]) -> None:
        """Call ``callback(result)`` once from the event loop when the job has ended (at
        once in the loop callback that saw it end, or with ``call_soon`` if it has)."""
        self._started_slot()
        assert self._future is not None and self._loop is not None
        if self._future.done():
            self._loop.call_soon(
                self._call_back, [callback], self._future.result(), f"warm job {self.name}"
            )
        else:
            self._callbacks.append(callback)

    def finished(
        self,
        exit_code: int | None,
        outcome: Outcome,
        cpu_s: float,
        peak_kb: int,
        record: bytes | None = None,
    ) -> None:
        """The slot process reported the job's end (with the ``record`` it wrote), or
        died: set the result, call back."""
        assert self._future is not None
        if self._future.done():
            return
        wall_s = time.monotonic() - self._started_at
        result = ProcessResult(exit_code, outcome, wall_s, cpu_s, peak_kb, record=record)
        log.debug("job %s in slot pid %d ended: %s", self.name, self.pid, result)
        self._future.set_result(result)
        callbacks, self._callbacks = self._callbacks, []
        self._call_back(callbacks, result, f"warm job {self.name}")

    def _started_slot(self) -> _Slot:
        if self._slot is None:
            raise RuntimeError("WarmJob not started")
        return self._slot
