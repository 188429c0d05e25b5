"""Who receives which job events: the producers watching a job, and every monitor.

A v2 producer watches the jobs it submits or asks to watch while they may have more
events; a v2 monitor receives every event. :meth:`Fanout.publish` encodes an event once
and hands it to each recipient's gate, never waiting for any of them;
:meth:`Fanout.publish_to_monitors` does so for an event that is about no job (a
schedule's skipped firing).

A bus may hold a million queued jobs, nearly all watched by the one producer that
submitted them, so the books are lean: a job's watchers are the connection itself until
a second one watches it (then a set), and a connection's jobs are a list of ids that may
hold stale ones (unsubscribed, forgotten or repeated), compacted once they outnumber the
standing ones twice over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from scheduler.bus.connection import Connection
from scheduler.bus.gate import FrameGate
from scheduler.codec import encode
from scheduler.ids import short_id
from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")

COMPACT_SLACK = 16
"""Stale ids a connection's list may hold beyond as many as it has standing ones."""


class _Watched:
    """The jobs one connection watches: ``ids`` (the standing ones among stale ones) and
    ``live``, how many of them stand."""

    __slots__ = ("ids", "live")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.live = 0


class Fanout:
    """The subscriptions: each job's watchers, each watcher's jobs, and the monitors."""

    def __init__(self) -> None:
        self._watchers: dict[str, Connection | set[Connection]] = {}
        self._watching: dict[Connection, _Watched] = {}
        self._monitors: set[Connection] = set()

    @property
    def monitors(self) -> int:
        """How many v2 monitors receive every event."""
        return len(self._monitors)

    def add_monitor(self, client: Connection) -> None:
        """Send ``client`` every event from now on."""
        self._monitors.add(client)

    def watches(self, client: Connection, job_id: str) -> bool:
        """Whether ``client`` receives the events of ``job_id``."""
        watchers = self._watchers.get(job_id)
        return watchers is client or (isinstance(watchers, set) and client in watchers)

    def subscribe(self, client: Connection, job_id: str) -> None:
        """Send ``client`` the events of ``job_id`` (only a v2 producer; the caller checks
        that the job may have more)."""
        if client.role != "producer" or client.protocol != 2 or self.watches(client, job_id):
            return
        watchers = self._watchers.get(job_id)
        if watchers is None:
            self._watchers[job_id] = client
        elif isinstance(watchers, set):
            watchers.add(client)
        else:
            self._watchers[job_id] = {watchers, client}
        watched = self._watching.get(client)
        if watched is None:
            watched = self._watching[client] = _Watched()
        watched.ids.append(job_id)
        watched.live += 1

    def unsubscribe(self, client: Connection, job_id: str) -> None:
        """Send ``client`` no more events of ``job_id``."""
        if self.watches(client, job_id):
            self._drop_watcher(job_id, client)
            self._dropped(client)

    def forget_job(self, job_id: str) -> None:
        """Drop every subscription to ``job_id`` (final or deleted)."""
        watchers = self._watchers.pop(job_id, None)
        for client in _each(watchers):
            self._dropped(client)

    def leave(self, client: Connection) -> None:
        """Drop every subscription of ``client`` (its connection closed)."""
        watched = self._watching.pop(client, None)
        if watched is not None:
            for job_id in watched.ids:
                if self.watches(client, job_id):
                    self._drop_watcher(job_id, client)
        self._monitors.discard(client)

    def _drop_watcher(self, job_id: str, client: Connection) -> None:
        """``client`` (a watcher of ``job_id``) no longer watches it."""
        watchers = self._watchers[job_id]
        if not isinstance(watchers, set):
            del self._watchers[job_id]
            return
        watchers.discard(client)
        if len(watchers) == 1:
            self._watchers[job_id] = next(iter(watchers))

    def _dropped(self, client: Connection) -> None:
        """One subscription of ``client`` ended: count it, and compact its list of ids
        once the stale ones outnumber the standing ones (amortized: a compaction leaves
        only standing ids)."""
        watched = self._watching[client]
        watched.live -= 1
        if not watched.live:
            del self._watching[client]
        elif len(watched.ids) > 2 * watched.live + COMPACT_SLACK:
            standing = (job_id for job_id in watched.ids if self.watches(client, job_id))
            watched.ids = list(dict.fromkeys(standing))

    def publish(self, event: JobEvent, requester: Connection | None, gate: FrameGate) -> None:
        """Send an event to the job's watchers and every monitor, encoded once; it counts
        against the backlog bound of all but the client whose request caused it."""
        frame = encode(event).encode()
        for client in _each(self._watchers.get(event.id)):
            gate.send(client, frame, counted=client is not requester, about=event.id, event=True)
        for monitor in self._monitors:
            gate.send(monitor, frame, event=True)
        if event.event in FINAL_EVENTS:
            self.forget_job(event.id)
        _log_published(event)

    def publish_to_monitors(self, event: JobEvent, gate: FrameGate) -> None:
        """Send an event that is about no job (a schedule's skipped firing: no producer
        watches it) to every monitor only, encoded once, never waiting for any of them."""
        if self._monitors:
            frame = encode(event).encode()
            for monitor in self._monitors:
                gate.send(monitor, frame, event=True)
        _log_published(event)


def _each(watchers: Connection | set[Connection] | None) -> Iterable[Connection]:
    """The connections of a job's watchers entry."""
    if watchers is None:
        return ()
    return watchers if isinstance(watchers, set) else (watchers,)


def _log_published(event: JobEvent) -> None:
    if not logger.isEnabledFor(logging.DEBUG):
        return
    logger.debug(
        "job %s: %s p%d %s attempt %d",
        short_id(event.id),
        event.event,
        event.priority,
        event.scheduler or "-",
        event.attempt,
    )
