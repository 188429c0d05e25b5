"""The frame the oldest reports of a scheduler's outbox go out in.

To a bus whose ``registered`` said ``batch``, the reports waiting when the writer runs
travel as one :class:`~scheduler.protocol_batch.ClientBatch` frame, bounded like the bus's own
batches (:data:`~scheduler.protocol_types.MAX_BATCH_MESSAGES` messages,
:data:`~scheduler.protocol_types.MAX_BATCH_BYTES` bytes; a bigger report travels alone);
a lone report, and every report to an older bus, travels as a plain frame.
"""

from __future__ import annotations

from typing import Final

from scheduler import codec
from scheduler.protocol import Report
from scheduler.protocol_types import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES
from scheduler.worker.report_queue import ReportQueue

_OVERHEAD: Final = len(codec.encode_client_batch([]))
"""Bytes a batch adds around its messages."""


def next_frame(
    outbox: ReportQueue,
    batching: bool,
    max_messages: int = MAX_BATCH_MESSAGES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> tuple[list[Report], bytes]:
    """Remove the oldest reports of ``outbox`` that go out in the next frame (at least
    one: ``IndexError`` if it is empty) and return them, in order, with that frame."""
    reports = [outbox.popleft()]
    frames = [codec.encode_bytes(reports[0])]
    if batching:
        size = _OVERHEAD + len(frames[0])
        while outbox and len(reports) < max_messages:
            frame = codec.encode_bytes(outbox.first())
            size += 1 + len(frame)
            if size > max_bytes:
                break
            reports.append(outbox.popleft())
            frames.append(frame)
    return reports, frames[0] if len(frames) == 1 else codec.encode_client_batch(frames)
