"""The lock that keeps a second bus off a journal file: an exclusive ``flock``."""

from __future__ import annotations

import fcntl
import os

from scheduler.bus.journal_schema import JournalError


def lock_path(path: str) -> str:
    """The lock file that keeps a second bus off journal ``path``: ``PATH.lock``."""
    return f"{path}.lock"


def take_lock(name: str) -> int:
    """Take the journal's lock (an exclusive ``flock`` on ``NAME.lock`` holding our pid)
    and return its descriptor; raise :class:`JournalError` naming the holder's pid."""
    path = lock_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(f"cannot create the lock file {path} of journal {name}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JournalError(
            f"journal {name} is in use by another bus (pid {holder}, lock {path});"
            " stop it or give this bus another --db"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
