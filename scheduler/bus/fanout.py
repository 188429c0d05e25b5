"""Who receives which job events: the producers watching a job, and every monitor.

A v2 producer watches the jobs it submits or asks to watch while they may have more
events; a v2 monitor receives every event. :meth:`Fanout.publish` encodes an event once
and hands it to each recipient's gate, never waiting for any of them;
:meth:`Fanout.publish_to_monitors` does so for an event that is about no job (a
schedule's skipped firing).
"""

from __future__ import annotations

import logging

from scheduler.bus.connection import Connection
from scheduler.bus.gate import FrameGate
from scheduler.codec import encode
from scheduler.ids import short_id
from scheduler.protocol import JobEvent
from scheduler.protocol_types import FINAL_EVENTS

# The bus's log lines keep the one logger name its users and tests filter on.
logger = logging.getLogger("scheduler.bus.server")


class Fanout:
    """The subscriptions: each job's watchers, each watcher's jobs, and the monitors."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[Connection]] = {}
        self._watching: dict[Connection, set[str]] = {}
        self._monitors: set[Connection] = set()

    @property
    def monitors(self) -> int:
        """How many v2 monitors receive every event."""
        return len(self._monitors)

    def add_monitor(self, client: Connection) -> None:
        """Send ``client`` every event from now on."""
        self._monitors.add(client)

    def subscribe(self, client: Connection, job_id: str) -> None:
        """Send ``client`` the events of ``job_id`` (only a v2 producer; the caller checks
        that the job may have more)."""
        if client.role == "producer" and client.protocol == 2:
            self._watchers.setdefault(job_id, set()).add(client)
            self._watching.setdefault(client, set()).add(job_id)

    def unsubscribe(self, client: Connection, job_id: str) -> None:
        """Send ``client`` no more events of ``job_id``."""
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(client)
            if not watchers:
                del self._watchers[job_id]
        jobs = self._watching.get(client)
        if jobs is not None:
            jobs.discard(job_id)
            if not jobs:
                del self._watching[client]

    def forget_job(self, job_id: str) -> None:
        """Drop every subscription to ``job_id`` (final or deleted)."""
        for client in self._watchers.pop(job_id, ()):
            jobs = self._watching[client]
            jobs.discard(job_id)
            if not jobs:
                del self._watching[client]

    def leave(self, client: Connection) -> None:
        """Drop every subscription of ``client`` (its connection closed)."""
        for job_id in self._watching.pop(client, set()):
            watchers = self._watchers[job_id]
            watchers.discard(client)
            if not watchers:
                del self._watchers[job_id]
        self._monitors.discard(client)

    def publish(self, event: JobEvent, requester: Connection | None, gate: FrameGate) -> None:
        """Send an event to the job's watchers and every monitor, encoded once; it counts
        against the backlog bound of all but the client whose request caused it."""
        frame = encode(event).encode()
        for client in self._watchers.get(event.id, ()):
            gate.send(client, frame, counted=client is not requester, about=event.id)
        for monitor in self._monitors:
            gate.send(monitor, frame)
        if event.event in FINAL_EVENTS:
            self.forget_job(event.id)
        _log_published(event)

    def publish_to_monitors(self, event: JobEvent, gate: FrameGate) -> None:
        """Send an event that is about no job (a schedule's skipped firing: no producer
        watches it) to every monitor only, encoded once, never waiting for any of them."""
        if self._monitors:
            frame = encode(event).encode()
            for monitor in self._monitors:
                gate.send(monitor, frame)
        _log_published(event)


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
