"""A synchronous producer client, for code without an event loop (Flask, Django, scripts)
and for threads:

    from scheduler.producer.sync import SyncClient

    with SyncClient() as client:                  # SCHEDBUS_URL, the token file...
        job = client.submit(JobPayload(task="add", args=[2, 3]))
        print(job.result(timeout=60))             # 5, or JobFailed

One :class:`SyncClient` runs one :class:`~scheduler.producer.client.ProducerClient` (one
connection, which rides out bus restarts) on one event loop in a background thread of its
own; every method hands its work to that loop and blocks the calling thread until it is
done. Any number of threads may call it at once. It connects on first use (or on
:meth:`SyncClient.connect`) and stops its thread on :meth:`SyncClient.close`.

With no arguments a client is configured as the commands are: the bus from
``SCHEDBUS_URL`` (default ``ws://localhost:8101``), the token from ``SCHEDBUS_TOKEN``,
else the producer's token in the bus's token file (``SCHEDBUS_TOKEN_FILE``, default the
bus's own), the CA file from ``SCHEDBUS_CAFILE``.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from scheduler.producer.client import ProducerClient
from scheduler.producer.errors import BusConnectionLost
from scheduler.producer.handle import IdHandle, Job
from scheduler.producer.settings import client_settings
from scheduler.protocol import (
    CancelReply,
    JobEvent,
    JobList,
    JobPayload,
    Retried,
    SubmitResult,
    Watching,
)
from scheduler.protocol_stats import StatsReply
from scheduler.protocol_types import JobState

__all__ = ["SyncClient", "SyncJob", "default_client", "set_default_client"]

T = TypeVar("T")
_CLOSED = "the client was closed"


class SyncJob(IdHandle):
    """A handle on one job of a :class:`SyncClient`: the blocking twin of
    :class:`~scheduler.producer.handle.Job`, and like it the job's id (a ``str``)."""

    _job: Job
    _client: SyncClient

    def __new__(cls, job: Job, client: SyncClient) -> SyncJob:
        """A handle on ``job``, whose client runs in ``client``'s thread."""
        handle = super().__new__(cls, job.id)
        handle._job = job
        handle._client = client
        return handle

    @property
    def latest(self) -> JobEvent | None:
        """The newest event the client has heard about the job (no request is made)."""
        return self._job.latest

    @property
    def done(self) -> bool:
        """Whether the newest event heard is a final one."""
        return self._job.done

    def wait(self, timeout: float | None = None) -> JobEvent:
        """Block until the job's final event and return it; as
        :meth:`~scheduler.producer.handle.Job.wait` (``TimeoutError`` after ``timeout``)."""
        return self._client._call(lambda: self._job.wait(timeout))

    def result(self, timeout: float | None = None) -> object:
        """Block until the job ends; return what the task returned, or raise
        :class:`~scheduler.producer.handle.JobFailed` as
        :meth:`~scheduler.producer.handle.Job.result` does."""
        return self._client._call(lambda: self._job.result(timeout))

    def cancel(self) -> CancelReply:
        """Ask the bus to cancel the job; the reply says what it did."""
        return self._client._call(self._job.cancel)

    def info(self) -> JobEvent:
        """The job's current state, asked of the bus now."""
        return self._client._call(self._job.info)


class SyncClient:
    """A blocking producer client: one connection on one background event loop thread,
    shared by every thread that calls it (see the module docstring).

    ``url``, ``token`` and ``cafile`` default to the environment and the token file as
    the commands' do; ``token_file`` names another token file. ``name`` and
    ``connect_timeout`` are :class:`~scheduler.producer.client.ProducerClient`'s.
    Reading the token file may raise :class:`~scheduler.auth.TokenFileError`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        cafile: str | None = None,
        name: str | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        settings = client_settings(url, token, token_file, cafile)
        self.url = settings.url
        self._token = settings.token
        self._cafile = settings.cafile
        self._name = name
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: ProducerClient | None = None
        self._closed = False

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def name(self) -> str | None:
        """The name the bus registered the client under (None before it connected)."""
        return None if self._client is None else self._client.name

    def connect(self) -> None:
        """Start the thread and connect, unless done already; every method calls it.

        Raises :class:`~scheduler.producer.errors.BusConnectionLost` if the bus cannot be
        reached within ``connect_timeout`` or the client was closed,
        :class:`~scheduler.connect.RegistrationRefused` if the bus refuses it. A failed
        connect leaves nothing running; the next call tries again.
        """
        with self._lock:
            if self._closed:
                raise BusConnectionLost(_CLOSED)
            if self._client is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name=f"schedbus-client {self.url}", daemon=True
            )
            thread.start()
            client = ProducerClient(
                self.url,
                name=self._name,
                token=self._token,
                connect_timeout=self._connect_timeout,
                cafile=self._cafile,
            )
            try:
                _wait(asyncio.run_coroutine_threadsafe(client.connect(), loop))
            except BaseException:
                _stop(loop, thread)
                raise
            self._loop, self._thread, self._client = loop, thread, client

    def close(self) -> None:
        """Close the connection and stop the thread; calls blocked in other threads (a
        :meth:`SyncJob.result` waiting) raise
        :class:`~scheduler.producer.errors.BusConnectionLost`. Closing twice is harmless."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncClient.close() called from its own event loop thread")
        with self._lock:
            self._closed = True
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = None
        if loop is None or thread is None or client is None:
            return
        _wait(asyncio.run_coroutine_threadsafe(_shut_down(client), loop))
        _stop(loop, thread)

    def submit(
        self,
        payload: JobPayload,
        *,
        delay: float | None = None,
        run_at: float | datetime | None = None,
    ) -> SyncJob:
        """Submit one job; return a handle on it once the bus has journaled it (as
        :meth:`~scheduler.producer.client.ProducerClient.submit`)."""
        job = self._call(lambda: self._connected().submit(payload, delay=delay, run_at=run_at))
        return SyncJob(job, self)

    def submit_many(self, payloads: Sequence[JobPayload]) -> list[SubmitResult]:
        """Submit many jobs in one message; one result per job."""
        return self._call(lambda: self._connected().submit_many(payloads))

    def job(self, job_id: str) -> SyncJob:
        """A handle on job ``job_id``, submitted here or elsewhere (as
        :meth:`~scheduler.producer.client.ProducerClient.job`)."""
        return SyncJob(self._call(lambda: self._connected().job(job_id)), self)

    def cancel(self, job_id: str) -> CancelReply:
        """Ask the bus to cancel ``job_id``; the reply says what it did."""
        return self._call(lambda: self._connected().cancel(job_id))

    def watch(self, job_ids: Sequence[str]) -> Watching:
        """Subscribe to ``job_ids``; the reply holds their current state."""
        return self._call(lambda: self._connected().watch(job_ids))

    def retry(self, job_ids: Sequence[str]) -> Retried:
        """Run final jobs again (full ids): see :meth:`ProducerClient.retry`."""
        return self._call(lambda: self._connected().retry(job_ids))

    def list_jobs(
        self,
        states: Sequence[JobState] | None = None,
        limit: int = 1000,
        *,
        final: bool = False,
        newest_first: bool = False,
        task: str | None = None,
        since: float | None = None,
        prefix: str | None = None,
    ) -> JobList:
        """The status of the jobs the bus tracks (not final), in ``states`` if given:
        the arguments are :meth:`ProducerClient.list_jobs`'s."""
        return self._call(
            lambda: self._connected().list_jobs(
                states,
                limit,
                final=final,
                newest_first=newest_first,
                task=task,
                since=since,
                prefix=prefix,
            )
        )

    def stats(self) -> StatsReply:
        """The bus's and every scheduler's figures now."""
        return self._call(lambda: self._connected().stats())

    def _connected(self) -> ProducerClient:
        client = self._client
        if client is None:
            raise BusConnectionLost(_CLOSED)
        return client

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Connect if needed, run the coroutine ``make`` builds on the client's loop, and
        block until it is done; its result or exception is the call's."""
        self.connect()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            raise BusConnectionLost(_CLOSED)
        if threading.current_thread() is thread:
            raise RuntimeError(
                "SyncClient called from its own event loop thread: use a ProducerClient there"
            )

        async def run() -> T:
            return await make()

        return _wait(asyncio.run_coroutine_threadsafe(run(), loop))


def _wait(future: Future[T]) -> T:
    """The future's result; if the waiting thread is interrupted, the work is cancelled."""
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _shut_down(client: ProducerClient) -> None:
    """Close ``client``, then let the calls it woke (now failing) finish; cancel the rest."""
    await client.close()
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        _, pending = await asyncio.wait(others, timeout=5.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


_default: SyncClient | None = None
_default_lock = threading.Lock()


def default_client() -> SyncClient:
    """The process's shared :class:`SyncClient` (what ``task.submit()`` uses without
    ``client=``), configured from the environment on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SyncClient()
            atexit.register(_default.close)
        return _default


def set_default_client(client: SyncClient | None) -> SyncClient | None:
    """Make ``client`` the one :func:`default_client` returns (None: make a new one from
    the environment on next use); return the previous one, which is left open."""
    global _default
    with _default_lock:
        previous, _default = _default, client
        return previous
