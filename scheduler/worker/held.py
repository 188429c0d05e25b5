"""Held assignments, the scheduler's side: fork a job's process early, run its task on release.

The bus may send an :class:`~scheduler.protocol.Assign` with ``hold`` before it has
journaled the assignment (to a scheduler that registered ``hold``), and the attempt's
:class:`~scheduler.protocol.Release` once it has. Meanwhile the attempt is *unreleased*
(:class:`Unreleased`): if it gets a slot its process is forked at once, which overlaps the
fork with the bus's commit, but the process blocks on a :class:`GoPipe` before its task
runs, and nothing says ``started`` nor counts its timeout until the release. A
:class:`~scheduler.protocol.Stop` (``drop``) instead, or a lost connection, ends it
unstarted and unreported: the bus may never have journaled it.
"""

from __future__ import annotations

import os

from scheduler.worker.lazy_log import lazy_logger

log = lazy_logger(__name__)

Key = tuple[str, int]
"""A job id and attempt."""

_write_ends: set[int] = set()
"""The write ends of the go pipes open in this process."""
_hooked = False
"""Whether :func:`_drop_write_ends` runs in every process forked from this one."""


def _drop_write_ends() -> None:
    """In a process just forked from one that holds go pipes (a job forked by the
    scheduler itself, ``--no-fork-server``): point every write end it inherited at
    /dev/null, so that a held job sees end of file once the scheduler closes its end,
    whatever it forked meanwhile. The numbers stay taken, as in
    :func:`~scheduler.worker.child.release_fds`."""
    if not _write_ends:
        return
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for fd in _write_ends:
        os.dup2(devnull, fd, inheritable=False)
    os.close(devnull)
    _write_ends.clear()


class GoPipe:
    """The pipe a held job process waits on before its task runs.

    Made before the fork: the child gets :attr:`read_fd` (``run_task``'s ``go_fd``,
    :func:`wait_for_go`); the scheduler calls :meth:`forked` right after the fork, then
    :meth:`go` on release, or :meth:`close` to have the process exit unstarted.
    """

    def __init__(self) -> None:
        """Open the pipe; ``OSError`` if it cannot be made."""
        global _hooked
        if not _hooked:
            # Only in a process that makes go pipes: the fork server and the job
            # processes it forks pay nothing for it.
            os.register_at_fork(after_in_child=_drop_write_ends)
            _hooked = True
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        _write_ends.add(self.write_fd)

    def forked(self) -> None:
        """Close the scheduler's copy of the read end: only the job process waits on it."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def go(self) -> None:
        """Let the job process run its task (one byte), then close the write end. A
        process that died meanwhile is not an error here: its end is reported as usual."""
        try:
            os.write(self.write_fd, b"g")
        except OSError as exc:
            log.debug("a held job process is gone before its release: %s", exc)
        self.close()

    def close(self) -> None:
        """Close both ends (idempotent): a job process still waiting sees end of file and
        exits without running its task."""
        self.forked()
        if self.write_fd >= 0:
            _write_ends.discard(self.write_fd)
            os.close(self.write_fd)
            self.write_fd = -1


def wait_for_go(fd: int) -> bool:
    """In the job process: block until the scheduler releases the job (True) or closes
    the pipe without releasing it (False); ``fd`` is closed either way."""
    try:
        # os.read retries by itself when a signal interrupts it (PEP 475).
        return os.read(fd, 1) != b""
    finally:
        os.close(fd)


class Unreleased:
    """The attempts held here awaiting their release, queued or forked.

    An attempt leaves when its release comes, when the bus drops it, or when the
    connection it came on is lost; one that ended meanwhile stays until then, so that a
    lost connection also forgets its report (see :meth:`take_all`).
    """

    def __init__(self) -> None:
        """None yet."""
        self._keys: dict[Key, None] = {}
        """In the order they came."""

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` (job id, attempt) awaits its release."""
        return key in self._keys

    def add(self, key: Key) -> None:
        """``key`` came held: it awaits its release."""
        self._keys[key] = None

    def discard(self, key: Key) -> bool:
        """``key`` is released or dropped; return whether it awaited its release."""
        return self._keys.pop(key, False) is None

    def keys(self) -> list[Key]:
        """Every attempt awaiting its release, oldest first."""
        return list(self._keys)

    def take_all(self) -> list[Key]:
        """Every attempt awaiting its release, oldest first; none awaits any more."""
        keys, self._keys = list(self._keys), {}
        return keys
