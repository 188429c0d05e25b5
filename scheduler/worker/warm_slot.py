"""The slot process of warm mode (:mod:`scheduler.worker.warm`): its loop, run in the
forked process, and the messages on its control socket.

:func:`slot_main` waits for a job on the control socket, runs it with its stdout and
stderr pointed at the job's log spool and its progress pipe set, puts them back, kills and
reaps whatever the job left behind, closes the job's descriptors and answers with one
``DONE`` message, which carries what the job wrote to the slot's own result pipe. Nothing
here runs in the scheduler but the two message formats.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; part of CPython
import array
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import traceback
from typing import Final

from scheduler.worker import containment
from scheduler.worker.child import LEFTOVER_REAP_S
from scheduler.worker.job_progress import enter_job
from scheduler.worker.task_result import ResultPipe

__all__ = ["DONE", "HEADER", "MAX_FDS", "slot_main"]

HEADER: Final = struct.Struct("<I")
"""A job message: its payload's length, then the pickled ``(target, args, kwargs, fd
names, own result names)``; the descriptors ride on its first byte, and the keyword
arguments of the own result names get the write end of the slot's result pipe."""
DONE: Final = struct.Struct("<iddqqI")
"""A slot process's answer to a job: exit status, the job's CPU seconds, the slot's CPU
seconds so far, the job's peak RSS (KiB), the slot's RSS now (KiB), and the length of
the record that follows (what the job wrote to the slot's result pipe)."""
MAX_FDS: Final = 16
"""Most descriptors one job may be sent."""
STATUS_BYTES: Final = 64 * 1024
"""Room for all of ``/proc/self/status`` in one read."""


def slot_main(control_fd: int, inherited: list[int]) -> None:
    """The slot process: run each job the scheduler sends on ``control_fd`` until it
    closes the socket.

    ``inherited`` are the descriptors of the job the slot was forked for, which it
    inherited and gets again with the job: closed at once. Per job, CPU seconds are the
    difference of ``getrusage`` (the process and the children it reaped) from the end of
    the previous job (the slot's start, for its first) to the end of this one and its
    leftovers: what the slot does to receive a job counts with the job, as the scheduler's
    CPU limit counts it. Peak RSS is the process's high-water mark since the job started,
    or that of a child reaped meanwhile if higher: before each job the mark is reset to the
    current RSS (``/proc/self/clear_refs``) unless the previous job left it there already.
    """
    for fd in inherited:
        os.close(fd)
    out, err = os.dup(1), os.dup(2)
    results = ResultPipe()
    pipe_id = os.fstat(results.read_fd).st_ino
    usage = _usage()
    peak_is_rss = False
    with socket.socket(fileno=control_fd) as sock:
        while (job := _receive(sock)) is not None:
            payload, fds = job
            cpu_before, children_peak = usage
            if not peak_is_rss:
                _reset_peak()
            exit_code = _run(payload, fds, results.write_fd)
            _after_job(fds, out, err)
            try:
                record = results.take()
            except OSError:
                record = b""  # the job closed the pipe: checked below
            usage = cpu_after, children_after = _usage()
            peak_kb, rss_kb = _memory()
            peak_is_rss = peak_kb <= rss_kb
            if children_after > children_peak:
                peak_kb = max(peak_kb, children_after)
            cpu_s = cpu_after - cpu_before
            done = DONE.pack(exit_code, cpu_s, cpu_after, peak_kb, rss_kb, len(record))
            sock.sendall(done + record)
            if not _still_ours(pipe_id, results):
                return  # the job closed or replaced the result pipe: a fresh slot follows


def _still_ours(pipe_id: int, results: ResultPipe) -> bool:
    """Whether both descriptors are still the ends of the slot's result pipe (a job may
    close any descriptor of its process, and open another under its number)."""
    try:
        return os.fstat(results.read_fd).st_ino == pipe_id == os.fstat(results.write_fd).st_ino
    except OSError:
        return False


def _receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The next job's payload and descriptors; None once the scheduler closed the socket."""
    fds = array.array("i")
    header, ancillary, _, _ = sock.recvmsg(HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not header:
        return None
    header += _read_exactly(sock, HEADER.size - len(header))
    (length,) = HEADER.unpack(header)
    return _read_exactly(sock, length), list(fds)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the scheduler closed the control socket mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _run(payload: bytes, fds: list[int], result_fd: int) -> int:
    """Run one job; return its exit status as its own process would have exited with."""
    try:
        target, args, kwargs, fd_names, own_result = pickle.loads(payload)
        kwargs.update(zip(fd_names, fds, strict=True))
        kwargs.update(dict.fromkeys(own_result, result_fd))
        target(*args, **kwargs)
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException:
        traceback.print_exc()  # as multiprocessing prints it: to the job's stderr
        return 1
    return 0


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` exits a process with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _after_job(fds: list[int], out: int, err: int) -> None:
    """Leave the slot process as the next job expects it: its output flushed to the job's
    log, stdout and stderr the slot's again, the job's descriptors closed, its leftovers
    killed and reaped, SIGINT and SIGTERM at their defaults, progress sent nowhere."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # a stream the job closed or broke: its output is lost, as it would be
    os.dup2(out, 1)
    os.dup2(err, 2)
    enter_job(-1, None)
    if containment.has_children():
        containment.kill_tree(os.getpid(), include_root=False)
        containment.reap_children(LEFTOVER_REAP_S)
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass  # the job closed it itself
    for signum in (signal.SIGINT, signal.SIGTERM):
        _signal.signal(signum, _signal.SIG_DFL)


def _usage() -> tuple[float, int]:
    """CPU seconds of this process and its reaped children, and the children's peak RSS."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return cpu, children.ru_maxrss


def _reset_peak() -> None:
    """Reset this process's peak RSS to its current RSS (a kernel without it keeps the
    lifetime peak)."""
    # os-level calls, opened per job: a job may close or reuse any descriptor of its slot.
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b"5")
    except OSError:
        pass
    finally:
        os.close(fd)


def _memory() -> tuple[int, int]:
    """This process's peak RSS since the last reset and its RSS now, in KiB."""
    # One read of the whole file (~1.5 KB), not a text file read line by line: this runs
    # after every job, and the buffered reader cost three times as much.
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        status = os.read(fd, STATUS_BYTES)
    finally:
        os.close(fd)
    return _field_kb(status, b"\nVmHWM:"), _field_kb(status, b"\nVmRSS:")


def _field_kb(status: bytes, name: bytes) -> int:
    """The value in KiB of the ``/proc/PID/status`` line starting with ``name``; 0 if
    there is none."""
    start = status.find(name)
    if start < 0:
        return 0
    end = status.find(b"\n", start + len(name))
    return int(status[start + len(name) : None if end < 0 else end].split()[0])
