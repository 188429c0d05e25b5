"""The ``not_leader`` message (scheduler.protocol_leader): round trip and rejections."""

from __future__ import annotations

import pytest

from scheduler import codec
from scheduler.protocol_leader import NotLeader


@pytest.mark.parametrize("leader", ["ws://b:8101", None])
def test_not_leader_round_trips(leader: str | None) -> None:
    message = NotLeader("ws://a:8101 is a standby", leader)
    assert codec.decode_bus(codec.encode(message)) == message


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"type": "not_leader"}', "message"),
        ('{"type": "not_leader", "message": "m", "leader": ""}', "leader"),
        ('{"type": "not_leader", "message": "m", "leader": 3}', "leader"),
    ],
)
def test_a_bad_not_leader_is_refused_naming_the_field(frame: str, field: str) -> None:
    with pytest.raises(codec.ProtocolError) as caught:
        codec.decode_bus(frame)
    assert caught.value.field == field or f"`{field}`" in str(caught.value)
