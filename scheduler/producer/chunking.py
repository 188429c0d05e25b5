"""Cutting a producer's list requests into requests the bus accepts, and the error for
one that cannot be sent.

The bus closes a connection whose frame is over
:data:`~scheduler.protocol_types.MAX_FRAME_BYTES` with code 1009, and the same frame sent
again is refused again. So the producer library never sends such a frame:

* a ``submit_many`` too long for one frame goes as several, cut at the frame bound, its
  jobs put first in an order where each comes after the batch's jobs it depends on
  (:func:`~scheduler.policy.dispatch.dependencies.batch_order`), so that a job's
  dependencies are known to the bus when its part arrives; one that fits stays one
  request (one journal transaction);
* ``watch`` and ``retry`` go as requests of at most :data:`MAX_IDS_PER_REQUEST` ids each
  (their replies hold each job's whole status, arguments included);
* a single message that cannot fit (a job whose arguments pass the bound) fails before it
  is sent with :class:`FrameTooBig`, naming its size and the bound.

Every part is asked at once (pipelined on the one connection); the caller gets the
replies in the order of its list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec

from scheduler import codec
from scheduler.policy.dispatch.dependencies import batch_order
from scheduler.producer.errors import SubmitError
from scheduler.protocol import (
    BusMessage,
    ClientMessage,
    Error,
    JobPayload,
    Retried,
    SubmitMany,
    SubmitResult,
    SubmittedMany,
    Watch,
    Watching,
)
from scheduler.protocol_queries import Retry
from scheduler.protocol_types import MAX_BULK, MAX_FRAME_BYTES, MAX_SAFE_INT

MAX_IDS_PER_REQUEST: Final = 1000
"""Most ids one ``watch`` or ``retry`` request carries: its reply holds each job's status,
arguments and result included, so a long list is asked in parts whose replies stay
frames of modest size (and the bus encodes no single huge one)."""

LONGEST_REF: Final = -MAX_SAFE_INT
"""The ``ref`` that encodes longest: a part's size is measured with it."""

Builder = Callable[[int], ClientMessage]
"""Makes a request given its ``ref``."""
Ask = Callable[[Builder], Awaitable[BusMessage]]
"""Sends one request and waits for its reply (raising what refuses it)."""


class FrameTooBig(SubmitError):
    """A request cannot travel: its frame is over the bus's bound, or the connection it was
    sent on was closed because a frame was too big (code 1009) and sending it again
    would meet the same refusal. The message names the size and the bound."""

    def __init__(self, message: str, field: str | None = None) -> None:
        """The error with ``message``, blaming ``field`` if given."""
        super().__init__(Error(message=message, field=field))


def frame_size(message: ClientMessage) -> int:
    """The bytes of ``message``'s frame (UTF-8 JSON, as sent)."""
    return len(codec.encode_bytes(message))


def encoded_frame(message: ClientMessage, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """``message``'s frame; :class:`FrameTooBig` if it is over ``max_bytes``."""
    frame = codec.encode_bytes(message)
    size = len(frame)
    if size > max_bytes:
        kind = type(message).__struct_config__.tag
        raise FrameTooBig(
            f"a {kind} request of {size} bytes is over the bus's frame bound of "
            f"{max_bytes} bytes (it would close the connection with 1009)"
        )
    return frame


def spans(
    sizes: Sequence[int],
    overhead: int,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    max_items: int | None = None,
    what: str = "item",
) -> list[slice]:
    """Consecutive slices of items, each making a request of ``overhead`` bytes plus its
    items' ``sizes`` (and a comma between two) of at most ``max_bytes``, and of at most
    ``max_items`` items. Raises :class:`FrameTooBig` naming the first ``what`` that does
    not fit even alone. No items: one empty slice (the request still goes out)."""
    parts: list[slice] = []
    start, used = 0, overhead
    for index, size in enumerate(sizes):
        if overhead + size > max_bytes:
            raise FrameTooBig(
                f"{what} {index} encodes to {size} bytes: a request carrying it is over "
                f"the bus's frame bound of {max_bytes} bytes"
            )
        full = max_items is not None and index - start >= max_items
        if index > start and (full or used + 1 + size > max_bytes):
            parts.append(slice(start, index))
            start, used = index, overhead
        used += size + (1 if index > start else 0)
    parts.append(slice(start, len(sizes)))
    return parts


def submit_order(payloads: Sequence[JobPayload]) -> list[int]:
    """The order in which to send a batch cut in parts: each job after the batch's jobs it
    depends on, else in batch order; jobs on a dependency cycle last, in batch order (the
    bus refuses them whichever part they travel in)."""
    order, _ = batch_order(payloads)
    placed = set(order)
    return order + [i for i in range(len(payloads)) if i not in placed]


def id_sizes(ids: Sequence[str]) -> list[int]:
    """The encoded size of each id (a JSON string; a :class:`~scheduler.producer.handle.Job`
    handle is its id)."""
    return [len(codec.encode_value(job_id)) for job_id in ids]


def id_parts(
    ids: Sequence[str], empty: ClientMessage, max_items: int = MAX_IDS_PER_REQUEST
) -> list[slice]:
    """Slices of ``ids`` of at most ``max_items``, each fitting one frame of the request
    ``empty`` is with no ids (:func:`spans`)."""
    overhead = frame_size(empty)
    return spans(id_sizes(ids), overhead, max_items=max_items, what="id")


async def ask_all(ask: Ask, builders: Sequence[Builder]) -> list[BusMessage]:
    """Send every request at once and return the replies in order; the first that fails
    raises (after all are done, so that no failure goes unretrieved)."""
    replies = await asyncio.gather(*(ask(build) for build in builders), return_exceptions=True)
    answered: list[BusMessage] = []
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
        answered.append(reply)
    return answered


async def submit_in_parts(ask: Ask, payloads: Sequence[JobPayload]) -> list[SubmitResult]:
    """Submit ``payloads`` (ids set) as one ``submit_many``, or as several if one frame
    cannot hold them (in :func:`submit_order`); one result per payload, in their order.
    Raises :class:`FrameTooBig` for a job too big for any frame, before sending any."""
    raws = [codec.encode_value(p) for p in payloads]
    overhead = frame_size(SubmitMany(jobs=[], ref=LONGEST_REF))
    sizes = [len(raw) for raw in raws]
    parts = spans(sizes, overhead, max_items=MAX_BULK, what="job")
    order = list(range(len(raws))) if len(parts) == 1 else submit_order(payloads)
    if len(parts) > 1:
        parts = spans([sizes[i] for i in order], overhead, max_items=MAX_BULK, what="job")
    ordered = [msgspec.Raw(raws[i]) for i in order]
    replies = await ask_all(ask, [_submit_part(ordered[part]) for part in parts])
    results: list[SubmitResult | None] = [None] * len(raws)
    sent = (
        result for reply in replies if isinstance(reply, SubmittedMany) for result in reply.results
    )
    for index, result in zip(order, sent, strict=True):
        results[index] = result
    return [result for result in results if result is not None]


def _submit_part(jobs: list[msgspec.Raw]) -> Builder:
    return lambda ref: SubmitMany(jobs=jobs, ref=ref)


async def watch_in_parts(ask: Ask, ids: Sequence[str]) -> Watching:
    """Watch ``ids`` in requests of at most :data:`MAX_IDS_PER_REQUEST`; one reply made
    of theirs, in order."""
    replies = await _ids_in_parts(ask, ids, lambda part, ref: Watch(ids=part, ref=ref))
    watching = [reply for reply in replies if isinstance(reply, Watching)]
    return Watching(
        jobs=[event for reply in watching for event in reply.jobs],
        unknown=[job_id for reply in watching for job_id in reply.unknown],
    )


async def retry_in_parts(ask: Ask, ids: Sequence[str]) -> Retried:
    """Retry ``ids`` in requests of at most :data:`MAX_IDS_PER_REQUEST`; one reply made of
    theirs, in order."""
    replies = await _ids_in_parts(ask, ids, lambda part, ref: Retry(ids=part, ref=ref))
    retried = [reply for reply in replies if isinstance(reply, Retried)]
    return Retried(
        jobs=[event for reply in retried for event in reply.jobs],
        errors={job_id: why for reply in retried for job_id, why in reply.errors.items()},
    )


IdsBuilder = Callable[[list[str], int], ClientMessage]
"""Makes a request for some ids given its ``ref``."""


async def _ids_in_parts(ask: Ask, ids: Sequence[str], build: IdsBuilder) -> list[BusMessage]:
    """Ask for ``ids`` in the parts :func:`id_parts` cuts; the replies, in order."""
    parts = id_parts(ids, build([], LONGEST_REF))
    return await ask_all(ask, [_part(build, list(ids[part])) for part in parts])


def _part(build: IdsBuilder, ids: list[str]) -> Builder:
    return lambda ref: build(ids, ref)
