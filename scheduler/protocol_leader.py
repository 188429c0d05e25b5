"""The message a bus that does not lead sends to a client that connects to it.

Several buses can share one journal (:mod:`scheduler.bus.leadership`); only the leader
serves clients. Any other answers a v2 ``register`` with :class:`NotLeader`, naming the
leader's URL when it knows it, and closes the connection: the client
(:class:`scheduler.connect.Connector`) tries that URL next. A v1 client, or a v2 client
from before this message, gets an ``error`` on the field :data:`LEADER_FIELD`, which it
already understands. Decoding validates; no I/O.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from scheduler.protocol_types import MAX_NAME_LEN

LeaderUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN)]
"""A bus's advertised URL (``ws://host:port`` or ``wss://...``)."""


class NotLeader(
    msgspec.Struct, frozen=True, tag_field="type", tag="not_leader", omit_defaults=True
):
    """This bus does not lead: ``leader`` is the URL of the one that does (None while
    none is known, e.g. during an election); ``message`` says so for a person."""

    message: str
    leader: LeaderUrl | None = None


LEADER_FIELD = "leader"
"""The ``field`` of the :class:`~scheduler.protocol.Error` that carries a refusal."""
