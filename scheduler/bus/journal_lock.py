"""The lock that keeps a second bus off a journal file: an exclusive ``flock``.

The lock file is named after the journal's real path (symlinks resolved), so every path
that leads to one journal leads to one lock; a journal with more than one hard link is
refused, as its other names would lead to other locks (and SQLite would keep another
write-ahead log for each name).
"""

from __future__ import annotations

import fcntl
import os

from scheduler.bus.journal_schema import JournalError


def lock_path(path: str) -> str:
    """The lock file that keeps a second bus off journal ``path``: ``REAL.lock``, where
    ``REAL`` is ``path`` with its symlinks resolved."""
    return f"{os.path.realpath(path)}.lock"


def take_lock(name: str) -> int:
    """Take the journal's lock (an exclusive ``flock`` on its :func:`lock_path` holding
    our pid) and return its descriptor; raise :class:`JournalError` naming the holder's
    pid, or the hard links of a journal that has several."""
    _refuse_hard_links(name)
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


def _refuse_hard_links(name: str) -> None:
    """Raise :class:`JournalError` if journal ``name`` exists with more than one hard link."""
    try:
        links = os.stat(name).st_nlink
    except OSError:
        return  # a new journal, or one SQLite will fail to open with its own message
    if links > 1:
        raise JournalError(
            f"journal {name} has {links} hard links: a second bus could open it under"
            " another name; remove the other links (or copy the file)"
        )
