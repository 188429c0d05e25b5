"""Who receives which job events, without sockets: a gate stand-in records the sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from scheduler.bus.connection import Connection
from scheduler.bus.fanout import COMPACT_SLACK, Fanout
from scheduler.bus.gate import FrameGate
from scheduler.codec import decode_bus
from scheduler.protocol import JobEvent
from scheduler.protocol_types import Role


@dataclass
class RecordingGate:
    """Records each frame handed to the gate, with its recipient and whether it counts;
    every one must be marked as a job event (it may wait for the commit window)."""

    sent: list[tuple[str, bool]] = field(default_factory=list)

    def send(
        self,
        recipient: Connection,
        frame: bytes,
        counted: bool = True,
        about: str | None = None,
        event: bool = False,
    ) -> None:
        decoded = decode_bus(frame.decode())
        assert isinstance(decoded, JobEvent) and about in (None, decoded.id) and event
        self.sent.append((recipient.name, counted))


def connection(name: str, role: Role, protocol: int = 2) -> Connection:
    """A registered connection with no socket: the fan-out only reads who it is."""
    client = Connection(cast(Any, None), cast(Any, None), cast(Any, None), peer=name)
    client.name, client.role, client.protocol = name, role, protocol
    return client


def event(job_id: str, final: bool = False) -> JobEvent:
    if final:
        return JobEvent("succeeded", job_id, 1, "succeeded", 0.0, attempt=1)
    return JobEvent("started", job_id, 1, "running", 0.0, attempt=1)


def test_watchers_get_their_jobs_events_and_monitors_every_event() -> None:
    fanout, gate = Fanout(), RecordingGate()
    alice, bob = connection("alice", "producer"), connection("bob", "producer")
    monitor, v1 = connection("monitor", "monitor"), connection("v1", "producer", protocol=1)
    fanout.add_monitor(monitor)
    for client in (alice, bob, v1):
        fanout.subscribe(client, "j1")
    fanout.subscribe(alice, "j2")
    fanout.publish(event("j1"), alice, cast(FrameGate, gate))
    assert sorted(gate.sent) == [("alice", False), ("bob", True), ("monitor", True)]
    assert fanout.monitors == 1


def test_a_final_event_ends_its_subscriptions() -> None:
    fanout, gate = Fanout(), RecordingGate()
    alice = connection("alice", "producer")
    fanout.subscribe(alice, "j1")
    fanout.publish(event("j1", final=True), None, cast(FrameGate, gate))
    fanout.publish(event("j1", final=True), None, cast(FrameGate, gate))
    assert gate.sent == [("alice", True)]


def test_unsubscribing_leaving_and_forgetting_drop_subscriptions() -> None:
    fanout, gate = Fanout(), RecordingGate()
    alice, bob = connection("alice", "producer"), connection("bob", "monitor")
    fanout.add_monitor(bob)
    for job_id in ("j1", "j2", "j3"):
        fanout.subscribe(alice, job_id)
    fanout.unsubscribe(alice, "j1")
    fanout.unsubscribe(alice, "j1")
    fanout.forget_job("j2")
    fanout.forget_job("j2")
    for job_id in ("j1", "j2"):
        fanout.publish(event(job_id), None, cast(FrameGate, gate))
    assert gate.sent == [("bob", True), ("bob", True)]
    fanout.leave(alice)
    fanout.leave(bob)
    fanout.publish(event("j3"), None, cast(FrameGate, gate))
    assert len(gate.sent) == 2 and fanout.monitors == 0
    fanout.subscribe(alice, "j4")
    fanout.unsubscribe(alice, "j4")
    fanout.publish(event("j4"), None, cast(FrameGate, gate))
    assert len(gate.sent) == 2


def test_a_job_watched_by_two_keeps_both_until_each_leaves() -> None:
    fanout, gate = Fanout(), RecordingGate()
    alice, bob = connection("alice", "producer"), connection("bob", "producer")
    fanout.subscribe(alice, "j1")
    fanout.subscribe(alice, "j1")
    fanout.subscribe(bob, "j1")
    fanout.publish(event("j1"), None, cast(FrameGate, gate))
    assert sorted(gate.sent) == [("alice", True), ("bob", True)]
    fanout.unsubscribe(alice, "j1")
    fanout.publish(event("j1"), None, cast(FrameGate, gate))
    assert gate.sent[2:] == [("bob", True)]
    fanout.subscribe(alice, "j1")
    fanout.leave(bob)
    fanout.publish(event("j1"), None, cast(FrameGate, gate))
    assert gate.sent[3:] == [("alice", True)]
    assert fanout.watches(alice, "j1") and not fanout.watches(bob, "j1")


def test_a_long_lived_watcher_keeps_its_books_bounded_by_the_jobs_it_watches() -> None:
    fanout, gate = Fanout(), RecordingGate()
    alice = connection("alice", "producer")
    fanout.subscribe(alice, "kept")
    for n in range(1000):
        fanout.subscribe(alice, f"j{n}")
        fanout.subscribe(alice, "again")
        fanout.unsubscribe(alice, "again")
        fanout.publish(event(f"j{n}", final=True), None, cast(FrameGate, gate))
    assert len(fanout._watching[alice].ids) <= 2 + COMPACT_SLACK
    fanout.subscribe(alice, "again")
    fanout.leave(alice)
    assert not fanout.watches(alice, "kept") and not fanout.watches(alice, "again")
    assert fanout._watchers == {} and fanout._watching == {}
