"""Where the journal's writes run: a thread that owns the SQLite connection, or inline.

A file journal commits on :class:`ThreadWriter`'s thread, so the fsync of a group commit
never stops the event loop: the loop hands it a write through a queue (no lock is shared;
the queue is the only handoff), and the write's ``done`` callback, run on that thread,
hands the outcome back (the journal uses ``call_soon_threadsafe``). The bus never forks,
so a thread is safe here. An in-memory journal has no fsync to wait for and one
connection that only its own thread may use, so :class:`InlineWriter` runs each write at
once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class JournalWriter(Protocol):
    """Runs the journal's write functions one at a time, in the order posted."""

    def post(self, write: Callable[[], T], done: Callable[[T], None]) -> None:
        """Queue ``write``; call ``done`` with what it returned, on the writer's thread.
        ``write`` reports failures in what it returns: it must not raise."""
        ...

    def close(self) -> None:
        """Run every write posted so far, then stop; later posts fail."""
        ...


def wait_for(writer: JournalWriter, write: Callable[[], T]) -> T:
    """Run ``write`` on ``writer`` behind every write posted before, wait for it, and
    return what it returned or raise what it raised."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(write())
        except BaseException as exc:
            future.set_exception(exc)

    writer.post(run, _ignore)
    return future.result()


def _ignore(_: object) -> None:
    """A ``done`` for a write whose outcome travels another way."""


class InlineWriter:
    """Runs each write at once on the caller's thread (an in-memory journal)."""

    def __init__(self) -> None:
        self._closed = False

    def post(self, write: Callable[[], T], done: Callable[[T], None]) -> None:
        """Run ``write`` now, then ``done``."""
        if self._closed:
            raise RuntimeError("the journal writer is closed")
        done(write())

    def close(self) -> None:
        """Refuse later writes (nothing is ever pending)."""
        self._closed = True


class ThreadWriter:
    """One daemon thread that runs the posted writes in order."""

    def __init__(self, name: str) -> None:
        """Start the thread, named ``name`` in thread listings."""
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any], None]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def post(self, write: Callable[[], T], done: Callable[[T], None]) -> None:
        """Queue ``write`` behind the writes posted before it."""
        if self._closed:
            raise RuntimeError("the journal writer is closed")
        self._queue.put((write, done))

    def close(self) -> None:
        """Let the thread finish every queued write, then join it. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            write, done = item
            try:
                done(write())
            except Exception:
                # A bug, not a failed commit (those are returned): keep serving the rest.
                logger.exception("journal writer: a write failed")
