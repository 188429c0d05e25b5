"""The scheduler's side of its fork server (:mod:`scheduler.worker.forkserver`): the
link that starts it, forks and reaps jobs through it, and replaces it when it is gone.
:mod:`scheduler.worker.forkserver_launcher` makes the executor's jobs with it.

The link is used from the event loop's thread; each request is answered at once (a fork
or a reap of a process already gone), so it is a blocking round trip with a timeout.
A fork server that is gone (killed, crashed, not answering) is killed, reaped and replaced
at once; each job it held died with it and is reaped as ``lost`` with the reason, which
the executor reports as a failure. A job whose task the fork server cannot import (a task
in ``__main__``) or that it cannot fork even after a restart is forked from the scheduler,
as with ``--no-fork-server``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from scheduler import compiled
from scheduler.policy.closing import exit_text
from scheduler.tasks import TaskRegistry
from scheduler.worker.forkserver import COMMAND, encode, receive, send, send_encoded
from scheduler.worker.orphans import keep_child, release_child
from scheduler.worker.process import ProcessResult

__all__ = ["ForkServerError", "ForkServerLink", "ServerProcess", "Unservable"]

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S: Final = 10.0
"""How long a fork or a reap may take the fork server before it is taken for hung."""
LOAD_TIMEOUT_S: Final = 300.0
"""How long the fork server may take to start and import the task modules."""
STOP_WAIT_S: Final = 5.0
"""How long a closed fork server has to exit before it is killed."""
MAX_FAILED_STARTS: Final = 3
"""Fork servers in a row that die before they have loaded the task modules: then no more
is started, and every job is forked from the scheduler."""
_PACKAGE_ROOT: Final = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def compiled_build() -> str:
    """The directory of the fork server's compiled modules if they match the sources
    (:data:`scheduler.compiled.FORK_SERVER`), else ``""`` (the fork server then runs the
    source; logged with why, unless ``SCHEDBUS_PURE`` asked for it)."""
    dest, reason = compiled.usable(compiled.FORK_SERVER)
    if reason is not None:
        log.info(
            "fork servers run their source, not the compiled modules: %s (scripts/setup or"
            " python -m scheduler.compiled builds them)",
            reason,
        )
    return "" if dest is None else str(dest)


class ForkServerError(OSError):
    """The fork server is gone or did not answer in time."""


class Unservable(Exception):
    """The fork server cannot run this target: fork it from the scheduler instead."""


@dataclass(slots=True)
class ServerProcess:
    """One fork server process and the scheduler's end of its socket."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    build: str
    """The directory of the compiled modules it runs, or ``""`` for the source."""
    loaded: bool = False
    gone: str | None = None
    """Why it is gone (then it is killed and reaped), else None."""


class ForkServerLink:
    """Starts a fork server for the task modules of ``tasks``, forks and reaps jobs
    through it, and replaces it when it is gone. Event loop thread only."""

    def __init__(self, tasks: TaskRegistry, timeout: float = REPLY_TIMEOUT_S) -> None:
        """Start the fork server now (it imports the task modules meanwhile; the first
        fork, or :meth:`ready`, waits for that). ``OSError`` if it cannot be started."""
        self._modules = _modules_of(tasks)
        self._timeout = timeout
        self._unservable: set[tuple[str, str]] = set()
        self._closed = False
        self._failed_starts = 0
        self.restarts = 0
        """How many times a fork server that was gone was replaced."""
        self._server = self._spawn()

    @property
    def pid(self) -> int:
        """The pid of the current fork server."""
        return self._server.proc.pid

    def _spawn(self) -> ServerProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fd = theirs.fileno()
            # A fresh interpreter: it shares no page with this process. Its own session,
            # so a terminal's Ctrl-C reaches the scheduler, which stops the jobs itself.
            # After a fork server died before it was ready, the next run the source: a
            # broken build (a truncated extension dies with SIGBUS) then costs one start.
            build = "" if self._failed_starts else compiled_build()
            argv = [str(fd), str(os.getpid()), _PACKAGE_ROOT, build]
            proc = subprocess.Popen(
                [sys.executable, "-c", COMMAND, *argv],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        keep_child(proc.pid)
        _set_timeout(ours, self._timeout)
        path = [entry for entry in sys.path if isinstance(entry, str)]
        send(ours, ("load", path, self._modules))
        log.debug("fork server pid %d started", proc.pid)
        return ServerProcess(proc, ours, build)

    async def ready(self) -> None:
        """Wait, without blocking the loop, until the fork server has imported the task
        modules (logging those it could not import); nothing if it is gone."""
        server = self._server
        if server.loaded or server.gone is not None:
            return
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = server.sock.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(readable, LOAD_TIMEOUT_S)
        except TimeoutError:
            pass  # _loaded's own timeout says it
        finally:
            loop.remove_reader(fd)
        try:
            self._loaded(server)
        except ForkServerError:
            pass  # replaced; the next fork waits for the new one

    def _loaded(self, server: ServerProcess) -> None:
        if server.loaded:
            return
        _set_timeout(server.sock, LOAD_TIMEOUT_S)
        try:
            message = self._answer(server)
        finally:
            if server.gone is None:
                _set_timeout(server.sock, self._timeout)
        server.loaded = True
        self._failed_starts = 0
        for module, error in message[1].items():
            log.warning(
                "the fork server cannot import %s (%s): its jobs are forked from the scheduler",
                module,
                error,
            )

    def fork(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        cgroup: str | None,
    ) -> tuple[ServerProcess, int, int]:
        """Have the fork server fork a job process running ``target(*args, **kwargs)``
        (the ``*_fd`` keyword arguments are descriptors: sent along); return the server,
        the job's pid and a pidfd of it (the caller's to close).

        Raises :class:`Unservable` if the fork server cannot resolve the target or a
        function among ``args``, :class:`ForkServerError` if it is gone twice over (once
        replaced), ``OSError`` if the fork itself failed.
        """
        request, fds, refs = self._request(target, args, kwargs, cgroup)
        for tries_left in (1, 0):
            server = self._current()
            try:
                self._loaded(server)
                send_encoded(server.sock, request, fds)
                message = self._answer(server)
            except OSError as exc:
                self._gone(server, _timed_out(exc))
                if tries_left:
                    continue
                raise ForkServerError(f"the fork server is gone: {server.gone}") from None
            if message[0] == "forked":
                pid = message[1]
                pidfd = self._pidfd(server, pid)
                if pidfd < 0:  # it died meanwhile: the job died with it
                    if tries_left:
                        continue
                    raise ForkServerError(f"the fork server is gone: {server.gone}")
                return server, pid, pidfd
            if not message[2]:
                self._unservable.update(refs)
                raise Unservable(message[1])
            raise OSError(message[1])
        raise AssertionError("unreachable")

    def _pidfd(self, server: ServerProcess, pid: int) -> int:
        """A pidfd of ``server``'s job ``pid`` that was just forked; -1 if ``server`` is
        gone by now (it is then replaced). A job is its fork server's unreaped child until
        :meth:`reap`, so while the server lives, ``pid`` names the job, exited or not;
        only once it is gone could another process have reaped the job and the pid have
        been used again. ``OSError`` if no pidfd can be opened (the job is then killed and
        reaped)."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)
            self.reap(server, pid)
            raise
        if _has_exited(server.proc.pid):
            os.close(pidfd)
            self._gone(server, "died")
            return -1
        return pidfd

    def reap(self, server: ServerProcess, pid: int) -> ProcessResult:
        """Have ``server`` reap its exited job ``pid``: the result with its exit code,
        CPU time and peak RSS (outcome and wall time yet to be filled in). If that fork
        server is gone, the job died with it: ``lost`` says so."""
        if server.gone is None:
            try:
                send(server.sock, ("reap", pid))
                message = self._answer(server)
                return ProcessResult(message[1], "exited", 0.0, message[2], message[3])
            except OSError as exc:
                self._gone(server, _timed_out(exc))
        # It may have been re-parented to this process (a subreaper): reap it here then.
        exit_code, cpu_s, max_rss_kb = _reap_if_ours(pid)
        lost = f"the fork server (pid {server.proc.pid}) {server.gone}; the job died with it"
        return ProcessResult(exit_code, "exited", 0.0, cpu_s, max_rss_kb, lost)

    def close(self) -> None:
        """Close the link: the fork server exits (its jobs, if any, die with it)."""
        self._closed = True
        server = self._server
        if server.gone is not None:
            return
        server.sock.close()
        try:
            server.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
        server.gone = "was closed"
        release_child(server.proc.pid)

    def _current(self) -> ServerProcess:
        if self._server.gone is not None:
            self._replace()
        if self._server.gone is not None:
            raise ForkServerError(f"no fork server: the last one {self._server.gone}")
        return self._server

    def _answer(self, server: ServerProcess) -> Any:
        """The fork server's next message; ``ForkServerError`` (it is then replaced) if
        it closed its end or did not answer in time."""
        try:
            answer = receive(server.sock)
        except OSError as exc:
            self._gone(server, _timed_out(exc))
            raise ForkServerError(f"the fork server {server.gone}") from None
        if answer is None:
            self._gone(server, "closed its socket")
            raise ForkServerError(f"the fork server {server.gone}")
        message, fds = answer
        for fd in fds:  # it sends none
            os.close(fd)
        return message

    def _gone(self, server: ServerProcess, why: str | OSError) -> None:
        """Reap ``server`` (killing it if it still runs), note why it is gone, and
        replace it if it is the current one."""
        if server.gone is not None:
            return
        server.sock.close()
        try:
            # Its socket closes as it exits: give it a moment to be reapable.
            code = server.proc.wait(0 if isinstance(why, TimeoutError) else 1.0)
            how = f"died ({exit_text(code)})"
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            how = f"{why}, and was killed"
        release_child(server.proc.pid)
        server.gone = how
        log.error("the fork server (pid %d) %s; a new one starts", server.proc.pid, how)
        if server is self._server:
            self._replace()

    def _replace(self) -> None:
        """Start a new fork server unless closed or too many in a row failed to start."""
        if not self._server.loaded:
            self._failed_starts += 1
            if self._server.build:
                log.warning(
                    "the fork server on the compiled modules in %s died before it was ready:"
                    " the next one runs the source",
                    self._server.build,
                )
        if self._failed_starts == MAX_FAILED_STARTS:
            log.error(
                "%d fork servers in a row died before they were ready: jobs are forked from "
                "the scheduler from now on",
                MAX_FAILED_STARTS,
            )
        if self._closed or self._failed_starts >= MAX_FAILED_STARTS:
            return
        try:
            server = self._spawn()
        except OSError as exc:
            log.error("cannot start a fork server: %s", exc)
            return
        self.restarts += 1
        self._server = server

    def _request(
        self,
        target: Callable[..., object],
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
        cgroup: str | None,
    ) -> tuple[bytes, list[int], list[tuple[str, str]]]:
        """The fork request for this job, encoded for the wire, the descriptors it carries
        and the functions it names; ``Unservable`` if a function is not a module-level one
        the fork server can import, or a value does not travel."""
        positions = [i for i, arg in enumerate(args) if callable(arg)]
        functions = [_ref(target), *(_ref(args[i]) for i in positions)]  # type: ignore[arg-type]
        for ref in functions:
            if ref in self._unservable:
                raise Unservable(f"the fork server cannot import {ref[0]}.{ref[1]}")
        sent_args = list(args)
        for i, ref in zip(positions, functions[1:], strict=True):
            sent_args[i] = ref
        fd_keys = [k for k, v in kwargs.items() if k.endswith("_fd") and isinstance(v, int)]
        fd_keys = [k for k in fd_keys if kwargs[k] >= 0]  # type: ignore[operator]
        plain = {k: v for k, v in kwargs.items() if k not in fd_keys}
        request = ("fork", functions[0], sent_args, positions, plain, fd_keys, cgroup)
        try:
            encoded = encode(request)
        except ValueError as exc:
            raise Unservable(f"the job's arguments do not travel: {exc}") from None
        return encoded, [kwargs[k] for k in fd_keys], functions  # type: ignore[misc]


def _ref(function: Callable[..., object]) -> tuple[str, str]:
    """``(module, qualname)`` of a module-level function; ``Unservable`` for another."""
    module = getattr(function, "__module__", None) or ""
    qualname = getattr(function, "__qualname__", None) or ""
    if module == "__main__" or getattr(sys.modules.get(module), qualname, None) is not function:
        raise Unservable(f"{function!r} is not a module-level function of an importable module")
    return module, qualname


def _modules_of(tasks: TaskRegistry) -> list[tuple[str, str | None]]:
    """The modules the fork server preloads: :mod:`scheduler.tasks` and those of the tasks,
    each with the file it was loaded from."""
    modules: dict[str, str | None] = {"scheduler.tasks": None}
    for name in tasks.names:
        module = getattr(tasks.get(name), "__module__", None)
        if module and module != "__main__" and module not in modules:
            modules[module] = getattr(sys.modules.get(module), "__file__", None)
    return list(modules.items())


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    """Have every read and write on the blocking ``sock`` fail after ``seconds``.

    Kernel timeouts rather than ``sock.settimeout``, which polls before every read and
    write: four system calls more per job. A read or write past it raises
    ``BlockingIOError`` (see :func:`_timed_out`)."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _timed_out(exc: OSError) -> OSError:
    """``exc``, or a ``TimeoutError`` if it is a kernel timeout (:func:`_set_timeout`)."""
    return TimeoutError("timed out") if isinstance(exc, BlockingIOError) else exc


def _has_exited(pid: int) -> bool:
    """Whether this process's child ``pid`` has exited (it is left to be reaped)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _reap_if_ours(pid: int) -> tuple[int | None, float, int]:
    """Reap ``pid`` if it is an exited child of this process; else ``(None, 0.0, 0)``."""
    try:
        reaped, status, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return None, 0.0, 0
    if reaped == 0:
        return None, 0.0, 0
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, usage.ru_maxrss
