"""How frames ready in one loop turn are packed into as few batch frames as the bounds
allow, for either direction (the bus's ``batch``, a client's ``batch``).

A batch is bounded in messages (:data:`~scheduler.protocol_types.MAX_BATCH_MESSAGES`) and
bytes (:data:`~scheduler.protocol_types.MAX_BATCH_BYTES`); past either a new one starts,
and a message bigger than the byte bound travels alone, as does a lone message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from scheduler.protocol_types import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES

Pending = tuple[bytes, int]
"""A frame and a weight (how many of its bytes count against some bound) summed per batch."""
Join = Callable[[Sequence[bytes]], bytes]
"""Makes one batch frame of encoded messages."""


def pack(
    frames: Sequence[Pending],
    join: Join,
    max_messages: int = MAX_BATCH_MESSAGES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[Pending]:
    """Yield ``frames`` in order, packed into as few frames as the bounds allow: a run of
    two or more becomes one batch made by ``join`` (its weights summed), a run of one
    stays as it is."""
    overhead = len(join([]))
    run: list[bytes] = []
    size = weight = 0
    for frame, counted in frames:
        if run and (len(run) >= max_messages or size + 1 + len(frame) > max_bytes):
            yield (run[0] if len(run) == 1 else join(run)), weight
            run, size, weight = [], 0, 0
        run.append(frame)
        size += len(frame) + (overhead if len(run) == 1 else 1)
        weight += counted
    if run:
        yield (run[0] if len(run) == 1 else join(run)), weight
