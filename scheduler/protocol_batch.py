"""Batch frames: several protocol messages in one WebSocket frame, either way.

The bus sends a client that registered with ``batch`` the messages of one loop turn as a
:class:`Batch`; a client whose ``registered`` said ``batch`` may send a
:class:`ClientBatch`. Each message inside is kept as its raw JSON, so one that does not
decode costs only itself (:mod:`scheduler.codec`).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from scheduler.protocol import BusMessage, ClientMessage
from scheduler.protocol_types import MAX_BATCH_MESSAGES


class ClientBatch(msgspec.Struct, frozen=True, tag_field="cmd", tag="batch"):
    """Several client messages in one frame, in order, for a bus whose
    :class:`~scheduler.protocol.Registered` said ``batch``. Each is kept as its raw JSON
    and handled as if it had come alone (same checks, same error reply), so that one that
    is refused costs only itself; a batch never holds a batch or a ``register``."""

    messages: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH_MESSAGES)]


ClientFrame = ClientMessage | ClientBatch
"""What one frame from a client holds: a message, or (to a bus that accepts them) a batch."""


class Batch(msgspec.Struct, frozen=True, tag_field="type", tag="batch"):
    """Several bus messages in one frame, in the order they were sent, for a client that
    registered with ``batch``. Each message is kept as its raw JSON, so that one that does
    not decode costs only itself (:func:`scheduler.codec.decode_bus_frame`); a batch never
    holds a batch."""

    messages: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_BATCH_MESSAGES)]


BusFrame = BusMessage | Batch
"""What one frame from the bus holds: a message, or (to a client that asked) a batch."""
