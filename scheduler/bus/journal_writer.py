"""Where the journal's writes run: a thread that owns the SQLite connection, or inline.

A file journal commits on :class:`ThreadWriter`'s thread, so the fsync of a group commit
never stops the event loop: the loop hands it a write through a queue (no lock is shared;
the queue is the only handoff) and hears back through a
:class:`concurrent.futures.Future`. The bus never forks, so a thread is safe here. An
in-memory journal has no fsync to wait for and one connection that only its own thread
may read, so :class:`InlineWriter` runs each write at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class JournalWriter(Protocol):
    """Runs the journal's write functions one at a time, in the order submitted."""

    def submit(self, write: Callable[[], T]) -> Future[T]:
        """Queue ``write``; the future holds what it returned or raised."""
        ...

    def close(self) -> None:
        """Run every write submitted so far, then stop; later submits fail."""
        ...


def _run(write: Callable[[], T], future: Future[T]) -> None:
    """Run ``write`` and settle ``future`` with its outcome."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(write())
    except BaseException as exc:
        future.set_exception(exc)


class InlineWriter:
    """Runs each write at once on the caller's thread (an in-memory journal)."""

    def __init__(self) -> None:
        self._closed = False

    def submit(self, write: Callable[[], T]) -> Future[T]:
        """Run ``write`` now; the returned future is already settled."""
        if self._closed:
            raise RuntimeError("the journal writer is closed")
        future: Future[T] = Future()
        _run(write, future)
        return future

    def close(self) -> None:
        """Refuse later writes (nothing is ever pending)."""
        self._closed = True


class ThreadWriter:
    """One daemon thread that runs the submitted writes in order."""

    def __init__(self, name: str) -> None:
        """Start the thread, named ``name`` in thread listings."""
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], T]) -> Future[T]:
        """Queue ``write`` behind the writes submitted before it."""
        if self._closed:
            raise RuntimeError("the journal writer is closed")
        future: Future[T] = Future()
        self._queue.put((write, future))
        return future

    def close(self) -> None:
        """Let the thread finish every queued write, then join it. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            _run(*item)
