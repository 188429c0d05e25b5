"""How the frames ready for one connection in one loop turn are packed into batch frames.

A client that registered with ``batch`` receives what the bus has for it in one loop turn
(replies, assignments, stops, events) as one ``batch`` frame instead of many: one write,
one WebSocket frame and one decode for the lot. A batch is bounded in messages
(:data:`~scheduler.protocol_types.MAX_BATCH_MESSAGES`) and bytes
(:data:`~scheduler.protocol_types.MAX_BATCH_BYTES`); past either a new one starts, and a
message bigger than the byte bound travels alone, as does a lone message
(:func:`scheduler.batch_pack.pack`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from scheduler import batch_pack
from scheduler.batch_pack import Pending as Pending
from scheduler.codec import encode_batch
from scheduler.protocol_types import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES


def pack(
    frames: Sequence[Pending],
    max_messages: int = MAX_BATCH_MESSAGES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[Pending]:
    """Yield ``frames`` (bus messages) in order, packed into as few frames as the bounds
    allow: a run of two or more becomes one batch (its counted bytes summed), a run of
    one stays as it is."""
    return batch_pack.pack(frames, encode_batch, max_messages, max_bytes)
