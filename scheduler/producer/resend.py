"""What a producer sends again on a new connection, and what it must not.

On each connection the client re-watches the jobs it still waits for, in parts
(:meth:`Resender.rewatch`), and sends again every request not yet answered. When the
connection ends, :meth:`Resender.settle` drops that connection's re-watches (the next
connection makes its own) and, if the connection was closed because a frame was too big
(code 1009, :func:`~scheduler.connect.closed_too_big`), keeps the client from asking the
same again for ever:

* a request that may have caused it (one whose reply lists jobs: ``submit_many``,
  ``watch``, ``list_jobs``, ``retry``; or one whose own frame is long) fails with
  :class:`~scheduler.producer.chunking.FrameTooBig` naming the bound, instead of being
  sent again; the others are sent again as usual;
* the re-watches go in parts half as long from then on; a re-watch of one job whose
  status alone is refused gives that job up (logged; its handles fail naming why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol, TypeVar

from websockets.asyncio.client import ClientConnection

from scheduler.connect import closed_too_big
from scheduler.producer.chunking import (
    LONGEST_REF,
    MAX_IDS_PER_REQUEST,
    FrameTooBig,
    frame_size,
    id_parts,
)
from scheduler.producer.waiters import EventWaiters
from scheduler.protocol import ClientMessage, SubmitMany, Watch
from scheduler.protocol_queries import ListJobs, Retry
from scheduler.protocol_types import MAX_BATCH_BYTES

log = logging.getLogger(__name__)

LISTING = (SubmitMany, Watch, ListJobs, Retry)
"""Requests whose reply lists jobs, so may be long."""


class Pending(Protocol):
    """A request sent and not yet answered."""

    message: ClientMessage
    future: asyncio.Future[Any]


P = TypeVar("P", bound=Pending)


class Resender:
    """Re-watches a producer's unfinished jobs on each connection, in parts of at most
    ``ids_per_watch`` ids, and settles what a connection leaves unanswered."""

    def __init__(self, ids_per_watch: int = MAX_IDS_PER_REQUEST) -> None:
        """Parts of ``ids_per_watch`` ids until a connection closes on a frame too big."""
        self.ids_per_watch = ids_per_watch
        self._rewatches: dict[int, list[str]] = {}

    def rewatch(self, unfinished: set[str], refs: Iterator[int]) -> dict[int, Watch]:
        """The ``watch`` requests for ``unfinished`` on a new connection (none if empty),
        by their refs (taken from ``refs``); remembered until :meth:`settle`."""
        ids = sorted(unfinished)
        empty = Watch(ids=[], ref=LONGEST_REF)
        parts = id_parts(ids, empty, self.ids_per_watch) if ids else []
        watches = {ref: Watch(ids=ids[part], ref=ref) for part in parts for ref in [next(refs)]}
        self._rewatches = {ref: watch.ids for ref, watch in watches.items()}
        return watches

    def settle(
        self,
        ws: ClientConnection,
        requests: MutableMapping[int, P],
        unfinished: set[str],
        waiters: EventWaiters,
    ) -> None:
        """After the connection ``ws`` ended: drop its unanswered re-watches from
        ``requests``; if it was closed on a frame too big, fail the requests that may have
        caused it and shorten the re-watches (see the module's doc)."""
        dropped: list[list[str]] = []
        for ref, ids in self._rewatches.items():
            request = requests.pop(ref, None)
            if request is not None and not request.future.done():
                request.future.cancel()
                dropped.append(ids)
        self._rewatches = {}
        why = closed_too_big(ws)
        if why is None:
            return
        log.error("the connection to the bus was closed: %s", why)
        self._shorten(dropped, why, unfinished, waiters)
        for ref, request in list(requests.items()):
            if _may_be_too_big(request.message) and not request.future.done():
                del requests[ref]
                request.future.set_exception(FrameTooBig(_refusal(request.message, why)))

    def _shorten(
        self, dropped: list[list[str]], why: str, unfinished: set[str], waiters: EventWaiters
    ) -> None:
        """Halve the re-watch parts if some were unanswered; give up the job of a
        one-job part (its status alone is too big to be sent)."""
        if not dropped:
            return
        if self.ids_per_watch > 1:
            self.ids_per_watch //= 2
            return
        for job_id in (job_id for ids in dropped for job_id in ids):
            log.error("giving up job %s: its status cannot reach this client: %s", job_id, why)
            unfinished.discard(job_id)
            waiters.give_up(job_id, f"its status cannot reach this client: {why}")


def _may_be_too_big(message: ClientMessage) -> bool:
    """Whether ``message`` or its reply may be the frame refused as too big."""
    return isinstance(message, LISTING) or frame_size(message) > MAX_BATCH_BYTES


def _refusal(message: ClientMessage, why: str) -> str:
    kind = type(message).__struct_config__.tag
    return (
        f"{why}; this {kind} request is not sent again (it would be refused the same way): "
        "ask for fewer jobs at a time"
    )
