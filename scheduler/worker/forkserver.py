"""The fork server: a small process that forks every job of one scheduler.

A scheduler's own process grows to tens of MB (asyncio, websockets, msgspec, its state),
and forking it costs a copy-on-write fault for every page a job then touches. The fork
server is a fresh interpreter (``python -c``, so it shares nothing with the scheduler)
that imports only what jobs need: :mod:`scheduler.tasks`, the job-side modules and the
task modules, each once. The scheduler's side is
:mod:`scheduler.worker.forkserver_link`; they talk over a Unix stream socket pair.

Requests, each answered in order (``marshal`` tuples, length-prefixed; descriptors ride
along with ``SCM_RIGHTS``):

* ``("load", sys_path, [(module, file), ...])``, the first request: take the scheduler's
  ``sys.path``, import the task modules, then set up the signal handling every job
  inherits (:func:`~scheduler.worker.child.job_signals`); answers ``("loaded", {module:
  error})``.
* ``("fork", target, args, refs, kwargs, fd_keys, cgroup)`` with one descriptor per name
  in ``fd_keys``: fork a job process running ``target(*args, **kwargs)`` (``target`` and
  the ``args`` at positions ``refs`` are ``(module, qualname)`` references to module-level
  functions; the received descriptors are passed as ``kwargs[name]``); answers
  ``("forked", pid)`` (the scheduler opens a pidfd of the job itself), or ``("error",
  text, resolvable)``.
* ``("reap", pid)``: reap the exited job; answers ``("reaped", exit_code, cpu_s,
  max_rss_kb)`` (``exit_code`` None if it was not this process's to reap).

The job process is set up exactly as one forked by the scheduler
(:func:`scheduler.worker.child.child_main`): its own session, a child subreaper, the
parent-death signal (now tied to the fork server). The fork server itself gets SIGKILL
from the kernel when the scheduler dies, so every job dies with it; it leaves reaping to
the scheduler's request, so a job's pid and group id stay the job's until the scheduler
has killed what is left in the group.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; part of CPython
import ctypes
import gc
import importlib
import importlib.util
import io
import marshal
import os
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, Final

from scheduler.worker import containment
from scheduler.worker.child import child_main, job_signals

MAX_FDS: Final = 8
"""Most descriptors one request may carry."""
_HEADER: Final = 4
_READ_BYTES: Final = 4096
"""What one read takes: any fork or reap message, and the start of a longer one."""
_FDS_SPACE: Final = socket.CMSG_SPACE(MAX_FDS * 4)

_DIE_WITH_PARENT: Final = (ctypes.c_int(1), ctypes.c_ulong(9), ctypes.c_ulong(0), ctypes.c_ulong(0))
"""prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0): the fork server dies with the scheduler."""


# The wire, shared with the scheduler's side.


def send(sock: socket.socket, message: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send ``message`` (anything :mod:`marshal` takes) with ``fds`` attached."""
    send_encoded(sock, encode(message), fds)


def encode(message: Any) -> bytes:
    """``message`` as it goes on the wire; ``ValueError`` if :mod:`marshal` cannot take it."""
    body = marshal.dumps(message)
    return len(body).to_bytes(_HEADER, "little") + body


def send_encoded(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send a message :func:`encode` made, with ``fds`` attached."""
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """The next message and the descriptors attached to it; None at end of file.

    Each side sends a message only once it has the answer to its last, so one read
    returns at most one message: the whole of any fork or reap. ``OSError`` (the
    descriptors that came along closed) if the stream breaks off inside a message, holds
    one that does not decode, or more than one."""
    data, ancillary, _, _ = sock.recvmsg(_READ_BYTES, _FDS_SPACE)
    fds = _descriptors(ancillary)
    if not data:
        _close(fds)
        return None
    try:
        return _decode(sock, data), fds
    except BaseException:
        _close(fds)
        raise


def _decode(sock: socket.socket, data: bytes) -> Any:
    """The message that starts with ``data``, reading the rest of it from ``sock``."""
    if len(data) < _HEADER:
        data += _exactly(sock, _HEADER - len(data))
    size = int.from_bytes(data[:_HEADER], "little")
    body = data[_HEADER:]
    if len(body) < size:
        body += _exactly(sock, size - len(body))
    elif len(body) > size:
        raise ConnectionError("the fork server link sent a message before its answer")
    try:
        return marshal.loads(body)
    except (ValueError, EOFError, TypeError) as exc:
        raise ConnectionError(
            f"the fork server link sent a message that does not decode: {exc}"
        ) from None


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors passed in ``ancillary`` (what ``recvmsg`` returns beside the data)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(memoryview(data[: len(data) - len(data) % 4]).cast("i"))
    return fds


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionResetError("the fork server link broke off inside a message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# The server.


class ForkServer:
    """Serves one scheduler's requests on ``sock`` until it closes (see the module)."""

    def __init__(self, sock: socket.socket) -> None:
        """Serve on ``sock``; nothing happens until :meth:`serve`."""
        self.sock = sock
        self.pid = os.getpid()
        self.sigmask: set[int] = _signal.pthread_sigmask(_signal.SIG_BLOCK, [])
        # What each job would otherwise open for itself (child_main); its signal
        # handling is set up once the task modules are loaded (_load).
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def serve(self) -> None:
        """Answer requests until the scheduler closes its end."""
        while (request := receive(self.sock)) is not None:
            message, fds = request
            kind = message[0]
            if kind == "fork":
                self._fork(message, fds)
            elif kind == "reap":
                send(self.sock, ("reaped", *_reap(message[1])))
            elif kind == "load":
                send(self.sock, ("loaded", _load(message[1], message[2])))
            else:
                send(self.sock, ("error", f"unknown request {kind!r}", True))

    def _fork(self, message: tuple[Any, ...], fds: list[int]) -> None:
        _, target_ref, args, refs, kwargs, fd_keys, cgroup = message
        try:
            target = _resolve(target_ref)
            args = [_resolve(a) if i in refs else a for i, a in enumerate(args)]
        except Exception as exc:
            _close(fds)
            send(self.sock, ("error", f"{type(exc).__name__}: {exc}", False))
            return
        kwargs.update(zip(fd_keys, fds, strict=True))
        try:
            pid = os.fork()
        except OSError as exc:
            _close(fds)
            send(self.sock, ("error", f"fork: {exc}", True))
            return
        if pid == 0:
            self._child(target, tuple(args), kwargs, cgroup)
        _close(fds)
        # No pidfd: the scheduler opens one itself. The job stays this process's unreaped
        # child until the scheduler asks, so its pid cannot name another process meanwhile.
        send(self.sock, ("forked", pid))

    def _child(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        cgroup: str | None,
    ) -> None:
        """In the forked job: run ``target`` as a job process and exit, never return."""
        code = 1
        try:
            child_main(
                self.pid,
                self.sigmask,
                [self.sock.fileno()],
                None,
                target,
                args,
                kwargs,
                cgroup,
                signals_ready=True,
                devnull=self.devnull,
            )
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:
            traceback.print_exc()
        finally:
            # What multiprocessing does at a child's end: wait for non-daemon threads.
            if (threading := sys.modules.get("threading")) is not None:
                threading._shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    if stream is not None:
                        stream.flush()
                except Exception:
                    pass
            os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    """The exit status a ``SystemExit`` stands for, as multiprocessing has it."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


def _reap(pid: int) -> tuple[int | None, float, int]:
    """Reap ``pid`` (exited: the scheduler saw its pidfd readable); exit code, CPU
    seconds and peak RSS in KiB, or ``(None, 0.0, 0)`` if it is not our child."""
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return None, 0.0, 0
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def _resolve(ref: tuple[str, str]) -> Callable[..., object]:
    """The module-level function ``module.qualname`` (importing the module if needed)."""
    module_name, qualname = ref
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    found: Callable[..., object] = getattr(module, qualname)
    return found


def _load(sys_path: list[str], modules: list[tuple[str, str | None]]) -> dict[str, str]:
    """Take ``sys_path`` and import each ``(module, file)``: by name, or for a top-level
    module the scheduler loaded from a file that its name does not find, from that file.
    Returns the modules that failed, with the error."""
    sys.path[:] = sys_path
    failed = {}
    for name, file in modules:
        try:
            _import(name, file)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    # After the imports: a task module may set handlers as it is imported, and every job
    # must start with a job's (child_main skips setting them up in each).
    job_signals()
    # What is loaded now lives as long as the server: the collector need never look at
    # it again, here or in a job, where each look would copy the pages it touches. What
    # the imports left free goes back to the system: every fork copies fewer pages.
    gc.collect()
    gc.freeze()
    ctypes.CDLL(None).malloc_trim(0)
    return failed


def _import(name: str, file: str | None) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        if file is None or "." in name:
            raise
    else:
        if file is None or getattr(module, "__file__", None) == file or "." in name:
            return
        del sys.modules[name]  # another module of that name: the scheduler's is the file
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def main(fd: int, scheduler_pid: int) -> None:
    """The fork server's entry point: die with the scheduler ``scheduler_pid``, then serve
    the socket ``fd`` until the scheduler closes it."""
    try:
        containment.prctl("PR_SET_PDEATHSIG", _DIE_WITH_PARENT)
    except OSError:
        os._exit(1)  # cannot be tied to the scheduler
    if os.getppid() != scheduler_pid:
        os._exit(1)  # it is gone already
    # Jobs inherit it: a task's print() reaches its log file line by line, not at exit.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    ForkServer(socket.socket(fileno=fd)).serve()


COMMAND: Final = """\
import sys
sys.path.insert(0, sys.argv[3])
if sys.argv[4]:
    import scheduler.worker
    sys.path.append(sys.argv[4])
    scheduler.worker.__path__.insert(0, sys.argv[4] + "/scheduler/worker")
from scheduler.worker.forkserver import main
main(int(sys.argv[1]), int(sys.argv[2]))
"""
"""What ``python -c`` runs to start a fork server (arguments: its socket's descriptor, the
scheduler's pid, the directory the ``scheduler`` package is in, and the directory of the
compiled modules or ``""``). With compiled modules it does what
:func:`scheduler.compiled.activate` does, without importing that module (nor what it
imports: every page of the fork server is copied into each job's page tables)."""
