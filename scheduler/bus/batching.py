"""How the frames ready for one connection in one loop turn are packed into batch frames.

A client that registered with ``batch`` receives what the bus has for it in one loop turn
(replies, assignments, stops, events) as one ``batch`` frame instead of many: one write,
one WebSocket frame and one decode for the lot. A batch is bounded in messages
(:data:`~scheduler.protocol_types.MAX_BATCH_MESSAGES`) and bytes
(:data:`~scheduler.protocol_types.MAX_BATCH_BYTES`); past either a new one starts, and a
message bigger than the byte bound travels alone, as does a lone message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from scheduler.codec import encode_batch
from scheduler.protocol_types import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES

Pending = tuple[bytes, int]
"""A frame and how many of its bytes count against its client's backlog bound."""

_OVERHEAD = len(encode_batch([]))
"""Bytes a batch adds around its messages (and one comma between two)."""


def pack(
    frames: Sequence[Pending],
    max_messages: int = MAX_BATCH_MESSAGES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[Pending]:
    """Yield ``frames`` in order, packed into as few frames as the bounds allow: a run of
    two or more becomes one batch (its counted bytes summed), a run of one stays as it is."""
    run: list[bytes] = []
    size = counted = 0
    for frame, weight in frames:
        if run and (len(run) >= max_messages or size + 1 + len(frame) > max_bytes):
            yield _joined(run, counted)
            run, size, counted = [], 0, 0
        run.append(frame)
        size += len(frame) + (_OVERHEAD if len(run) == 1 else 1)
        counted += weight
    if run:
        yield _joined(run, counted)


def _joined(run: list[bytes], counted: int) -> Pending:
    return (run[0] if len(run) == 1 else encode_batch(run)), counted
